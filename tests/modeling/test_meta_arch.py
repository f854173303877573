import pytest
import torch

from detlib.config import get_cfg
from detlib.modeling import GeneralizedRCNN, ProposalNetwork, build_model
from detlib.structures import Boxes, Instances, PolygonMasks
from detlib.utils.events import EventStorage

ROI_LOSSES = {"loss_cls", "loss_box_reg", "loss_mask"}
RPN_LOSSES = {"loss_rpn_cls", "loss_rpn_loc"}


def _cfg(**overrides):
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu",
        "MODEL.MASK_ON", True,
        "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
        "MODEL.RESNETS.DEPTH", 18,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"],
        "MODEL.FPN.IN_FEATURES", ["res2", "res3", "res4", "res5"],
        "MODEL.FPN.OUT_CHANNELS", 16,
        "MODEL.ANCHOR_GENERATOR.SIZES", [[16], [32], [64], [128], [256]],
        "MODEL.RPN.IN_FEATURES", ["p2", "p3", "p4", "p5", "p6"],
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200,
        "MODEL.RPN.PRE_NMS_TOPK_TEST", 200,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
        "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
        "MODEL.ROI_HEADS.NAME", "StandardROIHeads",
        "MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p3", "p4", "p5"],
        "MODEL.ROI_HEADS.NUM_CLASSES", 3,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
        "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead",
        "MODEL.ROI_BOX_HEAD.NUM_FC", 2,
        "MODEL.ROI_BOX_HEAD.FC_DIM", 32,
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 7,
        "MODEL.ROI_MASK_HEAD.NUM_CONV", 1,
        "MODEL.ROI_MASK_HEAD.CONV_DIM", 8,
    ])  # fmt: skip
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(_cfg())


def _image(h, w, seed):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _gt(h, w):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    inst.gt_masks = PolygonMasks([[[4.0, 6.0, 30.0, 6.0, 30.0, 40.0]], [[20.0, 10.0, 60.0, 10.0, 40.0, 50.0]]])
    return inst


def _no_gt(h, w):
    inst = Instances((h, w), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0, dtype=torch.int64))
    inst.gt_masks = PolygonMasks([])
    return inst


def test_build_model_and_pixel_stats(model):
    assert isinstance(model, GeneralizedRCNN)
    assert model.input_format == "BGR"
    state = model.state_dict()
    assert "pixel_mean" not in state and "pixel_std" not in state
    assert all(k.split(".")[0] in {"backbone", "proposal_generator", "roi_heads"} for k in state)
    with pytest.raises(KeyError, match="NoSuchArch"):
        build_model(_cfg(**{"MODEL.META_ARCHITECTURE": "NoSuchArch"}))


def test_preprocess_normalizes_then_pads_with_zero(model):
    a, b = _image(40, 50, 0), _image(64, 33, 1)
    images = model.preprocess_image([{"image": a}, {"image": b}])
    assert images.tensor.shape == (2, 3, 64, 64)
    assert images.image_sizes == [(40, 50), (64, 33)]
    mean = torch.tensor([103.530, 116.280, 123.675]).view(3, 1, 1)
    torch.testing.assert_close(images.tensor[0, :, :40, :50], a.float() - mean)
    assert not images.tensor[0, :, 40:].any() and not images.tensor[1, :, :, 33:].any()

    with pytest.raises(KeyError, match="image"):
        model.preprocess_image([{"img": a}])
    with pytest.raises(ValueError, match="3 x H x W"):
        model.preprocess_image([{"image": a[:1]}])


def test_training_returns_the_merged_losses_of_the_heads(model):
    batch = [
        {"image": _image(64, 80, 2), "instances": _gt(64, 80)},
        {"image": _image(70, 64, 3), "instances": _no_gt(70, 64)},
    ]
    model.train()
    with EventStorage(0):
        torch.manual_seed(1)
        losses = model(batch)
        # The same step by hand: the meta-architecture only merges what the heads return.
        torch.manual_seed(1)
        images = model.preprocess_image(batch)
        gt = [x["instances"] for x in batch]
        features = model.backbone(images.tensor)
        proposals, rpn_losses = model.proposal_generator(images, features, gt)
        _, roi_losses = model.roi_heads(images, features, proposals, gt)
    model.eval()
    assert set(losses) == ROI_LOSSES | RPN_LOSSES
    for name, value in {**rpn_losses, **roi_losses}.items():
        assert torch.equal(losses[name], value), name
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.mask_head.predictor.weight.grad is not None
    model.zero_grad()


