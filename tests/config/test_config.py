from pathlib import Path

import pytest
import yaml

from detlib.config import CfgNode, ConfigKeyError, get_cfg

PACKAGED_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _leaf_keys(node: dict, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaf_keys(value, prefix + key + ".")
        else:
            yield prefix + key


def _lookup(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _as_lists(value):
    """YAML has no tuples; compare values the way a YAML file holds them."""
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_detectron2_full_dump_merges_and_every_value_arrives(d2_case):
    config_file = d2_case / "config.yaml"
    cfg = get_cfg()
    cfg.merge_from_file(str(config_file))

    dumped = yaml.safe_load(config_file.read_text())
    dumped_keys = set(_leaf_keys(dumped))
    assert dumped_keys <= set(_leaf_keys(cfg)), "detlib lacks keys of a Detectron2 dump"
    for key in dumped_keys:
        assert _as_lists(_lookup(cfg, key)) == _lookup(dumped, key), key
    # Spot checks of values that differ from the defaults.
    assert cfg.MODEL.RESNETS.DEPTH == 18
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[32], [64], [128], [256], [512]]
    assert cfg.INPUT.MIN_SIZE_TRAIN == (320,)
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS is None


def test_defaults_are_detectron2s():
    cfg = get_cfg()
    assert cfg.VERSION == 2
    assert cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN == 12000
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TEST == 1000
    assert cfg.MODEL.RPN.BBOX_REG_WEIGHTS == (1.0, 1.0, 1.0, 1.0)
    assert cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS == (10.0, 10.0, 5.0, 5.0)
    assert cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 512
    assert cfg.SOLVER.WARMUP_FACTOR == pytest.approx(0.001)
    assert cfg.INPUT.MAX_SIZE_TRAIN == 1333
    # detlib's own keys
    assert cfg.DATALOADER.SKIP_BAD_SAMPLES is False
    assert dict(cfg.MODEL.LOSS_WEIGHTS) == {}
    assert cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS_WEIGHTS == []
    assert cfg.SOLVER.OPTIMIZER == "SGD"
    assert cfg.SOLVER.AMP.PRECISION == "float16"


def test_get_cfg_returns_independent_copies():
    a = get_cfg()
    a.MODEL.RESNETS.DEPTH = 101
    assert get_cfg().MODEL.RESNETS.DEPTH == 50


def test_base_inheritance_with_relative_paths(tmp_path):
    _write(
        tmp_path / "Base.yaml",
        "MODEL:\n  RPN:\n    NMS_THRESH: 0.6\n    POST_NMS_TOPK_TEST: 500\nSOLVER:\n  STEPS: (10, 20)\n",
    )
    _write(tmp_path / "mid" / "Mid.yaml", '_BASE_: "../Base.yaml"\nMODEL:\n  RPN:\n    NMS_THRESH: 0.65\n')
    child = _write(
        tmp_path / "mid" / "leaf" / "child.yaml",
        '_BASE_: "../Mid.yaml"\nMODEL:\n  RPN:\n    POST_NMS_TOPK_TEST: 300\n  MASK_ON: True\n',
    )
    cfg = get_cfg()
    cfg.merge_from_file(child)
    assert cfg.MODEL.RPN.NMS_THRESH == 0.65  # mid overrides base
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TEST == 300  # child overrides base
    assert cfg.MODEL.MASK_ON is True
    assert cfg.SOLVER.STEPS == (10, 20)  # from the base, string parsed as a tuple


def test_packaged_configs_load():
    cfg = get_cfg()
    cfg.merge_from_file(str(PACKAGED_CONFIGS / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_1x.yaml"))
    assert cfg.MODEL.MASK_ON is True
    assert cfg.MODEL.RESNETS.DEPTH == 50
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
    assert cfg.MODEL.RPN.IN_FEATURES == ["p2", "p3", "p4", "p5", "p6"]


def test_typo_in_file_names_key_file_and_suggestion(tmp_path):
    path = _write(tmp_path / "foo.yaml", "MODEL:\n  RPN:\n    NMS_THRES: 0.5\n")
    with pytest.raises(ConfigKeyError) as err:
        get_cfg().merge_from_file(path)
    message = str(err.value)
    assert "'MODEL.RPN.NMS_THRES'" in message
    assert "foo.yaml" in message
    assert "did you mean 'MODEL.RPN.NMS_THRESH'?" in message


def test_typo_in_group_name_suggests_full_key(tmp_path):
    path = _write(tmp_path / "bar.yaml", "MODEL:\n  ROI_HEAD:\n    NUM_CLASSES: 3\n")
    with pytest.raises(KeyError, match=r"did you mean 'MODEL.ROI_HEADS.NUM_CLASSES'\?"):
        get_cfg().merge_from_file(path)


def test_version_1_config_is_rejected(tmp_path):
    path = _write(tmp_path / "old.yaml", "VERSION: 1\nMODEL:\n  MASK_ON: True\n")
    with pytest.raises(ValueError, match="version-1"):
        get_cfg().merge_from_file(path)


def test_loss_weights_accept_new_names_from_yaml_and_cli(tmp_path):
    path = _write(tmp_path / "w.yaml", 'MODEL:\n  LOSS_WEIGHTS: {"loss_mask": 2.0}\n')
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.LOSS_WEIGHTS.loss_cls", "0.5"])
    assert dict(cfg.MODEL.LOSS_WEIGHTS) == {"loss_mask": 2.0, "loss_cls": 0.5}
    # Other groups stay closed.
    with pytest.raises(KeyError):
        cfg.merge_from_list(["MODEL.RPN.NEW_KEY", "1"])


def test_merge_from_list_parses_and_type_checks():
    cfg = get_cfg()
    cfg.merge_from_list(
        ["SOLVER.BASE_LR", "0.01", "SOLVER.STEPS", "(100, 200)", "MODEL.MASK_ON", "True", "OUTPUT_DIR", "/tmp/x"]
    )
    assert cfg.SOLVER.BASE_LR == 0.01
    assert cfg.SOLVER.STEPS == (100, 200)
    assert cfg.MODEL.MASK_ON is True
    assert cfg.OUTPUT_DIR == "/tmp/x"
    # An int where a float is expected is widened, not rejected.
    cfg.merge_from_list(["SOLVER.BASE_LR", "1"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    with pytest.raises(ValueError, match="SOLVER.MAX_ITER"):
        cfg.merge_from_list(["SOLVER.MAX_ITER", "many"])
    with pytest.raises(ConfigKeyError, match=r"'SOLVER.MAXITER'.*did you mean 'SOLVER.MAX_ITER'"):
        cfg.merge_from_list(["SOLVER.MAXITER", "10"])
    with pytest.raises(ValueError, match="odd length"):
        cfg.merge_from_list(["SOLVER.MAX_ITER"])


def test_dump_round_trips(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.LOSS_WEIGHTS.loss_mask", "2.0", "SOLVER.STEPS", "(5,)", "SEED", "7"])
    path = _write(tmp_path / "dump.yaml", cfg.dump())
    reloaded = get_cfg()
    reloaded.merge_from_file(path)
    assert yaml.safe_load(reloaded.dump()) == yaml.safe_load(cfg.dump())


def test_frozen_config_rejects_changes():
    cfg = get_cfg()
    cfg.freeze()
    with pytest.raises(AttributeError):
        cfg.SEED = 3
    assert isinstance(cfg.clone(), CfgNode)
