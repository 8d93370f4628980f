"""Transforms: aug+'s blur is the reference's PIL blur; pipelines are seeded by torch's generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from mochi.transforms import GaussianBlur, aug_plus, build_augmentation, eval_transform


def _image(size: int = 64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_blur_is_pils_gaussian_blur_with_sigma_drawn_from_torch():
    img = _image()
    torch.manual_seed(5)
    out = GaussianBlur((0.1, 2.0))(img)
    torch.manual_seed(5)
    sigma = float(torch.empty(()).uniform_(0.1, 2.0))
    expected = img.filter(ImageFilter.GaussianBlur(radius=sigma))
    assert 0.1 <= sigma <= 2.0
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
    assert not np.array_equal(np.asarray(out), np.asarray(img))


def test_blur_sigma_covers_its_range():
    torch.manual_seed(0)
    blur = GaussianBlur((0.1, 2.0))
    sigmas = []
    original = ImageFilter.GaussianBlur

    class Spy(original):
        def __init__(self, radius):
            sigmas.append(radius)
            super().__init__(radius)

    ImageFilter.GaussianBlur = Spy
    try:
        for _ in range(200):
            blur(_image(8))
    finally:
        ImageFilter.GaussianBlur = original
    assert 0.1 <= min(sigmas) < 0.3 and 1.8 < max(sigmas) <= 2.0


@pytest.mark.parametrize("blur", [True, False])
def test_aug_plus_is_reproducible_from_the_torch_seed(blur):
    pipeline = aug_plus(32, blur=blur)
    torch.manual_seed(1)
    a = pipeline(_image())
    torch.manual_seed(1)
    b = pipeline(_image())
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert (
        any(isinstance(op, GaussianBlur) for t in pipeline.transforms for op in getattr(t, "transforms", []))
        == blur
    )


def test_unknown_augmentation_is_a_clear_error():
    from mochi.errors import MochiError

    with pytest.raises(MochiError, match="unknown augmentation 'aug-minus'"):
        build_augmentation("aug-minus", 32)


def test_eval_transform_describes_itself():
    _, spec = eval_transform(224)
    assert spec == {"resize": 256, "center_crop": 224, "interpolation": "bilinear", "normalize": "imagenet"}
    _, small = eval_transform(32)
    assert small["resize"] == 32
