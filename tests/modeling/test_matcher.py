import pytest
import torch

from detlib.modeling.matcher import Matcher

# 2 gt x 5 predictions. Best gt per prediction: 0.5 (gt1), 0.8 (gt0), 0.45 (gt1), 0.1 (gt1), 0.5 (gt1).
IOU = torch.tensor([[0.1, 0.8, 0.35, 0.0, 0.0], [0.5, 0.2, 0.45, 0.1, 0.5]])


def test_labels_by_threshold():
    matcher = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=False)
    matches, labels = matcher(IOU)
    assert matches.dtype == torch.int64 and labels.dtype == torch.int8
    assert matches.tolist() == [1, 0, 1, 1, 1]
    assert labels.tolist() == [-1, 1, -1, 0, -1]


def test_low_quality_matches():
    # gt1's highest IoU is 0.5, reached by predictions 0 and 4 (a tie): both become positive.
    # gt0's best (prediction 1) is positive anyway. Matches are unchanged.
    matcher = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)
    matches, labels = matcher(IOU)
    assert matches.tolist() == [1, 0, 1, 1, 1]
    assert labels.tolist() == [1, 1, -1, 0, 1]


def test_single_threshold_and_boundaries():
    # ROI-head style: IoU < 0.5 background, >= 0.5 foreground; the boundary belongs to the upper interval.
    matcher = Matcher([0.5], [0, 1])
    _, labels = matcher(torch.tensor([[0.49, 0.5, 0.51]]))
    assert labels.tolist() == [0, 1, 1]


def test_no_gt():
    matches, labels = Matcher([0.3, 0.7], [0, -1, 1], True)(torch.zeros(0, 3))
    assert matches.tolist() == [0, 0, 0]
    assert labels.tolist() == [0, 0, 0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="first > 0"):
        Matcher([0.0, 0.7], [0, -1, 1])
    with pytest.raises(ValueError, match="non-decreasing"):
        Matcher([0.7, 0.3], [0, -1, 1])
    with pytest.raises(ValueError, match="one label per interval"):
        Matcher([0.3, 0.7], [0, 1])
    with pytest.raises(ValueError, match="-1, 0 or 1"):
        Matcher([0.5], [0, 2])
    with pytest.raises(RuntimeError, match=">= 0"):
        Matcher([0.5], [0, 1])(torch.tensor([[-0.1]]))
