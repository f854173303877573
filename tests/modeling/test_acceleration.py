"""Acceleration applied by build_model: MODEL.MEMORY_FORMAT (default), TEST.AMP and MODEL.COMPILE (opt-in)."""

import math

import pytest
import torch

from detlib.collect_env import cpu_features
from detlib.config import get_cfg
from detlib.model_zoo import get_config_file
from detlib.modeling import build_model
from detlib.modeling.acceleration import (
    LOW_PRECISION_PARTS,
    autocast_at_inference,
    cpu_has_fast_bfloat16,
    memory_format_for,
)
from detlib.structures import pairwise_iou
from detlib.utils.events import EventStorage

TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "INPUT.MIN_SIZE_TEST", "128",
]  # fmt: skip


def _cfg(*overrides):
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(TINY + list(overrides))
    return cfg


def _image():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 64, (3, 96, 128), generator=g, dtype=torch.uint8)
    image[:, 20:60, 30:90] = 200  # one bright object for the detector to find
    return image


def test_config_keys_default_off():
    cfg = get_cfg()
    assert cfg.TEST.AMP.ENABLED is False
    assert cfg.MODEL.COMPILE is False
    assert cfg.MODEL.MEMORY_FORMAT == "auto"


def test_memory_format_names():
    assert memory_format_for("auto", torch.device("cpu")) == torch.channels_last
    assert memory_format_for("auto", torch.device("cuda")) == torch.contiguous_format
    assert memory_format_for("contiguous", torch.device("cpu")) == torch.contiguous_format
    assert memory_format_for("channels_last", torch.device("cuda")) == torch.channels_last
    with pytest.raises(ValueError, match="MODEL.MEMORY_FORMAT.*'nhwc'"):
        memory_format_for("nhwc", torch.device("cpu"))


def _float32_reorder_bound(module: torch.nn.Module) -> float:
    """
    The largest relative error (in norm) between two float32 evaluations of `module` that sum in different orders
    (channels_last and contiguous kernels, or two CPUs' kernels): a sum of K products, rounded at each of its
    additions (2^-24), is off by about 2^-24 sqrt(K) of its size when the products have random signs; the two
    orders' errors are independent (x sqrt(2)) and so are those of successive layers (x sqrt(depth)).
    """
    convs = [m for name, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)]
    k = max(m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] for m in convs)
    depth = _depth(module)
    return 2.0**-24 * math.sqrt(2 * k * depth)


def _conv_weights(model):
    return [p for name, p in model.named_parameters() if p.dim() == 4]


def test_channels_last_model_gives_the_contiguous_models_results():
    torch.manual_seed(0)
    reference = build_model(_cfg("MODEL.MEMORY_FORMAT", "contiguous"))
    fast = build_model(_cfg())  # auto: channels_last on the CPU
    fast.load_state_dict(reference.state_dict())
    assert all(p.is_contiguous() for p in _conv_weights(reference))
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in _conv_weights(fast))
    assert not all(p.is_contiguous() for p in _conv_weights(fast))  # not all 1x1: the layout really changed

    image = _image()
    inputs = [{"image": image, "height": 96, "width": 128}]
    reference.eval(), fast.eval()
    with torch.no_grad():
        x = reference.preprocess_image(inputs).tensor
        features = fast.backbone(x)
        assert features["p2"].is_contiguous(memory_format=torch.channels_last)
        bound = _float32_reorder_bound(reference.backbone)
        for name, value in reference.backbone(x).items():
            error = ((features[name] - value).norm() / value.norm()).item()
            assert error < bound, f"{name}: relative error {error:.2e}, bound {bound:.2e} ({_kernels()})"
        expected, got = reference(inputs)[0]["instances"], fast(inputs)[0]["instances"]
    # Detection by detection (same class, box IoU > 0.99), not by index: the scores of this random model nearly
    # tie, and float32 rounding may swap two of them, or one at the 100-detection cut, on another CPU's kernels.
    assert len(got) == len(expected) > 0
    iou = pairwise_iou(expected.pred_boxes, got.pred_boxes)
    iou[expected.pred_classes[:, None] != got.pred_classes[None, :]] = 0
    best, match = iou.max(dim=1)
    found = best > 0.99
    assert found.float().mean() >= 0.98, f"{int((~found).sum())} detections not found again ({_kernels()})"
    # Probabilities move by at most half the largest logit change; logits of this head stay within +-10, and
    # move by their size times the features' relative error (< 2e-5): 1e-4 covers it.
    score_change = (got.scores[match] - expected.scores)[found].abs().max().item()
    assert score_change < 1e-4, f"scores moved by {score_change:.1e} ({_kernels()})"
    masks_differ = (got.pred_masks[match] != expected.pred_masks)[found].float().mean().item()
    assert masks_differ < 1e-3, f"{masks_differ:.1e} of mask pixels differ ({_kernels()})"

    # Training: the same losses, and the same gradients (in the weights' own layout).
    reference.train(), fast.train()
    batch = [dict(inputs[0], instances=_instances())]
    with EventStorage(0):
        torch.manual_seed(1)
        expected_losses = reference(batch)
        torch.manual_seed(1)
        losses = fast(batch)
    for name, value in expected_losses.items():
        # An untrained model's objectness scores nearly tie, so rounding can swap which background proposals
        # survive NMS and get sampled: the classification loss over them moves a little, nothing else does.
        tolerance = 1e-2 if name == "loss_cls" else 1e-5
        torch.testing.assert_close(
            losses[name], value, rtol=tolerance, atol=1e-6, msg=lambda m: f"{name}: {m} ({_kernels()})"
        )
    sum(v for k, v in expected_losses.items() if k != "loss_cls").backward()
    sum(v for k, v in losses.items() if k != "loss_cls").backward()
    for (name, p), q in zip(fast.named_parameters(), reference.parameters()):
        if q.grad is not None:
            change = ((p.grad - q.grad).norm() / (q.grad.norm() + 1e-12)).item()
            assert change <= 1e-4 or (p.grad - q.grad).norm() <= 1e-8, f"{name}: {change:.1e} ({_kernels()})"
            assert p.grad.stride() == p.stride(), name


