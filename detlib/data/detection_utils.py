"""Helpers that turn a dataset record into model inputs: image reading, annotation transforms."""

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image, ImageOps

from detlib.structures import BitMasks, Boxes, BoxMode, Instances, Keypoints, PolygonMasks, polygons_to_bitmask

from . import transforms as T
from .bad_samples import BadSampleError
from .catalog import MetadataCatalog

__all__ = [
    "read_image",
    "convert_PIL_to_numpy",
    "check_image_size",
    "transform_instance_annotations",
    "transform_keypoint_annotations",
    "create_keypoint_hflip_indices",
    "get_fed_loss_cls_weights",
    "annotations_to_instances",
    "filter_empty_instances",
    "build_augmentation",
    "build_test_resize",
]


def convert_PIL_to_numpy(image: Image.Image, format: str = None) -> np.ndarray:
    """
    Converts a PIL image to an H x W x C uint8 array in `format`: "BGR", or any PIL mode such as
    "RGB" or "L" ("L" gives H x W x 1). Grayscale, palette and RGBA images are converted (alpha is
    dropped). With `format=None` the image's own mode is kept.
    """
    if format is not None:
        image = image.convert("RGB" if format == "BGR" else format)
    array = np.asarray(image)
    if format == "BGR":
        array = array[:, :, ::-1]
    elif format == "L":
        array = array[:, :, None]
    return np.ascontiguousarray(array)


def read_image(file_name: str, format: str = None) -> np.ndarray:
    """
    Reads an image file as an H x W x C uint8 array in `format` (see `convert_PIL_to_numpy`),
    upright according to its EXIF orientation tag.

    Raises FileNotFoundError for a missing file and OSError (PIL's UnidentifiedImageError included)
    for a file that does not decode.
    """
    with open(file_name, "rb") as f:
        image = Image.open(f)
        image.load()  # decode now, while the file is open, so corrupt data fails here
    return convert_PIL_to_numpy(ImageOps.exif_transpose(image), format)


def read_sem_seg(file_name: str, dtype=np.int64) -> np.ndarray:
    """A semantic label PNG as an H x W integer array of its pixel values (grayscale or palette
    indices, unconverted: the values are class ids)."""
    with Image.open(file_name) as image:
        return np.asarray(image, dtype=dtype)


def check_image_size(dataset_dict: dict, image: np.ndarray) -> None:
    """
    Checks the image against the record's `height`/`width` (setting them when the record has
    none); raises BadSampleError naming the file, image id and field on a mismatch.
    """
    h, w = image.shape[:2]
    for field, actual in (("height", h), ("width", w)):
        expected = dataset_dict.get(field)
        if expected is None:
            dataset_dict[field] = actual
        elif expected != actual:
            raise BadSampleError(
                f"{dataset_dict.get('file_name', '<no file_name>')}, image id {dataset_dict.get('image_id')}: "
                f"field '{field}' is {expected} but the image file is {h}x{w} (h x w)."
            )


