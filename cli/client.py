"""What every client command shares: the API URL and admin token (options, else the settings),
one HTTP call with errors printed for a person, the exit codes, ``--json`` output, and the
option types.

Exit codes (docs/cli.md): 0 done; 1 the command itself failed (e.g. a bulk load's batch); 2 a
usage error found before any request (click's: a bad option, an invalid choice, a missing
token); 3 the API could not be reached (the message names the URL that was tried); 4 the API
refused the request (any 4xx or 5xx; its status and ``detail`` are printed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4

ApiOpt = Annotated[
    str | None,
    typer.Option("--api", help="Base URL of the API (default: HOTREFRESH_API_URL).", show_default=False),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="Admin token (default: HOTREFRESH_ADMIN_TOKEN).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON instead of text.")]


def resolve_client(api: str | None, token: str | None) -> tuple[str, str | None]:
    """The API URL and admin token a client command uses: its options, else the settings."""
    from service.settings import get_settings

    settings = get_settings()
    return (api or settings.api_url).rstrip("/"), (token or settings.admin_token or None)


def client(url: str, token: str | None, timeout: float = 30.0) -> Any:
    """An ``httpx.Client`` for the resolved ``url`` (bearer ``token`` when there is one)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=timeout)


def unreachable(url: str, exc: Exception) -> NoReturn:
    """Print why ``url`` could not be reached and exit with :data:`EXIT_UNREACHABLE`."""
    typer.secho(f"cannot reach the API at {url}: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(EXIT_UNREACHABLE)


def refused(response: Any) -> NoReturn:
    """Print the API's refusal (its status and ``detail``) and exit with :data:`EXIT_REFUSED`."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    request = response.request
    typer.secho(
        f"error {response.status_code} from {request.method} {request.url}: {detail}", fg=typer.colors.RED, err=True
    )
    raise typer.Exit(EXIT_REFUSED)


def send(url: str, token: str | None, method: str, path: str, timeout: float = 30.0, **kw: Any) -> Any:
    """One request to the resolved ``url``; the response when it is a success, else the exit
    that says which of the two failures it was."""
    import httpx

    try:
        with client(url, token, timeout) as c:
            r = c.request(method, path, **kw)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:  # the URL itself, not the server
        typer.secho(f"invalid API URL {url!r}: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except httpx.HTTPError as exc:
        unreachable(url, exc)
    if r.status_code >= 400:
        refused(r)
    return r


def call(api: str | None, token: str | None, method: str, path: str, **kw: Any) -> Any:
    """One request with the options' (else the settings') URL and token; the JSON answer, or
    None for an empty one (204)."""
    url, token = resolve_client(api, token)
    r = send(url, token, method, path, **kw)
    return r.json() if r.content else None


def require_token(token: str | None) -> str:
    """An admin command's token; a usage error (2) before any request when there is none."""
    if not token:
        raise typer.BadParameter("no admin token: pass --token or set HOTREFRESH_ADMIN_TOKEN", param_hint="--token")
    return token


def emit(doc: Any, as_json: bool, text: Callable[[Any], Any]) -> None:
    """``doc`` as JSON (``--json``), else what ``text`` makes of it: a string, or a rich
    renderable (a table)."""
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    out = text(doc)
    if isinstance(out, str):
        typer.echo(out)
        return
    from rich.console import Console

    Console().print(out)
