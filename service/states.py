"""The upgrade state machine (docs/design.md), as data: which action may move which state where.

``scoring -> running <-> paused -> completed -> committed``; ``cancelled``, ``rolled_back``,
``failed`` and ``committed`` are terminal. Every transition is one conditional SQL ``UPDATE ...
WHERE state IN (allowed)``, so two processes racing (an operator's rollback and a worker's
completion, say) serialise in the database and exactly one wins; the loser sees a conflict.
"""

from __future__ import annotations

from service.errors import Conflict

SCORING = "scoring"
RUNNING = "running"
PAUSED = "paused"
COMPLETED = "completed"
COMMITTED = "committed"
CANCELLED = "cancelled"
ROLLED_BACK = "rolled_back"
FAILED = "failed"

STATES = (SCORING, RUNNING, PAUSED, COMPLETED, COMMITTED, CANCELLED, ROLLED_BACK, FAILED)
TERMINAL = (COMMITTED, CANCELLED, ROLLED_BACK, FAILED)
# An upgrade in one of these owns the gallery: a second one may not start, old vectors stay.
ACTIVE = (SCORING, RUNNING, PAUSED, COMPLETED)
# The backfill is over (a completed upgrade waits only for a commit or a rollback): the upgrade's
# live gauges (service.metrics.remove_upgrade) go with it.
BACKFILL_OVER = (COMPLETED, *TERMINAL)
# States in which a worker batch may still land its results (a batch in flight when the
# operator pauses finishes; one in flight at rollback/cancel is discarded by the row lock).
BATCH_MAY_COMMIT = (RUNNING, PAUSED)
# States in which the upgrade's own work is over: no task will be added or change status again, so
# its counts are taken once, on the way in (``repositories.upgrades.transition``), and its view
# and the history (GET /upgrades) read them from the row instead of counting every task.
FINISHED = (COMPLETED, *TERMINAL)
# States in which the backfill's throttle may be changed: the backfill is still to come or going on.
THROTTLEABLE = (SCORING, RUNNING, PAUSED)

# action -> (states it is allowed from, state it leads to)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    # operator actions (HTTP)
    "pause": ((RUNNING,), PAUSED),
    "resume": ((PAUSED,), RUNNING),
    # cancel abandons an unfinished upgrade: like rollback, every item returns to the old model
    "cancel": ((SCORING, RUNNING, PAUSED), CANCELLED),
    "rollback": ((SCORING, RUNNING, PAUSED, COMPLETED), ROLLED_BACK),
    "commit": ((COMPLETED,), COMMITTED),
    # system actions (workers)
    "scored": ((SCORING,), RUNNING),
    "complete": ((RUNNING,), COMPLETED),
    "guardrail": ((RUNNING,), PAUSED),
    "fail": ((SCORING, RUNNING, PAUSED), FAILED),
}
OPERATOR_ACTIONS = ("pause", "resume", "cancel", "rollback", "commit")


class TransitionError(Conflict):
    """The action is not allowed from the upgrade's current state (HTTP 409)."""

    def __init__(self, upgrade_id: int, action: str, state: str | None) -> None:
        allowed = ", ".join(TRANSITIONS[action][0]) if action in TRANSITIONS else "-"
        super().__init__(f"cannot {action} upgrade {upgrade_id} in state {state!r} (allowed from: {allowed})")
        self.upgrade_id = upgrade_id
        self.action = action
        self.state = state
