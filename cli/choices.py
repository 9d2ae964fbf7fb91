"""Options whose values are one of a list the service defines: query plans
(``models.plans.requestable``), backfill orders (``models.uncertainty.ordering_names``) and
upgrade states (``service.states.STATES``).

The lists are read from those registries, never copied here, and only when needed: reading the
plan registry imports torch (a second), so building every command at start-up must not. A value
is checked by the option's parser (a usage error, exit 2, naming the valid values, before any
request), and a command made with ``cls=ChoicesCommand`` fills the lists into its help when the
help is shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand


def _plans() -> tuple[str, ...]:
    from models.plans import requestable

    return requestable()


def _strategies() -> tuple[str, ...]:
    from models.uncertainty import ordering_names

    return ordering_names()


def _states() -> tuple[str, ...]:
    from service.states import STATES

    return STATES


def _log_levels() -> tuple[str, ...]:
    return ("debug", "info", "warning", "error", "critical")


# placeholder in an option's help -> the values it stands for
_LISTS: dict[str, Callable[[], tuple[str, ...]]] = {
    "{plans}": _plans,
    "{strategies}": _strategies,
    "{states}": _states,
    "{log_levels}": _log_levels,
}


def _one_of(placeholder: str, case_sensitive: bool = True) -> Callable[[str], str]:
    load = _LISTS[placeholder]

    def parse(value: str) -> str:
        choices = load()
        found = value if case_sensitive else value.lower()
        if found not in choices:
            raise typer.BadParameter(f"{value!r} is not one of: {', '.join(choices)}")
        return found

    return parse


plan = _one_of("{plans}")
strategy = _one_of("{strategies}")
state = _one_of("{states}")
log_level = _one_of("{log_levels}", case_sensitive=False)


class ChoicesCommand(TyperCommand):
    """A command whose options' help may name a list (``{plans}``, ``{strategies}``,
    ``{states}``, ``{log_levels}``), filled in from the registry when the help is shown."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            text = getattr(param, "help", None)
            for placeholder, load in _LISTS.items():
                if text and placeholder in text:
                    text = text.replace(placeholder, ", ".join(load()))
                    param.help = text  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)