def _boxes_xyxy(annos: List[dict]) -> np.ndarray:
    """The annotations' boxes as an N x 4 float64 XYXY array, whatever their `bbox_mode`."""
    boxes = [BoxMode.convert(np.asarray(a["bbox"], np.float64)[None], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
    return np.concatenate(boxes) if boxes else np.zeros((0, 4))


def transform_instance_annotations(
    annotation: dict,
    transforms: T.Transform,
    image_size: Tuple[int, int],
    *,
    keypoint_hflip_indices: Optional[Sequence[int]] = None,
) -> dict:
    """
    Applies `transforms` to one annotation of a record, in place, and returns it.

    `bbox` becomes XYXY absolute (`bbox_mode` updated), clipped to `image_size` (h, w). Polygons
    are transformed as coordinates (exact). An RLE `segmentation` is decoded and transformed as a
    mask image, becoming an H x W uint8 array. `keypoints` become a K x 3 array (see
    `transform_keypoint_annotations`, which `keypoint_hflip_indices` is passed to).
    """
    if isinstance(transforms, (list, tuple)):
        transforms = T.TransformList(transforms)
    h, w = image_size
    bbox = transforms.apply_box(_boxes_xyxy([annotation]))[0].clip(min=0)
    annotation["bbox"] = np.minimum(bbox, [w, h, w, h])
    annotation["bbox_mode"] = BoxMode.XYXY_ABS

    segm = annotation.get("segmentation")
    if isinstance(segm, list):
        polygons = transforms.apply_polygons([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segm])
        annotation["segmentation"] = [p.reshape(-1) for p in polygons]
    elif isinstance(segm, dict):
        rle = mask_util.frPyObjects(segm, *segm["size"]) if isinstance(segm["counts"], list) else segm
        # As bool, so that transforms treat it as a mask (PadTransform pads masks with False).
        annotation["segmentation"] = transforms.apply_segmentation(mask_util.decode(rle).astype(bool))
    elif segm is not None:
        raise ValueError(f"Cannot transform a segmentation of type {type(segm).__name__}; expected polygons or RLE.")
    if "keypoints" in annotation:
        annotation["keypoints"] = transform_keypoint_annotations(
            annotation["keypoints"], transforms, image_size, keypoint_hflip_indices
        )
    return annotation


def transform_keypoint_annotations(
    keypoints: Union[Sequence[float], np.ndarray],
    transforms: T.Transform,
    image_size: Tuple[int, int],
    keypoint_hflip_indices: Optional[Sequence[int]] = None,
) -> np.ndarray:
    """
    One instance's keypoints (flat [x, y, v, ...] or K x 3) in the transformed image, as a K x 3
    float64 array. A keypoint that lands outside the image (h, w) = `image_size` (edges included
    as inside) becomes unlabeled; unlabeled keypoints are (0, 0, 0). An odd number of horizontal
    flips swaps each keypoint with its mirror image by `keypoint_hflip_indices` (a left wrist
    becomes a right wrist), which is then required.
    """
    if isinstance(transforms, (list, tuple)):
        transforms = T.TransformList(transforms)
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3).copy()
    keypoints[:, :2] = transforms.apply_coords(keypoints[:, :2].copy())
    h, w = image_size
    x, y = keypoints[:, 0], keypoints[:, 1]
    keypoints[~((x >= 0) & (x <= w) & (y >= 0) & (y <= h)), 2] = 0

    parts = transforms.transforms if isinstance(transforms, T.TransformList) else [transforms]
    if sum(isinstance(t, T.HFlipTransform) for t in parts) % 2 == 1:
        if keypoint_hflip_indices is None:
            raise ValueError("Keypoints were flipped horizontally, but no keypoint_hflip_indices were given.")
        if len(keypoint_hflip_indices) != len(keypoints):
            raise ValueError(
                f"The annotation has {len(keypoints)} keypoints, but the flip indices name {len(keypoint_hflip_indices)}."
            )
        keypoints = keypoints[np.asarray(keypoint_hflip_indices, dtype=np.int64)]
    keypoints[keypoints[:, 2] == 0] = 0
    return keypoints


def _as_tuples(items: Sequence) -> list:
    return [tuple(v) if isinstance(v, (list, tuple)) else v for v in items]


def create_keypoint_hflip_indices(dataset_names: Union[str, Sequence[str]]) -> List[int]:
    """
    For each keypoint, the index of its mirror image under a horizontal flip, from the datasets'
    metadata: `keypoint_names` and `keypoint_flip_map` (pairs of names; a keypoint in no pair is its
    own mirror image). Every dataset must have the same two.
    """
    names_list = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    if not names_list:
        raise ValueError("create_keypoint_hflip_indices needs at least one dataset name.")
    metas = [MetadataCatalog.get(name) for name in names_list]
    for key in ("keypoint_names", "keypoint_flip_map"):
        # Pairs may be lists or tuples (YAML / JSON give lists); compare them as tuples.
        values = [meta.get(key) for meta in metas]
        for name, value in zip(names_list, values):
            if value is None:
                raise ValueError(f"Dataset '{name}' has no '{key}' metadata, which keypoint training with flips needs.")
            if _as_tuples(value) != _as_tuples(values[0]):
                raise ValueError(f"Datasets '{names_list[0]}' and '{name}' have different '{key}' metadata.")
    names = list(metas[0].keypoint_names)
    mirror = {}
    for pair in metas[0].keypoint_flip_map:
        left, right = pair
        if left not in names or right not in names:
            raise ValueError(
                f"Dataset '{names_list[0]}': keypoint_flip_map pair {tuple(pair)} names an unknown keypoint."
            )
        mirror[left], mirror[right] = right, left
    return [names.index(mirror.get(name, name)) for name in names]


def get_fed_loss_cls_weights(dataset_names: Union[str, Sequence[str]], freq_weight_power: float = 1.0) -> torch.Tensor:
    """
    The federated loss's class weights: each class's number of training images to the power `freq_weight_power`,
    ordered by category id, from the datasets' `class_image_count` metadata (LVIS's categories: a list of
    {"id": ..., "image_count": ...}). Every dataset must have the same.
    """
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    if not names:
        raise ValueError("get_fed_loss_cls_weights needs at least one dataset name (DATASETS.TRAIN is empty).")
    counts = [MetadataCatalog.get(name).get("class_image_count") for name in names]
    for name, value in zip(names, counts):
        if value is None:
            raise ValueError(
                f"Dataset '{name}' has no 'class_image_count' metadata, which the federated loss "
                "(MODEL.ROI_BOX_HEAD.USE_FED_LOSS) needs."
            )
        if value != counts[0]:
            raise ValueError(f"Datasets '{names[0]}' and '{name}' have different 'class_image_count' metadata.")
    for index, entry in enumerate(counts[0]):
        if not isinstance(entry, dict) or "id" not in entry or "image_count" not in entry:
            raise ValueError(
                f"Dataset '{names[0]}': class_image_count[{index}] needs 'id' and 'image_count', got {entry!r}"
            )
    by_id = sorted(counts[0], key=lambda entry: entry["id"])
    return torch.tensor([entry["image_count"] for entry in by_id], dtype=torch.float32) ** freq_weight_power


def _segmentation_to_bitmask(segm, height: int, width: int) -> np.ndarray:
    """Polygons, RLE or an array -> H x W bool raster."""
    if isinstance(segm, list):
        mask = polygons_to_bitmask(segm, height, width)
    elif isinstance(segm, dict):
        mask = mask_util.decode(
            mask_util.frPyObjects(segm, *segm["size"]) if isinstance(segm["counts"], list) else segm
        )
    else:
        mask = np.asarray(segm)
    if mask.shape != (height, width):
        raise ValueError(f"A mask of shape {mask.shape} does not match its image ({height}, {width}).")
    return mask.astype(bool)


def annotations_to_instances(annos: List[dict], image_size: Tuple[int, int], mask_format: str = "polygon") -> Instances:
    """
    Builds the `Instances` (gt_boxes, gt_classes, gt_masks when annotations have a `segmentation`,
    gt_keypoints when they have `keypoints`) of one image from annotations already in its
    (transformed) frame.

    Masks: with `mask_format="bitmask"` every mask is a raster (`BitMasks`). With "polygon" an
    image whose masks are all polygons keeps them as `PolygonMasks`, which the mask head
    rasterizes exactly at its own resolution; an image with any RLE or raster mask (which polygons
    cannot represent, e.g. an object with a hole) gets `BitMasks`, its polygons rasterized at the
    image size. Either way no mask loses detail and any valid COCO file trains.
    """
    if mask_format not in ("polygon", "bitmask"):
        raise ValueError(f"mask_format must be 'polygon' or 'bitmask', got '{mask_format}'.")
    h, w = image_size
    instances = Instances(image_size)
    gt_boxes = Boxes(torch.as_tensor(_boxes_xyxy(annos), dtype=torch.float32))
    gt_boxes.clip(image_size)
    instances.gt_boxes = gt_boxes
    instances.gt_classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)

    if annos and "segmentation" in annos[0]:
        segms = [a["segmentation"] for a in annos]
        if mask_format == "polygon" and all(isinstance(s, list) for s in segms):
            instances.gt_masks = PolygonMasks(segms)
        else:
            masks = [torch.from_numpy(np.ascontiguousarray(_segmentation_to_bitmask(s, h, w))) for s in segms]
            instances.gt_masks = BitMasks(torch.stack(masks))
    if annos and "keypoints" in annos[0]:
        instances.gt_keypoints = Keypoints(
            np.stack([np.asarray(a["keypoints"], np.float32).reshape(-1, 3) for a in annos])
        )
    return instances


