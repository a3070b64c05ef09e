"""Batch fields as parts: each knows how to decode its value from a raw webdataset sample, how to
collate a batch of them, and how to make an example. The training stream (vlp.data.stream) and
the eval streams (vlp.data.eval_set) use the same parts; a recipe declares the fields it needs
(``data.fields``), so labels, boxes, views or a second caption are one more entry, not an edit
of the stream, the datamodule and the eval set.

    data:
      fields:
        views: {class_path: vlp.data.fields.Views}                       # SLIP's two views
        text_zh: {class_path: vlp.data.fields.Caption, init_args: {key: labels.zh}}
        label: {class_path: vlp.data.fields.Label, init_args: {path: category, classes: [...]}}
        text: null                                                       # no caption at all

Every part is given its name (the key under ``data.fields``) and the data side's settings
(``FieldEnv``: image size and augmentation, the text input) by ``setup``. ``decode(ctx)`` reads
one sample through a ``SampleContext`` (members, the json parsed once, the image decoded once);
an unusable sample raises ``BadSample(reason)`` (skipped and counted by the training stream; an
error in an eval set), a sample without a value the recipe reads raises a one-line error naming
the field and the sample's key (or, with ``missing: skip``, is skipped and counted
``missing_field``). ``collate(values)`` returns the batch entries (usually ``{name: tensor}``;
ragged values come with a mask), ``example()`` the entries of a batch of one sample.

Decoding order: fields that read no image first (a caption can reject a sample before its image
is decoded), then the image fields, each in the order declared (the datamodule declares the
recipe's own fields before its default ``image`` and ``text``); random draws (caption choice,
templates, augmentation) come from torch's RNG, which the stream seeds per batch, so the order
is part of what makes a run reproducible.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image as PILImage

from vlp.data.decode import BadSample, decode_image, image_member, json_value, sample_json
from vlp.errors import VLPError


@dataclass
class FieldEnv:
    """What the data side gives every field: the image size and training augmentation, whether
    the stream trains (augments) or evaluates, and the text input (captions -> ``[B, L]`` ids of
    the tokenizer, or ``[B, 3, H, W]`` rendered text)."""

    image_size: int
    train: bool = True
    crop_scale: tuple[float, float] = (0.9, 1.0)
    randaugment: str | None = None
    text_input: Callable[[list[str]], torch.Tensor] | None = None
    eval_transform: Callable | None = None  # an eval stream's own image transform (None: the standard one)


class SampleContext:
    """One raw sample being decoded: its members, its json (parsed once), its image (decoded once,
    judged from its header first: ``max_pixels``, ``check_size``), the conversion counts."""

    def __init__(self, sample: dict, counts: Counter | None = None, max_pixels: int = 89_478_485,
                 check_size: Callable[[int, int], None] | None = None, filters=None):
        self.sample, self.counts = sample, counts
        self.max_pixels, self.check_size, self.filters = max_pixels, check_size, filters
        self._image: PILImage.Image | None = None

    @property
    def key(self) -> str:
        return str(self.sample.get("__key__"))

    @property
    def url(self) -> str:
        return str(self.sample.get("__url__"))

    def value(self, path: str):
        """A member's bytes (``txt``), else the value at a json path (``labels.de``); None if neither."""
        if path in self.sample and path != "json" and not path.startswith("__"):
            return self.sample[path]
        return json_value(sample_json(self.sample), tuple(path.split(".")))

    def image(self) -> PILImage.Image:
        if self._image is None:
            self._image = decode_image(self.sample[image_member(self.sample)], self.max_pixels, self.counts,
                                       self.check_size)
        return self._image


