"""Augmentations: MoCo-v2's aug+ and a small-image variant, built from torchvision transforms."""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATIONS = ("aug-plus", "aug-plus-small")


def aug_plus(image_size: int = 224, blur: bool = True) -> T.Compose:
    """MoCo-v2 "aug+" (protocols.md §1).

    RandomResizedCrop(scale 0.2–1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2,
    Gaussian blur σ ~ U(0.1, 2.0) with p 0.5, horizontal flip, ImageNet normalisation. The reference
    blurs with PIL's unbounded kernel; torchvision needs a kernel size, taken as ~10% of the crop (odd).
    """
    ops: list = [
        T.RandomResizedCrop(image_size, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if blur:
        kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
        ops.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    ops += [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(ops)


def build_augmentation(name: str, image_size: int) -> T.Compose:
    """``aug-plus``: the reference pipeline. ``aug-plus-small``: the same without blur, for ≤ 64 px
    images (as in the reference CIFAR demo, where blur destroys most of the signal)."""
    if name == "aug-plus":
        return aug_plus(image_size, blur=True)
    if name == "aug-plus-small":
        return aug_plus(image_size, blur=False)
    raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}")


class TwoCrops:
    """Apply the same random pipeline twice: (query view, key view)."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)

    def __repr__(self) -> str:
        return f"TwoCrops({self.transform!r})"
