"""The live checkpoint, as stored in ``upgrade.checkpoints`` and as ``GET /upgrade`` serves it.

One model for the writers (the scoring run's first point, the checkpoints at a cut, the final
point at completion) and every reader (the view, the gauges); a point that no longer parses is a
``StoredRecordError`` naming the upgrade, not a ``KeyError``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from models.plans import REASONS
from service.records import Record, parse


class Checkpoint(Record):
    """One live measurement of the probe set against the mixed index, at a cut of the backfill."""

    step: int | None = Field(default=None, description="Checkpoint number (0 at start, -1 at completion).")
    fraction: float = Field(description="Share of the gallery on the new model when measured.")
    progress: float | None = Field(default=None, description="The upgrade's done / total when measured.")
    nfr: float | None = Field(default=None, description="NFR@1 (Eq. 12) of the probes; null when unavailable.")
    map: float | None = Field(default=None, description="mAP of the probes; null when unavailable.")
    top1: float | None = Field(default=None, description="Top-1 accuracy of the probes; null when unavailable.")
    at: float = Field(description="Unix time of the measurement.")
    quiesced: bool = Field(default=True, description="Whether every batch in flight had landed when measured.")
    plan: str | None = Field(default=None, description="The serving plan measured (and, under auto, chosen) here.")
    nfr_bound: float | None = Field(
        default=None,
        description="auto: the probe NFR@1 the chosen plan had to stay within at this cut (nfr_target, or "
        "the finished upgrade's NFR@1 estimated here plus one point).",
    )
    reason: str | None = Field(
        default=None,
        description="auto: why the chosen plan was chosen at this cut, one of: "
        + "; ".join(f"{code} ({why})" for code, why in REASONS.items())
        + ". Null under a fixed plan.",
    )
    candidates: dict[str, dict[str, float | None]] | None = Field(
        default=None, description="auto: every candidate plan's probe map and nfr at this cut."
    )
    # The plan fitted at this cut, for the measurer to serve; never stored with the point.
    serving_plan: dict[str, Any] | None = Field(default=None, exclude=True)

    def stored(self) -> dict[str, Any]:
        """What ``upgrade.checkpoints`` keeps of this point."""
        return self.model_dump(mode="json")


def checkpoints_of(upgrade_id: int, points: list[Any] | None) -> list[Checkpoint]:
    return [parse(Checkpoint, p, f"checkpoint {n} of upgrade {upgrade_id}") for n, p in enumerate(points or [])]
