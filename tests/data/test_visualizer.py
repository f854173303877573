import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch

from detlib.data import DatasetCatalog, Metadata, MetadataCatalog
from detlib.data.datasets import register_coco_instances
from detlib.structures import Boxes, BoxMode, Instances, Keypoints
from detlib.visualization.visualizer import Visualizer

RED = (255, 0, 0)


def _metadata():
    return Metadata(name="vis").set(thing_classes=["cat", "dog"], thing_colors=[RED, (0, 0, 255)])


def test_draw_instance_predictions_fills_masks_and_outlines_boxes():
    image = np.full((60, 80, 3), 100, np.uint8)
    pred = Instances((60, 80))
    pred.pred_boxes = Boxes(torch.tensor([[10.0, 20.0, 50.0, 55.0]]))
    pred.scores = torch.tensor([0.9])
    pred.pred_classes = torch.tensor([0])
    masks = torch.zeros(1, 60, 80, dtype=torch.bool)
    masks[0, 30:45, 20:40] = True
    pred.pred_masks = masks
    out = Visualizer(image, _metadata()).draw_instance_predictions(pred)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    # the mask's inside is blended half-way towards the class colour (red)
    np.testing.assert_allclose(out[37, 30], [177.5, 50, 50], atol=1)
    assert (out[50, 30] == 100).all()  # outside mask and box: untouched
    np.testing.assert_array_equal(out[40, 10], RED)  # left edge of the box
    assert (image == 100).all(), "the input image must not be drawn on"


def test_draw_dataset_dict_handles_polygons_rle_and_scale():
    image = np.zeros((20, 30, 3), np.uint8)
    rle_mask = np.zeros((20, 30), np.uint8)
    rle_mask[2:6, 2:6] = 1
    rle = mask_util.encode(np.asfortranarray(rle_mask))
    record = {
        "annotations": [
            {
                "bbox": [15, 5, 10, 10],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": 1,
                "segmentation": [[15.0, 5.0, 25.0, 5.0, 25.0, 15.0, 15.0, 15.0]],
            },
            {"bbox": [2, 2, 4, 4], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "segmentation": rle},
        ]
    }
    out = Visualizer(image, _metadata(), scale=2.0).draw_dataset_dict(record)
    assert out.shape == (40, 60, 3)
    assert out[2 * 10, 2 * 20, 2] > 100  # inside the polygon (dog, blue)
    assert out[2 * 4, 2 * 4, 0] > 100  # inside the RLE mask (cat, red)
    assert (out[35, 5] == 0).all()


def _load_tool():
    path = Path(__file__).resolve().parents[2] / "tools" / "visualize_data.py"
    spec = importlib.util.spec_from_file_location("visualize_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_visualize_data_tool_writes_pngs(tmp_path, tiny_coco):
    main = _load_tool().main

    name = "tiny_vis_tool"
    register_coco_instances(name, {}, str(tiny_coco / "annotations.json"), str(tiny_coco))
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(
        f"DATASETS:\n  TRAIN: ('{name}',)\nINPUT:\n  MIN_SIZE_TRAIN: (40,)\n"
        "MODEL:\n  MASK_ON: True\nSOLVER:\n  IMS_PER_BATCH: 1\n"
    )
    try:
        for source in ("annotation", "dataloader"):
            out_dir = tmp_path / source
            main(["--config-file", str(cfg_file), "--source", source, "--output", str(out_dir), "--num", "2"])
            files = sorted(os.listdir(out_dir))
            assert len(files) == 2
            img = cv2.imread(str(out_dir / files[0]))
            assert img is not None and min(img.shape[:2]) >= 512  # drawn large enough to read labels
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_keypoints_are_drawn_above_the_threshold_only():
    image = np.full((60, 80, 3), 100, np.uint8)
    pred = Instances((60, 80))
    pred.pred_boxes = Boxes(torch.tensor([[2.0, 2.0, 8.0, 8.0]]))
    pred.scores = torch.tensor([0.9])
    pred.pred_classes = torch.tensor([0])
    pred.pred_keypoints = torch.tensor([[[30.0, 40.0, 0.9], [60.0, 10.0, 0.01]]])  # (x, y, score)
    out = Visualizer(image, _metadata()).draw_instance_predictions(pred)
    np.testing.assert_array_equal(out[40, 30], RED)
    assert (out[10, 60] == 100).all()
    gt = Instances((60, 80), gt_boxes=Boxes(torch.tensor([[2.0, 2.0, 8.0, 8.0]])), gt_classes=torch.tensor([1]))
    gt.gt_keypoints = Keypoints([[[30.0, 40.0, 0], [60.0, 10.0, 2]]])  # unlabeled, visible
    out = Visualizer(image, _metadata()).draw_instances_gt(gt)
    np.testing.assert_array_equal(out[10, 60], (0, 0, 255))
    assert (out[40, 30] == 100).all()
