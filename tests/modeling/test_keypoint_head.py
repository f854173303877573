import pytest
import torch
import torch.nn.functional as F

from detlib import model_zoo
from detlib.config import get_cfg
from detlib.layers import ShapeSpec
from detlib.modeling import build_model, detector_postprocess
from detlib.modeling.roi_heads import (
    KRCNNConvDeconvUpsampleHead,
    build_keypoint_head,
    keypoint_rcnn_loss,
    select_proposals_with_visible_keypoints,
)
from detlib.structures import Boxes, Instances, Keypoints
from detlib.utils.events import EventStorage


def _head(**kwargs):
    torch.manual_seed(0)
    return KRCNNConvDeconvUpsampleHead(ShapeSpec(channels=4), num_keypoints=3, conv_dims=[5, 6], **kwargs)


def test_layer_names_are_detectron2s_and_the_forward_is_conv_deconv_upsample():
    head = _head()
    assert list(head.state_dict()) == [
        "conv_fcn1.weight", "conv_fcn1.bias", "conv_fcn2.weight", "conv_fcn2.bias",
        "score_lowres.weight", "score_lowres.bias",
    ]  # fmt: skip
    assert all(torch.count_nonzero(b) == 0 for n, b in head.named_parameters() if n.endswith("bias"))
    x = torch.randn(2, 4, 7, 7)
    y = F.relu(F.conv2d(x, head.conv_fcn1.weight, head.conv_fcn1.bias, padding=1))
    y = F.relu(F.conv2d(y, head.conv_fcn2.weight, head.conv_fcn2.bias, padding=1))
    y = F.conv_transpose2d(y, head.score_lowres.weight, head.score_lowres.bias, stride=2, padding=1)
    y = F.interpolate(y, size=(28, 28), mode="bilinear", align_corners=False)
    out = head.layers(x)
    assert out.shape == (2, 3, 28, 28)
    torch.testing.assert_close(out, y)


def _rois():
    # One image, two RoIs over [0, 4] x [0, 4] and [4, 8] x [0, 4]; a 2 x 2 heatmap has 2 px cells.
    inst = Instances((8, 8))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 4.0, 4.0], [4.0, 0.0, 8.0, 4.0]]))
    inst.gt_keypoints = Keypoints(
        [
            [[1.0, 1.0, 2], [3.0, 3.5, 1]],  # cells 0 and 3, both valid
            [[9.0, 1.0, 2], [5.0, 3.0, 2]],  # outside the RoI (x 9 > 8), and cell 2 of the RoI
        ]
    )
    return inst


def test_keypoint_loss_by_hand():
    logits = torch.randn(2, 2, 2, 2, dtype=torch.float64)
    # -log softmax of the target cell, for the 3 valid keypoints (roi, keypoint, cell).
    terms = [
        -(logits[r, k].flatten()[c] - torch.logsumexp(logits[r, k].flatten(), 0))
        for r, k, c in ((0, 0, 0), (0, 1, 3), (1, 1, 2))
    ]
    total = sum(terms)
    torch.testing.assert_close(keypoint_rcnn_loss(logits, [_rois()], normalizer=None), total / 3)
    torch.testing.assert_close(keypoint_rcnn_loss(logits, [_rois()], normalizer=10.0), total / 10)


def test_head_normalizes_by_visible_keypoints_or_by_a_fixed_count():
    x = torch.randn(2, 4, 1, 1)  # 1 x 1 features -> 4 x 4 heatmaps
    visible, fixed = _head(loss_normalizer="visible"), _head(loss_normalizer=2.0, loss_weight=3.0)
    with EventStorage():
        loss_visible = visible(x, [_rois()])["loss_keypoint"]
        loss_fixed = fixed(x, [_rois()])["loss_keypoint"]
    summed = keypoint_rcnn_loss(visible.layers(x), [_rois()], normalizer=1.0)
    torch.testing.assert_close(loss_visible, summed / 3)
    torch.testing.assert_close(loss_fixed, 3.0 * summed / (2.0 * 1))  # 2.0 per image, one image
    with pytest.raises(ValueError, match="loss_normalizer"):
        _head(loss_normalizer="all")


def test_batch_without_a_valid_keypoint_gives_a_connected_zero_and_is_counted():
    head = _head()
    inst = _rois()
    inst.gt_keypoints = Keypoints(torch.zeros(2, 2, 3))
    x = torch.randn(2, 4, 1, 1, requires_grad=True)
    with EventStorage() as storage:
        loss = head(x, [inst])["loss_keypoint"]
        loss.backward()
        assert storage.history("kpts_num_skipped_batches").latest() == 1
    assert loss.item() == 0 and x.grad is not None


