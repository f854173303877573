import pytest
import torch

from detlib.config import get_cfg
from detlib.modeling.anchor_generator import DefaultAnchorGenerator, build_anchor_generator

# Sizes (32, 64) x ratios (0.25, 1, 4), ratio = height / width and area = size**2:
#   32, 0.25 -> w 64,  h 16       32, 1 -> 32 x 32       32, 4 -> w 16, h 64
#   64, 0.25 -> w 128, h 32       64, 1 -> 64 x 64       64, 4 -> w 32, h 128
CELL = [
    [-32.0, -8.0, 32.0, 8.0],
    [-16.0, -16.0, 16.0, 16.0],
    [-8.0, -32.0, 8.0, 32.0],
    [-64.0, -16.0, 64.0, 16.0],
    [-32.0, -32.0, 32.0, 32.0],
    [-16.0, -64.0, 16.0, 64.0],
]


def _generator(offset):
    return DefaultAnchorGenerator(sizes=[[32, 64]], aspect_ratios=[[0.25, 1, 4]], strides=[4], offset=offset)


def test_cell_anchors_by_hand():
    gen = _generator(0.0)
    assert gen.num_anchors == [6]
    assert gen.num_cell_anchors == [6]
    torch.testing.assert_close(list(gen.cell_anchors)[0], torch.tensor(CELL))


def test_grid_1x2_offset_0():
    # Locations (x, y) = (0, 0) and (4, 0); the 6 cell anchors of location 0 come first.
    (anchors,) = _generator(0.0)([torch.zeros(1, 8, 1, 2)])
    expected = [[x0, y0, x1, y1] for x0, y0, x1, y1 in CELL]
    expected += [[x0 + 4, y0, x1 + 4, y1] for x0, y0, x1, y1 in CELL]
    torch.testing.assert_close(anchors.tensor, torch.tensor(expected))


def test_grid_1x2_offset_half():
    # offset 0.5 * stride 4: locations (2, 2) and (6, 2).
    (anchors,) = _generator(0.5)([torch.zeros(1, 8, 1, 2)])
    expected = [
        [-30.0, -6.0, 34.0, 10.0],
        [-14.0, -14.0, 18.0, 18.0],
        [-6.0, -30.0, 10.0, 34.0],
        [-62.0, -14.0, 66.0, 18.0],
        [-30.0, -30.0, 34.0, 34.0],
        [-14.0, -62.0, 18.0, 66.0],
        [-26.0, -6.0, 38.0, 10.0],
        [-10.0, -14.0, 22.0, 18.0],
        [-2.0, -30.0, 14.0, 34.0],
        [-58.0, -14.0, 70.0, 18.0],
        [-26.0, -30.0, 38.0, 34.0],
        [-10.0, -62.0, 22.0, 66.0],
    ]
    torch.testing.assert_close(anchors.tensor, torch.tensor(expected))


def test_grid_is_row_major():
    gen = DefaultAnchorGenerator(sizes=[[2]], aspect_ratios=[[1.0]], strides=[10])
    (anchors,) = gen([torch.zeros(1, 1, 2, 2)])
    expected = [[-1, -1, 1, 1], [9, -1, 11, 1], [-1, 9, 1, 11], [9, 9, 11, 11]]
    torch.testing.assert_close(anchors.tensor, torch.tensor(expected, dtype=torch.float32))


def test_per_level_params_and_config():
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
    cfg.MODEL.ANCHOR_GENERATOR.OFFSET = 0.5

    class Shape:  # only the stride of a ShapeSpec is read
        def __init__(self, stride):
            self.stride = stride

    gen = build_anchor_generator(cfg, [Shape(4), Shape(8)])
    assert isinstance(gen, DefaultAnchorGenerator)
    assert gen.num_anchors == [1, 1]
    small, large = gen([torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)])
    torch.testing.assert_close(small.tensor, torch.tensor([[-14.0, -14.0, 18.0, 18.0]]))
    torch.testing.assert_close(large.tensor, torch.tensor([[-28.0, -28.0, 36.0, 36.0]]))
    # Derived from the config, not learned: not part of a checkpoint.
    assert len(gen.state_dict()) == 0


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="offset"):
        _generator(1.0)
    with pytest.raises(ValueError, match="3 lists for 2 feature levels"):
        DefaultAnchorGenerator(sizes=[[32], [64], [128]], aspect_ratios=[[1.0]], strides=[4, 8])
    with pytest.raises(ValueError, match="positive"):
        DefaultAnchorGenerator(sizes=[[0]], aspect_ratios=[[1.0]], strides=[4])
