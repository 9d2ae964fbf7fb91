"""``hotrefresh upgrade throttle``'s own refusals, before any request (the command against a
live API is in tests/workers/test_throttle.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["7"], "either RATE or --unlimited"),
        (["7", "40", "--unlimited"], "either RATE or --unlimited"),
        (["7", "0"], "above 0"),
        (["7", "--", "-3"], "above 0"),
        (["7", "nan"], "above 0"),
        (["7", "inf"], "above 0"),
    ],
)
def test_a_rate_must_be_given_once_and_above_zero(args: list[str], why: str) -> None:
    # An API nobody listens on: a refusal that reached it would say "cannot reach the API".
    r = runner.invoke(app, ["upgrade", "throttle", "--api", "http://127.0.0.1:9", *args])
    assert r.exit_code == 2, r.output
    assert why in " ".join(r.output.split()), r.output


def test_start_refuses_a_rate_of_zero_before_any_request() -> None:
    r = runner.invoke(app, ["upgrade", "start", "new", "--items-per-second", "0", "--api", "http://127.0.0.1:9"])
    assert r.exit_code == 2 and "above 0" in " ".join(r.output.split()), r.output
