"""``hotrefresh index rebuild`` refuses to run without the Milvus backend (its work on a real
Milvus: tests/e2e/test_milvus_backend.py and tests/service/indexport/test_milvus_publisher.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app
from service.settings import get_settings


def test_rebuild_needs_the_milvus_backend(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("HOTREFRESH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HOTREFRESH_INDEX_BACKEND", "flat")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["index", "rebuild"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "load themselves from SQL" in result.output


def test_rebuild_names_an_unreachable_milvus(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from cli.launcher import free_port

    monkeypatch.setenv("HOTREFRESH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HOTREFRESH_INDEX_BACKEND", "milvus")
    monkeypatch.setenv("HOTREFRESH_MILVUS_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HOTREFRESH_MILVUS_TIMEOUT_S", "2")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["index", "rebuild"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "rebuild failed: milvus unavailable" in result.output
