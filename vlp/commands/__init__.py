"""The commands of `vlp`, one module each: ``vlp/commands/NAME.py`` is ``vlp NAME``.

A command module holds

- ``HELP``: its one line in `vlp --help`;
- ``main(argv: list[str])``: runs the command on the arguments after its name and returns what
  it made (tests read it); a user error is a ``VLPError``, which `vlp` prints as one line and
  exits with status 2.

`vlp --help` imports every command module, so a module imports at its top only what its help
needs; the work's own imports (torch, Lightning, the library) go inside ``main``. Adding a
command is adding a file here; the table below is read off the package, and a module whose name
starts with ``_`` is not a command.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

FIRST = "fit"  # most runs are fits: listed first, the other commands follow by name


def names() -> list[str]:
    """The commands, ``fit`` first, the others by name. Two modules of one name (from two
    folders of the package's path) are refused rather than one shadowing the other."""
    found: dict[str, str] = {}
    for folder in __path__:
        for module in pkgutil.iter_modules([folder]):
            if module.name.startswith("_"):
                continue
            if module.name in found:
                raise ImportError(f"two modules make the command `vlp {module.name}`: in {found[module.name]} "
                                  f"and in {folder}")
            found[module.name] = folder
    return sorted(found, key=lambda name: (name != FIRST, name))


def load(name: str) -> ModuleType:
    """The module of command ``name`` (one of ``names()``), checked to be a command."""
    module = importlib.import_module(f"{__name__}.{name}")
    missing = [attr for attr in ("HELP", "main") if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"{module.__file__} is in vlp.commands but is not a command: it has no "
                        f"{' and no '.join(missing)} (see vlp/commands/__init__.py)")
    return module


def table() -> list[tuple[str, str]]:
    """(name, help line) of every command, in ``names()`` order."""
    return [(name, load(name).HELP) for name in names()]
