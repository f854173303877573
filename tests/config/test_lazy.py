"""LazyConfig / LazyCall / instantiate: loading Python configs, the YAML round trip, overrides, and
the allowlist that keeps a saved config from importing arbitrary code."""

import functools
import logging
import sys
import textwrap

import pytest
import torch
from omegaconf import DictConfig

from detlib.config import LazyCall as L
from detlib.config import LazyConfig, TargetNotAllowedError, instantiate
from detlib.layers import ShapeSpec
from detlib.modeling.box_regression import Box2BoxTransform
from detlib.modeling.matcher import Matcher


def collect(**kwargs):
    return kwargs


def _write(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_lazycall_records_the_call_and_instantiate_makes_it():
    cfg = L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True)
    assert isinstance(cfg, DictConfig) and cfg._target_ is Matcher
    cfg.thresholds = [0.4, 0.5]  # edited as data before the call
    matcher = instantiate(cfg)
    assert isinstance(matcher, Matcher)
    assert matcher.thresholds[1:-1] == [0.4, 0.5] and matcher.allow_low_quality_matches


def test_instantiate_builds_nested_calls_lists_and_dataclasses():
    cfg = DictConfig(
        {
            "outer": L(collect)(
                transforms=[L(Box2BoxTransform)(weights=(w, w, 5, 5)) for w in (10, 20)],
                shape=ShapeSpec(channels=7, height=3),
                plain={"n": L(Box2BoxTransform)(weights=(1, 2, 3, 4))},
            )
        },
        flags={"allow_objects": True},
    )
    out = instantiate(cfg.outer)
    assert [t.weights for t in out["transforms"]] == [(10, 10, 5, 5), (20, 20, 5, 5)]
    assert out["shape"] == ShapeSpec(channels=7, height=3)
    assert out["plain"]["n"].weights == (1, 2, 3, 4)  # a mapping without _target_ is a dict of built values


def test_py_config_relative_imports_run_each_imported_file_afresh(tmp_path):
    _write(
        tmp_path,
        {
            "common/base.py": """
                from detlib.config import LazyCall as L
                from detlib.modeling.matcher import Matcher
                model = L(Matcher)(thresholds=[0.5], labels=[0, 1])
                settings = dict(lr=0.1, steps=[1, 2])
                def double(x):
                    return 2 * x
            """,
            "common/__init__.py": "",
            "exp/a.py": """
                from ..common.base import model, settings, double
                from ..common import base
                settings.lr = double(settings.lr)   # plain dicts arrive as DictConfig
                model.thresholds = [base.settings.lr]
                _private = dict(hidden=True)
            """,
        },
    )
    cfg = LazyConfig.load(tmp_path / "exp" / "a.py")
    assert sorted(cfg.keys()) == ["model", "settings"]  # functions, modules and _names are not entries
    assert cfg.settings.lr == 0.2
    # `from ..common import base` ran base.py again: its settings were not changed by a.py.
    assert cfg.model.thresholds == [0.1]
    assert LazyConfig.load(tmp_path / "common" / "base.py", keys="settings").lr == 0.1
    assert LazyConfig.load(tmp_path / "exp" / "a.py", keys=("settings", "model"))[0].lr == 0.2


def test_load_rel_reads_a_config_beside_the_calling_one(tmp_path):
    _write(
        tmp_path,
        {
            "base/train.py": "train = dict(max_iter=7)\n",
            "exp/run.py": "from detlib.config import LazyConfig\ntrain = LazyConfig.load_rel('../base/train.py').train\n",
        },
    )
    assert LazyConfig.load(tmp_path / "exp" / "run.py").train.max_iter == 7


def test_py_config_missing_relative_import_names_the_file(tmp_path):
    _write(tmp_path, {"a.py": "from .nothere import x\n"})
    with pytest.raises(ImportError, match="nothere"):
        LazyConfig.load(tmp_path / "a.py")


def test_yaml_round_trip_keeps_targets_interpolations_tuples_and_callables(tmp_path):
    cfg = DictConfig(
        {
            "model": L(Matcher)(thresholds="${..thr}", labels=[0, 1], allow_low_quality_matches=False),
            "thr": [0.5],
            "sizes": (32, 64),
            "norm": torch.nn.LayerNorm,
            "norm_eps": functools.partial(torch.nn.LayerNorm, eps=1e-6),
            "shape": ShapeSpec(channels=256, height=7, width=7),
        },
        flags={"allow_objects": True},
    )
    path = tmp_path / "config.yaml"
    LazyConfig.save(cfg, path)
    text = path.read_text()
    assert "_target_: detlib.modeling.matcher.Matcher" in text or "_target_: detlib.modeling.Matcher" in text
    assert "${..thr}" in text  # saved unresolved
    loaded = LazyConfig.load(path)
    assert loaded.model.thresholds == [0.5]
    out = instantiate(loaded)
    assert isinstance(out["model"], Matcher) and out["model"].thresholds[1:-1] == [0.5]
    assert tuple(out["sizes"]) == (32, 64)
    assert out["norm"] is torch.nn.LayerNorm
    assert out["norm_eps"](4).eps == 1e-6
    assert out["shape"] == ShapeSpec(channels=256, height=7, width=7)


