"""``hotrefresh gallery add | get | delete``: single items through ``/gallery`` (a whole folder or
data set: ``hotrefresh ingest``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from cli.client import ApiOpt, JsonOpt, TokenOpt, call, emit

gallery_app = typer.Typer(help="Gallery items: add, read, delete.", no_args_is_help=True)

ExternalId = Annotated[str, typer.Argument(help="The item's external id.")]


def _item_path(external_id: str) -> str:
    return "/gallery/" + quote(external_id, safe="")


@gallery_app.command("add")
def add(
    images: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="Image files, one item each.")],
    ids: Annotated[
        list[str] | None,
        typer.Option(
            "--id", help="External id of each image, in order (repeat) (default: the file names).", show_default=False
        ),
    ] = None,
    labels: Annotated[
        list[str] | None,
        typer.Option(
            "--label", help="Class label of each image, in order (repeat), or one for all.", show_default=False
        ),
    ] = None,
    as_json: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Add images to the gallery in one request (all or nothing)."""
    external = list(ids) if ids else [p.name for p in images]
    if len(external) != len(images):
        raise typer.BadParameter(
            f"{len(images)} images but {len(external)} --id values; give one per image", param_hint="--id"
        )
    tags = list(labels or [])
    if len(tags) == 1:
        tags *= len(images)
    if tags and len(tags) != len(images):
        raise typer.BadParameter(
            f"{len(images)} images but {len(tags)} --label values; give one per image, or one for all",
            param_hint="--label",
        )
    files = [("image", (p.name, p.read_bytes(), "application/octet-stream")) for p in images]
    form: dict[str, Any] = {"external_id": external}
    if tags:
        form["label"] = tags
    doc = call(api, token, "POST", "/gallery", files=files, data=form)
    emit(
        doc, as_json, lambda d: "\n".join(f"added {i['external_id']} (id {i['id']}, {i['model']})" for i in d["items"])
    )


@gallery_app.command("get")
def get(external_id: ExternalId, as_json: JsonOpt = False, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """One item: its label, its model in SQL and the segment this replica serves it from."""
    doc = call(api, token, "GET", _item_path(external_id))
    emit(
        doc,
        as_json,
        lambda d: (
            f"{d['external_id']}  label {d['label']}  model {d['model']}  served from {d['index_model']}  "
            f"added {d['created_at']}"
        ),
    )


@gallery_app.command("delete")
def delete(external_id: ExternalId, api: ApiOpt = None, token: TokenOpt = None) -> None:
    """Delete one item (its vectors, and its place in a running upgrade's queue)."""
    call(api, token, "DELETE", _item_path(external_id))
    typer.echo(f"deleted {external_id}")
