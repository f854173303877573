import copy
import pickle

import pytest

from detlib.data import DatasetCatalog, Metadata, MetadataCatalog


def test_dataset_catalog_calls_the_registered_function_on_every_get():
    calls = []
    DatasetCatalog.register("cat_test", lambda: calls.append(1) or [{"image_id": len(calls)}])
    try:
        assert DatasetCatalog.get("cat_test") == [{"image_id": 1}]
        assert DatasetCatalog.get("cat_test") == [{"image_id": 2}]
        assert "cat_test" in DatasetCatalog.list()
        with pytest.raises(KeyError, match="already registered"):
            DatasetCatalog.register("cat_test", lambda: [])
    finally:
        DatasetCatalog.remove("cat_test")
    with pytest.raises(KeyError, match="'cat_test' is not registered"):
        DatasetCatalog.get("cat_test")
    with pytest.raises(TypeError):
        DatasetCatalog.register("cat_test", [])


def test_metadata_attributes_are_set_once():
    meta = MetadataCatalog.get("meta_test")
    try:
        assert MetadataCatalog.get("meta_test") is meta
        meta.set(thing_classes=["a", "b"])
        meta.thing_classes = ["a", "b"]  # same value: fine
        with pytest.raises(AssertionError, match="thing_classes"):
            meta.thing_classes = ["b", "a"]
        with pytest.raises(AttributeError, match="'thing_colors' does not exist .* 'meta_test'"):
            meta.thing_colors
        assert meta.get("thing_colors", "default") == "default"
        assert meta.as_dict() == {"name": "meta_test", "thing_classes": ["a", "b"]}
    finally:
        MetadataCatalog.remove("meta_test")


def test_metadata_copies_and_pickles():
    meta = Metadata(name="m").set(thing_classes=["x"])
    for clone in (copy.deepcopy(meta), pickle.loads(pickle.dumps(meta))):
        assert clone.name == "m" and clone.thing_classes == ["x"]
