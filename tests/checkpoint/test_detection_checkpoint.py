import logging
import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from detlib.checkpoint import DetectionCheckpointer, load_checkpoint_file, load_model_state
from detlib.checkpoint.torchvision import convert_torchvision_state_dict
from detlib.solver import WarmupMultiStepLR
from detlib.utils.env import get_rng_state, set_rng_state


class Net(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, classes)


def _trained(model, steps=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = WarmupMultiStepLR(optimizer, milestones=[2], max_iter=10, warmup_iters=2)
    for _ in range(steps):
        loss = model.head(model.backbone(torch.randn(2, 3, 5, 5)).mean((2, 3))).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return optimizer, scheduler


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_same_state(a[k], b[k])
        elif isinstance(a[k], torch.Tensor):
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
        else:
            assert a[k] == b[k], k


def test_save_then_resume_restores_model_optimizer_scheduler_and_iteration(tmp_path):
    model = Net()
    optimizer, scheduler = _trained(model)
    saver = DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler)
    saver.save("model_0000002", iteration=2, note="hello")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"

    fresh = Net()
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh_scheduler = WarmupMultiStepLR(fresh_optimizer, milestones=[2], max_iter=10, warmup_iters=2)
    loader = DetectionCheckpointer(fresh, str(tmp_path), optimizer=fresh_optimizer, scheduler=fresh_scheduler)
    extra = loader.resume_or_load("ignored-when-resuming.pth", resume=True)
    assert extra["iteration"] == 2 and extra["note"] == "hello"
    _assert_same_state(fresh.state_dict(), model.state_dict())
    _assert_same_state(fresh_optimizer.state_dict(), optimizer.state_dict())
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_rng_states_are_saved_and_restore_every_generator(tmp_path):
    checkpointer = DetectionCheckpointer(Net(), str(tmp_path))
    checkpointer.save("model", iteration=0)
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    states = checkpointer.load(str(tmp_path / "model.pth"))["rng_states"]
    assert len(states) == 1  # one per process
    set_rng_state(states[0])
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def test_resume_without_checkpoint_loads_only_the_given_weights(tmp_path):
    source = Net()
    torch.save({"model": source.state_dict(), "optimizer": {"bogus": 1}}, tmp_path / "weights.pth")
    target = Net()
    optimizer = torch.optim.SGD(target.parameters(), lr=0.1)
    checkpointer = DetectionCheckpointer(target, str(tmp_path / "run"), optimizer=optimizer)
    assert not checkpointer.has_checkpoint()
    checkpointer.resume_or_load(str(tmp_path / "weights.pth"), resume=True)  # optimizer state not touched
    _assert_same_state(target.state_dict(), source.state_dict())
    assert checkpointer.resume_or_load("", resume=False) == {}


def test_detectron2_model_zoo_pickle_of_numpy_arrays_loads(tmp_path):
    source = Net()
    zoo = {
        "model": {k: v.numpy().copy() for k, v in source.state_dict().items() if "num_batches" not in k},
        "__author__": "Detectron2 Model Zoo",
    }
    with open(tmp_path / "model_final_abc.pkl", "wb") as f:
        pickle.dump(zoo, f)
    target = Net()
    DetectionCheckpointer(target).load(str(tmp_path / "model_final_abc.pkl"))
    for name, value in source.state_dict().items():
        if "num_batches" not in name:
            torch.testing.assert_close(target.state_dict()[name], value)


def test_batch_norm_step_counters_of_a_pickle_load_as_scalars(tmp_path):
    # Detectron2's BN / SyncBN models store num_batches_tracked as a 0-d array.
    source = nn.BatchNorm2d(3)
    source.num_batches_tracked.fill_(7)
    with open(tmp_path / "bn.pkl", "wb") as f:
        pickle.dump({"model": {k: v.numpy().copy() for k, v in source.state_dict().items()}}, f)
    target = nn.BatchNorm2d(3)
    keys = load_model_state(target, load_checkpoint_file(str(tmp_path / "bn.pkl"))["model"])
    assert not keys.shape_mismatch and not keys.missing
    assert target.num_batches_tracked.item() == 7


