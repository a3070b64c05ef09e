"""The argument parser of the commands that use argparse (every command but `vlp fit`)."""

from __future__ import annotations

import argparse

from vlp.errors import VLPError


class CommandParser(argparse.ArgumentParser):
    """argparse whose errors are ``VLPError("NAME: message")`` for a parser with ``prog="vlp NAME"``:
    `vlp` prints them as one line and exits with status 2, as it does for every user error."""

    def error(self, message: str):
        raise VLPError(f"{self.prog.removeprefix('vlp ')}: {message}")
