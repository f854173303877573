"""`Instances`: the per-image set of detections or annotations, one field per property."""

import itertools
from typing import Any, Dict, List, Tuple

import torch

from .list_indexing import index_list

__all__ = ["Instances"]


def _as_size(value: Any):
    """An int, except a symbolic size (an image size while exporting with dynamic shapes), kept symbolic."""
    return value if isinstance(value, torch.SymInt) else int(value)


def _num_entries(value: Any):
    """`len(value)`, except that a tensor's (or a tensor-backed structure's) first dimension is returned as is:
    while exporting it can be a symbolic, data-dependent size, which `len` cannot return."""
    tensor = value if isinstance(value, torch.Tensor) else getattr(value, "tensor", None)
    return tensor.shape[0] if isinstance(tensor, torch.Tensor) else len(value)


class Instances:
    """
    The instances (objects) of one image: named fields that all have one entry per instance, such
    as `gt_boxes` (`Boxes`), `gt_classes` (int64 tensor) or `pred_masks`.

    Fields are read and written as attributes (`inst.gt_boxes = Boxes(...)`) or with
    `set`/`get`/`has`/`remove`. A field can be anything with `__len__` and `__getitem__` (tensors,
    `Boxes`, masks, lists); setting one whose length differs from the others is an error.
    Indexing (`inst[mask]`, `inst[2:5]`, `inst[index_tensor]`) applies to every field at once.
    """

    def __init__(self, image_size: Tuple[int, int], **fields: Any):
        """
        Args:
            image_size: (height, width) of the image the instances belong to.
            fields: initial fields, e.g. `Instances((h, w), gt_boxes=boxes, gt_classes=classes)`.
        """
        self._image_size = (_as_size(image_size[0]), _as_size(image_size[1]))
        self._fields: Dict[str, Any] = {}
        for name, value in fields.items():
            self.set(name, value)

    @property
    def image_size(self) -> Tuple[int, int]:
        """(height, width) of the image."""
        return self._image_size

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails. Guard `_fields` so that copy/pickle, which build the
        # object without __init__, do not recurse forever.
        if name == "_fields" or name not in self._fields:
            known = list(self.__dict__.get("_fields", {}))
            raise AttributeError(f"Instances has no field '{name}'; its fields are {known}")
        return self._fields[name]

    def set(self, name: str, value: Any) -> None:
        """Set field `name`, which must have as many entries as the other fields."""
        length = _num_entries(value)
        others = {k: _num_entries(v) for k, v in self._fields.items() if k != name}
        if others:
            expected = next(iter(others.values()))
            if length != expected:
                raise ValueError(
                    f"Instances field '{name}' has length {length}, but the other fields "
                    f"({', '.join(others)}) have length {expected}"
                )
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        if name not in self._fields:
            raise KeyError(f"Instances has no field '{name}' to remove; its fields are {list(self._fields)}")
        del self._fields[name]

    def get(self, name: str) -> Any:
        return getattr(self, name)

    def get_fields(self) -> Dict[str, Any]:
        """The name -> value dict of all fields (the dict itself; changes to it show here)."""
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> "Instances":
        """A new Instances with every field that has a `.to` (tensors, Boxes, masks) converted by it."""
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            if hasattr(value, "to"):
                value = value.to(*args, **kwargs)
            out.set(name, value)
        return out

    def __getitem__(self, item) -> "Instances":
        """
        Select instances by an int (giving one instance), a slice, a bool mask or an index tensor /
        list. The result may share memory with this Instances.
        """
        if type(item) is int:
            n = len(self)
            if not -n <= item < n:
                raise IndexError(f"Instance index {item} is out of range for {n} instances")
            # A one-element slice keeps every field a container (a Boxes, not a bare row).
            item %= n
            item = slice(item, item + 1)
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            out.set(name, index_list(value, item) if isinstance(value, list) else value[item])
        return out

    def __len__(self) -> int:
        for value in self._fields.values():
            return len(value)
        raise NotImplementedError("len() of an Instances without fields is undefined: its length comes from its fields")

    def num_instances(self):
        """`len(self)`, except that while exporting it is the fields' symbolic size, which `len` cannot return."""
        for value in self._fields.values():
            return _num_entries(value)
        return len(self)

    def __iter__(self):
        raise NotImplementedError("Instances is not iterable; index it (inst[i]) or iterate over one of its fields")

    @staticmethod
    def cat(instance_lists: List["Instances"]) -> "Instances":
        """
        Concatenate Instances of the same image size and the same fields. Tensors are concatenated
        with `torch.cat`, lists are chained, other types with their own `cat` classmethod.
        """
        if not instance_lists:
            raise ValueError("Instances.cat needs at least one Instances")
        if not all(isinstance(i, Instances) for i in instance_lists):
            raise TypeError("Instances.cat: every element must be an Instances")
        if len(instance_lists) == 1:
            return instance_lists[0]

        first = instance_lists[0]
        for other in instance_lists[1:]:
            if other.image_size != first.image_size:
                raise ValueError(f"Instances.cat: image sizes differ ({first.image_size} vs {other.image_size})")
            if set(other._fields) != set(first._fields):
                raise ValueError(f"Instances.cat: fields differ ({sorted(first._fields)} vs {sorted(other._fields)})")
        out = Instances(first.image_size)
        for name, value in first._fields.items():
            values = [inst._fields[name] for inst in instance_lists]
            if isinstance(value, torch.Tensor):
                merged = torch.cat(values, dim=0)
            elif isinstance(value, list):
                merged = list(itertools.chain(*values))
            elif hasattr(type(value), "cat"):
                merged = type(value).cat(values)
            else:
                raise TypeError(f"Instances.cat: field '{name}' of type {type(value).__name__} has no cat")
            out.set(name, merged)
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}: {value}" for name, value in self._fields.items())
        num = len(self) if self._fields else 0
        return (
            f"Instances(num_instances={num}, image_height={self._image_size[0]}, "
            f"image_width={self._image_size[1]}, fields=[{fields}])"
        )

    __str__ = __repr__
