import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from detlib.config import get_cfg
from detlib.data import DatasetCatalog, MetadataCatalog
from detlib.data.datasets import register_coco_instances
from detlib.evaluation.validation_loss import build_validation_loader, loss_on_dataset
from detlib.utils.events import EventStorage, get_event_storage


class NoisyBatchNormLoss(nn.Module):
    """Training losses from a BatchNorm layer (whose statistics move in training mode), a draw from
    torch's generator (like proposal sampling) and a scalar recorded to the event storage."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(3)
        self.linear = nn.Linear(3, 1)

    def forward(self, batch):
        x = self.norm(torch.stack(batch))
        if not self.training:
            return self.linear(x)
        get_event_storage().put_scalar("probe/calls", 1.0)
        noise = torch.rand(())
        return {"loss_a": self.linear(x).abs().mean() + noise, "loss_b": x.pow(2).mean()}


def _batches():
    generator = torch.Generator().manual_seed(0)
    return [[torch.randn(3, generator=generator) * (k + 1) for _ in range(4)] for k in range(3)]


def test_mean_losses_equal_a_direct_computation_and_the_model_is_left_as_found():
    model = NoisyBatchNormLoss().eval()
    reference = copy.deepcopy(model).train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(3)
    with EventStorage(17) as storage:
        losses = loss_on_dataset(model, _batches())
    torch.manual_seed(3)
    with torch.no_grad(), EventStorage():
        direct = [reference(batch) for batch in _batches()]

    for name in ("loss_a", "loss_b"):
        assert losses[name] == pytest.approx(np.mean([float(d[name]) for d in direct]), rel=1e-6)
    assert losses["total_loss"] == pytest.approx(losses["loss_a"] + losses["loss_b"])
    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, buffers[name]), name
    assert not torch.equal(reference.norm.running_mean, buffers["norm.running_mean"])  # training mode moved them
    assert "probe/calls" not in storage.histories()


def test_an_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        loss_on_dataset(NoisyBatchNormLoss(), [])


def test_validation_loader_keeps_annotations_and_resizes_like_test_time(tmp_path):
    images, annotations = [], []
    for image_id, (h, w) in enumerate([(20, 40), (30, 30)], start=1):
        Image.fromarray(np.full((h, w, 3), 60 * image_id, np.uint8)).save(tmp_path / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
        annotations.append(
            {"id": image_id, "image_id": image_id, "category_id": 4, "bbox": [2, 3, 10, 8], "area": 80.0, "iscrowd": 0}
        )
    json_file = tmp_path / "val.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 4, "name": "thing"}]})
    )
    if "val_loss_set" in DatasetCatalog.list():
        DatasetCatalog.remove("val_loss_set")
        MetadataCatalog.remove("val_loss_set")
    register_coco_instances("val_loss_set", {}, str(json_file), str(tmp_path))

    cfg = get_cfg()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 40, 1000
    cfg.INPUT.RANDOM_FLIP = "horizontal"  # training's flip must not apply
    batches = list(build_validation_loader(cfg, ["val_loss_set"]))
    assert len(batches) == 2
    for _ in range(3):  # deterministic: the same boxes every pass
        assert [b[0]["instances"].gt_boxes.tensor.tolist() for b in build_validation_loader(cfg, ["val_loss_set"])] == [
            b[0]["instances"].gt_boxes.tensor.tolist() for b in batches
        ]
    first = batches[0][0]
    assert tuple(first["image"].shape[1:]) == (40, 80)  # shortest edge 20 -> 40
    assert first["instances"].gt_boxes.tensor.tolist() == [[4.0, 6.0, 24.0, 22.0]]
    assert first["instances"].gt_classes.tolist() == [0]


class LinearLoss(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 1)

    def forward(self, batch):
        x = torch.stack(batch)
        return {"loss_l1": self.linear(x).abs().mean(), "loss_l2": self.linear(x).pow(2).mean()}


def _losses_on_two_ranks(result_file):
    from detlib.utils import comm

    batches = _batches()[comm.get_rank() :: 2]  # rank 0: batches 0 and 2, rank 1: batch 1
    with open(f"{result_file}.{comm.get_rank()}", "w") as f:
        json.dump(loss_on_dataset(LinearLoss(), batches), f)


def test_two_processes_average_over_every_rank_batch(tmp_path):
    from detlib.engine import launch

    expected = loss_on_dataset(LinearLoss(), _batches())
    launch(_losses_on_two_ranks, num_gpus_per_machine=2, args=(str(tmp_path / "losses"),))
    for rank in (0, 1):
        assert json.load(open(tmp_path / f"losses.{rank}")) == pytest.approx(expected, rel=1e-6)