def test_from_config_normalizer_is_detectron2s():
    cfg = get_cfg()
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (8,)
    head = build_keypoint_head(cfg, ShapeSpec(channels=4, height=14, width=14))
    assert head.loss_normalizer == "visible" and head.num_keypoints == 17
    cfg.MODEL.ROI_KEYPOINT_HEAD.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS = False
    # 17 keypoints x 512 RoIs x 0.25 foreground
    assert build_keypoint_head(cfg, ShapeSpec(channels=4)).loss_normalizer == 17 * 512 * 0.25


def test_select_proposals_with_visible_keypoints():
    inst = Instances((20, 20))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 5.0, 5.0], [10.0, 10.0, 12.0, 12.0]]))
    inst.gt_keypoints = Keypoints(
        [
            [[5.0, 5.0, 1], [0.0, 0.0, 0]],  # labeled, on the box's corner: kept
            [[2.0, 2.0, 0], [7.0, 2.0, 2]],  # unlabeled inside, labeled outside: dropped
            [[11.0, 11.0, 2], [0.0, 0.0, 0]],  # kept
        ]
    )
    with EventStorage() as storage:
        kept = select_proposals_with_visible_keypoints([inst, inst[[]]])
        assert storage.history("keypoint_head/num_fg_samples").latest() == 2
    assert kept[0].proposal_boxes.tensor[:, 0].tolist() == [0.0, 10.0] and len(kept[1]) == 0


def _tiny_keypoint_cfg():
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("Base-RCNN-FPN.yaml"))
    cfg.merge_from_list(
        ["MODEL.KEYPOINT_ON", True, "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
         "MODEL.FPN.OUT_CHANNELS", 16, "MODEL.ROI_BOX_HEAD.FC_DIM", 16, "MODEL.ROI_HEADS.NUM_CLASSES", 2,
         "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", 3, "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", (8,),
         "MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION", 4, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16]
    )  # fmt: skip
    return cfg


def test_keypoint_rcnn_trains_and_predicts_keypoints_at_the_original_size():
    torch.manual_seed(0)
    model = build_model(_tiny_keypoint_cfg())
    assert "roi_heads.keypoint_head.score_lowres.weight" in model.state_dict()
    inst = Instances((64, 64))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 40.0, 40.0]]))
    inst.gt_classes = torch.tensor([1])
    inst.gt_keypoints = Keypoints([[[12.0, 12.0, 2], [38.0, 12.0, 2], [30.0, 30.0, 0]]])
    image = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
    with EventStorage():
        losses = model([{"image": image, "instances": inst}])
    # The gt box is among the proposals, so some RoI holds a labeled keypoint: a positive loss.
    assert set(losses) >= {"loss_keypoint", "loss_cls", "loss_box_reg"} and losses["loss_keypoint"].item() > 0
    sum(losses.values()).backward()
    assert model.roi_heads.keypoint_head.conv_fcn1.weight.grad is not None

    model.eval()
    with torch.no_grad():
        out = model([{"image": image, "height": 128, "width": 96}])[0]["instances"]
        raw = model.roi_heads.forward_with_given_boxes(
            model.backbone(model.preprocess_image([{"image": image}]).tensor),
            [
                Instances(
                    (64, 64), pred_boxes=Boxes(torch.tensor([[8.0, 4.0, 40.0, 36.0]])), pred_classes=torch.tensor([0])
                )
            ],
        )[0]
    assert out.pred_keypoints.shape[1:] == (3, 3) and len(out) > 0
    # The keypoints of a given box lie in it; rescaling to 96 x 128 scales x by 1.5, y by 2.
    kpts = raw.pred_keypoints
    assert ((kpts[..., 0] >= 8) & (kpts[..., 0] <= 40) & (kpts[..., 1] >= 4) & (kpts[..., 1] <= 36)).all()
    scaled = detector_postprocess(raw, 128, 96).pred_keypoints
    torch.testing.assert_close(scaled, kpts * torch.tensor([1.5, 2.0, 1.0]))


def test_inference_without_detections_gives_empty_keypoints():
    head = _head().eval()
    empty = Instances((10, 10), pred_boxes=Boxes(torch.zeros(0, 4)), pred_classes=torch.zeros(0, dtype=torch.int64))
    (out,) = head(torch.zeros(0, 4, 7, 7), [empty])
    assert out.pred_keypoints.shape == (0, 3, 3) and out.pred_keypoint_heatmaps.shape == (0, 3, 28, 28)
