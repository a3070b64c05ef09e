"""The `vlp` command: its help, the dispatch over the commands (vlp.commands, one module each),
and what every command shares: warnings and logs set up once, a user error (VLPError) printed as
one line ``vlp: error: ...`` with exit status 2, a distributed run left cleanly.

    vlp --help                                    the commands, and how to train
    vlp recipes                                   list the recipes
    vlp fit --recipe clip_tiny [--trainer.max_steps 50 --data.batch_size 16 ...]
    vlp eval --ckpt PATH --task NAME              (and the other commands: vlp --help)

``run_cli(argv)`` is `vlp` without the set-up and the error handling (tests, benchmarks);
``run_cli(argv, run=False)`` builds a recipe's model, data and trainer without training
(vlp.fit_cli).
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
import warnings

from vlp import commands
from vlp.errors import VLPError


def usage() -> str:
    """`vlp --help`: every command's help line (vlp.commands), then fit's usage: most runs are fits."""
    from vlp.commands import fit

    rows = commands.table()
    width = max(len(name) for name, _ in rows)
    listed = "".join(f"  {name:<{width}}  {line}\n" for name, line in rows)
    return ("usage: vlp COMMAND [options]\n\n"
            "Contrastive vision-language pretraining (CLIP and its family) from YAML recipes.\n\n"
            f"commands:\n{listed}\n{fit.USAGE}")


def _front_door(argv: list[str]) -> bool:
    """vlp's own help and the command checks; True when it answered (help printed)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        return True
    command = argv[0]
    if command in ("validate", "test", "predict"):
        raise VLPError(f"`vlp {command}` is not a vlp command: evaluate a checkpoint with `vlp eval --ckpt PATH "
                       "--task NAME` (the tasks: `vlp eval --list`)")
    names = commands.names()
    if not command.startswith("-") and command not in names:
        close = difflib.get_close_matches(command, names, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise VLPError(f"unknown command '{command}'{hint} (the commands: {', '.join(names)}; see `vlp --help`)")
    return False


def run_cli(argv: list[str], run: bool = True):
    """Run the command line ``argv`` (without the program name); returns what the command made
    (for `vlp fit`, the LightningCLI).

    ``run=False`` builds the model, data and trainer of the options (``--recipe NAME ...``, no
    command) without training (tests, benchmarks).
    """
    if run and _front_door(argv):
        return None
    if not run or argv[0].startswith("-"):  # options before any command: LightningCLI's own form
        from vlp.fit_cli import lightning_cli

        return lightning_cli(argv, run)
    return commands.load(argv[0]).main(argv[1:])


class _DropAdvert(logging.Filter):
    """Lightning advertises cloud services at every start; vlp runs offline."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip:" not in record.getMessage()


def main(argv: list[str] | None = None) -> None:
    """The console script `vlp` (``argv``: the arguments after the program name, sys.argv's by default)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # nohup / SLURM logs: each line as it is printed
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # Known and handled: the stream gives every worker its own shards and a fixed length.
    warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    # vlp.step.PlainStep returns None on purpose to skip a non-finite step (counted and logged)
    warnings.filterwarnings("ignore", message="`training_step` returned `None`")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvert())
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.stream = sys.stderr  # the stderr of this call, not of the first import
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        run_cli(argv)
    except VLPError as e:
        print(f"vlp: error: {e}", file=sys.stderr)
        _leave_distributed(2)
        sys.exit(2)
    except SystemExit as e:  # e.g. a run stopped by a signal
        _leave_distributed(e.code if isinstance(e.code, int) else 1)
        raise
    _leave_distributed(0)


def _leave_distributed(code: int) -> None:
    """After a distributed run (a process group exists): destroy the process group and leave
    with ``code`` without the interpreter's teardown, where gloo's threads now and then abort a
    finished run ("terminate called without an active exception", exit status -6 instead of 0).
    Everything of the run is written by then (checkpoints, logs, the printed summary, flushed
    here). In a one-process run this returns and the caller goes on as usual."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - leaving anyway; the run's own outcome is what counts
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
