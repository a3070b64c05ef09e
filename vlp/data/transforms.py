"""CLIP image transforms (as open_clip's ``image_transform``)."""

from __future__ import annotations

from torchvision import transforms as T

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def image_transform(
    image_size: int,
    train: bool,
    scale: tuple[float, float] = (0.9, 1.0),
    mean: tuple[float, float, float] = OPENAI_MEAN,
    std: tuple[float, float, float] = OPENAI_STD,
) -> T.Compose:
    """Train: random resized crop (scale 0.9-1, bicubic). Eval: resize + center crop.

    Input: an RGB PIL image. Output: a float tensor ``[3, image_size, image_size]``.
    """
    bicubic = T.InterpolationMode.BICUBIC
    if train:
        geometry = [T.RandomResizedCrop(image_size, scale=scale, interpolation=bicubic)]
    else:
        geometry = [T.Resize(image_size, interpolation=bicubic), T.CenterCrop(image_size)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(mean, std)])
