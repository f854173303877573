"""Fast R-CNN on precomputed proposals (PROPOSAL_GENERATOR.NAME PrecomputedProposals): no RPN, the RoI heads run on
the proposals each input carries."""

import torch

from detlib import model_zoo
from detlib.config import get_cfg
from detlib.modeling import build_model
from detlib.structures import Boxes, Instances
from detlib.utils.events import EventStorage

PROPOSALS = torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 90.0, 60.0], [50.0, 30.0, 120.0, 90.0]])


def _inputs(with_gt: bool):
    proposals = Instances((96, 128), proposal_boxes=Boxes(PROPOSALS.clone()), objectness_logits=torch.zeros(3))
    item = {"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8), "proposals": proposals}
    if with_gt:
        item["instances"] = Instances(
            (96, 128), gt_boxes=Boxes(torch.tensor([[30.0, 12.0, 88.0, 58.0]])), gt_classes=torch.tensor([1])
        )
    return [item]


def test_fast_rcnn_runs_its_heads_on_the_given_proposals():
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64])
    cfg.merge_from_list(["MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0])
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.proposal_generator is None

    with EventStorage():
        losses = model.train()(_inputs(with_gt=True))
    assert set(losses) == {"loss_cls", "loss_box_reg"}  # no RPN, so no RPN losses

    # With zero box deltas every detection is one of the proposals: they, not anchors, are what the heads refine.
    torch.nn.init.zeros_(model.roi_heads.box_predictor.bbox_pred.weight)
    torch.nn.init.zeros_(model.roi_heads.box_predictor.bbox_pred.bias)
    with torch.no_grad():
        (result,) = model.eval()(_inputs(with_gt=False))
    boxes = result["instances"].pred_boxes.tensor
    assert len(boxes) == 3 * 3  # every proposal, for each of the 3 classes (score threshold 0, NMS within a class)
    assert all(any(torch.allclose(box, p, atol=1e-3) for p in PROPOSALS) for box in boxes)
