import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from detlib.data import transforms as T


def _raster(polygons, h, w):
    rles = mask_util.frPyObjects([np.asarray(p, dtype=np.float64).ravel().tolist() for p in polygons], h, w)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _within_pixels(a: np.ndarray, b: np.ndarray, tol: float = 1.0) -> bool:
    """Every pixel where the masks differ lies within `tol` pixels (chessboard distance) of a's boundary."""
    inside = cv2.distanceTransform(a.astype(np.uint8), cv2.DIST_C, 3)  # to the nearest pixel outside a
    outside = cv2.distanceTransform((~a).astype(np.uint8), cv2.DIST_C, 3)  # to the nearest pixel inside a
    diff = a != b
    return bool(np.all(np.maximum(inside, outside)[diff] <= tol))


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


STAR = np.array(
    [[30, 5], [37, 25], [58, 25], [41, 38], [48, 58], [30, 46], [12, 58], [19, 38], [2, 25], [23, 25]], np.float64
)


@pytest.mark.parametrize("new_hw", [(97, 131), (30, 45), (64, 64), (160, 200)])
def test_polygon_after_resize_and_flip_matches_transformed_raster(new_hw):
    """Within one pixel of the coarser of the two grids (an upscaled raster has coarse steps)."""
    h, w = 64, 80
    tol = max(1.0, np.ceil(max(new_hw[0] / h, new_hw[1] / w)))
    polygon = STAR + [10.0, 3.0]
    raster = _raster([polygon], h, w)
    tfm = T.TransformList([T.ResizeTransform(h, w, *new_hw), T.HFlipTransform(new_hw[1])])

    from_polygon = _raster(tfm.apply_polygons([polygon]), *new_hw)
    from_raster = tfm.apply_segmentation(raster)
    assert from_raster.shape == new_hw and from_raster.dtype == bool
    assert _within_pixels(from_polygon, from_raster, tol)
    # No systematic shift: an off-by-one flip (x -> w - 1 - x) moves the centroid by a whole pixel.
    np.testing.assert_allclose(_centroid(from_polygon), _centroid(from_raster), atol=0.35)
    # The image moves the same way: a raster painted into the image comes out where the mask does.
    image = raster.astype(np.uint8)[:, :, None].repeat(3, axis=2) * 255
    moved = tfm.apply_image(image)[:, :, 0] > 127
    assert _within_pixels(from_polygon, moved, tol)
    np.testing.assert_allclose(_centroid(from_polygon), _centroid(moved), atol=0.35)


def test_box_transform_encloses_transformed_corners():
    tfm = T.TransformList([T.ResizeTransform(40, 60, 20, 120), T.HFlipTransform(120)])
    boxes = np.array([[10.0, 4.0, 30.0, 20.0], [0.0, 0.0, 60.0, 40.0]])
    # resize: x * 2, y * 0.5; flip: x -> 120 - x, which swaps x0 and x1
    expected = np.array([[60.0, 2.0, 100.0, 10.0], [0.0, 0.0, 120.0, 20.0]])
    np.testing.assert_allclose(tfm.apply_box(boxes), expected)


def test_resize_shortest_edge_sizes_match_detectron2_parity_table():
    # (h, w) -> resized (h, w) for short 320, max 512, from the parity README's table
    cases = {(480, 640): (320, 427), (300, 500): (307, 512), (640, 427): (480, 320)}
    for (h, w), expected in cases.items():
        assert T.ResizeShortestEdge.get_output_shape(h, w, 320, 512) == expected


def test_resize_uses_pil_bilinear_like_detectron2(parity_dir):
    expected = np.load(parity_dir / "expected_inference.npz")
    aug = T.ResizeShortestEdge(320, 512, "choice")
    for stem in expected["image_stems"]:
        bgr = cv2.imread(str(parity_dir / "images" / f"{stem}.png"), cv2.IMREAD_COLOR)
        out, tfms = T.apply_augmentations([aug], bgr)
        np.testing.assert_array_equal(out.transpose(2, 0, 1), expected[f"{stem}__input_image_chw_bgr_uint8"])


