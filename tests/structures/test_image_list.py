import pytest
import torch

from detlib.structures import ImageList


def _images():
    a = torch.arange(2 * 3 * 5, dtype=torch.float32).view(2, 3, 5) + 1
    b = -torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2) - 1
    return a, b


def test_padding_values_and_sizes():
    a, b = _images()
    images = ImageList.from_tensors([a, b], pad_value=7.0)
    assert images.tensor.shape == (2, 2, 6, 5)
    assert images.image_sizes == [(3, 5), (6, 2)]
    assert len(images) == 2
    assert torch.equal(images.tensor[0, :, :3, :5], a)
    assert torch.equal(images.tensor[1, :, :6, :2], b)
    # Padding is at the bottom and right only, filled with pad_value.
    assert (images.tensor[0, :, 3:, :] == 7).all()
    assert (images.tensor[1, :, :, 2:] == 7).all()
    assert torch.equal(images[0], a) and torch.equal(images[1], b)


def test_size_divisibility_rounds_up_both_sides():
    a, b = _images()
    images = ImageList.from_tensors([a, b], size_divisibility=4)
    assert images.tensor.shape == (2, 2, 8, 8)
    assert images.image_sizes == [(3, 5), (6, 2)]
    assert (images.tensor[0, :, 3:, :] == 0).all() and (images.tensor[0, :, :, 5:] == 0).all()
    # Already-divisible sizes stay as they are.
    exact = ImageList.from_tensors([torch.ones(1, 32, 64)], size_divisibility=32)
    assert exact.tensor.shape == (1, 1, 32, 64)


def test_single_image_and_channelless_images():
    img = torch.ones(3, 5)
    images = ImageList.from_tensors([img], size_divisibility=4, pad_value=-1.0)
    assert images.tensor.shape == (1, 4, 8)
    assert images.tensor.sum() == 15 - (32 - 15)
    assert torch.equal(images[0], img)


def test_padding_constraints():
    a, b = _images()
    square = ImageList.from_tensors([a, b], padding_constraints={"square_size": 10})
    assert square.tensor.shape == (2, 2, 10, 10)
    divisible = ImageList.from_tensors([a, b], size_divisibility=32, padding_constraints={"size_divisibility": 3})
    assert divisible.tensor.shape == (2, 2, 6, 6)
    with pytest.raises(ValueError, match="square_size"):
        ImageList.from_tensors([a, b], padding_constraints={"square_size": 4})


def test_bad_inputs():
    with pytest.raises(ValueError):
        ImageList.from_tensors([])
    with pytest.raises(ValueError, match="image 1"):
        ImageList.from_tensors([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)])


def test_to_keeps_sizes():
    a, b = _images()
    images = ImageList.from_tensors([a, b]).to(torch.float64)
    assert images.tensor.dtype == torch.float64
    assert images.image_sizes == [(3, 5), (6, 2)]
    assert images.device.type == "cpu"
