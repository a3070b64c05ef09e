"""The work of `vlp eval` (its command line: vlp.commands.eval): load checkpoints
(vlp.inference.load), run tasks on them and write one JSON per (checkpoint, task), merge the JSONs
into one table across checkpoints.
"""

from __future__ import annotations

import csv
import datetime
import fnmatch
import io
import json
import platform
from pathlib import Path

from vlp.errors import VLPError
from vlp.eval.tasks import builtin_tasks, headline, load_task, task_summary
from vlp.inference import load


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
        loaded = load(ckpt, args.device)
        module, data, info = loaded.module, loaded.data, loaded.info
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
