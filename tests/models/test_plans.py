"""Query plans as mathematics (models.plans) and their offline curves (models.plan_curves)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.metrics import evaluate_scores
from models.plan_curves import Spaces, plan_curves
from models.plans import (
    MIN_PAIRS,
    RAW,
    REASONS,
    Calibration,
    Candidate,
    Chosen,
    PlanSpec,
    build_spec,
    choose,
    estimate_final_nfr,
    fit_calibration,
    fit_match_probability,
    fit_transform,
    fit_zscore,
    mixed_scores,
    nfr_bound,
)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_least_squares_transform_equals_the_closed_form_reference() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8))
    true_w = rng.standard_normal((8, 5))
    y = x @ true_w + 0.01 * rng.standard_normal((200, 5))
    ridge = 1e-3
    # reference: ordinary least squares on the system augmented with sqrt(ridge * n) * I
    xa = np.vstack([x, np.sqrt(ridge * len(x)) * np.eye(8)])
    ya = np.vstack([y, np.zeros((8, 5))])
    ref = np.linalg.lstsq(xa, ya, rcond=None)[0]
    t = fit_transform(x, y, "lstsq", ridge=ridge)
    assert t.weight.shape == (8, 5) and t.pairs == 200
    np.testing.assert_allclose(t.weight, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(t.weight, true_w, atol=0.01)


def test_procrustes_recovers_a_rotation_and_keeps_norms() -> None:
    rng = np.random.default_rng(1)
    rot, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    x = _unit(rng, 100, 6)
    t = fit_transform(x, x @ rot, "procrustes")
    np.testing.assert_allclose(t.weight, rot, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(t.apply(x), axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="equal dimensions"):
        fit_transform(x, x[:, :4], "procrustes")


def test_bad_transform_requests_are_refused() -> None:
    x = np.zeros((MIN_PAIRS - 1, 4))
    with pytest.raises(ValueError, match="at least"):
        fit_transform(x, x)
    with pytest.raises(ValueError, match="paired"):
        fit_transform(np.zeros((40, 4)), np.zeros((39, 4)))
    with pytest.raises(ValueError, match="unknown transform"):
        fit_transform(np.ones((40, 4)), np.ones((40, 4)), "mlp-of-dreams")


def test_the_transform_applied_to_the_query_scores_as_the_transformed_gallery() -> None:
    rng = np.random.default_rng(2)
    old, new = _unit(rng, 64, 8), _unit(rng, 64, 12)
    t = fit_transform(old, new)
    q = _unit(rng, 5, 12)
    np.testing.assert_allclose(t.query_side(q) @ old.T, q @ t.apply(old).T, rtol=1e-4, atol=1e-5)


def test_zscore_is_the_mean_and_spread_of_scores_between_distinct_items() -> None:
    rng = np.random.default_rng(3)
    v = _unit(rng, 50, 4)
    c = fit_zscore(v, sample=50)
    s = v @ v.T
    off = s[~np.eye(50, dtype=bool)]
    assert c.shift == pytest.approx(off.mean(), abs=1e-6) and c.scale == pytest.approx(off.std(), abs=1e-6)
    assert float(c.apply(torch.tensor(c.shift + 2 * c.scale))) == pytest.approx(2.0)
    assert fit_zscore(v[:1]) == RAW


def test_prob_calibration_is_the_balanced_logistic_fit_of_same_label_pairs() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, 120)
    centres = _unit(rng, 5, 8)
    v = centres[labels] + 0.6 * rng.standard_normal((120, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    c = fit_match_probability(v, labels, sample=120)
    assert c is not None
    iu = np.triu_indices(120, k=1)
    x, y = (v @ v.T)[iu][:, None], (labels[:, None] == labels[None, :])[iu]
    ref = sklearn.LogisticRegression(C=np.inf, class_weight="balanced", tol=1e-10, max_iter=10_000).fit(x, y)
    a, b = float(ref.coef_[0, 0]), float(ref.intercept_[0])
    assert 1 / c.scale == pytest.approx(a, rel=1e-3) and -c.shift / c.scale == pytest.approx(b, rel=1e-3, abs=1e-3)
    # ranking by the calibrated score is ranking by the fitted probability of a match
    s = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(torch.sigmoid(c.apply(s)), torch.sigmoid(a * s + b), atol=1e-4)


def test_prob_calibration_without_labels_falls_back_to_zscores() -> None:
    v = _unit(np.random.default_rng(5), 40, 4)
    assert fit_match_probability(v, None) is None
    assert fit_match_probability(v, np.full(40, -1)) is None  # all unlabelled
    assert fit_match_probability(v, np.zeros(40, np.int64)) is None  # one class: no negative pairs
    assert fit_calibration("prob", v, labels=None, seed=0) == fit_zscore(v, seed=0)


@pytest.mark.parametrize("calibration", ["raw", "zscore"])
def test_blend_is_the_mean_of_dual_and_transform_and_one_query_on_the_old_segment(calibration: str) -> None:
    rng = np.random.default_rng(6)
    g_old, g_new = _unit(rng, 80, 6), _unit(rng, 80, 5)
    q_old, q_new = _unit(rng, 7, 6), _unit(rng, 7, 5)
    moved = np.arange(40)
    fit = {
        "calibration": calibration,
        "old_space": g_old,
        "new_space": g_new[moved],
        "pairs": (g_old[moved], g_new[moved]),
    }
    blend, dual, transform = (build_spec(p, **fit) for p in ("blend", "dual", "transform"))
    assert blend.transform is not None and np.allclose(blend.transform.weight, transform.transform.weight)
    t = [torch.from_numpy(x) for x in (q_old, q_new, g_old, g_new)]
    none_moved = torch.zeros(80, dtype=torch.bool)
    expected = 0.5 * (mixed_scores(dual, *t, none_moved) + mixed_scores(transform, *t, none_moved))
    if calibration == "raw":  # transform's old-side calibration is the mapped one: blend's ``mapped``
        assert blend.mapped == transform.old and blend.old == dual.old
    assert torch.allclose(mixed_scores(blend, *t, none_moved), expected, atol=1e-5)
    # what a replica sends to the old segment: one query and one affine calibration
    q, cal = blend.old_queries(q_old, q_new)
    assert torch.allclose(cal.apply(torch.from_numpy(q @ g_old.T)), expected, atol=1e-5)
    # moved items are scored in the new space alone, as under every plan
    all_moved = torch.ones(80, dtype=torch.bool)
    assert torch.allclose(mixed_scores(blend, *t, all_moved), mixed_scores(dual, *t, all_moved))


def test_mixed_scores_take_each_item_from_its_own_space() -> None:
    rng = np.random.default_rng(4)
    q_old, q_new = torch.from_numpy(_unit(rng, 3, 4)), torch.from_numpy(_unit(rng, 3, 6))
    g_old, g_new = torch.from_numpy(_unit(rng, 5, 4)), torch.from_numpy(_unit(rng, 5, 6))
    moved = torch.tensor([True, False, True, False, False])
    cal_old, cal_new = Calibration(0.1, 2.0), Calibration(-0.2, 0.5)
    s = mixed_scores(PlanSpec("dual", cal_old, cal_new), q_old, q_new, g_old, g_new, moved)
    expect_old, expect_new = (q_old @ g_old.T - 0.1) / 2.0, (q_new @ g_new.T + 0.2) / 0.5
    torch.testing.assert_close(s[:, ~moved], expect_old[:, ~moved])
    torch.testing.assert_close(s[:, moved], expect_new[:, moved])
    nothing = torch.zeros(5, dtype=torch.bool)
    torch.testing.assert_close(mixed_scores(PlanSpec("dual"), q_old, q_new, g_old, g_new, nothing), q_old @ g_old.T)
    with pytest.raises(ValueError, match="dimensions"):
        mixed_scores(PlanSpec("paper"), q_old, q_new, g_old, g_new, moved)
    with pytest.raises(ValueError, match="old model's query"):
        mixed_scores(PlanSpec("dual"), None, q_new, g_old, g_new, moved)


def test_transform_without_enough_pairs_scores_old_vectors_like_dual() -> None:
    rng = np.random.default_rng(5)
    old, new = _unit(rng, 100, 4), _unit(rng, 100, 4)
    few = build_spec("transform", old_space=old, new_space=new, pairs=(old[:5], new[:5]))
    assert few.transform is None and few.old == build_spec("dual", old_space=old, new_space=new).old
    enough = build_spec("transform", old_space=old, new_space=new, pairs=(old, new))
    assert enough.transform is not None and enough.transform.pairs == 100
    assert build_spec("paper", old_space=old) == PlanSpec("paper")
    assert build_spec("dual", calibration="raw", old_space=old, new_space=new) == PlanSpec("dual")


@pytest.mark.parametrize(
    ("candidates", "target", "chosen"),
    [
        # the best mAP within the target wins
        (
            [Candidate("paper", 0.70, 0.04), Candidate("dual", 0.65, 0.0), Candidate("transform", 0.68, 0.02)],
            0.05,
            "paper",
        ),
        # a better mAP above the target does not
        (
            [Candidate("paper", 0.70, 0.09), Candidate("dual", 0.65, 0.0), Candidate("transform", 0.68, 0.02)],
            0.05,
            "transform",
        ),
        # nothing within the target: the lowest NFR
        ([Candidate("paper", 0.70, 0.09), Candidate("transform", 0.68, 0.07)], 0.05, "transform"),
        # a tie in mAP goes to the safe plan
        ([Candidate("transform", 0.65, 0.0), Candidate("dual", 0.65, 0.0)], 0.05, "dual"),
        # NFR unavailable (no old top-1 hits) counts as 0; no mAP at all: the safe plan
        ([Candidate("transform", 0.6, None), Candidate("dual", 0.5, 0.0)], 0.0, "transform"),
        ([Candidate("transform", None, None)], 0.05, "dual"),
    ],
)
def test_the_chooser_picks_by_its_rule(candidates: list[Candidate], target: float, chosen: str) -> None:
    assert choose(candidates, target).plan == chosen


@pytest.mark.parametrize(
    ("candidates", "chosen", "reason"),
    [
        # within the bound and at the old system's mAP: the best such mAP, not the better one below
        (
            [Candidate("dual", 0.58, 0.01), Candidate("transform", 0.63, 0.02), Candidate("blend", 0.66, 0.09)],
            "transform",
            "within_bound",
        ),
        # the only candidate within the bound is below the old system: the lowest NFR that keeps it
        (
            [Candidate("dual", 0.58, 0.01), Candidate("transform", 0.63, 0.09), Candidate("blend", 0.66, 0.07)],
            "blend",
            "below_old_within_bound",
        ),
        # nothing within the bound: the lowest NFR among those that keep the old mAP, not the lowest overall
        (
            [Candidate("dual", 0.55, 0.06), Candidate("transform", 0.63, 0.09), Candidate("blend", 0.61, 0.08)],
            "blend",
            "none_within_bound",
        ),
        # nothing reaches the old system's mAP: the closest to it, whatever it flips
        (
            [Candidate("dual", 0.55, 0.01), Candidate("transform", 0.59, 0.09), Candidate("blend", 0.57, 0.02)],
            "transform",
            "none_at_old_map",
        ),
        # exactly the old system's mAP keeps it
        ([Candidate("dual", 0.60, 0.0), Candidate("transform", 0.65, 0.09)], "dual", "within_bound"),
        ([Candidate("dual", None, None)], "dual", "unmeasured"),
    ],
)
def test_the_chooser_keeps_the_old_systems_map_first_and_says_why(
    candidates: list[Candidate], chosen: str, reason: str
) -> None:
    got = choose(candidates, 0.05, old_map=0.60)
    assert (got.plan, got.reason) == (chosen, reason)
    assert got.reason in REASONS


def test_without_the_old_map_the_chooser_is_the_nfr_rule_alone() -> None:
    below = [Candidate("dual", 0.55, 0.01), Candidate("transform", 0.59, 0.09)]
    assert choose(below, 0.05) == Chosen("dual", "within_bound")
    assert choose(below, 0.05, old_map=0.60) == Chosen("transform", "none_at_old_map")


def _spaces(seed: int = 0, d_old: int = 8, d_new: int = 8) -> Spaces:
    """Two classes of clustered points per space; the new space separates them better."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], 40)
    centres_old, centres_new = rng.standard_normal((3, d_old)), rng.standard_normal((3, d_new)) * 2
    g_old = centres_old[labels] + 1.2 * rng.standard_normal((120, d_old))
    g_new = centres_new[labels] + 0.8 * rng.standard_normal((120, d_new))

    def unit(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))

    q = rng.permutation(120)[:30]
    return Spaces(
        unit(g_old[q] + 0.3 * rng.standard_normal((30, d_old))),
        unit(g_new[q] + 0.3 * rng.standard_normal((30, d_new))),
        unit(g_old),
        unit(g_new),
        labels[q],
        labels,
    )


