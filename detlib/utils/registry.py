"""The registry type every replaceable part of detlib is found through."""

from typing import Any

from fvcore.common.registry import Registry as _FvcoreRegistry

__all__ = ["Registry"]


class Registry(_FvcoreRegistry):
    """
    fvcore's name -> object registry, whose lookup of an unknown name lists the registered ones,
    so a typo in a config (`MODEL.ROI_HEADS.NAME: StandardROIHead`) says what the choices are.
    """

    def get(self, name: str) -> Any:
        if name not in self:
            choices = ", ".join(sorted(k for k, _ in self)) or "(none registered)"
            raise KeyError(f"No object named '{name}' in the '{self._name}' registry. Registered: {choices}")
        return super().get(name)
