"""
The code in docs/extend.md and docs/design.md runs and does what the text says. Every ```python block
whose first line is `# snippet: NAME` is executed here, once, and its result checked.
"""

import math
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detlib.modeling.meta_arch.build import build_model

DOCS = Path(__file__).resolve().parents[2] / "docs"
_SNIPPET = re.compile(r"```python\n# snippet: (\w+)\n(.*?)```", re.DOTALL)


def _snippets():
    found = {}
    for page in ("extend.md", "design.md"):
        for name, code in _SNIPPET.findall((DOCS / page).read_text()):
            assert name not in found, f"two snippets named {name}"
            found[name] = code
    return found


SNIPPETS = _snippets()


def run_snippet(name):
    """Execute a snippet and return its namespace; what it registers is undone after the test (tests/conftest.py)."""
    namespace = {"__name__": f"docs_snippet_{name}"}
    exec(compile(SNIPPETS[name], f"<docs snippet {name}>", "exec"), namespace)
    return namespace


def test_all_snippets_are_tested():
    assert set(SNIPPETS) == {"aux_loss", "backbone", "dense_head", "loss", "model_with_loss"}


def test_new_backbone_trains_in_mask_rcnn(tiny_cfg, batch, run_losses):
    run_snippet("backbone")
    model = build_model(tiny_cfg("MODEL.BACKBONE.NAME", "build_plain_pyramid_backbone"))
    assert type(model.backbone).__name__ == "PlainPyramid"
    shapes = model.backbone.output_shape()
    assert {name: s.stride for name, s in shapes.items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert {s.channels for s in shapes.values()} == {16}
    features = model.backbone(torch.zeros(1, 3, 64, 128))
    assert {name: tuple(f.shape[-2:]) for name, f in features.items()} == {
        "p2": (16, 32),
        "p3": (8, 16),
        "p4": (4, 8),
        "p5": (2, 4),
        "p6": (1, 2),
    }

    losses, _ = run_losses(model, batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    sum(losses.values()).backward()
    assert model.backbone.stem.weight.grad.abs().sum() > 0


def test_registered_box_loss_by_hand_and_from_config(tiny_cfg):
    balanced_l1 = run_snippet("loss")["balanced_l1"]
    alpha, gamma = 0.5, 1.5
    b = math.exp(gamma / alpha) - 1
    loss = balanced_l1()
    assert loss.params == {"alpha": alpha, "gamma": gamma} and loss.kind == "deltas"
    pred, target = torch.tensor([[0.5, -2.0, 0.0, 1.0]]), torch.zeros(1, 4)
    inlier = alpha / b * (b * 0.5 + 1) * math.log(b * 0.5 + 1) - alpha * 0.5
    outlier = gamma * 2.0 + gamma / b - alpha
    at_one = alpha / b * (b + 1) * math.log(b + 1) - alpha  # both pieces agree at |x| = 1
    assert loss(pred, target).item() == pytest.approx(inlier + outlier + at_one, rel=1e-6)
    # The gradient grows to gamma at |x| = 1 and stays there.
    x = torch.tensor([[0.999, 1.001, 3.0, 0.0]], requires_grad=True)
    loss(x, torch.zeros(1, 4)).backward()
    torch.testing.assert_close(x.grad, torch.tensor([[gamma, gamma, gamma, 0.0]]), atol=5e-3, rtol=0)

    model = build_model(
        tiny_cfg(
            "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "balanced_l1", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_PARAMS.gamma", 1.0
        )
    )
    assert model.roi_heads.box_predictor.box_loss.params == {"alpha": 0.5, "gamma": 1.0}
    with pytest.raises(ValueError, match="alpha and gamma must be > 0"):
        build_model(
            tiny_cfg("MODEL.RPN.BBOX_REG_LOSS_TYPE", "balanced_l1", "MODEL.RPN.BBOX_REG_LOSS_PARAMS.alpha", 0.0)
        )


def test_auxiliary_loss_on_intermediate_features(tiny_cfg, batch, run_losses):
    run_snippet("aux_loss")
    model = build_model(
        tiny_cfg("MODEL.ROI_HEADS.NAME", "ForegroundMapROIHeads", "MODEL.LOSS_WEIGHTS.loss_fg_map", 0.5)
    )
    seen = {}
    model.roi_heads.fg_logits.register_forward_hook(lambda m, i, out: seen.__setitem__("logits", out[:, 0].detach()))
    losses, _ = run_losses(model, batch)

    # Targets by brute force: a p3 cell (stride 8) is foreground if its center is in a gt box.
    logits = seen["logits"]
    targets = torch.zeros_like(logits)
    for n, sample in enumerate(batch):
        for i in range(logits.shape[1]):
            for j in range(logits.shape[2]):
                cy, cx = (i + 0.5) * 8, (j + 0.5) * 8
                targets[n, i, j] = any(
                    x0 <= cx < x1 and y0 <= cy < y1 for x0, y0, x1, y1 in sample["instances"].gt_boxes.tensor.tolist()
                )
    assert 0 < targets.mean() < 1
    expected = 0.5 * F.binary_cross_entropy_with_logits(logits, targets)
    assert losses["loss_fg_map"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} < set(losses)


def test_model_with_loss_trains_with_the_stock_trainer():
    namespace = run_snippet("model_with_loss")
    trainer, net, batches = namespace["trainer"], namespace["net"], namespace["batches"]
    l1 = trainer.storage.history("loss_l1").values()
    assert trainer.iter == 50 and len(l1) == 50
    assert l1[-1][0] < 0.2 * l1[0][0]
    # Eval mode gives the network's predictions.
    model = namespace["model"].eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batches[0]), net(torch.stack([s["x"] for s in batches[0]])))


