"""The work of `vlp eval` (its command line: vlp.commands.eval): load a checkpoint of `vlp fit`
for evaluation, run tasks on it and write one JSON per (checkpoint, task), merge the JSONs into
one table across checkpoints.
"""

from __future__ import annotations

import copy
import csv
import datetime
import fnmatch
import io
import json
import platform
import typing
from pathlib import Path

import torch

from vlp.build import build
from vlp.data.eval_set import EvalData
from vlp.errors import VLPError
from vlp.eval.tasks import builtin_tasks, headline, load_task, task_summary


def select_tasks(specs: list[str]) -> list[str]:
    out = []
    names = builtin_tasks()
    for spec in specs:
        if any(ch in spec for ch in "*?[") and not Path(spec).suffix:
            matched = fnmatch.filter(names, spec)
            if not matched:
                raise VLPError(f"task pattern '{spec}' matches no built-in task (see `vlp eval --list`)")
            out += matched
        else:
            out.append(spec)
    return list(dict.fromkeys(out))


def saved_tokenizer(spec, where: str, key: str = "tokenizer"):
    """The run's tokenizer (or, with ``key="text_renderer"``, its text renderer) from its saved
    ``data.<key>`` (a class_path / init_args mapping, built as the CLI built it, against the
    DataModule's type), or None."""
    from vlp.data.datamodule import VLPDataModule

    if not isinstance(spec, dict):
        return spec
    return build(spec, typing.get_type_hints(VLPDataModule.__init__).get(key, object), where)


def read_checkpoint(path: str):
    """(checkpoint dict, what ``load_from_checkpoint`` reads) of a checkpoint file, or of a
    sharded checkpoint directory (DeepSpeed, FSDP2), consolidated in memory
    (vlp.checkpointing.consolidate; `vlp convert` writes the same to a file)."""
    from vlp.checkpointing import consolidate, sharded_kind

    if Path(path).is_dir():
        if sharded_kind(path) is None:
            raise VLPError(f"checkpoint {path} is a directory, neither a DeepSpeed nor an FSDP2 checkpoint")
        ckpt = consolidate(path)
        buffer = io.BytesIO()
        torch.save(ckpt, buffer)
        buffer.seek(0)
        return ckpt, buffer
    if not Path(path).is_file():
        raise VLPError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise VLPError(f"checkpoint {path} cannot be read: {type(e).__name__}: {e}") from None
    return ckpt, path


def load_for_eval(path: str, device: str = "cpu"):
    """A checkpoint of `vlp fit` (a file, or a DeepSpeed / FSDP2 checkpoint directory) ->
    (module in eval mode, EvalData, info dict)."""
    from vlp.data.text_spec import bind_parts
    from vlp.data.tokenizer import TextTokenizer
    from vlp.module import VLPModule, upgrade_checkpoint

    ckpt, source = read_checkpoint(path)
    hp = upgrade_checkpoint(ckpt).get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    towers = hp.get("towers")
    if not isinstance(towers, dict) or not isinstance(towers.get("image"), dict):
        raise VLPError(f"checkpoint {path} holds no vlp model config (was it written by `vlp fit`?)")
    # the weights come from the checkpoint: do not read the run's pretrained files again
    tower = copy.deepcopy(towers["image"])
    init_args = tower.setdefault("init_args", {})
    for key, value in (("pretrained_path", None), ("init_from", None), ("lock", False), ("unlocked_groups", 0),
                       ("head", "new")):
        if key in init_args:
            init_args[key] = value
    module = VLPModule.load_from_checkpoint(source, map_location="cpu", towers={**towers, "image": tower})
    module = module.to(device).eval()
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    image_args = towers["image"].get("init_args", {})
    text_args = (towers.get("text") or {}).get("init_args", {})
    # a run that rendered its captions (CLIPPO) has its texts rendered the same way
    renderer = saved_tokenizer(dm.get("text_renderer"), f"checkpoint {path}: data.text_renderer", "text_renderer")
    tokenizer = None if renderer is not None else saved_tokenizer(dm.get("tokenizer"),
                                                                  f"checkpoint {path}: data.tokenizer")
    if tokenizer is None and renderer is None:
        tokenizer = TextTokenizer(context_length=dm.get("context_length") or text_args.get("context_length", 77))
    if getattr(tokenizer, "spec", None) is not None:  # the towers mask and pool with the run's pad id
        bind_parts(module, tokenizer.spec)
    data = EvalData(tokenizer, dm.get("image_size") or image_args.get("image_size", 224), renderer=renderer)
    info = {
        "recipe": (ckpt.get("vlp") or {}).get("recipe"),
        "image_tower": image_args.get("model_name", towers["image"].get("class_path")),
        "text_tower": (towers.get("text") or {}).get("class_path"),
        "global_step": ckpt.get("global_step"),
        "epoch": ckpt.get("epoch"),
    }
    return module, data, info


