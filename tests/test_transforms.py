"""Transforms: aug+'s blur is the reference's PIL blur; pipelines are seeded by torch's generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from mochi.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GaussianBlur,
    aug_plus,
    build_augmentation,
    eval_transform,
)


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


def _grey_image(size: int = 28) -> Image.Image:
    g = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    return Image.fromarray(g).convert("RGB")


def test_saturation_hue_and_grayscale_leave_grey_pixels_unchanged():
    # Why grey-small drops them: on R = G = B images these aug+ steps are the identity.
    from torchvision import transforms as T

    img = _grey_image()
    torch.manual_seed(0)
    for op in (T.ColorJitter(saturation=0.4), T.ColorJitter(hue=0.1), T.RandomGrayscale(p=1.0)):
        assert np.array_equal(np.asarray(op(img)), np.asarray(img)), op


def test_grey_small_keeps_images_grey_and_takes_crop_min():
    from torchvision import transforms as T

    pipeline = build_augmentation("grey-small", 32, crop_min=0.5)
    torch.manual_seed(0)
    out = pipeline(_grey_image())
    std, mean = torch.tensor(IMAGENET_STD)[:, None, None], torch.tensor(IMAGENET_MEAN)[:, None, None]
    pixels = out * std + mean
    assert out.shape == (3, 32, 32)
    assert torch.allclose(pixels[0], pixels[1], atol=1e-6) and torch.allclose(pixels[1], pixels[2], atol=1e-6)
    (crop,) = [t for t in pipeline.transforms if isinstance(t, T.RandomResizedCrop)]
    assert crop.scale == (0.5, 1.0)
    names = repr(pipeline)
    assert "saturation" not in names.replace("saturation=None", "") and "Grayscale" not in names
    assert build_augmentation("aug-plus-small", 32, crop_min=0.5).transforms[0].scale == (0.5, 1.0)
    with pytest.raises(Exception, match="crop_min must be in"):
        build_augmentation("grey-small", 32, crop_min=0)