def _instances():
    from detlib.structures import Boxes, Instances, PolygonMasks

    instances = Instances((96, 128))
    instances.gt_boxes = Boxes(torch.tensor([[30.0, 20.0, 90.0, 60.0]]))
    instances.gt_classes = torch.tensor([1])
    instances.gt_masks = PolygonMasks([[[30.0, 20.0, 90.0, 20.0, 90.0, 60.0, 30.0, 60.0]]])
    return instances


# bfloat16 keeps 8 significant bits: rounding to it changes a value by at most a relative 2^-8.
BF16_ROUNDING = 2.0**-8


def _kernels() -> str:
    """What decides the CPU kernels (and so the last bits of every result), for failure messages."""
    return f"CPU kernels: ATen {torch.backends.cpu.get_cpu_capability()}; {cpu_features()}"


def _bf16_error_bound(depth: int) -> float:
    """
    The largest relative error (in norm) of a feature made by `depth` layers in a row under bfloat16 autocast,
    against float32: each layer rounds its input, its weights and its output to bfloat16 (three roundings of at
    most 2^-8 each), products are accumulated in float32, and the roundings of successive layers are independent,
    so their errors add in quadrature: 3 * 2^-8 * sqrt(depth). ReLU, residual sums and max-pooling do not grow a
    relative error; random He-initialized layers keep the activations' scale, so it is not amplified either.
    """
    return 3 * BF16_ROUNDING * math.sqrt(depth)


def _depth(module: torch.nn.Module, skip: str = "shortcut") -> int:
    """Convolutions and linear layers of `module` outside its shortcuts: the longest chain through it."""
    return sum(
        isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and skip not in name for name, m in module.named_modules()
    )


def _bf16_copy(reference: torch.nn.Module) -> torch.nn.Module:
    """
    `reference` with its LOW_PRECISION_PARTS under bfloat16 autocast at inference: through TEST.AMP where the CPU
    has native bfloat16 (there TEST.AMP is what users get), by the same hooks elsewhere, where TEST.AMP stays in
    float32 and oneDNN / ATen emulate bfloat16 (slower, the same roundings). So every CPU's kernels check the bounds.
    """
    native = cpu_has_fast_bfloat16()
    fast = build_model(_cfg("TEST.AMP.ENABLED", str(native))).eval()
    if not native:
        for part in LOW_PRECISION_PARTS:
            autocast_at_inference(fast.get_submodule(part), "cpu", torch.bfloat16)
    fast.load_state_dict(reference.state_dict())
    return fast


