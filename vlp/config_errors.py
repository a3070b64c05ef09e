"""jsonargparse's messages about a config, made one line: the one explainer behind `vlp fit`'s
command-line errors (vlp.fit_cli) and the errors of parts built outside it (vlp.build).

jsonargparse nests its reasons: a key (``Parser key "model.optim":``), a class
(``Problem with given class_path 'X':``), a union that tries every member type and lists each
member's reason. ``explain`` walks that nesting into ``key: class: reason``, picks the member of
a union that says what is wrong, and rewrites the common phrasings (``Expected a <class
'int'>. Got value: x`` -> ``expected int, got x``)."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Sequence

UNION_MISMATCH = "Does not validate against any of the Union subtypes"
# a union member's reason that only says the value is not of that member's type: the member that
# says something else (a part's own check, a wrong key inside it) is the one worth showing
_TYPE_ONLY = ("Expected a <class", "Not a valid subclass", "Import path ")
# jsonargparse also tries a mapping's value as the path of a config file: rarely what was meant
_PATH_ALTERNATIVE = "Expected a path but"
_NESTING = re.compile(r"""(?:Parser key "([^"]+)"|Problem with given class_path '([^']+)'):\s*(.*)$""")


def explain(message: str, argv: Sequence[str] = (), hide: str | None = None) -> str:
    """One line out of jsonargparse's ``message``: the keys and classes at fault, then the reason.

    ``argv``: the command line, so that an unknown key is named as the option the user gave
    (``--model.towers.text.widht``; jsonargparse names only the last part). ``hide``: a key of
    the caller's own parser that the user never wrote (vlp.build's ``part``), left out.
    """
    where, classes, rest = _walk(str(message).splitlines(), hide)
    if not rest:
        return ": ".join(where) or "invalid arguments"
    if rest[0].strip().startswith("- "):  # several reasons: a mapping may also be a config file's path
        reasons = _members(["Errors:", *rest])
        picked = next((r for r in reasons if not r.startswith(_PATH_ALTERNATIVE)), reasons[0])
        return ": ".join([*where, explain(picked, argv)])
    reason = rest[0].strip()
    if reason.startswith(UNION_MISMATCH):
        picked = _union_member(rest)
        if picked is not None:
            return ": ".join([*where, explain(picked, argv)])
        reason = _union_types(rest)
    unknown = re.match(r"Option '([^']+)' is not accepted", reason)
    if unknown:
        given = [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0].endswith("." + unknown.group(1))]
        if given:  # the option as typed names the whole path already
            return f"unknown option {given[0]}: no such key"
        takes = _keys(classes[-1]) if classes and classes[-1] == where[-1] else []
        reason = f"unknown key '{unknown.group(1)}'" + (f" (it takes {', '.join(takes)})" if takes else "")
    required = re.match(r"the following arguments are required: (.*)", reason)
    if required and where:
        reason = f"missing key(s) {required.group(1)}"
    elif required:  # the top level of `vlp fit`: keys a recipe sets
        reason = f"{reason}: the recipe or config must set them (the shipped recipes: `vlp recipes`)"
    reason = _plain(reason).replace("Expected a ", "expected ").replace(". Got value: ", ", got ")
    return ": ".join([*where, reason])


def _walk(lines: list[str], hide: str | None) -> tuple[list[str], list[str], list[str]]:
    """(the keys and class paths the message nests into, the class paths alone, the lines after them)."""
    where, classes = [], []
    lines = [ln for ln in lines if ln.strip()]
    while lines:
        nested = _NESTING.match(lines[0].strip())
        if nested is None:
            break
        name = nested.group(1) or nested.group(2)
        if name != hide or nested.group(2):
            where.append(name)
        if nested.group(2):
            classes.append(name)
        # 'Parser key "config": Path is not a file' carries its reason on the same line
        lines = [nested.group(3), *lines[1:]] if nested.group(3) else lines[1:]
    return where, classes, lines


def _union_member(lines: list[str]) -> str | None:
    """The reason of the union member that says what is wrong: one given by ``class_path``, else
    the first that is not a plain type mismatch; None if every member is one."""
    members = _members(lines)
    for member in members:
        if member.startswith("Problem with given class_path"):
            return member
    return next((m for m in members if not m.startswith(_TYPE_ONLY)), None)


def _members(lines: list[str]) -> list[str]:
    """Each member's reason (with its nested lines) from a union message's ``Errors:`` list."""
    start = next((i for i, ln in enumerate(lines) if ln.strip() == "Errors:"), None)
    if start is None:
        return []
    items = []
    for ln in lines[start + 1:]:
        if ln.strip().startswith("Given value"):
            break
        items.append(ln)
    bullets = [len(ln) - len(ln.lstrip()) for ln in items if ln.strip().startswith("- ")]
    if not bullets:
        return []
    members: list[list[str]] = []
    for ln in items:  # a member's own bullet list (e.g. "Subclass types expect one of:") is deeper
        if ln.strip().startswith("- ") and len(ln) - len(ln.lstrip()) == min(bullets):
            members.append([ln.strip()[2:]])
        elif members:
            members[-1].append(ln)
    return ["\n".join(m) for m in members]


def _union_types(lines: list[str]) -> str:
    """``expected int or null, got abc`` / ``expected one of [str, list[str]], got 3``."""
    found = next((ln.split(":", 1)[1].strip() for ln in lines if ln.strip().startswith("Subtypes:")), "[]")
    given = next((ln.split(":", 1)[1].strip() for ln in lines if ln.strip().startswith("Given value:")), "?")
    types = _split_top(_plain(found).strip()[1:-1])
    kinds = [t for t in types if t != "NoneType"]
    expected = kinds[0] if len(kinds) == 1 else f"one of [{', '.join(kinds)}]"
    return f"expected {expected}{' or null' if len(kinds) < len(types) else ''}, got {given}"


def _split_top(text: str) -> list[str]:
    """``a, b[c, d]`` -> ``['a', 'b[c, d]']``: commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return [p for p in [*parts, current.strip()] if p]


def _plain(text: str) -> str:
    """``<class 'int'>`` -> ``int``."""
    return re.sub(r"<class '(?:builtins\.)?([\w.]+)'>", r"\1", text)


def _keys(class_path: str) -> list[str]:
    """The init arguments of the class at ``class_path`` ([] if it is not a class path)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