def test_plan_curves_start_as_the_old_system_and_end_as_the_new_one() -> None:
    s = _spaces()
    order = np.random.default_rng(0).permutation(120)
    curves = plan_curves(s, order, [0.0, 0.5, 1.0], ["paper", "dual", "transform", "blend", "auto"], probe_size=40)
    old = evaluate_scores(s.q_old @ s.g_old.T, s.q_labels, s.g_labels)
    new = evaluate_scores(s.q_new @ s.g_new.T, s.q_labels, s.g_labels)
    for plan in ("dual", "transform", "blend", "auto"):
        start, end = curves[plan][0], curves[plan][-1]
        assert start["map"] == pytest.approx(old.map) and start["nfr"] == 0.0
        assert end["map"] == pytest.approx(new.map)
    assert curves["auto"][0]["plan"] == "dual"
    assert set(curves["auto"][1]["candidates"]) == {"paper", "dual", "transform", "blend"}
    assert curves["auto"][1]["plan"] in {"paper", "dual", "transform", "blend"}
    assert curves["auto"][0]["reason"] == "start" and curves["auto"][1]["reason"] in REASONS
    # the estimate behind the bound is kept, and exact at 100% on the probes it searched
    assert curves["auto"][1]["nfr_bound"] == pytest.approx(curves["auto"][1]["final_nfr_estimate"] + 0.01)
    assert all(p["map_vs_old_se"] is not None and p["map_vs_old_se"] >= 0 for p in curves["auto"])


