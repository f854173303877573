"""One training step of a detector built from a shapes config, on a batch drawn from the shapes dataset."""

from typing import Dict, List

import numpy as np
import torch

from detlib.config import get_cfg
from detlib.data.datasets.shapes import ShapesSpec, render_shapes_image
from detlib.modeling import build_model
from detlib.structures import BitMasks, Instances
from detlib.utils.events import EventStorage


def shapes_cfg(config_file: str, overrides=()):
    """The config of `config_file`, shrunk to a quick CPU step (float32, narrow heads), plus `overrides`."""
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(
        [
            "SOLVER.AMP.ENABLED", "False",
            "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
            "MODEL.ROI_MASK_HEAD.CONV_DIM", "8",
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32",
            *overrides,
        ]
    )  # fmt: skip
    return cfg


def shapes_batch(num_images: int = 2, size: int = 96) -> List[Dict]:
    """Shapes images (BGR, `size` x `size`) with their boxes, classes and masks, as a data loader gives them."""
    spec = ShapesSpec(num_images=num_images, seed=5, image_size=(size, size))
    batch = []
    for index in range(num_images):
        rgb, objects = render_shapes_image(spec, index)
        masks = np.stack([o["mask"] for o in objects])
        instances = Instances((size, size))
        instances.gt_masks = BitMasks(torch.from_numpy(masks))
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        instances.gt_classes = torch.tensor([o["category_id"] for o in objects], dtype=torch.int64)
        image = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))
        batch.append({"image": image, "height": size, "width": size, "instances": instances})
    return batch


def train_one_step(cfg, batch: List[Dict]) -> Dict[str, float]:
    """Build the model and take one SGD step on `batch`; the losses, after checking that the backbone gets gradients."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    with EventStorage():
        losses = model(batch)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    values = {k: float(v.detach()) for k, v in losses.items()}
    assert all(np.isfinite(v) for v in values.values()), values
    assert {"loss_rpn_cls", "loss_cls", "loss_box_reg", "loss_mask"} <= set(values)
    learns = {n for n, p in model.backbone.named_parameters() if p.grad is not None and bool(p.grad.any())}
    trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    # Not every parameter of the network under the pyramid has a gradient in the first step (timm starts residual
    # branches at zero), but its first layer has, and every parameter of the pyramid.
    inner = [n for n in trainable if n.startswith(("bottom_up.", "net."))]  # under FPN / the simple pyramid
    assert inner[0] in learns, f"the first layer of the network, {inner[0]}, has no gradient"
    assert set(trainable) - set(inner) <= learns, sorted(set(trainable) - set(inner) - learns)
    return values