class Field:
    """Base of the field parts (see the module docstring).

    Args:
        missing: a sample without this field's value: ``error`` (one line naming the field and
            the sample's key) or ``skip`` (skipped and counted ``missing_field``).
    """

    reads_image = False  # decoded after the fields that read no image

    def __init__(self, missing: Literal["error", "skip"] = "error"):
        if missing not in ("error", "skip"):
            raise VLPError(f"missing must be error or skip, got {missing!r}")
        self.missing = missing
        self.name = "field"
        self.env: FieldEnv | None = None

    def setup(self, name: str, env: FieldEnv) -> None:
        self.name, self.env = name, env

    def entries(self) -> set[str]:
        """The batch entries it makes."""
        return {self.name}

    def decode(self, ctx: SampleContext) -> Any:
        raise NotImplementedError

    def collate(self, values: list) -> dict[str, Any]:
        raise NotImplementedError

    def example(self) -> dict[str, Any]:
        raise NotImplementedError

    def absent(self, ctx: SampleContext, path: str):
        """The sample has no value at ``path`` for this field: skip it (counted) or stop, as
        ``missing`` says."""
        if self.missing == "skip":
            raise BadSample("missing_field")
        raise VLPError(f"data field {self.name}: sample {ctx.key} in {ctx.url}: field '{path}' not found")

    def bound(self, name: str, env: FieldEnv) -> Field:
        """A copy of this part set up as the field ``name`` of a stream with ``env`` (a training
        stream and an eval stream each use their own)."""
        part = copy.copy(self)
        part.setup(name, env)
        return part


def _one_of(value):
    """A caption field's value -> one caption: a string or member bytes as they are, one string of
    a list drawn uniformly (torch's RNG), None for anything else."""
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, list):
        strings = [v for v in value if isinstance(v, str)]
        if strings:
            return strings[int(torch.randint(len(strings), ()))] if len(strings) > 1 else strings[0]
    return None


class Caption(Field):
    """A caption, as the text input of the model (token ids ``[B, L]``, or rendered ``[B, 3, H, W]``).

    The caption is ``key``: a member (``txt``) or, when the sample has no such member, a json path
    (``labels.de``); with ``keys``, one of those fields the sample has is drawn per sample,
    uniformly. A json value that is a list of strings (the emoji json's ``tags``) gives one of its
    strings, drawn uniformly. With ``templates`` (``["a {} emoji", "an emoji of {}"]``) one
    template per sample is drawn and its ``{}`` replaced by the caption. ``all``: every caption of
    the fields, as a list (eval streams: every caption of a sample is a query).

    A sample without a caption, with an empty one, or one that is not UTF-8 is skipped and counted
    (``missing_caption``, ``empty_caption``, ``caption_not_utf8``) unless ``missing: error``; the
    data's caption filters (``data.filters``: ``min_caption_chars``) apply here.

    Args:
        key, keys, templates: as above.
        raw: also put the captions as strings in the batch under this key (the datamodule's
            ``text`` field keeps them as ``caption``); None: not.
        all: every caption of ``keys`` (or ``key``), as a list per sample.
        missing: ``skip`` (default) or ``error``.
    """

    def __init__(self, key: str = "txt", keys: list[str] | None = None, templates: list[str] | None = None,
                 raw: str | None = None, all: bool = False, missing: Literal["error", "skip"] = "skip"):  # noqa: A002
        super().__init__(missing)
        if keys is not None and not keys:
            raise VLPError("caption keys is empty: give the fields to draw captions from, or leave it unset")
        if templates is not None:
            bad = [t for t in templates if not isinstance(t, str) or "{}" not in t]
            if not templates or bad:
                raise VLPError(f"caption templates: give templates with '{{}}' for the caption, got "
                               f"{bad or templates!r}")
        self.key, self.fields = key, list(keys) if keys else None
        self.templates = list(templates) if templates else None
        self.raw, self.all = raw, all

    def entries(self) -> set[str]:
        return {self.name} | ({self.raw} if self.raw else set())

    def decode(self, ctx: SampleContext):
        if self.all:
            return self._every(ctx)
        raw = self._drawn(ctx) if self.fields else _one_of(ctx.value(self.key))
        text = self._text(ctx, raw)
        if ctx.filters is not None:
            ctx.filters.check_caption(text)
        if self.templates is not None:
            template = self.templates[int(torch.randint(len(self.templates), ()))] if len(self.templates) > 1 \
                else self.templates[0]
            text = template.replace("{}", text)
        return text

    def _text(self, ctx: SampleContext, raw) -> str:
        if raw is None:
            if self.missing == "error":
                self.absent(ctx, " or ".join(self.fields or [self.key]))
            raise BadSample("missing_caption")
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadSample("caption_not_utf8") from None
        if not raw.strip():
            raise BadSample("empty_caption")
        return raw

    def _drawn(self, ctx: SampleContext):
        """One of the ``keys`` fields the sample has (members first, then json paths), drawn
        uniformly; None if it has none."""
        found = []
        for key in self.fields:
            value = ctx.value(key)
            if isinstance(value, (bytes, str)) or (isinstance(value, list) and any(isinstance(v, str) for v in value)):
                found.append(value)
        if not found:
            return None
        return _one_of(found[int(torch.randint(len(found), ()))])

    def _every(self, ctx: SampleContext) -> list[str]:
        texts = []
        for key in self.fields or [self.key]:
            value = ctx.value(key)
            if value is None:
                raise VLPError(f"data field {self.name}: sample {ctx.key} in {ctx.url}: field '{key}' not found")
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            texts += [value] if isinstance(value, str) else [str(v) for v in value]
        return texts

    def collate(self, values: list) -> dict[str, Any]:
        out = {self.name: self.env.text_input(list(values))}
        if self.raw:
            out[self.raw] = list(values)
        return out

    def example(self) -> dict[str, Any]:
        return self.collate(["a sample caption"])


