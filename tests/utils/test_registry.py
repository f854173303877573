import pytest

from detlib.modeling import BACKBONE_REGISTRY
from detlib.utils.registry import Registry


def test_unknown_name_lists_registered_choices():
    registry = Registry("HEADS")

    @registry.register()
    def head_a():
        return "a"

    @registry.register()
    def head_b():
        return "b"

    assert registry.get("head_b")() == "b"
    with pytest.raises(KeyError, match=r"'head_c' in the 'HEADS' registry\. Registered: head_a, head_b"):
        registry.get("head_c")


def test_project_registries_use_it():
    with pytest.raises(KeyError, match="build_resnet_fpn_backbone"):
        BACKBONE_REGISTRY.get("build_resnet_fpn_backbon")
