"""Loading never runs code from a weights file unless the user opts in; real weight files still load."""

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from detlib.checkpoint import DetectionCheckpointer, UnsafeCheckpointError, load_checkpoint_file
from detlib.solver import WarmupMultiStepLR


class MakesDirectory:
    """Unpickling this calls os.mkdir(path): the stand-in for any code a crafted file could run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {"weight": rng.standard_normal((2, 3)).astype(np.float32), "bias": rng.standard_normal(2).astype(np.float32)}


def _crafted_pkl(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": _state(), "payload": MakesDirectory(str(marker))}))
    return path


def _crafted_pth(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "evil.pth"
    weights = {k: torch.from_numpy(v) for k, v in _state().items()}
    torch.save({"model": weights, "payload": MakesDirectory(str(marker))}, path)
    return path


def _crafted_legacy_pth(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "evil_legacy.pth"
    torch.save({"model": {}, "payload": MakesDirectory(str(marker))}, path, _use_new_zipfile_serialization=False)
    return path


@pytest.mark.parametrize(
    "craft", [_crafted_pkl, _crafted_pth, _crafted_legacy_pth], ids=["pkl", "pth", "pth-legacy-format"]
)
def test_a_crafted_file_is_refused_by_name_and_runs_nothing(tmp_path, craft, monkeypatch):
    monkeypatch.delenv("DETLIB_ALLOW_UNSAFE_LOAD", raising=False)
    marker = tmp_path / "marker"
    path = craft(tmp_path, marker)
    with pytest.raises(UnsafeCheckpointError) as error:
        DetectionCheckpointer(nn.Linear(3, 2)).load(str(path))
    message = str(error.value)
    assert str(path) in message and f"{os.mkdir.__module__}.mkdir" in message  # posix.mkdir on Linux
    assert "allow_unsafe=True" in message and "DETLIB_ALLOW_UNSAFE_LOAD" in message
    assert not marker.exists()


@pytest.mark.parametrize("craft", [_crafted_pkl, _crafted_pth], ids=["pkl", "pth"])
def test_the_opt_in_loads_a_trusted_file_with_a_warning(tmp_path, craft, caplog, monkeypatch):
    monkeypatch.delenv("DETLIB_ALLOW_UNSAFE_LOAD", raising=False)
    marker = tmp_path / "marker"
    path = craft(tmp_path, marker)
    model = nn.Linear(3, 2)
    with caplog.at_level(logging.WARNING, logger="detlib.checkpoint.safe_readers"):
        DetectionCheckpointer(model, allow_unsafe=True).load(str(path))
    assert marker.is_dir()  # the opt-in really is unrestricted
    assert "WITHOUT restrictions" in caplog.text and str(path) in caplog.text
    assert torch.equal(model.weight.detach(), torch.from_numpy(_state()["weight"]))


def test_the_environment_variable_opts_in_too(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    path = _crafted_pkl(tmp_path, marker)
    monkeypatch.setenv("DETLIB_ALLOW_UNSAFE_LOAD", "1")
    DetectionCheckpointer(nn.Linear(3, 2)).load(str(path))
    assert marker.is_dir()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_numpy_pickles_of_every_protocol_load(tmp_path, protocol):
    state = _state()
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"model": state, "__author__": "Detectron2 Model Zoo"}, protocol=protocol))
    model = nn.Linear(3, 2)
    DetectionCheckpointer(model).load(str(path))
    assert torch.equal(model.weight.detach(), torch.from_numpy(state["weight"]))
    assert torch.equal(model.bias.detach(), torch.from_numpy(state["bias"]))


def test_the_detectron2_parity_pickle_reads_like_an_unrestricted_unpickler(d2_case):
    pkl = d2_case / "model.pkl"
    with open(pkl, "rb") as f:
        reference = pickle.load(f, encoding="latin1")["model"]  # the test's own trusted reference
    loaded = load_checkpoint_file(str(pkl))["model"]
    assert loaded.keys() == reference.keys()
    for name, value in reference.items():
        assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value), name


def test_a_pth_holding_numpy_arrays_loads(tmp_path):
    state = _state()
    path = tmp_path / "model.pth"
    torch.save({"model": state, "iteration": 7}, path)
    model = nn.Linear(3, 2)
    extra = DetectionCheckpointer(model).load(str(path))
    assert extra == {"iteration": 7}
    assert torch.equal(model.weight.detach(), torch.from_numpy(state["weight"]))


def test_detlib_checkpoints_hold_only_what_weights_only_loading_admits(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = WarmupMultiStepLR(optimizer, milestones=[2], max_iter=10, warmup_iters=2)
    model(torch.randn(2, 3, 5, 5)).sum().backward()
    optimizer.step()
    scheduler.step()
    np.random.rand(3)  # a NumPy generator that has been used
    checkpointer = DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler)
    checkpointer.save("model_0000001", iteration=1)
    # Plain weights-only loading, without the NumPy globals detlib's reader admits.
    data = torch.load(tmp_path / "model_0000001.pth", weights_only=True)
    assert {"model", "optimizer", "scheduler", "iteration", "rng_states"} <= set(data)


def test_safetensors_weights_load(tmp_path):
    state = {k: torch.from_numpy(v) for k, v in _state(3).items()}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    model = nn.Linear(3, 2)
    DetectionCheckpointer(model).load(str(path))
    assert torch.equal(model.weight.detach(), state["weight"]) and torch.equal(model.bias.detach(), state["bias"])


def test_a_pickle_written_under_numpy_1_loads(tmp_path):
    # NumPy 1 named its array constructor numpy.core.multiarray._reconstruct (Detectron2's zoo files).
    state = _state(4)
    written = pickle.dumps({"model": state}, protocol=2)
    numpy1 = written.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert numpy1 != written
    path = tmp_path / "model.pkl"
    path.write_bytes(numpy1)
    model = nn.Linear(3, 2)
    DetectionCheckpointer(model).load(str(path))
    assert torch.equal(model.weight.detach(), torch.from_numpy(state["weight"]))


def test_a_pth_of_numpy_arrays_written_under_numpy_1_loads(tmp_path):
    state = _state(5)
    path = tmp_path / "model.pth"
    torch.save({"model": state}, path, _use_new_zipfile_serialization=False)  # one plain pickle stream
    written = path.read_bytes()
    path.write_bytes(written.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert path.read_bytes() != written
    model = nn.Linear(3, 2)
    DetectionCheckpointer(model).load(str(path))
    assert torch.equal(model.bias.detach(), torch.from_numpy(state["bias"]))
