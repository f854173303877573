"""Global name -> dataset and name -> metadata registries."""

import types
from collections import UserDict
from typing import Any, Callable, Dict, List

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata"]


class _DatasetCatalog(UserDict):
    """
    Maps a dataset name to a function that returns the dataset as `list[dict]` (one dict per image,
    in detlib's standard record format). The function is called on every `get`, so registering a
    dataset is cheap and loading happens only when it is used.
    """

    def register(self, name: str, func: Callable[[], List[dict]]) -> None:
        if not callable(func):
            raise TypeError(f"DatasetCatalog.register('{name}', ...) needs a callable, got {type(func)}.")
        if name in self:
            raise KeyError(f"Dataset '{name}' is already registered.")
        self[name] = func

    def get(self, name: str) -> List[dict]:
        try:
            func = self[name]
        except KeyError as e:
            available = ", ".join(sorted(self.keys()))
            raise KeyError(f"Dataset '{name}' is not registered. Registered datasets: {available}") from e
        return func()

    def list(self) -> List[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)

    def __str__(self) -> str:
        return f"DatasetCatalog(registered datasets: {', '.join(self.keys())})"

    __repr__ = __str__


DatasetCatalog = _DatasetCatalog()


class Metadata(types.SimpleNamespace):
    """
    Attributes of one dataset shared by all its records, e.g. `thing_classes`,
    `thing_dataset_id_to_contiguous_id`, `thing_colors`, `evaluator_type`, `json_file`,
    `image_root`. An attribute, once set, cannot be changed to a different value: two pieces of
    code disagreeing about a dataset's classes is a bug that should surface immediately.
    """

    name: str = "N/A"

    def __getattr__(self, key: str) -> Any:
        # Only reached when normal lookup fails.
        if key == "__setstate__":  # let pickle/copy fall back to the default protocol
            raise AttributeError(key)
        known = ", ".join(sorted(self.__dict__.keys()))
        raise AttributeError(
            f"Attribute '{key}' does not exist in the metadata of dataset '{self.name}'. Available: {known}"
        )

    def __setattr__(self, key: str, val: Any) -> None:
        if key in self.__dict__:
            old = self.__dict__[key]
            if old != val:
                raise AssertionError(
                    f"Attribute '{key}' of dataset '{self.name}' cannot be changed from {old!r} to {val!r}."
                )
            return
        super().__setattr__(key, val)

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)

    def set(self, **kwargs: Any) -> "Metadata":
        for key, val in kwargs.items():
            setattr(self, key, val)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)


class _MetadataCatalog(UserDict):
    """Maps a dataset name to its `Metadata`, created empty on first access."""

    def get(self, name: str) -> Metadata:
        if not name:
            raise ValueError("MetadataCatalog.get needs a non-empty dataset name.")
        if name not in self:
            self[name] = Metadata(name=name)
        return self[name]

    def list(self) -> List[str]:
        return list(self.keys())

    def remove(self, name: str) -> None:
        self.pop(name)

    def __str__(self) -> str:
        return f"MetadataCatalog(registered metadata: {', '.join(self.keys())})"

    __repr__ = __str__


MetadataCatalog = _MetadataCatalog()
