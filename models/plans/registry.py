"""The registry of query plans: each plan is one :class:`Plan` object in its own module, registered
once with :func:`register_plan` (timm's ``@register_model``, but a second plan of one name is
refused rather than silently replacing the first).

Everything that names plans reads this registry: the HTTP schema's and the CLI's choices, the
live chooser's candidates, the probes and the offline evaluator (both score through
:func:`mixed_scores`), the demo's colours. Adding a plan is one new module under
``models/plans/`` that defines and registers its class, imported by ``models/plans/__init__.py``
(or, for a plan of your own, by whatever imports it before the service starts).

A plan says, for a fitted :class:`PlanSpec`, which query embedding scores each segment and with
which :class:`~models.plans.calibration.Calibration`; the index merges those scores as they are
(``service.index.SegmentQuery`` holds the same calibration type: no conversion on the way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
import torch

from models.plans.calibration import RAW, Calibration, Scores, fit_calibration
from models.plans.linear_map import LinearMap

MAX_NAME_LENGTH = 16  # a plan's name is stored in ``upgrade.plan``, a String(16) column
AUTO = "auto"  # the chooser's name (models.plans.auto): requestable beside the plans, not one of them


@dataclass(frozen=True)
class UpgradeShape:
    """What a plan may ask of an upgrade's two models before it is allowed to serve it."""

    same_dimension: bool
    compatible: bool  # the new model is declared backward-compatible with the old one


@dataclass(frozen=True)
class FitInput:
    """What a live upgrade has at a checkpoint (and the offline evaluator at a cut): a sample of
    old vectors (``old_space``), new-model vectors (``new_space``: the probes' new embeddings and
    the items backfilled so far), the (old, new) pairs of backfilled items (``pairs``), and the
    label codes of each space's rows (``old_labels``, ``new_labels``; -1 unlabelled: ``prob``
    calibration only)."""

    calibration: str = "raw"
    old_space: np.ndarray | None = None
    new_space: np.ndarray | None = None
    pairs: tuple[np.ndarray, np.ndarray] | None = None
    transform: str = "lstsq"
    seed: int = 0
    old_labels: np.ndarray | None = None
    new_labels: np.ndarray | None = None

    def calibrate(self, vectors: np.ndarray | None, labels: np.ndarray | None = None) -> Calibration:
        v = vectors if vectors is not None else np.zeros((0, 1), np.float32)
        return fit_calibration(self.calibration, v, labels=labels, seed=self.seed)

    def old_calibration(self) -> Calibration:
        return self.calibrate(self.old_space, self.old_labels)

    def new_calibration(self) -> Calibration:
        return self.calibrate(self.new_space, self.new_labels)


@dataclass(frozen=True)
class PlanSpec:
    """One plan, fitted: its name, each space's calibration, and what the plan fitted beside them
    (T for ``transform`` and ``blend``; ``mapped``: the calibration of T-query scores)."""

    name: str
    old: Calibration = RAW  # calibration of scores against old vectors
    new: Calibration = RAW  # ... against new vectors
    transform: LinearMap | None = None
    mapped: Calibration = RAW

    def __post_init__(self) -> None:
        get_plan(self.name)  # an unknown name is refused here, with the registered choices

    @property
    def plan(self) -> Plan:
        return get_plan(self.name)

    def old_queries(self, q_old: np.ndarray | None, q_new: np.ndarray) -> tuple[np.ndarray, Calibration]:
        """The one query that scores old vectors under this plan, and its calibration: what a
        replica sends to the old segment (:func:`mixed_scores` uses the same, in torch)."""
        return self.plan.old_query(self, q_old, q_new)

    def needs_old_query(self) -> bool:
        return self.plan.needs_old_query(self)


A = TypeVar("A", np.ndarray, torch.Tensor)