def checkpoint_label(path: str) -> str:
    """``runs/clip_tiny/version_0/checkpoints/last.ckpt`` -> ``clip_tiny/version_0/last``."""
    p = Path(path).resolve()
    parts = [x for x in p.parent.parts if x != "checkpoints"][-2:]
    return "/".join([*parts, p.stem])


def evaluate(args) -> list[dict]:
    if not args.ckpt or not args.task:
        raise VLPError("eval: give --ckpt PATH and --task NAME (or --table DIR, or --list)")
    if args.name and len(args.ckpt) > 1:
        raise VLPError("eval: --name labels one checkpoint; give it once per run")
    tasks = [load_task(t) for t in select_tasks(args.task)]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for ckpt in args.ckpt:
        module, data, info = load_for_eval(ckpt, args.device)
        data.num_workers = args.num_workers
        label = args.name or checkpoint_label(ckpt)
        for task in tasks:
            r = task.run(module, data, batch_size=args.batch_size)
            record = {"label": label, "model": info, "checkpoint": str(Path(ckpt).resolve()), **r,
                      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "device": args.device, "host": platform.node()}
            path = out_dir / f"{label.replace('/', '__')}--{task.name}.json"
            path.write_text(json.dumps(record, indent=2))
            results.append(record)
            print(f"{label}  {task.name:<42} {task_summary(r)}  ({r['seconds']:.1f} s) -> {path}", flush=True)
    return results


def records_table(records: list[dict]) -> tuple[str, str]:
    """Rows (task, metric), one column per checkpoint label: markdown with the headline
    metrics (in %) and CSV with every metric (fractions)."""
    labels = list(dict.fromkeys(r["label"] for r in records))
    cell = {(r["task"], m, r["label"]): v for r in records for m, v in r["metrics"].items()}
    tasks = sorted({r["task"] for r in records})
    by_task = {r["task"]: r for r in records}
    md = ["| task | metric | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    rows_csv = []
    for t in tasks:
        for m in headline(by_task[t]):
            vals = [cell.get((t, m, lab)) for lab in labels]
            md.append(f"| {t} | {m} | " + " | ".join("" if v is None else f"{100 * v:.1f}" for v in vals) + " |")
        for m in dict.fromkeys(m for (tt, m, _) in cell if tt == t):
            rows_csv.append([t, m, *[cell.get((t, m, lab), "") for lab in labels]])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["task", "metric", *labels])
    w.writerows(rows_csv)
    return "Metrics in % (vlp eval --table).\n\n" + "\n".join(md) + "\n", buf.getvalue()


def merge_table(folder: str) -> tuple[str, str]:
    """The table of every result JSON under ``folder``, written to ``folder/results.md`` and
    ``folder/results.csv``."""
    root = Path(folder)
    if not root.is_dir():
        raise VLPError(f"eval: --table {folder} is not a folder")
    records = []
    for f in sorted(root.rglob("*.json")):
        try:
            r = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(r, dict) and {"task", "metrics", "label"} <= r.keys():
            records.append(r)
    if not records:
        raise VLPError(f"eval: no vlp eval result files (*.json) under {folder}")
    markdown, table_csv = records_table(records)
    (root / "results.md").write_text(markdown)
    (root / "results.csv").write_text(table_csv)
    return markdown, table_csv
