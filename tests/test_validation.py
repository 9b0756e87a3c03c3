"""Input validation: image layouts, shapes and devices (fewmed/_validation.py)."""

import numpy as np
import pytest
import torch

from fewmed._validation import check_image_shape, check_images, resolve_device


def test_check_images_layouts():
    u8 = np.full((2, 5, 6, 3), 255, dtype=np.uint8)
    out = check_images(u8)
    assert out.shape == (2, 3, 5, 6) and out.dtype == np.float32 and out.max() == 1.0
    assert check_images(np.zeros((2, 5, 6), dtype=np.uint8)).shape == (2, 1, 5, 6)
    assert check_images(np.zeros((2, 3, 5, 6), dtype=np.float32)).shape == (2, 3, 5, 6)
    assert check_images(torch.zeros(2, 1, 4, 4)).shape == (2, 1, 4, 4)
    assert check_images(np.zeros((3, 7))).shape == (3, 1, 1, 7)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([[np.nan, 1.0]]), "NaN"),
        (np.zeros((0, 3, 4, 4)), "empty"),
        (np.zeros(5), "1-D"),
        (np.zeros((1, 1, 1, 1, 1)), "dimensions"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_check_images_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        check_images(bad)


def test_check_image_shape_says_what_to_do():
    with pytest.raises(ValueError, match="resize to 28x28 with 3 channel"):
        check_image_shape(np.zeros((1, 1, 28, 28)), (3, 28, 28))


def test_resolve_device_without_gpu():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU"):
            resolve_device("cuda")