class Plan:
    """A query plan. Subclasses set ``name`` and ``summary`` and define :meth:`old_query`; the
    defaults here are ``dual``'s (each space's own calibration, the new query on new vectors)."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line: the HTTP schema's and the CLI's help
    colour: ClassVar[str] = "tab:gray"  # the demo's plot
    fits_on_pairs: ClassVar[bool] = False  # fitted from backfilled (old, new) pairs: read them for it
    # Whether the backfill order should keep every prefix an unbiased sample of the gallery (a
    # fit on the items moved so far needs one); False: the hardest items first is all it needs.
    wants_unbiased_backfill: ClassVar[bool] = True

    def refusal(self, upgrade: UpgradeShape) -> str | None:
        """Why this plan cannot serve an upgrade of this shape, or None when it can."""
        return None

    def fit(self, data: FitInput) -> PlanSpec:
        return PlanSpec(self.name, data.old_calibration(), data.new_calibration())

    def needs_old_query(self, spec: PlanSpec) -> bool:
        """Whether a search under ``spec`` runs the old model's encoder too."""
        return True

    def old_query(self, spec: PlanSpec, q_old: A | None, q_new: A) -> tuple[A, Calibration]:
        raise NotImplementedError

    def new_query(self, spec: PlanSpec, q_old: A | None, q_new: A) -> tuple[A, Calibration]:
        return q_new, spec.new


def require_old_query(name: str, q_old: Scores | None) -> Scores:
    if q_old is None:
        raise ValueError(f"plan {name!r} scores old vectors with the old model's query")
    return q_old


_PLANS: dict[str, Plan] = {}

P = TypeVar("P", bound=type[Plan])


def register_plan(cls: P) -> P:
    """Class decorator: one instance of ``cls`` serves every upgrade under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH or name == AUTO:
        raise ValueError(f"a plan needs a name of 1 to {MAX_NAME_LENGTH} characters other than {AUTO!r}")
    if name in _PLANS:
        raise ValueError(f"plan {name!r} is already registered (by {type(_PLANS[name]).__module__})")
    _PLANS[name] = cls()
    return cls


def unregister_plan(name: str) -> None:
    """Take a plan out of the registry (a test's own plan, when the test ends)."""
    _PLANS.pop(name, None)


def get_plan(name: str) -> Plan:
    try:
        return _PLANS[name]
    except KeyError:
        raise ValueError(f"unknown plan {name!r}; choose from {', '.join(_PLANS)}") from None


def plan_names() -> tuple[str, ...]:
    """Every registered plan, in registration order."""
    return tuple(_PLANS)


def mixed_scores(
    spec: PlanSpec,
    q_old: torch.Tensor | None,
    q_new: torch.Tensor,
    g_old: torch.Tensor,
    g_new: torch.Tensor,
    backfilled: torch.Tensor,
) -> torch.Tensor:
    """(Q, G) scores of every query against the gallery mixed as ``backfilled`` (bool (G,)) says,
    each segment scored by the query and calibration the plan gives it, as a replica's index
    would: ``g_old[j]`` for items not backfilled, ``g_new[j]`` for the others."""
    plan = spec.plan
    q_o, cal_o = plan.old_query(spec, q_old, q_new)
    q_n, cal_n = plan.new_query(spec, q_old, q_new)
    if q_o.shape[1] != g_old.shape[1] or q_n.shape[1] != g_new.shape[1]:
        raise ValueError(f"plan {spec.name!r}: a segment's query and vectors differ in dimensions")
    return torch.where(backfilled[None, :], cal_n.apply(q_n @ g_new.T), cal_o.apply(q_o @ g_old.T))


def build_spec(
    plan: str,
    *,
    calibration: str = "raw",
    old_space: np.ndarray | None = None,
    new_space: np.ndarray | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    transform: str = "lstsq",
    seed: int = 0,
    old_labels: np.ndarray | None = None,
    new_labels: np.ndarray | None = None,
) -> PlanSpec:
    """Fit the plan named ``plan`` from what a live upgrade has at a checkpoint (:class:`FitInput`)."""
    data = FitInput(calibration, old_space, new_space, pairs, transform, seed, old_labels, new_labels)
    return get_plan(plan).fit(data)