class Image(Field):
    """The sample's image (``jpg``, ``jpeg``, ``png`` or ``webp`` member) as ``[B, 3, H, W]``:
    transparency composited on white, other modes converted (counted), a decompression bomb or a
    corrupt image skipped (counted); training streams augment it (random resized crop with the
    data's ``crop_scale``, RandAugment with ``data.randaugment``), eval streams resize and centre
    crop. A sample without an image is skipped (``no_image``)."""

    reads_image = True

    def __init__(self):
        super().__init__("skip")
        self.transform: Callable | None = None

    def setup(self, name: str, env: FieldEnv) -> None:
        from vlp.data.transforms import image_transform

        super().setup(name, env)
        if env.train:
            self.transform = image_transform(env.image_size, True, env.crop_scale, randaugment=env.randaugment)
        else:
            self.transform = env.eval_transform or image_transform(env.image_size, False)

    def decode(self, ctx: SampleContext) -> torch.Tensor:
        return self.transform(ctx.image())

    def collate(self, values: list) -> dict[str, Any]:
        return {self.name: torch.stack(values)}

    def example(self) -> dict[str, Any]:
        return {self.name: torch.zeros(1, 3, self.env.image_size, self.env.image_size)}


class Views(Field):
    """SLIP's two augmented views of the sample's image, ``[B, 2, 3, H, W]`` (SimCLR's
    augmentation: random resized crop of ``crop_scale``, colour jitter, grey, blur, flip; vlp.data.
    transforms.ssl_view_transform), read through the shared image tower (``model.share: {views:
    image}``) by vlp.objectives.SimCLRLoss.

    Args:
        crop_scale: area range of the views' random resized crop (SLIP: 0.08 to 1).
    """

    reads_image = True

    def __init__(self, crop_scale: tuple[float, float] = (0.08, 1.0)):
        super().__init__("skip")
        self.crop_scale = tuple(crop_scale)
        self.transform: Callable | None = None

    def setup(self, name: str, env: FieldEnv) -> None:
        from vlp.data.transforms import ssl_view_transform

        super().setup(name, env)
        self.transform = ssl_view_transform(env.image_size, self.crop_scale)

    def decode(self, ctx: SampleContext) -> torch.Tensor:
        image = ctx.image()
        return torch.stack([self.transform(image), self.transform(image)])

    def collate(self, values: list) -> dict[str, Any]:
        return {self.name: torch.stack(values)}

    def example(self) -> dict[str, Any]:
        return {self.name: torch.zeros(1, 2, 3, self.env.image_size, self.env.image_size)}


