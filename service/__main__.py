"""``python -m service`` runs the ``hotrefresh`` CLI (used to start child processes)."""

from service.cli import app

app()
