"""One way to load a trained model: ``load(path)`` -> the module in eval mode and the data spec it
was trained with. `vlp eval`, `vlp caption`, `vlp overlap` (and whatever loads a model next) call it.

    loaded = load("runs/clip_tiny/version_0/checkpoints/last.ckpt")
    emb = loaded.module.embed("image", images)           # [B, E], L2-normalised
    ids = loaded.data.texts(["a cat face"])              # the run's tokenizer (or renderer)

A path is a checkpoint file of `vlp fit` or `vlp convert`, or a sharded checkpoint directory
(DeepSpeed, FSDP2), consolidated in memory. The checkpoint's ``vlp`` section (schema in
vlp.checkpointing; older checkpoints are upgraded when read) holds the run's model and data
config; the module is rebuilt from it by jsonargparse, as `vlp fit` built it, with every part's
training-only settings dropped by the part itself (its classmethod ``inference_args``: a tower's
pretrained file, ``init_from`` and lock rules; the weights come from the checkpoint), and the
checkpoint's weights loaded strictly. Nothing is downloaded.

``part_state(path, "towers.image")`` reads one part's weights out of any checkpoint the loader
reads: what a part's ``init_from`` uses.
"""

from __future__ import annotations

import copy
import importlib
import typing
from dataclasses import dataclass
from pathlib import Path

import torch

from vlp.build import build
from vlp.checkpointing import upgrade_checkpoint
from vlp.data.eval_set import EvalData
from vlp.errors import VLPError


def read_checkpoint(path) -> dict:
    """The checkpoint dict of a checkpoint file or a sharded checkpoint directory (consolidated in
    memory, as `vlp convert` writes it to a file), in the current schema."""
    from vlp.checkpointing import consolidate, sharded_kind

    path = Path(path)
    if path.is_dir():
        if sharded_kind(path) is None:
            raise VLPError(f"checkpoint {path} is a directory, neither a DeepSpeed nor an FSDP2 checkpoint")
        ckpt = consolidate(path)
    elif not path.is_file():
        raise VLPError(f"checkpoint {path} does not exist")
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
            raise VLPError(f"checkpoint {path} cannot be read: {type(e).__name__}: {e}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise VLPError(f"checkpoint {path} holds no state_dict (was it written by `vlp fit`?)")
    return upgrade_checkpoint(ckpt)


def part_state(path, part: str) -> dict[str, torch.Tensor]:
    """The weights of one part of a checkpoint (``towers.image``, ``heads.decoder``), under the
    part's own names; an error when the checkpoint has none."""
    prefix = part.rstrip(".") + "."
    state = {k[len(prefix):]: v for k, v in read_checkpoint(path)["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise VLPError(f"checkpoint {path} holds no weights of {part}")
    return state


def inference_config(spec):
    """``spec`` (a config tree of ``class_path`` / ``init_args`` nodes) with every part's
    training-only settings dropped by the part's class itself (``inference_args(init_args) ->
    init_args``); other values as they are."""
    if isinstance(spec, list):
        return [inference_config(s) for s in spec]
    if not isinstance(spec, dict):
        return spec
    out = {k: inference_config(v) for k, v in spec.items()}
    cls = _class(out.get("class_path")) if isinstance(out.get("class_path"), str) else None
    if cls is not None and callable(getattr(cls, "inference_args", None)):
        out["init_args"] = cls.inference_args(dict(out.get("init_args") or {}))
    return out


def _class(class_path: str):
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None  # build() names the bad class_path


def build_module(config: dict, where: str):
    """The VLPModule of a model config (``class_path`` / ``init_args`` parts), built as `vlp fit`
    builds it, for inference (``inference_config``). The process's random state is left as it was
    (building draws initial weights, which the checkpoint's replace)."""
    from vlp.module import VLPModule

    spec = inference_config({"class_path": "vlp.module.VLPModule", "init_args": copy.deepcopy(config)})
    with torch.random.fork_rng(devices=[]):
        module = build(spec, VLPModule, f"{where}: model")
    return module


def data_spec(config: dict, where: str) -> EvalData:
    """The text and image side of a run from its data config: its tokenizer (or text renderer),
    context length and image size. Refuses a config that does not say (no default is guessed)."""
    from vlp.data.datamodule import VLPDataModule
    from vlp.data.tokenizer import TextTokenizer

    hints = typing.get_type_hints(VLPDataModule.__init__)

    def part(key: str):
        spec = config.get(key)
        return build(spec, hints[key], f"{where}: data.{key}") if isinstance(spec, dict) else None

    missing = [k for k in ("image_size",) if not isinstance(config.get(k), int)]
    renderer = part("text_renderer")  # a run that rendered its captions (CLIPPO) renders texts alike
    tokenizer = None if renderer is not None else part("tokenizer")
    if renderer is None and tokenizer is None:
        if not isinstance(config.get("context_length"), int):
            missing.append("context_length")
        else:
            tokenizer = TextTokenizer(context_length=config["context_length"])
    if missing:
        raise VLPError(f"{where}: the data config does not say its {', '.join(missing)} (written by `vlp fit`?)")
    return EvalData(tokenizer, config["image_size"], renderer=renderer)


@dataclass
class Loaded:
    """What ``load`` returns: the module (eval mode), the data spec (vlp.data.eval_set.EvalData:
    texts -> the text input, the eval image transform) and facts for results (recipe, towers,
    step, epoch)."""

    module: torch.nn.Module
    data: EvalData
    info: dict


def load(path, device: str = "cpu") -> Loaded:
    """The model of a checkpoint of `vlp fit` (a file, or a DeepSpeed / FSDP2 directory), in eval
    mode on ``device``, with the data spec it was trained with."""
    from vlp.data.text_spec import bind_parts

    where = f"checkpoint {path}"
    ckpt = read_checkpoint(path)
    saved = ckpt["vlp"]
    model, data = saved.get("model"), saved.get("data")
    if not isinstance(model, dict) or not isinstance(model.get("towers"), dict):
        raise VLPError(f"{where} holds no vlp model config (was it written by `vlp fit`?)")
    if not isinstance(data, dict):
        raise VLPError(f"{where} holds no data config (was it written by `vlp fit`?)")
    module = build_module(model, where)
    spec = data_spec(data, where)
    result = module.load_state_dict(ckpt["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise VLPError(f"{where}: its weights do not fit its model config (missing {result.missing_keys[:3]}, "
                       f"unexpected {result.unexpected_keys[:3]})")
    module.recipe = saved.get("recipe")
    if getattr(spec.tokenizer, "spec", None) is not None:  # the towers mask and pool with the run's pad id
        bind_parts(module, spec.tokenizer.spec)
    module = module.to(device).eval()
    towers = model["towers"]
    image = towers.get("image") or next(iter(towers.values()))
    info = {
        "recipe": saved.get("recipe"),
        "image_tower": (image.get("init_args") or {}).get("model_name", image.get("class_path")),
        "text_tower": (towers.get("text") or {}).get("class_path"),
        "global_step": ckpt.get("global_step"),
        "epoch": ckpt.get("epoch"),
    }
    return Loaded(module, spec, info)