def test_images_without_gt_train_as_background(model):
    batch = [{"image": _image(64, 64, 4), "instances": _no_gt(64, 64)}]
    model.train()
    with EventStorage(0):
        losses = model(batch)
    model.eval()
    assert losses["loss_box_reg"].item() == 0 and losses["loss_mask"].item() == 0
    assert losses["loss_rpn_loc"].item() == 0
    assert losses["loss_cls"] > 0 and losses["loss_rpn_cls"] > 0
    sum(losses.values()).backward()
    model.zero_grad()


def test_inference_rescales_to_the_requested_size(model):
    image = _image(64, 48, 5)
    with torch.no_grad():
        raw = model.inference([{"image": image}], do_postprocess=False)[0]
        out = model([{"image": image, "height": 128, "width": 96}])[0]["instances"]
    assert len(raw) > 0
    assert set(out.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
    assert out.image_size == (128, 96)
    assert out.pred_masks.shape == (len(out), 128, 96) and out.pred_masks.dtype == torch.bool
    keep = raw.pred_boxes.nonempty()
    torch.testing.assert_close(out.pred_boxes.tensor, raw.pred_boxes.tensor[keep] * 2)
    assert torch.equal(out.scores, raw.scores[keep])


def test_inference_without_detections_has_all_fields():
    torch.manual_seed(0)
    model = build_model(_cfg(**{"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 1.0})).eval()
    with torch.no_grad():
        out = model([{"image": _image(64, 64, 6), "height": 100, "width": 90}])[0]["instances"]
    assert len(out) == 0
    assert out.pred_boxes.tensor.shape == (0, 4) and out.scores.shape == (0,) and out.pred_classes.shape == (0,)
    assert out.pred_masks.shape == (0, 100, 90)


def test_inference_on_given_boxes(model):
    given = Instances((64, 64), pred_boxes=Boxes(torch.tensor([[2.0, 3.0, 40.0, 50.0]])))
    given.pred_classes = torch.tensor([1])
    given.scores = torch.tensor([0.5])
    with torch.no_grad():
        out = model.inference([{"image": _image(64, 64, 7)}], detected_instances=[given])[0]["instances"]
    assert torch.equal(out.pred_boxes.tensor, given.pred_boxes.tensor)
    assert out.pred_masks.shape == (1, 64, 64)


def test_proposal_network():
    torch.manual_seed(0)
    model = build_model(_cfg(**{"MODEL.META_ARCHITECTURE": "ProposalNetwork"}))
    assert isinstance(model, ProposalNetwork)
    batch = [{"image": _image(64, 64, 8), "instances": _gt(64, 64)}]
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == RPN_LOSSES
    model.eval()
    with torch.no_grad():
        out = model([{"image": _image(64, 64, 8), "height": 32, "width": 32}])[0]["proposals"]
    assert out.image_size == (32, 32) and 0 < len(out) <= 50
    assert (out.proposal_boxes.tensor >= 0).all() and (out.proposal_boxes.tensor <= 32).all()


def test_training_visualization_every_vis_period():
    torch.manual_seed(0)
    model = build_model(_cfg(**{"VIS_PERIOD": 2}))
    batch = [{"image": _image(64, 80, 9), "instances": _gt(64, 80)}]
    with EventStorage(0) as storage:
        model(batch)
        # The mask head draws its own (prediction, target) pairs at the same period.
        drawn = {name: image for name, image, _ in storage.vis_data}
        assert drawn["Left: GT bounding boxes;  Right: Predicted proposals"].shape == (3, 64, 160)
        assert any(name.startswith("Left: mask prediction") for name in drawn)
        storage.clear_images()
        storage.iter = 1
        model(batch)
        assert storage.vis_data == []


def test_training_forward_outside_a_trainer_gives_the_same_losses(model):
    """No EventStorage open (a user looking at a model's losses): the heads' summaries are dropped, the losses
    are those of a forward inside a storage."""
    batch = [{"image": _image(64, 80, 2), "instances": _gt(64, 80)}]
    model.train()
    torch.manual_seed(1)
    outside = model(batch)
    with EventStorage(0) as storage:
        torch.manual_seed(1)
        inside = model(batch)
    model.eval()
    assert storage.histories()  # inside, the heads record their summaries
    assert set(outside) == set(inside) == ROI_LOSSES | RPN_LOSSES
    for name in inside:
        assert torch.equal(outside[name], inside[name]), name


def test_every_meta_architecture_is_on_the_one_protocol():
    from detlib.modeling.meta_arch import META_ARCH_REGISTRY, MetaArchitecture

    for name, cls in META_ARCH_REGISTRY:
        assert issubclass(cls, MetaArchitecture), name
        assert cls.inference is not MetaArchitecture.inference, f"{name} has no inference"
