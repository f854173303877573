"""tools/convert_weights.py: any loadable checkpoint to a .safetensors file of its model weights."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from detlib.checkpoint import DetectionCheckpointer, UnsafeCheckpointError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import convert_weights  # noqa: E402


def test_a_detlib_checkpoint_converts_to_its_model_weights_only(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer).save("model_final", iteration=3)
    out = tmp_path / "model.safetensors"
    assert convert_weights.convert(str(tmp_path / "model_final.pth"), str(out)) == len(model.state_dict())
    converted = load_file(str(out))
    assert converted.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(converted[name], value), name
    reloaded = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    DetectionCheckpointer(reloaded).load(str(out))
    assert torch.equal(reloaded[0].weight, model[0].weight)


def test_a_caffe2_backbone_converts_and_still_finds_its_place(tmp_path):
    # A ResNet-relative file keeps the flag that places it under the model's ResNet.
    blobs = {"conv1_w": np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1), "res2_0_branch2a_w": np.ones((2, 2, 1, 1))}
    source = tmp_path / "R.pkl"
    source.write_bytes(pickle.dumps(blobs))
    out = tmp_path / "R.safetensors"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_weights.py"), str(source), str(out)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
    )

    class Stem(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 2, 1, bias=False)

    model = nn.Module()
    model.bottom_up = nn.Module()
    model.bottom_up.stem = Stem()
    DetectionCheckpointer(model).load(str(out))
    assert torch.equal(model.bottom_up.stem.conv1.weight.detach(), torch.from_numpy(blobs["conv1_w"]))


def test_an_unsafe_input_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "marker"),)

    source = tmp_path / "evil.pkl"
    source.write_bytes(pickle.dumps({"model": {"w": np.zeros(1)}, "x": Payload()}))
    with pytest.raises(UnsafeCheckpointError):
        convert_weights.convert(str(source), str(tmp_path / "out.safetensors"))
    assert not (tmp_path / "marker").exists() and not (tmp_path / "out.safetensors").exists()
