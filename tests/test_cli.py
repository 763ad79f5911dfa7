"""The `metaseg` dispatcher itself: what a user sees when a subcommand cannot be loaded."""
from __future__ import annotations

import importlib

import pytest

from metaseg import cli


@pytest.fixture
def broken_synth(monkeypatch):
    """`metaseg.commands.synth` fails to import as it would with a dependency missing."""
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "metaseg.commands.synth":
            raise ModuleNotFoundError("No module named 'diffusers'", name="diffusers")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(cli.importlib, "import_module", fake)


def test_subcommand_that_fails_to_import_names_the_import_error_in_one_line(broken_synth, capsys):
    assert cli.main(["synth", "train", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice" not in err and "Traceback" not in err
    assert "synth" in err and "metaseg.commands.synth" in err and "No module named 'diffusers'" in err


def test_other_subcommands_still_work_when_one_fails_to_import(broken_synth, capsys):
    assert cli.main(["data", "list"]) == 0
    assert "isic" in capsys.readouterr().out
    assert cli.main(["--help"]) == 0  # main returns the exit code (usage errors and --help included)
    assert "unavailable" in capsys.readouterr().out