def test_resize_shortest_edge_sampling():
    image = np.zeros((100, 200, 3), np.uint8)
    np.random.seed(0)
    choice = T.ResizeShortestEdge((10, 30), 1000, "choice")
    heights = {choice.get_transform(image).new_h for _ in range(50)}
    assert heights == {10, 30}
    ranged = T.ResizeShortestEdge((10, 13), 1000, "range")
    heights = {ranged.get_transform(image).new_h for _ in range(100)}
    assert heights == {10, 11, 12, 13}
    assert isinstance(T.ResizeShortestEdge(0, 1000, "choice").get_transform(image), T.NoOpTransform)


def test_resize_single_channel_and_float_images():
    tfm = T.ResizeTransform(4, 6, 8, 12)
    gray = np.arange(24, dtype=np.uint8).reshape(4, 6, 1)
    out = tfm.apply_image(gray)
    assert out.shape == (8, 12, 1)
    reference = Image.fromarray(gray[:, :, 0]).resize((12, 8), Image.BILINEAR)
    np.testing.assert_array_equal(out[:, :, 0], np.asarray(reference))
    heat = np.ones((4, 6, 2), np.float32) * 3.5
    np.testing.assert_allclose(tfm.apply_image(heat), np.full((8, 12, 2), 3.5, np.float32))


def test_random_flip_probability_and_direction():
    image = np.zeros((10, 20, 3), np.uint8)
    np.random.seed(1)
    flips = [T.RandomFlip(0.5).get_transform(image) for _ in range(400)]
    n_flipped = sum(isinstance(t, T.HFlipTransform) for t in flips)
    assert 150 < n_flipped < 250
    assert all(t.width == 20 for t in flips if isinstance(t, T.HFlipTransform))
    assert isinstance(T.RandomFlip(1.0, horizontal=False, vertical=True).get_transform(image), T.VFlipTransform)
    assert isinstance(T.RandomFlip(0.0).get_transform(image), T.NoOpTransform)


def test_crop_clips_polygons_to_the_window_like_the_cropped_raster():
    h, w = 64, 80
    polygon = STAR + [10.0, 3.0]
    crop = T.CropTransform(x0=25, y0=20, w=30, h=35)
    clipped = crop.apply_polygons([polygon])
    assert len(clipped) == 1
    assert clipped[0][:, 0].min() >= 0 and clipped[0][:, 0].max() <= 30
    assert clipped[0][:, 1].min() >= 0 and clipped[0][:, 1].max() <= 35
    expected = crop.apply_segmentation(_raster([polygon], h, w))
    assert _within_pixels(_raster(clipped, 35, 30), expected)
    # a polygon entirely outside the window disappears
    assert crop.apply_polygons([np.array([[0.0, 0.0], [5.0, 0.0], [5.0, 5.0]])]) == []


def test_random_crop_sizes():
    image = np.zeros((100, 200, 3), np.uint8)
    np.random.seed(2)
    for _ in range(20):
        t = T.RandomCrop("relative_range", (0.5, 0.5)).get_transform(image)
        assert 50 <= t.h <= 100 and 100 <= t.w <= 200
        assert 0 <= t.x0 <= 200 - t.w and 0 <= t.y0 <= 100 - t.h
    t = T.RandomCrop("absolute", (150, 150)).get_transform(image)
    assert (t.h, t.w) == (100, 150)


def test_aug_input_transforms_boxes_with_image():
    image = np.zeros((10, 20, 3), np.uint8)
    image[2:4, 1:5] = 255
    aug_input = T.AugInput(image, boxes=np.array([[1.0, 2.0, 5.0, 4.0]]))
    tfm = T.AugmentationList([T.RandomFlip(1.0)])(aug_input)
    assert isinstance(tfm, T.TransformList) and isinstance(tfm[0], T.HFlipTransform)
    np.testing.assert_allclose(aug_input.boxes, [[15.0, 2.0, 19.0, 4.0]])
    ys, xs = np.nonzero(aug_input.image[:, :, 0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (15, 19, 2, 4)
