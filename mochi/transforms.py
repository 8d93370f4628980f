"""Image transforms and their constants, shared by every stage (torchvision transforms only).

- :func:`aug_plus` / :func:`build_augmentation`: MoCo-v2's pretraining augmentation, its no-blur
  small-image variant and a greyscale variant (:func:`grey_small`); :class:`TwoCrops` applies one twice
  (query and key views).
- :func:`eval_transform`: the deterministic resize + center-crop used for every frozen evaluation.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from mochi.constants import AUGMENTATIONS
from mochi.errors import MochiError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GaussianBlur:
    """PIL's Gaussian blur with ``σ ~ U(sigma)``, as the MoCo-v2 reference applies it (radius = σ).

    PIL's filter runs on the 8-bit image: 3.6x faster per 224 px crop than torchvision's tensor blur
    (``benchmarks/bench_augment.py``), which also needs a kernel size the reference does not have. σ is
    drawn from torch's generator, which pretraining seeds per image (mochi.pretrain.sampling).
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.sigma = (float(sigma[0]), float(sigma[1]))

    def __call__(self, img: Image.Image) -> Image.Image:
        sigma = float(torch.empty(()).uniform_(*self.sigma))
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


def aug_plus(image_size: int = 224, blur: bool = True, crop_min: float = 0.2) -> T.Compose:
    """MoCo-v2 "aug+" (docs/protocols.md#augmentation).

    RandomResizedCrop(scale ``crop_min``–1, the reference's 0.2), ColorJitter(0.4, 0.4, 0.4, 0.1) with
    p 0.8, grayscale p 0.2, Gaussian blur σ ~ U(0.1, 2.0) with p 0.5 (PIL's filter, as the reference),
    horizontal flip, ImageNet normalisation. Every step before ``ToTensor`` works on the PIL image.
    """
    ops: list = [
        T.RandomResizedCrop(image_size, scale=(crop_min, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur:
        ops.append(T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5))
    ops += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(ops)


def grey_small(image_size: int, crop_min: float = 0.2) -> T.Compose:
    """aug+ for small greyscale images: RandomResizedCrop(scale ``crop_min``–1), brightness and contrast
    jitter 0.4 with p 0.8, horizontal flip, ImageNet normalisation.

    On a grey image (R = G = B) saturation jitter, hue jitter and random grayscale change nothing, so they
    are left out; brightness and contrast are what colour jitter does to grey pixels. No blur (≤ 64 px).
    """
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(crop_min, 1.0)),
            T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def build_augmentation(name: str, image_size: int, crop_min: float = 0.2) -> T.Compose:
    """``aug-plus``: the reference pipeline. ``aug-plus-small``: the same without blur, for ≤ 64 px
    images (as in the reference CIFAR demo, where blur destroys most of the signal). ``grey-small``:
    :func:`grey_small`. ``crop_min``: the smallest crop's share of the image area (reference 0.2)."""
    if not 0 < crop_min <= 1:
        raise MochiError(f"crop_min must be in (0, 1], got {crop_min}")
    if name == "aug-plus":
        return aug_plus(image_size, blur=True, crop_min=crop_min)
    if name == "aug-plus-small":
        return aug_plus(image_size, blur=False, crop_min=crop_min)
    if name == "grey-small":
        return grey_small(image_size, crop_min=crop_min)
    raise MochiError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")


class TwoCrops:
    """Apply the same random pipeline twice: (query view, key view)."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)

    def __repr__(self) -> str:
        return f"TwoCrops({self.transform!r})"


def eval_transform(image_size: int = 224, crop_fraction: float | None = None) -> tuple[T.Compose, dict]:
    """Deterministic evaluation transform and its description (for cache keys and records).

    Resize the short side to ``image_size / crop_fraction``, center-crop ``image_size``, ImageNet
    normalisation. ``crop_fraction`` defaults to 0.875 (Resize 256 + CenterCrop 224, the reference) for
    ``image_size >= 128`` and to 1.0 (the whole image resized) for small images such as 28 px
    Fashion-MNIST, which pretraining also saw whole (docs/protocols.md#feature-extraction).
    """
    if crop_fraction is None:
        crop_fraction = 0.875 if image_size >= 128 else 1.0
    if not 0 < crop_fraction <= 1:
        raise MochiError(f"crop fraction must be in (0, 1], got {crop_fraction}")
    resize = round(image_size / crop_fraction)
    transform = T.Compose(
        [
            T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    spec = {"resize": resize, "center_crop": image_size, "interpolation": "bilinear", "normalize": "imagenet"}
    return transform, spec
