"""Res5ROIHeads (the C4 models): res5 on pooled res4 features as the box head, its output shared by the mask head."""

import pytest
import torch

from detlib import model_zoo
from detlib.config import get_cfg
from detlib.modeling import build_model
from detlib.modeling.roi_heads import Res5ROIHeads, select_foreground_proposals
from detlib.structures import BitMasks, Boxes, Instances
from detlib.utils.events import EventStorage


def _c4_mask_rcnn():
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64])
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 40])
    cfg.merge_from_list(["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64, "MODEL.RPN.POST_NMS_TOPK_TEST", 20])
    torch.manual_seed(0)
    return build_model(cfg)


def _inputs():
    g = torch.Generator().manual_seed(0)
    instances = Instances((96, 128))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 70.0, 80.0], [60.0, 20.0, 120.0, 60.0]]))
    instances.gt_classes = torch.tensor([0, 2])
    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks[0, 20:70, 15:60] = True
    masks[1, 25:55, 65:115] = True
    instances.gt_masks = BitMasks(masks)
    image = torch.randint(0, 256, (3, 96, 128), generator=g, dtype=torch.uint8)
    return [{"image": image, "instances": instances}]


def test_c4_config_builds_res5_in_the_roi_heads_on_res4():
    model = _c4_mask_rcnn()
    assert isinstance(model.roi_heads, Res5ROIHeads)
    assert list(model.backbone.output_shape()) == ["res4"] and not hasattr(model.backbone, "res5")
    assert model.roi_heads.pooler.output_size == (14, 14)
    # res5 of ResNet-18's widths: 256 -> 512 channels, stride 2; the predictor and mask head read 512 channels.
    assert model.roi_heads.res5[0].conv1.weight.shape[1] == 256 and model.roi_heads.res5[0].stride == 2
    assert model.roi_heads.box_predictor.cls_score.in_features == 512
    assert model.roi_heads.mask_head.deconv.in_channels == 512


def test_mask_loss_is_taken_on_the_res5_features_of_the_foreground_proposals():
    model = _c4_mask_rcnn().train()
    batched = _inputs()
    with EventStorage():
        torch.manual_seed(1)
        losses = model(batched)
        # The same step by hand: the sampled proposals of this seed, their foreground, res5 on their pooled res4.
        torch.manual_seed(1)
        images = model.preprocess_image(batched)
        features = model.backbone(images.tensor)
        gt = [batched[0]["instances"]]
        proposals, _ = model.proposal_generator(images, features, gt)
        heads = model.roi_heads
        sampled = heads.label_and_sample_proposals(proposals, gt)
        foreground, _ = select_foreground_proposals(sampled, heads.num_classes)
        pooled = heads.pooler([features["res4"]], [p.proposal_boxes for p in foreground])
        expected = heads.mask_head.loss(heads.mask_head.layers(heads.res5(pooled)), foreground)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    assert len(foreground[0]) > 0
    torch.testing.assert_close(losses["loss_mask"], expected["loss_mask"])


def test_inference_masks_come_from_the_detections_boxes():
    model = _c4_mask_rcnn().eval()
    with torch.no_grad():
        (result,) = model.inference(_inputs(), do_postprocess=False)
        again = model.roi_heads.forward_with_given_boxes(
            model.backbone(model.preprocess_image(_inputs()).tensor), [result[[0, 1]]]
        )
    assert len(result) > 1 and result.pred_masks.shape[1:] == (1, 14, 14)
    torch.testing.assert_close(again[0].pred_masks, result.pred_masks[:2])


def test_keypoints_are_refused_with_the_setting_named():
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.KEYPOINT_ON = True
    with pytest.raises(ValueError, match="KEYPOINT_ON"):
        build_model(cfg)


def test_the_shapes_c4_config_trains_a_step_with_a_narrow_res5():
    cfg = get_cfg()
    cfg.merge_from_file(str(model_zoo.get_config_file("Shapes/mask_rcnn_c4_shapes.yaml")))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    # The basic-block trunk ignores WIDTH_PER_GROUP; res5 in the head reads it: 16 * 8 = 128 wide inside.
    assert model.roi_heads.res5[0].conv2.out_channels == 128 and model.roi_heads.res5[-1].conv3.out_channels == 512
    assert list(model.backbone.output_shape()) == ["res4"]
    with EventStorage(0):
        losses = model(_inputs())
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    sum(losses.values()).backward()
    assert model.roi_heads.res5[0].conv2.weight.grad.abs().sum() > 0