def test_save_reports_values_without_an_importable_name(tmp_path, caplog):
    cfg = DictConfig({"f": lambda c: c, "x": 1}, flags={"allow_objects": True})
    with caplog.at_level(logging.WARNING):
        LazyConfig.save(cfg, tmp_path / "c.yaml")
    assert "f" in caplog.text and "no importable name" in caplog.text
    assert LazyConfig.load(tmp_path / "c.yaml").x == 1


@pytest.fixture
def side_effect_module(tmp_path, monkeypatch):
    """A module outside the allowlist whose import and call leave marks on disk."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_pkg_for_test.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef run(path):\n    open(path, 'w').close()\n    return 'ran'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("evil_pkg_for_test", None)


def test_saved_yaml_naming_a_foreign_target_is_refused_by_name(tmp_path, side_effect_module):
    path = tmp_path / "config.yaml"
    path.write_text(f"job:\n  _target_: evil_pkg_for_test.run\n  path: {tmp_path / 'called'}\n")
    with pytest.raises(TargetNotAllowedError, match=r"evil_pkg_for_test\.run.*job\._target_"):
        LazyConfig.load(path)
    assert not side_effect_module.exists()  # refused before anything was imported


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "subprocess.run",
        "torchevil.x",
        "torch.hub.load",
        "torch.load",
        "torch.ops.load_library",
        "torch._C._jit_pass_inline",
        "detlib.config.LazyConfig.load",
        "detlib.config.instantiate",
        "detlib.checkpoint.detection_checkpoint.load_checkpoint_file",
    ],
)
def test_refused_targets(tmp_path, target):
    path = tmp_path / "c.yaml"
    path.write_text(f"a:\n  b:\n    _target_: {target}\n")
    with pytest.raises(TargetNotAllowedError, match=target.replace(".", r"\.")):
        LazyConfig.load(path)


def test_a_saved_config_cannot_opt_itself_in(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ckpt:\n  _target_: detlib.checkpoint.DetectionCheckpointer\n  allow_unsafe: true\n")
    with pytest.raises(TargetNotAllowedError, match="allow_unsafe"):
        LazyConfig.load(path)
    with pytest.raises(TargetNotAllowedError, match="allow_unsafe"):
        instantiate({"_target_": "detlib.checkpoint.DetectionCheckpointer", "allow_unsafe": True})


def test_foreign_object_value_is_refused_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("norm:\n  _object_: os.system\n")
    with pytest.raises(TargetNotAllowedError, match=r"os\.system"):
        LazyConfig.load(path)


def test_opt_in_loads_and_calls_a_foreign_target_and_logs_it(tmp_path, side_effect_module, caplog):
    called = tmp_path / "called"
    path = tmp_path / "config.yaml"
    path.write_text(f"job:\n  _target_: evil_pkg_for_test.run\n  path: {called}\n")
    with caplog.at_level(logging.WARNING):
        cfg = LazyConfig.load(path, allow_any_target=True)
    assert "allow_any_target=True" in caplog.text and str(path) in caplog.text
    assert instantiate(cfg.job) == "ran" and called.exists()


def test_instantiate_refuses_a_foreign_string_target_unless_allowed(side_effect_module, tmp_path):
    cfg = {"_target_": "evil_pkg_for_test.run", "path": str(tmp_path / "x")}
    with pytest.raises(TargetNotAllowedError, match="evil_pkg_for_test"):
        instantiate(cfg)
    assert not side_effect_module.exists()
    assert instantiate(cfg, allow_any_target=True) == "ran"
    # Allowed packages resolve by name without an opt-in.
    assert instantiate({"_target_": "torch.nn.Identity"}).__class__ is torch.nn.Identity


def test_apply_overrides():
    cfg = DictConfig(
        {
            "train": {"max_iter": 10, "output_dir": "./out"},
            "model": L(Matcher)(thresholds=[0.5], labels=[0, 1]),
            "augs": [L(collect)(size=1)],
        },
        flags={"allow_objects": True},
    )
    LazyConfig.apply_overrides(
        cfg,
        [
            "train.max_iter=20",
            "train.output_dir=/tmp/x",
            "model.thresholds=[0.4, 0.6]",
            "model.allow_low_quality_matches=true",  # a keyword Matcher takes, not yet in the config
            "augs.0.size=3",
            "train.max_iter=None",
        ],
    )
    assert cfg.train.max_iter is None and cfg.train.output_dir == "/tmp/x"
    assert cfg.model.thresholds == [0.4, 0.6] and cfg.model.allow_low_quality_matches is True
    assert cfg.augs[0].size == 3


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.max_itr=5", "did you mean 'max_iter'"),
        ("model.not_an_arg=1", "not_an_arg"),
        ("nothing.here=1", "nothing"),
        ("train.max_iter", "key=value"),
    ],
)
def test_apply_overrides_rejects_unknown_keys(override, message):
    cfg = DictConfig(
        {"train": {"max_iter": 10}, "model": L(Matcher)(thresholds=[0.5], labels=[0, 1])}, flags={"allow_objects": True}
    )
    with pytest.raises((KeyError, ValueError), match=message):
        LazyConfig.apply_overrides(cfg, [override])
