"""Matching predictions (anchors, proposals) to ground truth by a quality such as IoU."""

from typing import List, Tuple

import torch

__all__ = ["Matcher"]


class Matcher:
    """
    Assigns each prediction the ground-truth element it overlaps most, and a label from the quality
    of that best match: the thresholds cut [-inf, inf) into intervals, each with its label,
    1 (positive), 0 (negative) or -1 (ignore).

    With thresholds [0.3, 0.7] and labels [0, -1, 1]: best IoU < 0.3 is negative, 0.3 <= IoU < 0.7
    ignored, IoU >= 0.7 positive.
    """

    def __init__(self, thresholds: List[float], labels: List[int], allow_low_quality_matches: bool = False):
        """
        Args:
            thresholds: increasing interval boundaries, the first > 0.
            labels: one label in {-1, 0, 1} per interval, so len(thresholds) + 1 of them.
            allow_low_quality_matches: also label positive, for every gt, the predictions that have
                its highest quality (ties included) even if below the positive threshold, so that no
                gt is left without a positive (Faster R-CNN, sec. 3.1.2).
        """
        thresholds = list(thresholds)
        if not thresholds or thresholds[0] <= 0:
            raise ValueError(f"Matcher thresholds must be non-empty with the first > 0, got {thresholds}")
        if any(low > high for low, high in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"Matcher thresholds must be non-decreasing, got {thresholds}")
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"Matcher labels must be -1, 0 or 1, got {list(labels)}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"Matcher needs one label per interval: {len(thresholds)} thresholds make "
                f"{len(thresholds) + 1} intervals, got {len(labels)} labels"
            )
        self.thresholds = [-float("inf")] + thresholds + [float("inf")]
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            match_quality_matrix: M x N, the quality (>= 0, e.g. IoU) of gt m and prediction n.
        Returns:
            matches: int64 (N,), the gt index matched to each prediction (0 when there is no gt).
            match_labels: int8 (N,), the label of each prediction.
        """
        if match_quality_matrix.dim() != 2:
            raise ValueError(f"Matcher takes an M x N quality matrix, got shape {tuple(match_quality_matrix.shape)}")
        num_predictions = match_quality_matrix.shape[1]
        if match_quality_matrix.shape[0] == 0:
            # No gt: every prediction falls in the lowest interval.
            matches = match_quality_matrix.new_zeros((num_predictions,), dtype=torch.int64)
            match_labels = match_quality_matrix.new_full((num_predictions,), self.labels[0], dtype=torch.int8)
            return matches, match_labels
        torch._assert_async((match_quality_matrix >= 0).all(), "Matcher: match qualities must be >= 0")

        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = matches.new_ones(matches.shape, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            match_labels.masked_fill_((matched_vals >= low) & (matched_vals < high), label)

        if self.allow_low_quality_matches:
            self.set_low_quality_matches_(match_labels, match_quality_matrix)
        return matches, match_labels

    def set_low_quality_matches_(self, match_labels: torch.Tensor, match_quality_matrix: torch.Tensor) -> None:
        """
        Label positive, in place, every prediction that has the highest quality of some gt. The
        prediction keeps its own best match in `matches`, which may be another gt.

        As in Detectron2, a gt that overlaps no prediction at all (highest quality 0) makes every
        prediction positive that has quality 0 with it: gt boxes must be non-empty (the data
        pipeline drops empty ones).
        """
        highest_quality_foreach_gt = match_quality_matrix.max(dim=1).values
        is_best_for_some_gt = (match_quality_matrix == highest_quality_foreach_gt[:, None]).any(dim=0)
        match_labels.masked_fill_(is_best_for_some_gt, 1)
