import torch

from detlib.modeling.sampling import subsample_labels


def _labels(num_pos, num_neg, num_ignored, bg_label=0):
    labels = torch.cat([torch.ones(num_pos), torch.full((num_neg,), bg_label), torch.full((num_ignored,), -1)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))].long()


def _check(labels, pos_idx, neg_idx, bg_label, num_pos, num_neg):
    assert pos_idx.numel() == num_pos and neg_idx.numel() == num_neg
    assert len(set(pos_idx.tolist())) == num_pos and len(set(neg_idx.tolist())) == num_neg
    assert ((labels[pos_idx] != -1) & (labels[pos_idx] != bg_label)).all()
    assert (labels[neg_idx] == bg_label).all()


def test_fraction_respected():
    labels = _labels(10, 20, 5)
    pos_idx, neg_idx = subsample_labels(labels, num_samples=16, positive_fraction=0.25, bg_label=0)
    _check(labels, pos_idx, neg_idx, 0, num_pos=4, num_neg=12)  # int(16 * 0.25) = 4


def test_few_positives_filled_with_negatives():
    labels = _labels(2, 20, 5)
    pos_idx, neg_idx = subsample_labels(labels, num_samples=16, positive_fraction=0.5, bg_label=0)
    _check(labels, pos_idx, neg_idx, 0, num_pos=2, num_neg=14)


def test_too_few_of_both():
    labels = _labels(2, 3, 5)
    pos_idx, neg_idx = subsample_labels(labels, num_samples=16, positive_fraction=0.5, bg_label=0)
    _check(labels, pos_idx, neg_idx, 0, num_pos=2, num_neg=3)


def test_class_labels_with_background_last():
    # Second-stage style: classes 0..2 are foreground, 3 is background.
    labels = torch.tensor([0, 1, 2, 3, 3, 3, -1])
    pos_idx, neg_idx = subsample_labels(labels, num_samples=4, positive_fraction=0.5, bg_label=3)
    _check(labels, pos_idx, neg_idx, 3, num_pos=2, num_neg=2)


def test_sample_is_random():
    labels = _labels(50, 0, 0)
    draws = {tuple(sorted(subsample_labels(labels, 10, 1.0, 0)[0].tolist())) for _ in range(5)}
    assert len(draws) > 1
