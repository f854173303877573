"""Config files parse without running code: Detectron2's anchor-size eval works, other Python refused."""

import logging
import math
import zipfile
from pathlib import Path

import pytest

from detlib.config import CfgNode, get_cfg
from detlib.config.yaml_loader import UnsafeConfigError, safe_eval

PEERS = Path(__file__).resolve().parents[2] / ".." / "shared" / "peers"
PEER_WHEEL = PEERS / "detectron2-0.6-cp311-cp311-linux_x86_64.whl"
RETINANET_SIZES_LINE = (
    'SIZES: !!python/object/apply:eval ["[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64, 128, 256, 512 ]]"]'
)
# Three sizes per octave: x, x * cube root of 2, x * cube root of 4.
EXPECTED_SIZES = [[x, x * math.cbrt(2), x * math.cbrt(4)] for x in (32, 64, 128, 256, 512)]


def _assert_sizes(sizes):
    assert len(sizes) == 5
    for got, want in zip(sizes, EXPECTED_SIZES):
        assert list(got) == pytest.approx(want, rel=1e-12)
    assert sizes[0][1] == pytest.approx(40.317473596635935) and sizes[4][2] == pytest.approx(812.7493868)


def test_the_retinanet_anchor_eval_tag_gives_detectron2s_sizes(tmp_path):
    path = tmp_path / "retina.yaml"
    path.write_text(f"MODEL:\n  ANCHOR_GENERATOR:\n    {RETINANET_SIZES_LINE}\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    _assert_sizes(cfg.MODEL.ANCHOR_GENERATOR.SIZES)


@pytest.mark.skipif(not PEER_WHEEL.is_file(), reason="the Detectron2 peer wheel is not available")
def test_detectron2s_own_base_retinanet_yaml_parses(tmp_path):
    with zipfile.ZipFile(PEER_WHEEL) as wheel:
        text = wheel.read("detectron2/model_zoo/configs/Base-RetinaNet.yaml")
    path = tmp_path / "Base-RetinaNet.yaml"
    path.write_bytes(text)
    loaded = CfgNode.load_yaml_with_base(str(path))
    _assert_sizes(loaded["MODEL"]["ANCHOR_GENERATOR"]["SIZES"])
    assert loaded["MODEL"]["RETINANET"]["IOU_THRESHOLDS"] == [0.4, 0.5]


def test_an_eval_tag_in_a_base_file_reaches_the_merged_config(tmp_path):
    (tmp_path / "base.yaml").write_text(f"MODEL:\n  ANCHOR_GENERATOR:\n    {RETINANET_SIZES_LINE}\n")
    (tmp_path / "child.yaml").write_text('_BASE_: "base.yaml"\nMODEL:\n  MASK_ON: True\n')
    cfg = get_cfg()
    cfg.merge_from_file(str(tmp_path / "child.yaml"))
    assert cfg.MODEL.MASK_ON
    _assert_sizes(cfg.MODEL.ANCHOR_GENERATOR.SIZES)


@pytest.mark.parametrize(
    "value",
    [
        '!!python/object/apply:os.mkdir ["{marker}"]',
        '!!python/object/new:os.mkdir ["{marker}"]',
        "!!python/name:os.mkdir",
        "!!python/object/apply:eval [\"__import__('os').mkdir('{marker}')\"]",
        '!!python/object/apply:eval ["[x.mkdir for x in [1]]"]',
    ],
    ids=["apply", "new", "name", "eval-call", "eval-attribute"],
)
def test_other_python_tags_are_refused_naming_file_and_key_and_run_nothing(tmp_path, value):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.yaml"
    path.write_text("MODEL:\n  WEIGHTS: " + value.format(marker=marker) + "\n")
    with pytest.raises(UnsafeConfigError) as error:
        get_cfg().merge_from_file(str(path))
    message = str(error.value)
    assert str(path) in message and "MODEL.WEIGHTS" in message and "line 2" in message
    assert not marker.exists()


def test_a_trusted_file_loads_unrestricted_with_the_opt_in_and_a_warning(tmp_path, caplog):
    marker = tmp_path / "marker"
    path = tmp_path / "trusted.yaml"
    path.write_text(f'MODEL:\n  WEIGHTS: !!python/object/apply:os.mkdir ["{marker}"]\n')
    with caplog.at_level(logging.WARNING, logger="detlib.config.yaml_loader"):
        CfgNode.load_yaml_with_base(str(path), allow_unsafe=True)
    assert marker.is_dir()
    assert "allow_unsafe=True" in caplog.text and str(path) in caplog.text


def test_python_tuples_are_data_and_load(tmp_path):
    path = tmp_path / "tuple.yaml"
    path.write_text("INPUT:\n  MIN_SIZE_TRAIN: !!python/tuple [320, 352]\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (320, 352)


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("2 ** 3 - 1 / 4", 7.75),
        ("-(7 // 2) % 5", 2),  # Python's modulo takes the divisor's sign
        ("(1, [2, 3.5])", (1, [2, 3.5])),
        ("[[a * b for b in [1, 2]] for a in (3, 4)]", [[3, 6], [4, 8]]),
        ("[a + b for a in [1, 2] for b in [10, 20]]", [11, 21, 12, 22]),
    ],
)
def test_safe_eval_computes_arithmetic_and_comprehensions(expression, expected):
    assert safe_eval(expression) == expected


@pytest.mark.parametrize(
    "expression, message",
    [
        ("open('x')", "Call"),
        ("x + 1", "name 'x'"),
        ("[y for x in [1]]", "name 'y'"),
        ("(1).real", "Attribute"),
        ("lambda: 0", "Lambda"),
        ("'a' * 3", "Constant"),
        ("[x for x in [1] if x]", "only 'for NAME in ITERABLE'"),
        ("[1] * 3", "arithmetic on a list"),
        ("9 ** 9 ** 9", "too large"),
        ("[1, 2", "cannot parse"),
    ],
)
def test_safe_eval_refuses_everything_else_by_name(expression, message):
    with pytest.raises(ValueError, match=message):
        safe_eval(expression)
