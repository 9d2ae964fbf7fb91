"""What every client command shares: the API URL and admin token (options, else the settings),
one HTTP call with errors printed for a person, and the option types."""

from __future__ import annotations

from typing import Annotated, Any

import typer

ApiOpt = Annotated[
    str | None, typer.Option("--api", help="Base URL of the API (default: HOTREFRESH_API_URL).", show_default=False)
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", help="Admin token (default: HOTREFRESH_ADMIN_TOKEN).", show_default=False)
]


def resolve_client(api: str | None, token: str | None) -> tuple[str, str | None]:
    """The API URL and admin token a client command uses: its options, else the settings."""
    from service.settings import get_settings

    settings = get_settings()
    return (api or settings.api_url).rstrip("/"), (token or settings.admin_token or None)


def client(api: str | None, token: str | None) -> Any:
    import httpx

    api, token = resolve_client(api, token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=api, headers=headers, timeout=30.0)


def call(api: str | None, token: str | None, method: str, path: str, **kw: Any) -> dict:
    import httpx

    try:
        with client(api, token) as c:
            r = c.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise typer.BadParameter(f"cannot reach the API at {api}: {exc}") from exc
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        typer.secho(f"error {r.status_code}: {detail}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    return r.json()
