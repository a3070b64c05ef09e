"""Prompt template sets for zero-shot classification.

``imagenet80`` is the 80-prompt ensemble of CLIP's ImageNet evaluation (Radford et al.
2021, the notebook "Prompt_Engineering_for_ImageNet"); ``imagenet7`` is the 7-prompt
subset the same notebook found best. ``emoji`` suits the built-in emoji data. A template
marks the class name with ``{}`` (or CLIP_benchmark's ``{c}``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from vlp.errors import VLPError

IMAGENET80 = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.",
    "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.",
    "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.",
    "art of a {}.", "a sketch of the {}.", "a embroidered {}.", "a pixelated photo of a {}.",
    "itap of the {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.",
    "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.", "itap of a {}.",
    "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
]

IMAGENET7 = [
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
]

EMOJI = ["{}", "an emoji of {}", "a {} emoji"]

TEMPLATE_SETS = {"imagenet80": IMAGENET80, "imagenet7": IMAGENET7, "emoji": EMOJI, "name": ["{}"]}


def resolve_templates(spec: str | list[str], base: Path | None = None) -> list[str]:
    """A named set (``imagenet80``, ``imagenet7``, ``emoji``, ``name``), a list of templates,
    or a file: ``.txt`` (one template per line) or ``.yaml`` (a list). Relative files are
    looked up next to ``base`` (the task file) first."""
    if isinstance(spec, str):
        if spec in TEMPLATE_SETS:
            return list(TEMPLATE_SETS[spec])
        path = Path(spec)
        if base is not None and not path.is_absolute() and (base / path).is_file():
            path = base / path
        if not path.is_file():
            raise VLPError(f"templates '{spec}' is neither a template set ({', '.join(TEMPLATE_SETS)}) "
                           "nor a file")
        if path.suffix in (".yaml", ".yml"):
            spec = yaml.safe_load(path.read_text())
        else:
            spec = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not isinstance(spec, list) or not spec or not all(isinstance(t, str) for t in spec):
        raise VLPError(f"templates must be a non-empty list of strings, got {spec!r}")
    for t in spec:
        if "{}" not in t and "{c}" not in t:
            raise VLPError(f"template {t!r} has no '{{}}' (or '{{c}}') for the class name")
    return spec


def fill(template: str, name: str) -> str:
    return template.replace("{c}", name).replace("{}", name)
