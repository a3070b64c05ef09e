"""`vlp recipes`: the shipped recipes, one line each (name, description); `vlp fit --recipe NAME`
runs one. Where they are found and how they merge: vlp.recipes."""

from __future__ import annotations

from vlp.commands._parser import CommandParser

HELP = "list the shipped recipes"


def main(argv: list[str]) -> list[tuple[str, str]]:
    """The (name, description) rows, as printed."""
    from vlp.recipes import list_recipes

    CommandParser(prog="vlp recipes", description="List the shipped recipes (run one with "
                  "`vlp fit --recipe NAME`).").parse_args(argv)
    rows = list_recipes()
    width = max(len(n) for n, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return rows
