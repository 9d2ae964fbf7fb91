"""``hotrefresh models list | register``: the API's model registry (``/models``). The first model
registered becomes the gallery and query model; later ones are upgrade targets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.client import ApiOpt, JsonOpt, TokenOpt, call, emit

models_app = typer.Typer(help="The model registry: list and register encoders.", no_args_is_help=True)


def _table(doc: dict) -> Any:
    from rich.table import Table

    t = Table("name", "arch", "dim", "trained with", "compatible with", "serving", expand=False)
    for m in doc["models"]:
        roles = [r for r, on in (("gallery", m["is_gallery_model"]), ("query", m["is_query_model"])) if on]
        t.add_row(
            m["name"],
            m["arch"],
            str(m["embedding_dim"]),
            m["trained_with"],
            m["compatible_with"] or "-",
            ", ".join(roles),
        )
    if not doc["models"]:
        t.caption = "no models registered"
    return t


@models_app.command("list")
def list_models(as_json: JsonOpt = False, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Every registered model, and which serve the gallery and the queries."""
    emit(call(api, token, "GET", "/models"), as_json, _table)


@models_app.command("register")
def register(
    path: Annotated[
        str | None,
        typer.Option(
            "--path",
            help="An encoder already in the server's model directory (HOTREFRESH_MODEL_DIR).",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            exists=True,
            dir_okay=False,
            help="Or: an encoder file on this machine to upload (a checkpoint or a TorchScript encoder).",
            show_default=False,
        ),
    ] = None,
    metadata: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="With --file, a TorchScript encoder's metadata (JSON), unless the archive carries it.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Register an encoder (POST /models): one in the model directory, or one uploaded."""
    if (path is None) == (file is None):
        raise typer.BadParameter("give exactly one of --path and --file", param_hint="--path / --file")
    if metadata is not None and file is None:
        raise typer.BadParameter("--metadata goes with --file", param_hint="--metadata")
    if path is not None:
        doc = call(api, token, "POST", "/models", data={"path": path})
    else:
        assert file is not None
        with file.open("rb") as encoder:
            parts: list[tuple[str, Any]] = [("file", (file.name, encoder, "application/octet-stream"))]
            if metadata is not None:
                parts.append(("metadata", (metadata.name, metadata.read_bytes(), "application/json")))
            doc = call(api, token, "POST", "/models", files=parts)
    emit(doc, as_json, lambda m: f"registered {m['name']} ({m['arch']}, {m['embedding_dim']} dimensions)")