def test_new_dense_head_is_selected_by_config_trains_and_exports(batch):
    """docs/extend.md's one-stage head: registered, chosen by MODEL.DENSE_HEAD.NAME under DenseDetector, its
    losses from its own forward (checked against the same sums written out here), a few steps lower them, and
    the trained model exports through the one wrapper with the eager detections."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
    from export_checks import assert_same_detections

    from detlib.config import get_cfg
    from detlib.export import ExportableDetector, export_program
    from detlib.model_zoo import get_config_file
    from detlib.modeling.meta_arch import DenseDetector
    from detlib.structures import Boxes, pairwise_iou
    from detlib.utils.events import EventStorage

    run_snippet("dense_head")
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("Shapes/retinanet_shapes.yaml"))
    cfg.merge_from_list(
        ["MODEL.META_ARCHITECTURE", "DenseDetector", "MODEL.DENSE_HEAD.NAME", "SingleConvHead"]
        + ["MODEL.FPN.OUT_CHANNELS", "16", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.3"]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model) is DenseDetector and type(model.head).__name__ == "SingleConvHead"

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    totals = []
    with EventStorage(0):
        for _ in range(8):
            losses = model(batch)
            assert set(losses) == {"loss_cls", "loss_box_reg"}
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            totals.append(total.item())
    assert totals[-1] < totals[0]

    # loss_cls by hand on one image: BCE over the non-ignored anchors, divided by the moving normalizer.
    model.head._loss_normalizer = None
    image = batch[:1]
    images = model.preprocess_image(image)
    levels = [model.backbone(images.tensor)[f] for f in model.head.in_features]
    anchors = Boxes.cat(model.head.anchor_generator(levels))
    logits = torch.cat(model.head.predict(levels)[0], dim=1)[0]
    gt = image[0]["instances"]
    matched, labels = model.head.anchor_matcher(pairwise_iou(gt.gt_boxes, anchors))
    targets = torch.zeros_like(logits)
    foreground = labels == 1
    targets[foreground, gt.gt_classes[matched[foreground]]] = 1
    normalizer = 0.9 * 100 + 0.1 * max(int(foreground.sum()), 1)
    expected = F.binary_cross_entropy_with_logits(logits[labels >= 0], targets[labels >= 0], reduction="sum")
    with EventStorage(0):
        got = model(image)["loss_cls"]
    assert got.item() == pytest.approx(expected.item() / normalizer, rel=1e-5)

    model.eval()
    # RetinaNet's levels reach p7 (stride 128): exported programs take sides above 128.
    sample, other = (
        F.interpolate(x["image"][None].float(), size=size)[0].to(torch.uint8)
        for x, size in zip(batch, [(144, 160), (136, 176)])
    )
    program = export_program(model, sample).module()
    for image_tensor in (sample, other):
        with torch.no_grad():
            eager = ExportableDetector(model)(image_tensor)
        assert len(eager[0]) > 0
        assert_same_detections(eager, program(image_tensor))
