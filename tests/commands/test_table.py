"""The table of commands (vlp.commands): read off the package, fit first, every command
answers --help, and a command is added by adding a module."""

import sys

import pytest

import vlp.commands
from tests.test_cli import _error_line
from vlp import commands
from vlp.cli import main, run_cli

HELLO = '''"""A throwaway command for the test: prints and returns its arguments."""

HELP = "say hello (a test's own command)"


def main(argv):
    print("hello", *argv)
    return argv
'''


@pytest.fixture
def extra_commands(tmp_path, monkeypatch):
    """A second folder of the vlp.commands package, as a plug-in would add; its modules are
    forgotten after the test."""
    monkeypatch.setattr(vlp.commands, "__path__", [*vlp.commands.__path__, str(tmp_path)])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("vlp.commands."):
            del sys.modules[name]


def test_fit_comes_first_and_the_others_follow_by_name():
    names = commands.names()
    assert names[0] == "fit" and names[1:] == sorted(names[1:])
    assert not [name for name in names if name.startswith("_")]  # vlp/commands/_parser.py is no command


@pytest.mark.parametrize("name", commands.names())
def test_every_command_has_a_help_line_and_answers_help(name, capsys):
    """A one-line HELP, and `vlp NAME --help` prints that command's own usage (named `vlp NAME`),
    successfully, with nothing on stderr."""
    help_line = commands.load(name).HELP
    assert isinstance(help_line, str) and help_line and "\n" not in help_line
    try:
        main([name, "--help"])
    except SystemExit as e:  # argparse leaves after printing its help
        assert e.code == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: vlp {name} ") and err == ""


def test_a_new_module_is_a_command_in_help_in_suggestions_and_in_dispatch(extra_commands, capsys):
    (extra_commands / "hello.py").write_text(HELLO)
    assert "hello" in commands.names() and commands.names()[0] == "fit"
    main(["--help"])
    assert "  hello    say hello (a test's own command)\n" in capsys.readouterr().out
    assert run_cli(["hello", "a", "--b"]) == ["a", "--b"]
    assert capsys.readouterr().out == "hello a --b\n"
    assert _error_line(capsys, ["helo"]).startswith("vlp: error: unknown command 'helo'; did you mean hello?")


def test_a_module_without_help_or_main_is_refused_by_name(extra_commands):
    (extra_commands / "broken.py").write_text("def main(argv):\n    return argv\n")
    with pytest.raises(TypeError, match=r"broken\.py is in vlp.commands but is not a command: it has no HELP"):
        commands.table()


def test_two_modules_of_one_name_are_refused(extra_commands):
    (extra_commands / "eval.py").write_text(HELLO)
    with pytest.raises(ImportError, match=r"two modules make the command `vlp eval`"):
        commands.names()
