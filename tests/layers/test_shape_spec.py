import pytest

from detlib.layers import ShapeSpec, select_features

SHAPES = {"p2": ShapeSpec(channels=8, stride=4), "p3": ShapeSpec(channels=8, stride=8)}


def test_select_features_keeps_the_asked_order():
    assert [s.stride for s in select_features(SHAPES, ["p3", "p2"], "MODEL.RPN.IN_FEATURES")] == [8, 4]


def test_a_missing_feature_names_the_key_and_the_available_features():
    with pytest.raises(ValueError, match=r"MODEL.RPN.IN_FEATURES \['p7'\] .*\['p2', 'p3'\]"):
        select_features(SHAPES, ["p2", "p7"], "MODEL.RPN.IN_FEATURES")