def _text_value(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


class Label(Field):
    """A class label from a member (``cls``) or a json path (``category``): with ``classes``, its
    number in that list, ``[B]`` long (a label outside the list is an error naming the sample);
    without, the raw values as a list (eval tasks map them to their class names).

    Args:
        path: the member or json path.
        classes: the class names in order (their index is the label).
        missing: ``error`` (default) or ``skip``.
    """

    def __init__(self, path: str, classes: list[str] | None = None, missing: Literal["error", "skip"] = "error"):
        super().__init__(missing)
        self.path = path
        self.classes = list(classes) if classes is not None else None
        self._index = {str(c): i for i, c in enumerate(self.classes)} if self.classes is not None else None

    def decode(self, ctx: SampleContext):
        value = _text_value(ctx.value(self.path))
        if value is None:
            return self.absent(ctx, self.path)
        if self._index is None:
            return value
        if str(value) not in self._index:
            raise VLPError(f"data field {self.name}: sample {ctx.key} in {ctx.url}: label {value!r} is not among "
                           f"its {len(self.classes)} classes")
        return self._index[str(value)]

    def collate(self, values: list) -> dict[str, Any]:
        return {self.name: torch.tensor(values, dtype=torch.long) if self._index is not None else list(values)}

    def example(self) -> dict[str, Any]:
        return {self.name: torch.zeros(1, dtype=torch.long) if self._index is not None else [self.classes or ""]}


class Tags(Field):
    """Multi-label tags (a json list of strings, e.g. the emoji json's ``tags``) as a multi-hot
    ``[B, C]`` float tensor over ``classes``; tags outside ``classes`` are dropped and counted
    (``tags_outside_classes``): a tag vocabulary is chosen, not every string is a class.

    Args:
        path: the json path of the list.
        classes: the tag vocabulary, in order.
        missing: ``error`` (default) or ``skip``.
    """

    def __init__(self, path: str, classes: list[str], missing: Literal["error", "skip"] = "error"):
        super().__init__(missing)
        if not classes:
            raise VLPError("Tags needs its classes (the tag vocabulary)")
        self.path, self.classes = path, list(classes)
        self._index = {str(c): i for i, c in enumerate(self.classes)}

    def decode(self, ctx: SampleContext) -> torch.Tensor:
        value = ctx.value(self.path)
        if not isinstance(value, list):
            return self.absent(ctx, self.path)
        hot = torch.zeros(len(self.classes))
        for tag in value:
            i = self._index.get(str(tag))
            if i is None:
                if ctx.counts is not None:
                    ctx.counts["tags_outside_classes"] += 1
                continue
            hot[i] = 1.0
        return hot

    def collate(self, values: list) -> dict[str, Any]:
        return {self.name: torch.stack(values)}

    def example(self) -> dict[str, Any]:
        return {self.name: torch.zeros(1, len(self.classes))}


class Boxes(Field):
    """Object boxes of a json list (COCO style: ``[{"bbox": [x, y, w, h], "category": "cat face"},
    ...]`` in the image's pixels), ragged per sample: collated as ``NAME [B, N, 4]`` boxes
    ``(x0, y0, x1, y1)`` normalised by the image's width and height (so they stay valid through a
    resize; a random crop would move them, so detection recipes train without one),
    ``NAME_mask [B, N]`` (True at real boxes, ``N`` the batch's most) and ``NAME_labels [B, N]``
    (the category's index in ``classes``, -1 at padding) or, without ``classes``, the category
    names as a list of lists. The image size is read from the image's header.

    Args:
        path: the json path of the list.
        box_key, label_key: the keys of a box and of its category in each entry.
        classes: the categories, in order (their index is the label); None: names.
        missing: ``error`` (default) or ``skip``.
    """

    reads_image = True  # the image's size normalises the boxes

    def __init__(self, path: str = "objects", box_key: str = "bbox", label_key: str = "category",
                 classes: list[str] | None = None, missing: Literal["error", "skip"] = "error"):
        super().__init__(missing)
        self.path, self.box_key, self.label_key = path, box_key, label_key
        self.classes = list(classes) if classes is not None else None
        self._index = {str(c): i for i, c in enumerate(self.classes)} if self.classes is not None else None

    def entries(self) -> set[str]:
        return {self.name, f"{self.name}_mask", f"{self.name}_labels"}

    def decode(self, ctx: SampleContext) -> tuple[torch.Tensor, list]:
        value = ctx.value(self.path)
        if not isinstance(value, list):
            return self.absent(ctx, self.path)
        width, height = ctx.image().size
        boxes, labels = [], []
        for entry in value:
            box = entry.get(self.box_key) if isinstance(entry, dict) else None
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                raise VLPError(f"data field {self.name}: sample {ctx.key} in {ctx.url}: a box is not "
                               f"{{{self.box_key}: [x, y, w, h], ...}}: {entry!r}"[:300])
            x, y, w, h = box
            boxes.append([x / width, y / height, (x + w) / width, (y + h) / height])
            label = entry.get(self.label_key)
            if self._index is not None:
                if str(label) not in self._index:
                    raise VLPError(f"data field {self.name}: sample {ctx.key} in {ctx.url}: category {label!r} is "
                                   f"not among its {len(self.classes)} classes")
                label = self._index[str(label)]
            labels.append(label)
        return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), labels

    def collate(self, values: list) -> dict[str, Any]:
        most = max((len(labels) for _, labels in values), default=0)
        boxes = torch.zeros(len(values), most, 4)
        mask = torch.zeros(len(values), most, dtype=torch.bool)
        for i, (b, _) in enumerate(values):
            boxes[i, : len(b)] = b
            mask[i, : len(b)] = True
        if self._index is not None:
            labels = torch.full((len(values), most), -1, dtype=torch.long)
            for i, (_, ls) in enumerate(values):
                labels[i, : len(ls)] = torch.tensor(ls, dtype=torch.long)
        else:
            labels = [list(ls) for _, ls in values]
        return {self.name: boxes, f"{self.name}_mask": mask, f"{self.name}_labels": labels}

    def example(self) -> dict[str, Any]:
        labels = torch.full((1, 1), -1, dtype=torch.long) if self._index is not None else [[]]
        return {self.name: torch.zeros(1, 1, 4), f"{self.name}_mask": torch.zeros(1, 1, dtype=torch.bool),
                f"{self.name}_labels": labels}


def decode_order(fields: dict[str, Field]) -> list[str]:
    """Names in decoding order: fields that read no image first, then the image fields, each in
    the order declared."""
    return [n for n, f in fields.items() if not f.reads_image] + [n for n, f in fields.items() if f.reads_image]


def decode_sample(fields: dict[str, Field], ctx: SampleContext, json_filter: Callable[[], None] | None = None) -> dict:
    """``{name: value}`` of one sample; ``json_filter`` runs after the fields that read no image
    and before the image is decoded (it may set ``ctx.check_size``)."""
    out = {}
    order = decode_order(fields)
    images_from = next((i for i, n in enumerate(order) if fields[n].reads_image), len(order))
    for i, name in enumerate(order):
        if i == images_from and json_filter is not None:
            json_filter()
        out[name] = fields[name].decode(ctx)
    if images_from == len(order) and json_filter is not None:
        json_filter()
    return out


def collate(fields: dict[str, Field], items: list[dict]) -> dict:
    """The batch of decoded ``items`` (``[{name: value}]``), the fields in the order declared."""
    batch: dict = {}
    for name, field in fields.items():
        batch.update(field.collate([item[name] for item in items]))
    return batch
