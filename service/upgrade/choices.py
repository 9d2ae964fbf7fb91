"""The names an upgrade's fields take, as pydantic types whose JSON schema lists them as an enum:
its state (``service.states``), its backfill strategy (``models.uncertainty``'s registry) and its
query plan (``models.plans``' registry, or ``auto``).

The lists are read when a schema is generated and a request validated, not copied at import, so
a plan or an ordering registered later is accepted and listed. The request types refuse any
other name (422); the response types only document the values (an upgrade stored under a plan
no longer registered can still be read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from models import plans as plan_registry
from models import uncertainty
from service.states import STATES


@dataclass(frozen=True)
class Listed:
    """Annotated metadata: the schema's ``enum`` is ``choices()`` at the time it is generated."""

    choices: Callable[[], tuple[str, ...]]

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = handler(schema)
        out["enum"] = list(self.choices())
        return out


def one_of(choices: Callable[[], tuple[str, ...]], what: str) -> Callable[[str], str]:
    """A validator against a registry read when the request arrives."""

    def check(value: str) -> str:
        if value not in choices():
            raise ValueError(f"unknown {what} {value!r}; expected one of {list(choices())}")
        return value

    return check


def _states() -> tuple[str, ...]:
    return STATES


# Responses: documented as enums.
UpgradeState = Annotated[str, Listed(_states)]
Strategy = Annotated[str, Listed(uncertainty.ordering_names)]
Plan = Annotated[str, Listed(plan_registry.requestable)]

# Requests: an enum that refuses anything else.
StrategyName = Annotated[Strategy, AfterValidator(one_of(uncertainty.ordering_names, "strategy"))]
PlanName = Annotated[Plan, AfterValidator(one_of(plan_registry.requestable, "plan"))]
StateName = Annotated[UpgradeState, AfterValidator(one_of(_states, "state"))]

__all__ = ["Listed", "Plan", "PlanName", "StateName", "Strategy", "StrategyName", "UpgradeState", "one_of"]
