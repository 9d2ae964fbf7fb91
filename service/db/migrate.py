"""Bring a database to the newest schema with Alembic, from code (``serve``, the demo, tests).

Always migrations, never ``metadata.create_all``: a database created by one must be
upgradeable by the other, so there is exactly one way a schema comes to exist.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    cfg = Config(str(_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(_ROOT / "migrations"))
    # ConfigParser interpolation: a '%' in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    # The caller (uvicorn, pytest) owns logging; don't let alembic.ini reconfigure it.
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade_head(url: str) -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


def downgrade_base(url: str) -> None:
    command.downgrade(alembic_config(url), "base")
