"""``python -m cli`` runs the ``hotrefresh`` CLI (used to start child processes)."""

from cli.main import app

app()
