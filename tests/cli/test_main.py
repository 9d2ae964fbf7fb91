"""The command line as a whole (cli/main.py): the version from the package metadata, one
spelling per option across commands, the old spellings hidden but still accepted."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from cli.client import EXIT_USAGE
from cli.main import app

runner = CliRunner(env={"COLUMNS": "400"})


def test_version_is_the_installed_packages() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"hotrefresh {version('hotrefresh')}"


def test_one_spelling_per_option_and_the_old_ones_hidden() -> None:
    for command, current, old in (("ingest", "--api", "--url"), ("worker", "--log-level", "--loglevel")):
        r = runner.invoke(app, [command, "--help"])
        assert r.exit_code == 0 and current in r.output, r.output
        assert f"{old} " not in r.output, r.output
    for command in (["serve"], ["worker"]):
        assert "--log-level" in runner.invoke(app, [*command, "--help"]).output
    for command in (["models", "list"], ["gallery", "get"], ["search"], ["upgrade", "list"], ["upgrade", "pause"]):
        r = runner.invoke(app, [*command, "--help"])
        assert "--api" in r.output and "--json" in r.output and "--url" not in r.output, (command, r.output)


def test_a_log_level_is_checked_whatever_its_spelling() -> None:
    for args in (["serve", "--log-level", "loud"], ["worker", "--log-level", "loud"], ["worker", "--loglevel", "loud"]):
        r = runner.invoke(app, args)
        assert r.exit_code == EXIT_USAGE and "debug, info, warning, error, critical" in r.output, (args, r.output)
