import pytest

from detlib.config import configurable, get_cfg


class _Head:
    @configurable
    def __init__(self, *, in_channels: int, num_classes: int, dropout: float = 0.0):
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dropout = dropout

    @classmethod
    def from_config(cls, cfg, in_channels):
        return {"in_channels": in_channels, "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES}


class _Subclass(_Head):
    @classmethod
    def from_config(cls, cfg, in_channels):
        return {"in_channels": in_channels * 2, "num_classes": 1}


def test_init_from_config_positional_and_keyword():
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 7
    head = _Head(cfg, 64)
    assert (head.in_channels, head.num_classes, head.dropout) == (64, 7, 0.0)
    head = _Head(cfg=cfg, in_channels=32)
    assert (head.in_channels, head.num_classes) == (32, 7)


def test_explicit_kwargs_override_from_config():
    head = _Head(get_cfg(), 64, num_classes=3, dropout=0.5)
    assert (head.num_classes, head.dropout) == (3, 0.5)


def test_plain_kwargs_without_config():
    head = _Head(in_channels=8, num_classes=2)
    assert (head.in_channels, head.num_classes) == (8, 2)


def test_subclass_uses_its_own_from_config():
    head = _Subclass(get_cfg(), 10)
    assert (head.in_channels, head.num_classes) == (20, 1)


def test_function_with_from_config():
    @configurable(from_config=lambda cfg, scale=1: {"size": cfg.INPUT.MIN_SIZE_TEST * scale, "name": "x"})
    def build(size, name):
        return size, name

    assert build(get_cfg(), scale=2) == (1600, "x")
    assert build(get_cfg(), name="y") == (800, "y")
    assert build(5, "z") == (5, "z")
    assert build.from_config(get_cfg())["size"] == 800


def test_from_config_must_take_cfg_first():
    class Bad:
        @configurable
        def __init__(self, a):
            self.a = a

        @classmethod
        def from_config(cls, config):
            return {"a": 1}

    with pytest.raises(TypeError, match="'cfg'"):
        Bad(get_cfg())
    assert Bad(a=2).a == 2


def test_configurable_on_plain_function_needs_from_config():
    with pytest.raises(TypeError):

        @configurable
        def f(x):
            return x
