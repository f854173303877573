"""The builtin dataset names, their metadata, and the error a dataset without its files gives."""

import ast
import collections
import json
import os
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, Set, Tuple

import pytest

from detlib.config.yaml_loader import load_yaml
from detlib.data import DatasetCatalog, MetadataCatalog
from detlib.data.datasets import builtin
from detlib.data.datasets.builtin_meta import COCO_CATEGORIES, lvis_metadata

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("DETLIB_SHARED_DIR", REPO / ".." / "shared"))
PEER_WHEEL = SHARED / "peers" / "detectron2-0.6-cp311-cp311-linux_x86_64.whl"
VITDET_CONFIGS = SHARED / "peers" / "detectron2-ViTDet-configs"
REALDATA = SHARED / "realdata"


def _names_in_yaml(text: str, path: str) -> Set[str]:
    datasets = (load_yaml(text, path) or {}).get("DATASETS") or {}
    names = set()
    for key in ("TRAIN", "TEST"):
        value = datasets.get(key) or ()
        if isinstance(value, str):  # a Python literal, as the config system reads it: '("a", "b")'
            value = ast.literal_eval(value)
        names |= {value} if isinstance(value, str) else set(value)
    return names


def _names_in_python(text: str) -> Set[str]:
    """String constants a Python config assigns to a `names` attribute or passes as `names=`."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        values = []
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Attribute) and t.attr == "names" for t in node.targets
        ):
            values.append(node.value)
        if isinstance(node, ast.Call):
            values += [kw.value for kw in node.keywords if kw.arg == "names"]
        for value in values:
            items = value.elts if isinstance(value, (ast.Tuple, ast.List)) else [value]
            found |= {v.value for v in items if isinstance(v, ast.Constant) and isinstance(v.value, str)}
    return found


def _names_in_configs(files: Iterable[Tuple[str, str]]) -> Set[str]:
    names = set()
    for path, text in files:
        names |= _names_in_yaml(text, path) if path.endswith(".yaml") else _names_in_python(text)
    return names


def _directory_configs(root: Path) -> Iterator[Tuple[str, str]]:
    for path in sorted(root.rglob("*")):
        if path.suffix in (".yaml", ".py"):
            yield str(path), path.read_text()


def _wheel_configs(wheel: Path) -> Iterator[Tuple[str, str]]:
    with zipfile.ZipFile(wheel) as archive:
        for entry in archive.namelist():
            if entry.startswith("detectron2/model_zoo/configs/") and entry.endswith((".yaml", ".py")):
                yield entry, archive.read(entry).decode()


def _assert_registered(names: Set[str]) -> None:
    unknown = sorted(n for n in names if n not in DatasetCatalog.list())
    assert not unknown, f"dataset names used by configs but not registered: {unknown}"


def test_every_dataset_name_in_the_repository_configs_is_registered():
    names = _names_in_configs(_directory_configs(REPO / "configs"))
    assert {"coco_2017_train", "shapes_train"} <= names  # the walk finds the names it must check
    _assert_registered(names)


def test_every_dataset_name_in_detectron2s_configs_is_registered():
    if not PEER_WHEEL.is_file():
        pytest.skip(f"Detectron2's wheel (its model-zoo configs) is not at {PEER_WHEEL}")
    names = _names_in_configs(_wheel_configs(PEER_WHEEL))
    if VITDET_CONFIGS.is_dir():
        names |= _names_in_configs(_directory_configs(VITDET_CONFIGS))
    names = {n for n in names if "://" not in n}  # proposal files, not dataset names
    # The families the zoo's 59 YAML and its Python configs use, all present:
    for expected in ("lvis_v1_val", "coco_2017_val_panoptic_separated", "cityscapes_fine_instance_seg_val"):
        assert expected in names
    assert {"voc_2007_test", "keypoints_coco_2017_val_100", "coco_2017_val_100_panoptic_stuffonly"} <= names
    _assert_registered(names)


def test_names_in_python_configs_are_read_without_running_them():
    text = 'dataloader.train.dataset.names = "a"\nx = L(f)(names=("b", "c"))\nnames = "not an attribute"\n'
    assert _names_in_python(text) == {"a", "b", "c"}


@pytest.mark.parametrize(
    "name, evaluator_type",
    [
        ("coco_2014_minival", "coco"),
        ("keypoints_coco_2017_val_100", "coco"),
        ("lvis_v0.5_val", "lvis"),
        ("lvis_v1_train", "lvis"),
        ("coco_2017_val_panoptic_separated", "coco_panoptic_seg"),
        ("coco_2017_val_panoptic", "coco_panoptic_seg"),
        ("coco_2017_train_panoptic_stuffonly", "sem_seg"),
        ("cityscapes_fine_instance_seg_val", "cityscapes_instance"),
        ("cityscapes_fine_sem_seg_train", "cityscapes_sem_seg"),
        ("voc_2007_test", "pascal_voc"),
        ("voc_2012_trainval", "pascal_voc"),
        ("ade20k_sem_seg_val", "sem_seg"),
    ],
)
def test_each_builtin_dataset_says_which_evaluator_scores_it(name, evaluator_type):
    assert MetadataCatalog.get(name).evaluator_type == evaluator_type


def test_metadata_sizes_match_the_datasets():
    assert len(MetadataCatalog.get("coco_2017_val").thing_classes) == 80
    separated = MetadataCatalog.get("coco_2017_val_panoptic_separated")
    assert len(separated.stuff_classes) == 54 and separated.stuff_classes[0] == "things"
    assert separated.stuff_dataset_id_to_contiguous_id[0] == 0
    assert len(MetadataCatalog.get("coco_2017_val_panoptic").thing_classes) == 133
    assert len(MetadataCatalog.get("ade20k_sem_seg_train").stuff_classes) == 150
    assert MetadataCatalog.get("ade20k_sem_seg_train").ignore_label == 255
    city = MetadataCatalog.get("cityscapes_fine_sem_seg_val")
    assert len(city.thing_classes) == 8 and len(city.stuff_classes) == 19
    assert len(MetadataCatalog.get("voc_2007_test").thing_classes) == 20
    assert MetadataCatalog.get("voc_2007_test").year == 2007
    assert (
        MetadataCatalog.get("lvis_v0.5_val_cocofied").thing_classes
        == MetadataCatalog.get("coco_2017_val").thing_classes
    )


def test_lvis_v1_image_counts_agree_with_the_frequency_groups():
    """LVIS v1 groups a class as rare (1-10 training images), common (11-100) or frequent (> 100)."""
    meta = lvis_metadata("v1")
    assert len(meta["thing_classes"]) == 1203
    counts = [c["image_count"] for c in meta["class_image_count"]]
    assert [c["id"] for c in meta["class_image_count"]] == list(range(1, 1204))
    bounds = {"r": (1, 10), "c": (11, 100), "f": (101, 10**9)}
    for count, freq in zip(counts, meta["class_frequency"]):
        low, high = bounds[freq]
        assert low <= count <= high, (count, freq)
    assert collections.Counter(meta["class_frequency"]) == {"r": 337, "c": 461, "f": 405}


def test_coco_and_lvis_v0_5_metadata_equal_the_real_annotation_files():
    coco_file, lvis_file = REALDATA / "instances_val2014_100.json", REALDATA / "lvis_val_100.json"
    if not (coco_file.is_file() and lvis_file.is_file()):
        pytest.skip(f"the real annotations are not in {REALDATA}")
    coco = json.loads(coco_file.read_text())["categories"]
    assert tuple((c["id"], c["name"]) for c in sorted(coco, key=lambda c: c["id"])) == COCO_CATEGORIES
    lvis = sorted(json.loads(lvis_file.read_text())["categories"], key=lambda c: c["id"])
    meta = lvis_metadata("v0.5")
    assert meta["thing_classes"] == [c["synonyms"][0] for c in lvis]
    assert meta["class_frequency"] == [c["frequency"] for c in lvis]


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    """The builtin datasets registered again under an empty root, set by $DETECTRON2_DATASETS."""
    monkeypatch.delenv("DETLIB_DATASETS", raising=False)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    assert builtin.datasets_root() == str(tmp_path)
    for name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    for name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    builtin.register_all(builtin.datasets_root())
    return tmp_path


@pytest.mark.parametrize(
    "name, missing",
    [
        ("lvis_v1_val", "lvis/lvis_v1_val.json"),
        ("coco_2017_val_panoptic_separated", "coco/annotations/instances_val2017.json"),
        ("voc_2007_test", "VOC2007/ImageSets/Main/test.txt"),
        ("cityscapes_fine_sem_seg_val", "cityscapes/leftImg8bit/val"),
        ("ade20k_sem_seg_train", "ADEChallengeData2016/annotations_detectron2/training"),
    ],
)
def test_a_missing_dataset_fails_when_used_naming_dataset_path_and_variable(empty_root, name, missing):
    with pytest.raises(FileNotFoundError) as error:
        DatasetCatalog.get(name)
    message = str(error.value)
    assert f"'{name}'" in message and str(empty_root / missing) in message
    assert "$DETECTRON2_DATASETS" in message and "DETLIB_DATASETS" in message


def test_detlib_variable_takes_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", "/elsewhere")
    monkeypatch.setenv("DETLIB_DATASETS", str(tmp_path))
    assert builtin.datasets_root() == str(tmp_path)
    monkeypatch.delenv("DETLIB_DATASETS")
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert builtin.datasets_root() == "datasets"