def test_plan_curves_across_dimensions_offer_no_paper_plan() -> None:
    s = _spaces(d_old=6, d_new=10)
    order = np.arange(120)
    curves = plan_curves(s, order, [0.0, 0.5, 1.0], ["dual", "transform", "auto"], probe_size=40)
    assert set(curves["auto"][1]["candidates"]) == {"dual", "transform", "blend"}
    with pytest.raises(ValueError, match="same dimension"):
        plan_curves(s, order, [0.5], ["paper"])
    with pytest.raises(ValueError, match="unknown plan"):
        plan_curves(s, order, [0.5], ["best"])


def test_the_final_nfr_estimate_is_exact_once_everything_is_backfilled() -> None:
    from models.metrics import negative_flip_rate

    rng = np.random.default_rng(8)
    labels = rng.integers(0, 4, 90)
    g_old, g_new = _unit(rng, 90, 6), _unit(rng, 90, 5)
    probes, rest = np.arange(30), np.arange(30, 90)
    exclude = probes.astype(np.int64)
    old = evaluate_scores(torch.from_numpy(g_old[probes] @ g_old.T), labels[probes], labels, exclude=exclude)
    new = evaluate_scores(torch.from_numpy(g_new[probes] @ g_new.T), labels[probes], labels, exclude=exclude)
    truth = negative_flip_rate(old.top1_correct, new.top1_correct)
    est = estimate_final_nfr(g_old[probes], g_new[probes], labels[probes], g_old[rest], g_new[rest], labels[rest])
    assert est == pytest.approx(truth)
    # mid-way only the probes and what moved are searched; without labels there is no estimate
    part = estimate_final_nfr(
        g_old[probes], g_new[probes], labels[probes], g_old[rest[:10]], g_new[rest[:10]], labels[rest[:10]]
    )
    assert part is not None and 0.0 <= part <= 1.0
    unlabelled = np.full(30, -1)
    assert estimate_final_nfr(g_old[probes], g_new[probes], unlabelled, g_old[rest], g_new[rest], labels[rest]) is None
    # the bound: the user's target when set, else the estimate plus one point, else 5%
    assert nfr_bound(0.2, 0.03) == 0.2 and nfr_bound(None, 0.03) == pytest.approx(0.04)
    assert nfr_bound(None, None) == 0.05


