"""DatasetMapper: one dataset record -> one model input dict."""

import copy
import logging
from typing import List, Optional, Sequence

import numpy as np
import torch

from detlib.config import configurable

from . import detection_utils as utils
from . import transforms as T
from .bad_samples import BadSampleError
from .proposals import transform_proposals

__all__ = ["DatasetMapper"]

logger = logging.getLogger(__name__)


class DatasetMapper:
    """
    Reads a record's image, augments it, and returns the model's input dict:
    `image` (uint8 C x H x W tensor in `image_format`, after the transforms), the record's other
    fields (`file_name`, `image_id`, original `height`/`width`), and in training `instances`
    (`gt_boxes` XYXY pixels in the transformed image, `gt_classes`, `gt_masks`, `gt_keypoints`).

    Crowd annotations are dropped. Masks follow `annotations_to_instances`: "polygon" keeps
    polygons where the whole image has them and uses bitmasks otherwise, so a dataset mixing
    polygons and RLE trains with either `instance_mask_format`.

    An unreadable image or one whose size disagrees with the record raises `BadSampleError`
    (naming file, image id and field), which the data loaders turn into a counted skip when asked to.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: Sequence[T.Augmentation],
        image_format: str,
        use_instance_mask: bool = False,
        instance_mask_format: str = "polygon",
        recompute_boxes: bool = False,
        use_keypoint: bool = False,
        keypoint_hflip_indices: Optional[Sequence[int]] = None,
        precomputed_proposal_topk: Optional[int] = None,
    ):
        """
        Args:
            is_train: keep and transform annotations (True), or drop them (inference).
            augmentations: applied in order to image and annotations.
            image_format: "BGR", "RGB" or "L" (see `read_image`).
            use_instance_mask: produce `gt_masks`.
            instance_mask_format: "polygon" or "bitmask".
            recompute_boxes: replace boxes by the masks' tight boxes (after a crop, the clipped
                original box no longer fits the object).
            use_keypoint: produce `gt_keypoints`.
            keypoint_hflip_indices: each keypoint's mirror image, for horizontal flips (see
                `detection_utils.create_keypoint_hflip_indices`).
            precomputed_proposal_topk: if set, turn the record's precomputed proposals (see
                `proposals.load_proposals_into_dataset`) into `proposals`, at most this many, transformed
                with the image (in training and inference).
        """
        if recompute_boxes and not use_instance_mask:
            raise ValueError("recompute_boxes needs use_instance_mask: boxes are recomputed from masks.")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.use_instance_mask = use_instance_mask
        self.instance_mask_format = instance_mask_format
        self.recompute_boxes = recompute_boxes
        # Only needed (and only checked) when a flip meets an annotation with keypoints.
        self.keypoint_hflip_indices = list(keypoint_hflip_indices) if keypoint_hflip_indices is not None else None
        self.use_keypoint = use_keypoint
        self.proposal_topk = precomputed_proposal_topk
        logger.info("DatasetMapper (%s) augmentations: %s", "train" if is_train else "inference", augmentations)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        augs: List[T.Augmentation] = utils.build_augmentation(cfg, is_train)
        crop = is_train and cfg.INPUT.CROP.ENABLED
        if crop:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        keypoint_on = cfg.MODEL.KEYPOINT_ON
        datasets = cfg.DATASETS
        topk = datasets.PRECOMPUTED_PROPOSAL_TOPK_TRAIN if is_train else datasets.PRECOMPUTED_PROPOSAL_TOPK_TEST
        return {
            "precomputed_proposal_topk": topk if cfg.MODEL.LOAD_PROPOSALS else None,
            "use_keypoint": keypoint_on,
            "keypoint_hflip_indices": utils.create_keypoint_hflip_indices(cfg.DATASETS.TRAIN) if keypoint_on else None,
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "use_instance_mask": cfg.MODEL.MASK_ON,
            "instance_mask_format": cfg.INPUT.MASK_FORMAT,
            "recompute_boxes": bool(crop and cfg.MODEL.MASK_ON),
        }

    def _read_image(self, dataset_dict: dict) -> np.ndarray:
        file_name = dataset_dict.get("file_name")
        where = f"{file_name}, image id {dataset_dict.get('image_id')}: field 'file_name'"
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except FileNotFoundError as e:
            raise BadSampleError(f"{where} names a missing file.") from e
        except (OSError, ValueError) as e:
            raise BadSampleError(f"{where} is not a decodable image ({e}).") from e
        utils.check_image_size(dataset_dict, image)
        return image

    def _read_sem_seg(self, dataset_dict: dict, image_size) -> Optional[np.ndarray]:
        """The record's semantic labels (`sem_seg_file_name`, popped), transformed with the image."""
        file_name = dataset_dict.pop("sem_seg_file_name", None)
        if file_name is None:
            return None
        where = f"{dataset_dict.get('file_name')}, image id {dataset_dict.get('image_id')}: field 'sem_seg_file_name'"
        try:
            labels = utils.read_sem_seg(file_name)
        except FileNotFoundError as e:
            raise BadSampleError(f"{where} names a missing file ({file_name}).") from e
        except (OSError, ValueError) as e:
            raise BadSampleError(f"{where}: {file_name} is not a decodable label image ({e}).") from e
        if labels.shape != tuple(image_size):
            raise BadSampleError(f"{where}: the labels are {labels.shape} (h, w) but the image is {tuple(image_size)}.")
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise BadSampleError(f"{where}: {file_name} has labels outside 0..255.")
        return labels.astype(np.uint8)

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)  # the record is reused every epoch
        image = self._read_image(dataset_dict)
        sem_seg = self._read_sem_seg(dataset_dict, image.shape[:2])
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_size = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        if self.proposal_topk is not None:
            transform_proposals(dataset_dict, image_size, transforms, proposal_topk=self.proposal_topk)

        annos = dataset_dict.pop("annotations", None)
        if not self.is_train or annos is None:
            return dataset_dict

        annos = [self._strip(obj) for obj in annos if obj.get("iscrowd", 0) == 0]
        if self.use_keypoint:
            self._check_keypoint_counts(dataset_dict, annos)
        annos = [
            utils.transform_instance_annotations(
                obj, transforms, image_size, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for obj in annos
        ]
        instances = utils.annotations_to_instances(annos, image_size, mask_format=self.instance_mask_format)
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
        return dataset_dict

    def _check_keypoint_counts(self, dataset_dict: dict, annos: List[dict]) -> None:
        """Every annotation of the image has keypoints, as many as the flip indices name (if any)."""
        counts = sorted({np.size(a["keypoints"]) // 3 if "keypoints" in a else 0 for a in annos})
        expected = len(self.keypoint_hflip_indices) if self.keypoint_hflip_indices is not None else None
        if len(counts) > 1 or (expected is not None and counts and counts != [expected]):
            raise BadSampleError(
                f"{dataset_dict.get('file_name')}, image id {dataset_dict.get('image_id')}: field 'keypoints' "
                f"holds {counts} keypoints per annotation; every annotation needs "
                f"{expected if expected is not None else 'the same number'}."
            )

    def _strip(self, obj: dict) -> dict:
        if not self.use_instance_mask:
            obj.pop("segmentation", None)
        if not self.use_keypoint:
            obj.pop("keypoints", None)
        return obj