def filter_empty_instances(
    instances: Instances, by_box: bool = True, by_mask: bool = True, box_threshold: float = 1e-5
) -> Instances:
    """Drops instances whose box has a side <= `box_threshold` or whose mask is empty."""
    keep = torch.ones(len(instances), dtype=torch.bool)
    if by_box:
        keep &= instances.gt_boxes.nonempty(threshold=box_threshold)
    if by_mask and instances.has("gt_masks"):
        keep &= instances.gt_masks.nonempty()
    return instances[keep]


def build_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """
    The default augmentations: `ResizeShortestEdge` from INPUT.MIN/MAX_SIZE_{TRAIN,TEST}, plus in
    training a `RandomFlip` as INPUT.RANDOM_FLIP says ("horizontal", "vertical" or "none").
    """
    if is_train:
        augs: List[T.Augmentation] = [
            T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
        ]
        flip = cfg.INPUT.RANDOM_FLIP
        if flip not in ("horizontal", "vertical", "none"):
            raise ValueError(f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got '{flip}'.")
        if flip != "none":
            augs.append(T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
        return augs
    return [build_test_resize(cfg)]


def build_test_resize(cfg) -> T.ResizeShortestEdge:
    """The one test-time resize (INPUT.MIN_SIZE_TEST, capped by MAX_SIZE_TEST), shared by the test loader,
    `DefaultPredictor` and export's sample images, so that all three feed the model the same pixels."""
    return T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")