def test_a_plan_is_one_registered_object_and_names_are_refused_twice() -> None:
    from models.plans import UpgradeShape, candidates, get_plan, plan_names, register_plan, requestable, unregister_plan
    from models.plans.registry import Plan

    assert plan_names() == ("paper", "dual", "transform", "blend")
    assert requestable()[-1] == "auto" and "auto" not in plan_names()
    # paper only where the new model is compatible and of the same dimension
    assert candidates(UpgradeShape(same_dimension=True, compatible=True))[0] == "paper"
    assert "paper" not in candidates(UpgradeShape(same_dimension=False, compatible=True))
    assert "paper" not in candidates(UpgradeShape(same_dimension=True, compatible=False))
    with pytest.raises(ValueError, match="already registered"):
        register_plan(type(get_plan("dual")))
    with pytest.raises(ValueError, match="unknown plan 'nope'"):
        PlanSpec("nope")

    class NewOnly(Plan):
        name = "new-only-test"
        summary = "scores old vectors with the new query, raw, on any upgrade of equal dimensions"

        def refusal(self, upgrade: UpgradeShape) -> str | None:
            return None if upgrade.same_dimension else "needs equal dimensions"

        def needs_old_query(self, spec: PlanSpec) -> bool:
            return False

        def old_query(self, spec, q_old, q_new):
            return q_new, spec.old

    class TooLong(NewOnly):
        name = "x" * 17

    with pytest.raises(ValueError, match="1 to 16 characters"):
        register_plan(TooLong)
    register_plan(NewOnly)
    try:
        assert plan_names()[-1] == "new-only-test" and "new-only-test" in requestable()
        assert "new-only-test" not in candidates(UpgradeShape(same_dimension=False, compatible=False))
        rng = np.random.default_rng(9)
        g = torch.from_numpy(_unit(rng, 10, 4))
        q = torch.from_numpy(_unit(rng, 2, 4))
        spec = build_spec("new-only-test", old_space=g.numpy(), new_space=g.numpy())
        torch.testing.assert_close(mixed_scores(spec, None, q, g, g, torch.zeros(10, dtype=torch.bool)), q @ g.T)
    finally:
        unregister_plan("new-only-test")
    assert "new-only-test" not in plan_names()