def test_bf16_inference_stays_within_bfloat16s_rounding():
    torch.manual_seed(0)
    reference = build_model(_cfg()).eval()
    fast = _bf16_copy(reference)
    inputs = [{"image": _image(), "height": 96, "width": 128}]
    with torch.no_grad():
        got = fast(inputs)[0]["instances"]
        images = reference.preprocess_image(inputs)
        ref_features, fast_features = reference.backbone(images.tensor), fast.backbone(images.tensor)
        # The box head on the same proposals (float32's), each model on its own features.
        proposals, _ = reference.proposal_generator(images, ref_features)
        boxes = [p.proposal_boxes for p in proposals]
        heads = reference.roi_heads, fast.roi_heads
        in_features = heads[0].box_in_features
        ref_box = heads[0].box_head(heads[0].box_pooler([ref_features[f] for f in in_features], boxes))
        fast_box = heads[1].box_head(heads[1].box_pooler([fast_features[f] for f in in_features], boxes))
        ref_logits, fast_logits = heads[0].box_predictor(ref_box)[0], heads[1].box_predictor(fast_box)[0]

    # The backbone really ran in bfloat16 (its features differ from float32's), by no more than its rounding.
    backbone_depth = _depth(reference.backbone.bottom_up) + 2  # + the FPN's lateral and output convolutions
    bound = _bf16_error_bound(backbone_depth)
    for name, value in ref_features.items():
        assert fast_features[name].dtype == torch.float32
        error = ((fast_features[name] - value).norm() / value.norm()).item()
        assert 0 < error < bound, f"{name}: relative error {error:.4f}, bound {bound:.4f} ({_kernels()})"

    # Box-head features within the rounding of the backbone and the head's own layers.
    bound = _bf16_error_bound(backbone_depth + _depth(heads[0].box_head))
    error = ((fast_box - ref_box).norm() / ref_box.norm()).item()
    assert 0 < error < bound, f"box features: relative error {error:.4f}, bound {bound:.4f} ({_kernels()})"
    # The predictor runs in float32: logit j of a proposal moves by at most |W_j| |its features' change|
    # (Cauchy-Schwarz), and a softmax probability by at most half its largest logit change (its gradient,
    # p_c (delta_c - sum_j p_j delta_j), is at most 2 p_c (1 - p_c) max |delta| <= max |delta| / 2 all along the
    # way). 1e-5: float32's own rounding of the products.
    weight = heads[0].box_predictor.cls_score.weight
    logit_change = (fast_logits - ref_logits).abs()
    logit_bound = weight.norm(dim=1)[None, :] * (fast_box - ref_box).norm(dim=1)[:, None] + 1e-5
    assert (logit_change <= logit_bound).all(), f"class logits moved more than a float32 predictor can ({_kernels()})"
    score_change = (fast_logits.softmax(-1) - ref_logits.softmax(-1)).abs().max(dim=1).values
    worst = (score_change / (logit_change.max(dim=1).values / 2 + 1e-6)).max().item()
    assert worst <= 1, f"scores moved up to {worst:.2f}x half their largest logit change ({_kernels()})"

    # End to end, the outputs are float32 detections. Their order is not compared: this random model's objectness
    # scores nearly tie, so rounding legitimately changes which anchors the RPN keeps (the part above checks
    # the arithmetic on equal proposals).
    assert len(got) > 0 and got.pred_boxes.tensor.dtype == got.scores.dtype == torch.float32


def test_amp_falls_back_to_float32_on_a_cpu_without_native_bfloat16(monkeypatch):
    from detlib.modeling import acceleration

    monkeypatch.setattr(acceleration, "cpu_has_fast_bfloat16", lambda: False)
    torch.manual_seed(0)
    plain = build_model(_cfg()).eval()
    amp = build_model(_cfg("TEST.AMP.ENABLED", "True")).eval()
    amp.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for name, value in plain.backbone(x).items():
            assert torch.equal(amp.backbone(x)[name], value), name


def test_amp_leaves_training_in_float32():
    torch.manual_seed(0)
    model = build_model(_cfg("TEST.AMP.ENABLED", "True")).train()
    x = torch.randn(1, 3, 64, 64)
    features = model.backbone(x)
    plain = build_model(_cfg()).train()
    plain.load_state_dict(model.state_dict())
    for name, value in plain.backbone(x).items():
        assert features[name].dtype == torch.float32
        assert torch.equal(features[name], value)


def test_compile_keeps_parameter_names():
    torch.manual_seed(0)
    plain = build_model(_cfg())
    compiled = build_model(_cfg("MODEL.COMPILE", "True"))
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert compiled.backbone._compiled_call_impl is not None
    assert plain.backbone._compiled_call_impl is None


def test_cpu_inference_trims_freed_memory_after_each_listed_part(monkeypatch):
    from detlib.modeling import acceleration

    calls = []
    monkeypatch.setattr(acceleration, "_malloc_trim", lambda: calls.append)
    torch.manual_seed(0)
    model = build_model(_cfg())
    inputs = [{"image": _image(), "height": 96, "width": 128}]
    with torch.no_grad():
        model.eval()(inputs)
    assert calls == [0] * len(acceleration.TRIMMED_PARTS)  # every listed part exists in R-CNN FPN: one call each
    calls.clear()
    with EventStorage(0):
        model.train()([dict(inputs[0], instances=_instances())])
    assert calls == []  # training keeps glibc's heap as it is
