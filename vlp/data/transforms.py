"""CLIP image transforms (as open_clip's ``image_transform``)."""

from __future__ import annotations

import torch
from torchvision import transforms as T

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def image_transform(
    image_size: int,
    train: bool,
    scale: tuple[float, float] = (0.9, 1.0),
    mean: tuple[float, float, float] = OPENAI_MEAN,
    std: tuple[float, float, float] = OPENAI_STD,
    randaugment: str | None = None,
) -> T.Compose:
    """Train: random resized crop (scale 0.9-1, bicubic), then, if given, timm's RandAugment
    (AugReg, Steiner et al. 2021; e.g. ``rand-m10-n2`` = 2 ops at magnitude 10). Eval: resize +
    center crop.

    Input: an RGB PIL image. Output: a float tensor ``[3, image_size, image_size]``.
    """
    bicubic = T.InterpolationMode.BICUBIC
    if train:
        geometry = [T.RandomResizedCrop(image_size, scale=scale, interpolation=bicubic)]
        if randaugment:
            geometry.append(randaugment_transform(randaugment, mean))
    else:
        geometry = [T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(mean, std)])


def randaugment_transform(spec: str, mean=OPENAI_MEAN):
    """timm's RandAugment from a config string (``rand-m9-n2-mstd0.5``); VLPError if malformed."""
    from timm.data.auto_augment import rand_augment_transform

    from vlp.errors import VLPError

    if not spec.startswith("rand"):
        raise VLPError(f"data.randaugment must be a timm RandAugment string such as 'rand-m9-n2', got {spec!r}")
    try:
        return rand_augment_transform(spec, {"img_mean": tuple(round(255 * m) for m in mean)})
    except Exception as e:  # noqa: BLE001 - timm raises assorted errors for bad strings
        raise VLPError(f"data.randaugment {spec!r}: {e}") from None


class PILGaussianBlur:
    """SLIP / MoCo v2 blur: PIL's Gaussian blur with a radius drawn uniformly from ``sigma``
    (from torch's RNG, so the data stream's seeding covers it)."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, image):
        from PIL import ImageFilter

        lo, hi = self.sigma
        radius = lo + (hi - lo) * float(torch.rand(()))
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


def ssl_view_transform(image_size: int, scale: tuple[float, float] = (0.08, 1.0),
                       mean: tuple[float, float, float] = OPENAI_MEAN,
                       std: tuple[float, float, float] = OPENAI_STD) -> T.Compose:
    """SLIP's SimCLR view (Mu et al. 2021, the SLIP repository's augmentation): random resized
    crop 0.08-1, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2, Gaussian blur
    (sigma 0.1-2) p 0.5, horizontal flip, then the model's normalisation."""
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=scale),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([PILGaussianBlur((0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