def test_the_noise_of_a_curve_is_the_paired_standard_error() -> None:
    from models.plan_curves import flip_difference_se, paired_se

    ap_old = np.array([0.5, 0.7, 0.2, 0.9])
    ap = ap_old + np.array([0.1, -0.1, 0.1, -0.1])  # differences +-0.1: sd 0.1155 (ddof 1), / sqrt(4)
    assert paired_se(ap, ap_old) == pytest.approx(np.std([0.1, -0.1, 0.1, -0.1], ddof=1) / 2)
    assert paired_se(ap_old + 0.05, ap_old) == pytest.approx(0.0, abs=1e-12)  # a shift alone is no noise
    assert paired_se(ap[:1], ap_old[:1]) is None
    old = np.array([True, True, True, True, False])  # the last query does not count: old got it wrong
    a = np.array([False, True, True, True, False])  # flips query 0
    b = np.array([True, False, True, True, True])  # flips query 1
    # over the 4 queries old answered: flip_a - flip_b = (1, -1, 0, 0)
    assert flip_difference_se(old, a, b) == pytest.approx(np.std([1, -1, 0, 0], ddof=1) / 2)
    assert flip_difference_se(old, a, a) == 0.0


def test_plan_checks_report_the_final_nfr_estimates_error_and_read_the_promises_within_noise() -> None:
    from models.experiment import check_plans, estimate_errors

    def point(f: float, m: float, nfr: float, est: float | None, **extra: object) -> dict:
        return {"fraction": f, "map": m, "nfr": nfr, "final_nfr_estimate": est, **extra}

    pts = [
        point(0.0, 0.50, 0.0, 0.05, reason="start", map_vs_old_se=0.0, nfr_vs_final_se=0.01),
        point(0.5, 0.49, 0.095, 0.06, reason="none_at_old_map", map_vs_old_se=0.006, nfr_vs_final_se=0.01),
        point(1.0, 0.60, 0.07, 0.07, reason="within_bound", map_vs_old_se=0.0, nfr_vs_final_se=0.0),
    ]
    curve = {"method": "bct", "ordering": "mixed", "plan": "auto", "points": pts}
    doc = {"old_to_old": {"map": 0.50}, "curves": [curve]}
    res = check_plans(doc)["bct, mixed"]
    e, f = res["e_map_never_below_old"], res["f_nfr_within_final_plus_1pt"]
    # 0.49 is below 0.50, but within two standard errors (0.012)
    assert e["holds"] is False and e["holds_within_noise"] is True and e["se_at_lowest"] == 0.006
    # 9.5% against 7% + 1 point: over, but within two standard errors (2 points)
    assert f["holds"] is False and f["holds_within_noise"] is True and f["highest_nfr"] == 0.095
    # the estimate's error at the steps between the ends only, against the held-out final NFR
    est = res["final_nfr_estimate"]
    assert est["errors"] == {"50%": pytest.approx(-0.01)} and est["mean_error"] == pytest.approx(-0.01)
    assert res["reasons"] == ["start", "none_at_old_map", "within_bound"]
    pts[1]["nfr"] = 0.11  # 11% is beyond 8% + 2 points
    assert check_plans(doc)["bct, mixed"]["f_nfr_within_final_plus_1pt"]["holds_within_noise"] is False
    assert estimate_errors([point(0.5, 0.5, 0.0, None)], 0.07) is None  # an absolute target: no estimate


