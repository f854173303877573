"""Data structures shared by the data pipeline and the model: boxes, instances, image batches, masks."""

from .boxes import Boxes, BoxMode, matched_pairwise_iou, pairwise_intersection, pairwise_ioa, pairwise_iou
from .image_list import ImageList
from .instances import Instances
from .keypoints import Keypoints, heatmaps_to_keypoints, keypoints_to_heatmap
from .masks import BitMasks, PolygonMasks, polygons_to_bitmask

__all__ = [k for k in globals().keys() if not k.startswith("_")]
