"""Acceleration applied by build_model: MODEL.MEMORY_FORMAT (default), TEST.AMP and MODEL.COMPILE (opt-in)."""

import pytest
import torch

from detlib.config import get_cfg
from detlib.model_zoo import get_config_file
from detlib.modeling import build_model
from detlib.modeling.acceleration import memory_format_for
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
        for name, value in reference.backbone(x).items():
            # Only the summation order differs: float32 rounding, far below bfloat16's 1e-2.
            assert (features[name] - value).norm() / value.norm() < 1e-5, name
        expected, got = reference(inputs)[0]["instances"], fast(inputs)[0]["instances"]
    assert len(got) == len(expected) > 0
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=1e-3)
    torch.testing.assert_close(got.scores, expected.scores, rtol=0, atol=1e-4)
    assert torch.equal(got.pred_classes, expected.pred_classes)
    assert (got.pred_masks != expected.pred_masks).float().mean() < 1e-3

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
        torch.testing.assert_close(losses[name], value, rtol=tolerance, atol=1e-6)
    sum(v for k, v in expected_losses.items() if k != "loss_cls").backward()
    sum(v for k, v in losses.items() if k != "loss_cls").backward()
    for (name, p), q in zip(fast.named_parameters(), reference.parameters()):
        if q.grad is not None:
            assert (p.grad - q.grad).norm() <= 1e-4 * q.grad.norm() + 1e-8, name
            assert p.grad.stride() == p.stride(), name


def _instances():
    from detlib.structures import Boxes, Instances, PolygonMasks

    instances = Instances((96, 128))
    instances.gt_boxes = Boxes(torch.tensor([[30.0, 20.0, 90.0, 60.0]]))
    instances.gt_classes = torch.tensor([1])
    instances.gt_masks = PolygonMasks([[[30.0, 20.0, 90.0, 20.0, 90.0, 60.0, 30.0, 60.0]]])
    return instances


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no fast bfloat16")
def test_bf16_inference_runs_and_gives_close_detections():
    torch.manual_seed(0)
    reference = build_model(_cfg()).eval()
    fast = build_model(_cfg("TEST.AMP.ENABLED", "True")).eval()
    fast.load_state_dict(reference.state_dict())
    image = _image()
    inputs = [{"image": image, "height": 96, "width": 128}]
    with torch.no_grad():
        expected = reference(inputs)[0]["instances"]
        got = fast(inputs)[0]["instances"]
        # The backbone really ran in bfloat16: its features differ from float32's, but only by rounding.
        x = reference.preprocess_image(inputs).tensor
        ref_features, fast_features = reference.backbone(x), fast.backbone(x)
    for name, value in ref_features.items():
        assert fast_features[name].dtype == torch.float32
        error = (fast_features[name] - value).norm() / value.norm()
        assert 0 < error < 0.05, (name, error)
    assert got.pred_boxes.tensor.dtype == got.scores.dtype == torch.float32
    # Most of the 20 best detections of float32 are found again (same class, IoU > 0.8, score within 0.05). A
    # random model's scores are close together, so a few boxes trade places under rounding.
    top = expected[:20]
    iou = pairwise_iou(top.pred_boxes, got.pred_boxes)
    iou[top.pred_classes[:, None] != got.pred_classes[None, :]] = 0
    best, match = iou.max(dim=1)
    assert (best > 0.8).float().mean() >= 0.8
    close = (got.scores[match] - top.scores).abs()[best > 0.8]
    assert close.max() < 0.05


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
