"""faster-coco-eval's COCOeval with a cheaper OKS reduction.

pycocotools sums each (detection, ground truth) pair's per-keypoint similarities with its own `np.sum` of a
one-dimensional row, and faster-coco-eval keeps that to stay bit-identical: at 100 detections per image those
calls are most of keypoint evaluation, the greater part of each spent in `np.sum`'s Python wrapper. Here each
row goes straight to `np.add.reduce`, the ufunc that `np.sum` calls, so the summation and its rounding are
unchanged. (Reducing the detections x keypoints array along axis 1 is not: numpy may then add the columns one
after another instead of summing each row pairwise, one unit in the last place away.)
"""

import faster_coco_eval
import numpy as np


class COCOevalFasterOks(faster_coco_eval.COCOeval_faster):
    """`faster_coco_eval.COCOeval_faster` whose `computeOks` reduces each row with `np.add.reduce` directly."""

    def computeOks(self, imgId: int, catId: int):
        """OKS of each detection (rows, highest score first, at most maxDets) with each ground-truth object, as
        pycocotools defines it: squared keypoint distances over the object's area and each keypoint's
        (2 sigma)^2, averaged over the labelled keypoints; for an object without labelled keypoints, the
        distances to its box grown by its size on every side."""
        gts = self.gt_dataset.get(imgId, catId)
        dts = self.dt_dataset.get(imgId, catId)
        if not gts or not dts:
            return []
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")[: self.params.maxDets[-1]]
        detections = np.asarray([dts[i]["keypoints"] for i in order], dtype=np.float64)
        xd, yd = detections[:, 0::3], detections[:, 1::3]
        variances = (np.asarray(self.params.kpt_oks_sigmas) * 2) ** 2
        add = np.add.reduce
        oks = np.zeros((len(order), len(gts)))
        for j, gt in enumerate(gts):
            truth = np.asarray(gt["keypoints"], dtype=np.float64)
            labelled = truth[2::3] > 0
            x, y, w, h = gt["bbox"]
            if labelled.any():
                dx, dy = xd - truth[0::3], yd - truth[1::3]
            else:
                dx = np.maximum(0.0, (x - w) - xd) + np.maximum(0.0, xd - (x + w * 2))
                dy = np.maximum(0.0, (y - h) - yd) + np.maximum(0.0, yd - (y + h * 2))
            area = gt["area"] if self.use_area else h * w * 0.53
            e = (dx**2 + dy**2) / variances / (area + np.spacing(1)) / 2
            if labelled.any():
                e = e[:, labelled]
            oks[:, j] = [add(row) / row.shape[0] for row in np.exp(-e)]
        return oks
