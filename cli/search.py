"""``hotrefresh search IMAGE``: the top-k gallery items for a query image (``POST /search``). The
query plan is the server's (an upgrade's serving plan), not a request's option."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.client import ApiOpt, JsonOpt, TokenOpt, call, emit


def _table(doc: dict) -> Any:
    from rich.table import Table

    t = Table("#", "external id", "score", "model", title=f"query model {doc['query_model']}", expand=False)
    for rank, hit in enumerate(doc["results"], 1):
        t.add_row(str(rank), hit["external_id"], f"{hit['score']:.4f}", hit["model"])
    return t


def search(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The query image.")],
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="How many results (the API sets the most).")] = 10,
    as_json: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Search the gallery with an image: the k nearest items, best first."""
    files = {"image": (image.name, image.read_bytes(), "application/octet-stream")}
    emit(call(api, token, "POST", "/search", params={"k": k}, files=files), as_json, _table)
