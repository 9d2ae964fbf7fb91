"""What every client command shares (cli/client.py, cli/choices.py): an unreachable API is named
by the URL actually tried and exits 3; an invalid choice exits 2, listing the valid values,
before any request is made."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from cli.client import EXIT_UNREACHABLE, EXIT_USAGE
from cli.main import app
from models.plans import requestable
from models.uncertainty import ordering_names
from service.settings import get_settings
from service.states import STATES

runner = CliRunner(env={"COLUMNS": "400"})  # one line per message, however long


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port that accepts connections but never answers: any request shows up in its backlog."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def _connections(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def test_an_unreachable_api_from_the_environment_is_named_and_exits_3(
    monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("HOTREFRESH_API_URL", url + "/")
    get_settings.cache_clear()
    try:
        for args in (
            ["upgrade", "list"],
            ["upgrade", "status", "3"],
            ["models", "list", "--json"],
            ["gallery", "get", "x"],
        ):
            r = runner.invoke(app, args)
            assert r.exit_code == EXIT_UNREACHABLE, (args, r.output)
            assert f"cannot reach the API at {url}:" in r.output, r.output
            assert "None" not in r.output
    finally:
        get_settings.cache_clear()


def test_an_unreachable_api_given_by_option_is_named_and_exits_3(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    r = runner.invoke(app, ["upgrade", "pause", "1", "--api", url])
    assert r.exit_code == EXIT_UNREACHABLE and f"cannot reach the API at {url}:" in r.output, r.output


def test_an_invalid_choice_exits_2_listing_the_valid_values_without_a_request(listener: socket.socket) -> None:
    api = f"http://127.0.0.1:{listener.getsockname()[1]}"
    cases = [
        (["upgrade", "start", "new", "--plan", "fastest"], "--plan", requestable()),
        (["upgrade", "start", "new", "--strategy", "best"], "--strategy", ordering_names()),
        (["upgrade", "list", "--state", "sleeping"], "--state", STATES),
        (["upgrade", "list", "--limit", "0"], "--limit", ()),
        (["search", "--k", "0", __file__], "--k", ()),
    ]
    for args, option, valid in cases:
        r = runner.invoke(app, [*args, "--api", api])
        assert r.exit_code == EXIT_USAGE, (args, r.output)
        assert option in r.output, r.output
        if valid:
            assert f"is not one of: {', '.join(valid)}" in r.output, r.output
    assert _connections(listener) == 0  # refused before any request


def test_a_valid_choice_is_sent(listener: socket.socket) -> None:
    """The same listener sees the request once the values are valid (so the test above can fail)."""
    api = f"http://127.0.0.1:{listener.getsockname()[1]}"
    result: list[int] = []
    args = ["upgrade", "list", "--state", "running", "--api", api]
    command = threading.Thread(target=lambda: result.append(runner.invoke(app, args).exit_code))
    command.start()
    seen = 0
    for _ in range(600):  # the command connects, then waits for an answer that never comes
        seen += _connections(listener)
        if seen:
            break
        time.sleep(0.1)
    assert seen == 1
    command.join(60)  # its connection closed under it: no answer, so unreachable
    assert result == [EXIT_UNREACHABLE]


def test_help_lists_the_choices_and_the_defaults() -> None:
    r = runner.invoke(app, ["upgrade", "start", "--help"])
    text = " ".join(r.output.split())
    assert r.exit_code == 0
    assert ", ".join(requestable()) in text and ", ".join(ordering_names()) in text
    r = runner.invoke(app, ["upgrade", "list", "--help"])
    text = " ".join(r.output.split())
    assert ", ".join(STATES) in text and "[default: 20]" in text


def test_an_api_url_without_a_scheme_is_a_usage_error() -> None:
    r = runner.invoke(app, ["upgrade", "list", "--api", "127.0.0.1:8000"])
    assert r.exit_code == EXIT_USAGE and "invalid API URL '127.0.0.1:8000'" in r.output, r.output
