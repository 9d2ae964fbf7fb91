"""Every JSON record in SQL reads back through its one model: a record the current code wrote
(and one written before a field existed) parses; one that no longer parses is a
``StoredRecordError`` that names the record, not a ``KeyError`` somewhere downstream."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from models.checkpoint import ModelMeta
from models.plans import Calibration, LinearMap, PlanSpec
from service.errors import ServiceError
from service.records import StoredRecordError, model_meta
from service.upgrade import plans, probes
from service.upgrade.records import Checkpoint, checkpoints_of


def _weights() -> np.ndarray:
    return np.arange(12, dtype=np.float32).reshape(3, 4) / 10


def test_a_serving_plan_written_before_records_had_versions_still_parses() -> None:
    w = _weights()
    written = {  # the keys the previous to_json wrote
        "name": "blend",
        "version": 3,
        "old_model": "old",
        "new_model": "new",
        "old": {"shift": 0.1, "scale": 2.0},
        "new": {"shift": -0.2, "scale": 0.5},
        "mapped": {"shift": 0.0, "scale": 1.5},
        "transform": {
            "kind": "lstsq",
            "pairs": 40,
            "shape": [3, 4],
            "weight_b64": base64.b64encode(w.astype("<f4").tobytes()).decode(),
        },
    }
    plan = plans.parse(written)
    assert plan is not None and plan.name == "blend" and plan.version == 3
    assert plan.spec.old == Calibration(0.1, 2.0) and plan.spec.mapped == Calibration(0.0, 1.5)
    assert plan.spec.transform is not None and np.array_equal(plan.spec.transform.weight, w)
    again = plans.parse(plan.to_json())
    assert again is not None and again.to_json() == plan.to_json()


def test_a_serving_plan_round_trips_and_the_index_gets_its_calibration_unchanged() -> None:
    spec = PlanSpec("transform", Calibration(0.3, 2.0), Calibration(-0.1, 0.5), LinearMap(_weights(), "lstsq", 40))
    plan = plans.ServingPlan(spec, "old", "new", version=2)
    back = plans.parse(plan.to_json())
    assert back is not None and back.to_json() == plan.to_json() and back.query_models() == ["new"]
    q = {"new": np.ones((1, 4), np.float32)}
    qp = plans.query_plan(back, q, {"old", "new"})
    by_model = {s.model: s for s in qp.segments}
    assert by_model["old"].calibration == spec.old and by_model["new"].calibration == spec.new  # no inversion
    np.testing.assert_allclose(by_model["old"].queries, q["new"] @ _weights().T, rtol=1e-6)


@pytest.mark.parametrize(
    "record",
    [
        {"name": "dual", "version": 1, "new_model": "new", "old": {}, "new": {}},  # no old_model
        {"name": "dual", "old_model": "old", "new_model": "new", "old": {"shift": "high"}},
        {"name": "no-such-plan", "old_model": "old", "new_model": "new"},
        {"name": "dual", "old_model": "old", "new_model": "new", "schema_version": 99},
    ],
)
def test_a_serving_plan_that_no_longer_parses_is_a_clear_error(record: dict) -> None:
    with pytest.raises(StoredRecordError, match=r"serving plan \(serving_state.plan\)") as e:
        plans.parse(record)
    assert isinstance(e.value, ServiceError) and e.value.status == 500


def test_a_baseline_from_before_query_plans_parses_and_a_broken_one_is_named() -> None:
    probe_set = probes.ProbeSet(np.array([4, 9]), ["a", "b"], np.eye(2, 3, dtype=np.float32))
    old_style = {k: v for k, v in probe_set.to_json().items() if v is not None}
    old_style.pop("old_queries_b64", None)
    old_style.pop("schema_version")
    old_style.update(old_top1=[True, False], old_map=0.5, map_k=None, running_since=12.5)

    class Row:
        id, baseline = 7, old_style

    record = probes.baseline_of(Row())  # type: ignore[arg-type]
    assert record is not None and record.has_probes() and not record.measures_plans()
    assert record.running_since == 12.5 and record.old_top1 == [True, False]
    assert np.array_equal(record.probe_set().queries, probe_set.queries)
    Row.baseline = {**old_style, "probe_ids": "all of them"}
    with pytest.raises(StoredRecordError, match="baseline of upgrade 7"):
        probes.baseline_of(Row())  # type: ignore[arg-type]


def test_checkpoints_old_and_broken() -> None:
    old = {"step": 0, "fraction": 0.0, "progress": 0.0, "nfr": None, "map": 0.4, "top1": 0.5, "at": 1.0}
    (point,) = checkpoints_of(3, [old])
    assert point.map == 0.4 and point.plan is None and point.quiesced  # absent: measured at a clean cut
    stored = Checkpoint(fraction=0.5, at=2.0, plan="dual", serving_plan={"name": "dual"}).stored()
    assert "serving_plan" not in stored and stored["plan"] == "dual"  # the plan to serve is not stored
    with pytest.raises(StoredRecordError, match="checkpoint 1 of upgrade 3"):
        checkpoints_of(3, [old, {"step": 1, "nfr": 0.1}])  # no fraction, no time


def test_model_metadata_reads_through_the_checkpoints_own_model() -> None:
    meta = ModelMeta("m", "conv2", 32, 10, input_size=(32, 32), resize="center_crop", extra={"format": "torchscript"})
    back = model_meta("m", meta.to_dict())
    assert back.input_size == (32, 32) and back.extra["format"] == "torchscript"
    with pytest.raises(StoredRecordError, match="stored metadata of model 'm'"):
        model_meta("m", {"arch": "conv2"})
    with pytest.raises(StoredRecordError, match="stored metadata of model 'm'"):
        model_meta("m", None)