def test_detectron2_pth_and_ddp_prefixed_state_dicts_load(tmp_path):
    source = Net()
    torch.save({"model": source.state_dict(), "iteration": 89999}, tmp_path / "d2.pth")
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, tmp_path / "ddp.pth")
    for name in ("d2.pth", "ddp.pth"):
        target = Net()
        checkpointer = DetectionCheckpointer(target)
        checkpointer.load(str(tmp_path / name))
        _assert_same_state(target.state_dict(), source.state_dict())
        assert checkpointer.incompatible_keys == ([], [], [])


def test_missing_unexpected_and_shape_mismatched_keys_are_reported_and_mismatches_skipped(caplog):
    source = Net(classes=5)
    state = source.state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["backbone.0.bias"]
    target = Net(classes=3)
    head_before = target.head.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="detlib.checkpoint.detection_checkpoint"):
        incompatible = load_model_state(target, state)
    assert incompatible.missing == ["backbone.0.bias"]
    assert incompatible.unexpected == ["extra.weight"]
    assert sorted(incompatible.shape_mismatch) == [("head.bias", (5,), (3,)), ("head.weight", (5, 4), (3, 4))]
    torch.testing.assert_close(target.head.weight, head_before)  # skipped, left as initialized
    torch.testing.assert_close(target.backbone[0].weight, source.backbone[0].weight)
    log = caplog.text
    assert "head.weight" in log and "(5, 4)" in log and "(3, 4)" in log
    assert "backbone.0.bias" in log and "extra.weight" in log


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a checkpoint", "is not a readable checkpoint"),
        (pickle.dumps([1, 2, 3]), "holds a list"),
        (pickle.dumps({"foo": "bar"}), "expected a dict with a 'model'"),
        (pickle.dumps({"blobs": {"conv1_w": "not an array"}}), "expected a dict with a 'model'"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_gets_an_error_naming_it(tmp_path, content, message):
    path = tmp_path / "weights.pkl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        DetectionCheckpointer(Net()).load(str(path))
    assert str(path) in str(error.value)


def test_a_missing_file_is_named():
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        DetectionCheckpointer(Net()).load("/nowhere.pth")


def test_save_failure_keeps_the_previous_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch):
    model = Net()
    checkpointer = DetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000000", iteration=0)
    good = (tmp_path / "model_0000000.pth").read_bytes()

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        checkpointer.save("model_0000000", iteration=1)  # overwriting the same name
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]
    assert (tmp_path / "model_0000000.pth").read_bytes() == good
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000000.pth")


def test_only_the_saving_process_writes(tmp_path):
    DetectionCheckpointer(Net(), str(tmp_path), save_to_disk=False).save("model")
    assert os.listdir(tmp_path) == []


def test_ddp_wrapper_is_unwrapped_and_checkpointables_validated(tmp_path):
    checkpointer = DetectionCheckpointer(Net(), str(tmp_path))
    with pytest.raises(TypeError, match="state_dict"):
        checkpointer.add_checkpointable("thing", object())
    with pytest.raises(KeyError, match="model"):
        checkpointer.add_checkpointable("model", torch.optim.SGD(Net().parameters(), lr=1))


def test_torchvision_detection_weights_are_converted(tmp_path):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    state = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    path = tmp_path / "torchvision_weights.pth"
    torch.save(state, path)
    loaded = load_checkpoint_file(str(path))["model"]
    assert loaded.keys() == convert_torchvision_state_dict(state).keys()
    assert "backbone.bottom_up.stem.conv1.weight" in loaded


def test_rng_state_round_trip_covers_python_numpy_and_torch():
    state = get_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(()).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == first
