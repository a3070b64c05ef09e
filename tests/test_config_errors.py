"""vlp.config_errors.explain on jsonargparse's own messages: the key and class at fault, then
the reason of the union member that says what is wrong, in one line."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from jsonargparse import ArgumentParser

from vlp.config_errors import explain


@dataclass
class Rates:
    lr: float = 1e-3


class Tower:
    def __init__(self, width: int = 8):
        self.width = width


def _message(kind, value) -> str:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--part", type=kind)
    with pytest.raises(Exception) as info:  # noqa: PT011 - jsonargparse's ArgumentError and type errors alike
        parser.parse_object({"part": value})
    return str(info.value)


@pytest.mark.parametrize("kind, value, expected", [
    (int, "abc", "part: expected int, got abc"),
    (int | None, "abc", "part: expected int or null, got abc"),
    (str | list[str], 3, "part: expected one of [str, list[str]], got 3"),
    (Rates | None, {"lr": "fast"}, f"part: {__name__}.Rates: lr: expected float, got fast"),
    (Tower, {"class_path": f"{__name__}.Tower", "init_args": {"width": "wide"}},
     f"part: {__name__}.Tower: width: expected int, got wide"),
    (Tower, {"class_path": f"{__name__}.Tower", "init_args": {"widht": 3}},
     f"part: {__name__}.Tower: unknown key 'widht' (it takes width)"),
    (dict[str, Tower | None] | None, {"a": {"class_path": f"{__name__}.Tower", "init_args": {"widht": 3}}},
     f"part: {__name__}.Tower: unknown key 'widht' (it takes width)"),
])
def test_the_key_the_class_and_the_reason(kind, value, expected):
    assert explain(_message(kind, value)) == expected


def test_a_key_of_the_callers_own_parser_is_left_out():
    message = _message(Tower, {"class_path": f"{__name__}.Tower", "init_args": {"width": "wide"}})
    assert explain(message, hide="part") == f"{__name__}.Tower: width: expected int, got wide"


def test_an_unknown_key_is_named_as_the_command_line_gave_it():
    message = "Option 'widht' is not accepted"
    assert explain(message, ["fit", "--model.towers.text.widht", "3"]) == \
        "unknown option --model.towers.text.widht: no such key"
    assert explain(message) == "unknown key 'widht'"
