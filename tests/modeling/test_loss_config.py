"""Losses built from a head's config node: Detectron2's own keys set the parameters they name, and only there."""

import pytest

from detlib.config import get_cfg
from detlib.modeling.loss_config import box_loss_from_config, cls_loss_from_config


def test_box_loss_from_config_takes_beta_from_smooth_l1_beta_only():
    cfg = get_cfg()
    cfg.MODEL.RPN.SMOOTH_L1_BETA = 0.3
    assert box_loss_from_config(cfg.MODEL.RPN, "MODEL.RPN").params == {"beta": 0.3}
    cfg.MODEL.RPN.BBOX_REG_LOSS_TYPE = "giou"
    assert box_loss_from_config(cfg.MODEL.RPN, "MODEL.RPN").params == {"eps": 1e-7}  # beta means nothing to giou
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_PARAMS.beta = 0.5
    with pytest.raises(ValueError, match=r"MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_PARAMS sets beta.*SMOOTH_L1_BETA"):
        box_loss_from_config(cfg.MODEL.ROI_BOX_HEAD, "MODEL.ROI_BOX_HEAD")


def test_cls_loss_from_config_takes_alpha_gamma_from_detectron2_keys_where_the_node_has_them():
    cfg = get_cfg()
    cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA, cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 0.3, 1.5
    assert cls_loss_from_config(cfg.MODEL.RETINANET, "MODEL.RETINANET").params == {"alpha": 0.3, "gamma": 1.5}
    cfg.MODEL.RETINANET.CLS_LOSS_TYPE = "cross_entropy"  # takes neither: they are not passed
    assert "alpha" not in cls_loss_from_config(cfg.MODEL.RETINANET, "MODEL.RETINANET").params
    cfg.MODEL.RPN.CLS_LOSS_TYPE = "focal"  # the RPN's node has no FOCAL_LOSS_* keys: its params decide
    cfg.MODEL.RPN.CLS_LOSS_PARAMS.gamma = 3.0
    assert cls_loss_from_config(cfg.MODEL.RPN, "MODEL.RPN").params["gamma"] == 3.0
    cfg.MODEL.RETINANET.CLS_LOSS_TYPE = "focal"
    cfg.MODEL.RETINANET.CLS_LOSS_PARAMS.gamma = 3.0
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.CLS_LOSS_PARAMS sets gamma.*FOCAL_LOSS_GAMMA"):
        cls_loss_from_config(cfg.MODEL.RETINANET, "MODEL.RETINANET")