def test_seeds_aggregate_with_their_estimates_noise_and_reasons() -> None:
    from models.experiment import _holds, aggregate, check_plans

    steps = ((0.0, 0.0, "dual", "start"), (0.5, 0.06, "blend", "within_bound"), (1.0, 0.05, "dual", "within_bound"))

    def seed_doc(seed: int, est: float, se: float) -> dict:
        pts = [
            {"fraction": f, "map": 0.5 + f / 10, "top1": 0.8, "nfr": n, "plan": p, "reason": r}
            | {"final_nfr_estimate": est, "map_vs_old_se": se, "nfr_vs_final_se": se}
            for f, n, p, r in steps
        ]
        return {
            "dataset": "digits",
            "allocation": "expansion",
            "metric": "map",
            "n_queries": 10,
            "n_gallery": 20,
            "seed": seed,
            "old_to_old": {"map": 0.5, "top1": 0.8},
            "new_to_new": {"bct": {"map": 0.6, "top1": 0.9}},
            "curves": [{"method": "bct", "ordering": "mixed", "plan": "auto", "points": pts}],
        }

    docs = [seed_doc(0, 0.04, 0.03), seed_doc(1, 0.06, 0.04)]
    mean = aggregate(docs)
    mid = mean["curves"][0]["points"][1]
    assert mid["final_nfr_estimate"] == pytest.approx(0.05) and mid["reasons"] == ["within_bound", "within_bound"]
    assert mid["map_vs_old_se"] == pytest.approx(0.025)  # sqrt(0.03^2 + 0.04^2) / 2: the SE of a mean of two
    res = check_plans(mean)["bct, mixed"]
    assert res["final_nfr_estimate"]["errors"] == {"50%": pytest.approx(0.0)}
    per_seed = _holds(check_plans(docs[0])["bct, mixed"])  # the verdicts only, not the reports beside them
    assert set(per_seed) == {"e_map_never_below_old", "f_nfr_within_final_plus_1pt", "g_mean_map_4pt_above_paper"}
    assert per_seed["e_map_never_below_old"] is True and per_seed["f_nfr_within_final_plus_1pt"] is True
