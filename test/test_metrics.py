"""Tests for rsd_drive.metrics: RFS worked examples (derived by hand), ADE/FDE, risk agreement."""
import numpy as np
import pytest

from rsd_drive.metrics import (ade, constant_velocity_baseline, fde, heading_directions,
                               rater_feedback_score, risk_kl, risk_pearson, risk_topk_recall,
                               speed_scale)

T = 20
I3, I5 = 11, 19  # waypoint indices of 3 s and 5 s at 4 Hz
# Speed scale at v0 = 10 m/s: 0.5 + 0.5 * (10 - 1.4) / (11 - 1.4) = 0.5 + 0.5 * 8.6 / 9.6
S10 = 0.5 + 0.5 * 8.6 / 9.6  # = 0.947916...
LAT3, LAT5 = 1.0 * S10, 1.8 * S10  # lateral thresholds at 10 m/s: 0.9479 m, 1.70625 m
LNG3 = 4.0 * S10  # longitudinal threshold at 3 s: 3.7917 m


def straight(speed=10.0, steps=T):
    """Rated trajectory driving straight ahead: x = speed * (k + 1) / 4, y = 0."""
    out = np.zeros((steps, 2))
    out[:, 0] = speed * np.arange(1, steps + 1) / 4.0
    return out


def rfs_one(pred, rated, labels, v0=10.0, probs=None):
    """RFS of a single sample; pred is [T, 2] or [I, T, 2]."""
    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim == 2:
        pred = pred[None]
    if probs is None:
        probs = np.ones(pred.shape[0]) / pred.shape[0]
    return rater_feedback_score(pred[None], np.asarray(probs)[None], [list(rated)],
                                [np.asarray(labels, dtype=np.float64)], np.array([v0]))[0]


def test_speed_scale_clips_between_half_and_one():
    assert speed_scale(10.0) == pytest.approx(S10)
    assert speed_scale(10.0) == pytest.approx(0.9479166666)
    # Raw value at 0 m/s would be 0.5 - 0.5 * 1.4 / 9.6 = 0.427; clipped to 0.5.
    np.testing.assert_allclose(speed_scale([0.0, 1.4, 6.2, 11.0, 30.0]),
                               [0.5, 0.5, 0.75, 1.0, 1.0])


def test_heading_directions_rules():
    # 45 degrees, then a stop (zero displacement keeps 45 degrees), then straight up (+y).
    traj = np.array([[1.0, 1.0], [2.0, 2.0], [2.0, 2.0], [2.0, 5.0]])
    d = heading_directions(traj)
    r = np.sqrt(0.5)
    np.testing.assert_allclose(d, [[r, r], [r, r], [r, r], [0.0, 1.0]])
    # Never moved: the vehicle's own axis (1, 0) everywhere; moved later: (1, 0) until then.
    np.testing.assert_allclose(heading_directions(np.zeros((3, 2))), [[1, 0]] * 3)
    np.testing.assert_allclose(heading_directions([[0.0, 0.0], [0.0, -2.0]]), [[1, 0], [0, -1]])


# (a) A prediction equal to the rated trajectory: n = 0 at both horizons, score = label = 10,
# inside at both, no floor. RFS = 10.
def test_rfs_a_exact_match_scores_label():
    rated = straight()
    assert rfs_one(rated, [rated], [10]) == pytest.approx(10.0)
    assert rfs_one(rated, [rated], [7]) == pytest.approx(7.0)


# (b) Straight rated trajectory at 10 m/s, prediction offset laterally by 1.5x each horizon's
# lateral threshold: 3 s offset 1.5 * 0.9479 = 1.4219 m, 5 s offset 1.5 * 1.70625 = 2.5594 m.
# n = 1.5 at both -> 10 * 0.1**0.5 = 3.1623 per horizon, mean 3.1623. Outside at both
# horizons, so floored: max(3.1623, 4) = 4.
def test_rfs_b_outside_both_horizons_floored_at_4():
    rated = straight()
    pred = rated.copy()
    pred[I3, 1] += 1.5 * LAT3
    pred[I5, 1] += 1.5 * LAT5
    assert rfs_one(pred, [rated], [10]) == pytest.approx(4.0)
    # The same constant offset of 1.4219 m at both horizons: 3 s n = 1.5 -> 3.1623;
    # 5 s n = 1.4219 / 1.70625 = 0.833 -> inside -> 10. Mean (3.1623 + 10) / 2 = 6.5811,
    # above the floor, so it stays.
    pred = rated.copy()
    pred[:, 1] += 1.5 * LAT3
    assert rfs_one(pred, [rated], [10]) == pytest.approx((10 * 0.1 ** 0.5 + 10) / 2)


# (c) Inside at 3 s only. 3 s offset 0.5 * LAT3 -> n = 0.5 -> 10; 5 s offset 2 * LAT5 -> n = 2 ->
# 10 * 0.1 = 1. Mean 5.5; not inside at both horizons but 5.5 > 4, the floor does not bind.
# With n = 3 at 5 s: (10 + 0.1) / 2 = 5.05. With label 6: (6 + 0.6) / 2 = 3.3 -> floored to 4.
def test_rfs_c_inside_at_3s_only_average_and_floor():
    rated = straight()
    pred = rated.copy()
    pred[I3, 1] += 0.5 * LAT3
    pred[I5, 1] += 2.0 * LAT5
    assert rfs_one(pred, [rated], [10]) == pytest.approx(5.5)
    assert rfs_one(pred, [rated], [6]) == pytest.approx(4.0)
    pred[I5, 1] = rated[I5, 1] - 3.0 * LAT5  # sign does not matter: |lat|
    assert rfs_one(pred, [rated], [10]) == pytest.approx(5.05)


def test_rfs_longitudinal_uses_four_times_wider_threshold():
    # 2 m ahead at 3 s: n = 2 / 3.7917 = 0.53 -> inside -> 10. As a lateral error it would be
    # n = 2 / 0.9479 = 2.11 -> 10 * 0.1**1.11 = 0.776, mean 5.39.
    rated = straight()
    pred = rated.copy()
    pred[I3, 0] += 2.0
    assert rfs_one(pred, [rated], [10]) == pytest.approx(10.0)
    pred = rated.copy()
    pred[I3, 1] += 2.0
    assert rfs_one(pred, [rated], [10]) == pytest.approx((10 * 0.1 ** (2 / LAT3 - 1) + 10) / 2)
    # Longitudinal outside: 1.5 * LNG3 ahead -> n = 1.5 -> 3.1623 at 3 s, 10 at 5 s.
    pred = rated.copy()
    pred[I3, 0] += 1.5 * LNG3
    assert rfs_one(pred, [rated], [10]) == pytest.approx((10 * 0.1 ** 0.5 + 10) / 2)


# (d) Rated A (label 10) straight; rated B (label 6) = A shifted left by 1.2 * LAT3 at 3 s and
# 3 * LAT5 at 5 s. Prediction = B. Against B: n = 0 -> 6 at both. Against A (axes (1,0)/(0,1)):
# 3 s n = 1.2 -> 10 * 0.1**0.2 = 6.3096 > 6; 5 s n = 3 -> 10 * 0.01 = 0.1 < 6.
# Max per horizon: 6.3096 and 6 -> mean 6.1548, not 6. Inside B at both: no floor.
def test_rfs_d_max_over_rated_per_horizon():
    rated_a = straight()
    rated_b = rated_a.copy()
    rated_b[:, 1] = np.interp(np.arange(T), [0, I3, I5], [0.0, 1.2 * LAT3, 3.0 * LAT5])
    expected = (10 * 0.1 ** 0.2 + 6) / 2
    assert expected == pytest.approx(6.15479, abs=1e-5)
    assert rfs_one(rated_b, [rated_a, rated_b], [10, 6]) == pytest.approx(expected)
    # Order of the rated set does not matter.
    assert rfs_one(rated_b, [rated_b, rated_a], [6, 10]) == pytest.approx(expected)


def test_rfs_floor_needs_one_rated_trajectory_at_both_horizons():
    # A (label 2) straight, B (label 2) = A + 3 m left. Prediction on A at 3 s, on B at 5 s:
    # per horizon max = 2 (exact match) and 2 -> mean 2. Inside A at 3 s and inside B at 5 s,
    # but no single trajectory holds it at both -> floored to 4. The exact match of A scores
    # only 2: being inside a low-rated trajectory is not floored.
    rated_a = straight()
    rated_b = rated_a + np.array([0.0, 3.0])
    pred = rated_a.copy()
    pred[I5] = rated_b[I5]
    assert rfs_one(pred, [rated_a, rated_b], [2, 2]) == pytest.approx(4.0)
    assert rfs_one(rated_a, [rated_a, rated_b], [2, 2]) == pytest.approx(2.0)


# (e) Two predictions: exact match (10) with prob 0.7, the case-(b) prediction (4) with 0.3:
# 0.7 * 10 + 0.3 * 4 = 8.2. Unnormalised weights 7 and 3 give the same.
def test_rfs_e_probability_weighted_sum():
    rated = straight()
    bad = rated.copy()
    bad[I3, 1] += 1.5 * LAT3
    bad[I5, 1] += 1.5 * LAT5
    preds = np.stack([rated, bad])
    assert rfs_one(preds, [rated], [10], probs=[0.7, 0.3]) == pytest.approx(8.2)
    assert rfs_one(preds, [rated], [10], probs=[7.0, 3.0]) == pytest.approx(8.2)
    assert rfs_one(preds, [rated], [10], probs=[0.0, 1.0]) == pytest.approx(4.0)


# (f) Padding: one rated trajectory = three copies of it. Truncation: a 4th rated trajectory is
# dropped (here the exact match, label 10), leaving the best other one. Short rated
# trajectories repeat their last waypoint.
def test_rfs_f_padding_and_truncation():
    rated = straight()
    pred = rated.copy()
    pred[I3, 1] += 1.2 * LAT3
    pred[I5, 1] += 0.3 * LAT5
    one = rfs_one(pred, [rated], [8])
    assert one == pytest.approx((8 * 0.1 ** 0.2 + 8) / 2)
    assert rfs_one(pred, [rated] * 3, [8, 8, 8]) == pytest.approx(one)
    far = rated + np.array([0.0, 20.0])
    # Three far trajectories (label 3 each; n huge -> ~0 at both -> floor 4) then the match.
    assert rfs_one(rated, [far, far, far, rated], [3, 3, 3, 10]) == pytest.approx(4.0)
    # A 12-waypoint rated trajectory is extended by holding its 3 s point until 5 s.
    short = rated[:12]
    held = rated.copy()
    held[12:] = rated[11]
    assert rfs_one(held, [short], [10]) == pytest.approx(10.0)
    assert rfs_one(rated, [short], [10]) < 10.0


# (g) Low speed: v0 = 0 -> raw scale 0.427, clipped to 0.5: thresholds lat 0.5 / 0.9 m.
# Lateral 0.6 m at 3 s and 5 s: 3 s n = 1.2 -> 10 * 0.1**0.2 = 6.3096; 5 s n = 0.667 -> 10.
# Mean 8.1548 (without the clip: n = 0.6 / 0.427 = 1.405 -> 10 * 0.1**0.405 = 3.94, mean 6.97).
def test_rfs_g_low_speed_scale_clipped_at_half():
    rated = straight(speed=0.0)  # a stopped car: direction (1, 0) throughout
    pred = rated + np.array([0.0, 0.6])
    assert rfs_one(pred, [rated], [10], v0=0.0) == pytest.approx((10 * 0.1 ** 0.2 + 10) / 2)
    # Exactly on the boundary (0.5 m at 3 s, n = 1): still inside, still 10.
    pred = rated + np.array([0.0, 0.5])
    assert rfs_one(pred, [rated], [10], v0=0.0) == pytest.approx(10.0)
    # At 30 m/s the scale saturates at 1: 1.0 m lateral at 3 s is on the boundary.
    rated = straight(speed=30.0)
    assert rfs_one(rated + np.array([0.0, 1.0]), [rated], [10], v0=30.0) == pytest.approx(10.0)


# (h) Heading 90 degrees: the rated car drives along +y, so its lateral axis is -x. An error of
# 2 * LAT3 along x at 3 s is lateral (n = 2 -> 1), 10 at 5 s, mean 5.5. The same error along y
# is longitudinal (n = 2 * LAT3 / LNG3 = 0.5) -> 10.
def test_rfs_h_rotated_heading():
    rated = straight()[:, ::-1].copy()  # (0, 2.5 (k + 1))
    pred = rated.copy()
    pred[I3, 0] += 2 * LAT3
    assert rfs_one(pred, [rated], [10]) == pytest.approx(5.5)
    pred = rated.copy()
    pred[I3, 1] += 2 * LAT3
    assert rfs_one(pred, [rated], [10]) == pytest.approx(10.0)
    # Car moves along +y for 5 steps, then stops: the heading at 3 s is carried over (+y), so an
    # x error is still lateral (a (1, 0) default would call it longitudinal and score 10).
    stopped = np.zeros((T, 2))
    stopped[:, 1] = np.minimum(np.arange(1, T + 1), 5)
    pred = stopped.copy()
    pred[I3, 0] += 2 * LAT3
    assert rfs_one(pred, [stopped], [10]) == pytest.approx(5.5)


def _rfs_reference(pred, probs, rated, labels, v0):
    """Slow loop-by-loop RFS written from the definition, for a randomised cross-check."""
    out = []
    for b in range(pred.shape[0]):
        rb = list(rated[b]) + [rated[b][-1]] * 3
        lb = list(labels[b]) + [labels[b][-1]] * 3
        scale = min(max(0.5 + 0.5 * (v0[b] - 1.4) / 9.6, 0.5), 1.0)
        total = 0.0
        for i in range(pred.shape[1]):
            best = [0.0, 0.0]
            inside_any = False
            for p in range(3):
                traj = rb[p]
                inside_all = True
                for h, (idx, tlat, tlng) in enumerate([(11, 1.0, 4.0), (19, 1.8, 7.2)]):
                    heading = np.array([1.0, 0.0])
                    prev = np.zeros(2)
                    for k in range(idx + 1):
                        step = traj[k] - prev
                        if np.linalg.norm(step) > 0:
                            heading = step / np.linalg.norm(step)
                        prev = traj[k]
                    lat_axis = np.array([-heading[1], heading[0]])
                    err = pred[b, i, idx] - traj[idx]
                    n = max(abs(err @ heading) / (tlng * scale),
                            abs(err @ lat_axis) / (tlat * scale))
                    inside_all &= n <= 1
                    best[h] = max(best[h], lb[p] * 0.1 ** max(n - 1, 0))
                inside_any |= inside_all
            score = (best[0] + best[1]) / 2
            if not inside_any:
                score = max(score, 4.0)
            total += probs[b, i] / probs[b].sum() * score
        out.append(total)
    return np.array(out)


def test_rfs_matches_loop_reference_on_random_inputs():
    rng = np.random.default_rng(0)
    batch, num_pred = 6, 4
    base = np.cumsum(rng.normal([1.5, 0.0], [1.0, 0.6], size=(batch, T, 2)), axis=1)
    base[:, 5:9] = base[:, 4:5]  # a stop, to exercise the carried heading
    preds = base[:, None] + rng.normal(0, 1.5, size=(batch, num_pred, T, 2))
    probs = rng.uniform(0.1, 1.0, size=(batch, num_pred))
    rated, labels = [], []
    for b in range(batch):
        count = 1 + b % 4  # 1..4 rated trajectories: padding and truncation
        rated.append([base[b] + rng.normal(0, 1.0, size=(T, 2)) for _ in range(count)])
        labels.append(rng.uniform(0, 10, size=count))
    v0 = rng.uniform(0, 15, size=batch)
    got = rater_feedback_score(preds, probs, rated, labels, v0)
    np.testing.assert_allclose(got, _rfs_reference(preds, probs, rated, labels, v0), rtol=1e-12)
    assert np.all((got >= 0) & (got <= 10))


def test_rfs_shape_validation():
    rated = straight()
    good = {'pred_trajs': rated[None, None], 'pred_probs': np.ones((1, 1)),
            'rated_trajs': [[rated]], 'rated_labels': [np.array([10.0])],
            'init_speed': np.array([10.0])}
    assert rater_feedback_score(**good)[0] == pytest.approx(10.0)
    cases = [
        ({'pred_trajs': rated[None]}, r'pred_trajs must have shape \[B, I, T, 2\]'),
        ({'pred_probs': np.ones((1, 2))}, r'pred_probs must have shape \[B, I\]'),
        ({'pred_probs': -np.ones((1, 1))}, 'non-negative'),
        ({'pred_probs': np.zeros((1, 1))}, 'positive sum'),
        ({'init_speed': np.array([1.0, 2.0])}, r'init_speed must have shape \[B\]'),
        ({'pred_trajs': rated[None, None, :12]}, 'at least 20 waypoints'),
        ({'rated_trajs': [[rated], [rated]]}, 'one entry per sample'),
        ({'rated_labels': [np.array([10.0, 5.0])]}, '1 rated trajectories but 2 labels'),
        ({'rated_trajs': [[]], 'rated_labels': [np.array([])]}, 'at least one rated'),
        ({'rated_trajs': [[rated[:, :1]]]}, r'expected shape \[T, 2\]'),
    ]
    for override, message in cases:
        with pytest.raises(ValueError, match=message):
            rater_feedback_score(**{**good, **override})


def test_ade_fde_exact():
    pred = np.zeros((2, T, 2))
    gt = np.zeros((2, T, 2))
    gt[0, :12, 0] = 1.0  # 1 m error for the first 12 waypoints (up to 3 s) ...
    gt[0, 12:, 0] = 3.0  # ... 3 m after
    gt[1, :, :] = [3.0, 4.0]  # a 3-4-5 triangle: 5 m everywhere
    np.testing.assert_allclose(ade(pred, gt, horizon_s=3.0), [1.0, 5.0])
    np.testing.assert_allclose(ade(pred, gt, horizon_s=5.0), [(12 * 1 + 8 * 3) / 20, 5.0])
    np.testing.assert_allclose(ade(pred, gt), [1.8, 5.0])
    np.testing.assert_allclose(fde(pred, gt), [3.0, 5.0])
    with pytest.raises(ValueError, match='needs 24 waypoints'):
        ade(pred, gt, horizon_s=6.0)
    with pytest.raises(ValueError, match=r'\[B, T, 2\]'):
        fde(pred, gt[:, :5])


def test_constant_velocity_baseline():
    cv = constant_velocity_baseline(np.array([0.0, 8.0]))
    assert cv.shape == (2, T, 2)
    np.testing.assert_allclose(cv[0], 0.0)
    np.testing.assert_allclose(cv[1, :, 0], 2.0 * np.arange(1, T + 1))  # 8 m/s / 4 Hz = 2 m
    np.testing.assert_allclose(cv[1, :, 1], 0.0)
    assert cv[1, -1, 0] == pytest.approx(40.0)  # 8 m/s for 5 s
    # Against a straight rated drive at the same speed it is perfect.
    assert ade(cv[1:], straight(8.0)[None])[0] == pytest.approx(0.0)
    assert rfs_one(cv[1], [straight(8.0)], [10], v0=8.0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match=r'init_speed must have shape \[B\]'):
        constant_velocity_baseline(np.ones((2, 2)))


def test_risk_metrics_identical_maps():
    rng = np.random.default_rng(1)
    maps = rng.uniform(size=(3, 16, 16))
    np.testing.assert_allclose(risk_pearson(maps, maps), 1.0)
    np.testing.assert_allclose(risk_kl(maps, maps), 0.0, atol=1e-12)
    np.testing.assert_allclose(risk_topk_recall(maps, maps), 1.0)
    np.testing.assert_allclose(risk_pearson(-maps, maps), -1.0)
    assert np.all(risk_kl(rng.uniform(size=(3, 16, 16)), maps) > 0)


def test_risk_metrics_disjoint_and_constant():
    pred = np.zeros((1, 10, 10))
    target = np.zeros((1, 10, 10))
    pred[0, :2, :3] = 1.0  # 6 risky cells top-left
    target[0, -2:, -3:] = 1.0  # 6 risky cells bottom-right
    assert risk_topk_recall(pred, target, k_frac=0.05)[0] == 0.0  # k = 5
    # Constant maps have no correlation (0, not NaN).
    flat = np.full((2, 4, 4), 0.3)
    out = risk_pearson(flat, np.random.default_rng(2).uniform(size=(2, 4, 4)))
    np.testing.assert_array_equal(out, [0.0, 0.0])
    np.testing.assert_array_equal(risk_pearson(flat, flat), [0.0, 0.0])


def test_risk_kl_and_recall_hand_examples():
    # Two cells. target [1, 0], pred [0.5, 0.5]; with eps = 1e-6:
    # t = (1 + e, e) / (1 + 2e), p = (0.5, 0.5). KL = sum t log(t / p) ~= log 2.
    eps = 1e-6
    t = np.array([1 + eps, eps]) / (1 + 2 * eps)
    expected = np.sum(t * np.log(t / 0.5))
    got = risk_kl(np.array([[[0.5, 0.5]]]), np.array([[[1.0, 0.0]]]), eps=eps)
    assert got[0] == pytest.approx(expected)
    assert got[0] == pytest.approx(np.log(2), rel=1e-4)
    # 2x2 map, k = 2: target's top cells {0, 1}, pred's {1, 2} -> 1 of 2 found.
    target = np.array([[[0.9, 0.8], [0.1, 0.0]]])
    pred = np.array([[[0.1, 0.9], [0.8, 0.0]]])
    assert risk_topk_recall(pred, target, k_frac=0.5)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match='k_frac'):
        risk_topk_recall(pred, target, k_frac=0.0)
    with pytest.raises(ValueError, match=r'\[B, H, W\]'):
        risk_kl(pred, target[:, :1])


# -- calibration and the paired t-test ---------------------------------------------------------
def _t_pdf_integral(t: float, df: float) -> float:
    """Two-sided tail of Student's t by numerical integration of its density (independent of
    the incomplete-beta route)."""
    from math import gamma, pi, sqrt

    c = gamma((df + 1) / 2) / (sqrt(df * pi) * gamma(df / 2))
    x = np.linspace(0.0, abs(t), 200001)
    inner = np.trapezoid(c * (1 + x * x / df) ** (-(df + 1) / 2), x)
    return 1.0 - 2.0 * inner


def test_incomplete_beta_identities():
    from rsd_drive.metrics import regularized_incomplete_beta as ib

    for x in (0.1, 0.37, 0.9):
        assert ib(1.0, 1.0, x) == pytest.approx(x, abs=1e-12)
        assert ib(2.5, 1.0, x) == pytest.approx(x ** 2.5, abs=1e-12)
        assert ib(3.0, 4.0, x) == pytest.approx(1 - ib(4.0, 3.0, 1 - x), abs=1e-12)
    assert ib(7.0, 7.0, 0.5) == pytest.approx(0.5, abs=1e-12)
    assert ib(2.0, 3.0, 0.0) == 0.0 and ib(2.0, 3.0, 1.0) == 1.0
    with pytest.raises(ValueError):
        ib(0.0, 1.0, 0.5)


@pytest.mark.parametrize('t,df,p', [(12.706205, 1, 0.05), (4.302653, 2, 0.05),
                                    (2.776445, 4, 0.05), (2.228139, 10, 0.05),
                                    (3.169273, 10, 0.01), (1.959964, 1e6, 0.05)])
def test_t_distribution_matches_table_values(t, df, p):
    from rsd_drive.metrics import student_t_two_sided_p

    assert student_t_two_sided_p(t, df) == pytest.approx(p, rel=1e-4)
    assert student_t_two_sided_p(-t, df) == pytest.approx(p, rel=1e-4)


def test_t_distribution_matches_numerical_integration():
    from rsd_drive.metrics import student_t_two_sided_p

    for t, df in ((0.3, 2), (1.7, 3), (2.5, 7), (5.0, 2.5)):
        assert student_t_two_sided_p(t, df) == pytest.approx(_t_pdf_integral(t, df), abs=1e-6)


def test_paired_t_test_hand_example():
    from rsd_drive.metrics import paired_t_test

    a, b = np.array([6.1, 5.8, 6.4, 6.0]), np.array([5.5, 5.6, 5.7, 5.9])
    d = a - b
    t = d.mean() / (d.std(ddof=1) / 2.0)
    got = paired_t_test(a, b)
    assert got['n'] == 4 and got['df'] == 3
    assert got['mean_diff'] == pytest.approx(d.mean())
    assert got['t'] == pytest.approx(t)
    assert got['p'] == pytest.approx(_t_pdf_integral(t, 3), abs=1e-6)
    assert paired_t_test(b, a)['p'] == pytest.approx(got['p'])  # two-sided
    assert paired_t_test(a, a)['p'] == 1.0
    assert np.isnan(paired_t_test([1.0], [2.0])['p'])
    assert paired_t_test([2.0, 3.0], [1.0, 2.0])['p'] == 0.0  # constant non-zero difference
    with pytest.raises(ValueError, match='paired'):
        paired_t_test([1.0, 2.0], [1.0])


def test_reliability_and_ece():
    from rsd_drive.metrics import expected_calibration_error, risk_reliability

    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, size=(4, 8, 8))
    assert expected_calibration_error(target, target) == pytest.approx(0.0, abs=1e-12)
    table = risk_reliability(target * 0.5, target, bins=10)
    assert table['count'].sum() == target.size
    assert np.all(table['count'][5:] == 0) and np.isnan(table['mean_pred'][9])
    # Every cell over-confident by a factor 2 the other way: ECE = mean |p - t| = mean t / 2
    # (within a bin all cells err in the same direction).
    assert expected_calibration_error(target * 0.5, target) == pytest.approx(
        np.mean(target) * 0.5, rel=1e-9)
    # The risky-cell ECE ignores cells where both maps are below the floor.
    sparse_t = np.zeros((1, 10, 10))
    sparse_t[0, 0, :2] = 0.8
    sparse_p = sparse_t * 0.5
    assert expected_calibration_error(sparse_p, sparse_t) == pytest.approx(0.4 * 2 / 100)
    assert expected_calibration_error(sparse_p, sparse_t, min_value=0.05) == pytest.approx(0.4)


def test_best_marker_threshold_finds_the_risky_cells():
    from rsd_drive.metrics import best_marker_threshold

    target = np.zeros((2, 6, 6))
    target[:, 1, 1:3] = 0.9  # risky
    target[:, 4, 4] = 0.3  # mild, not risky
    pred = np.full_like(target, 0.02)
    pred[:, 1, 1:3] = 0.32
    pred[:, 4, 4] = 0.22
    best = best_marker_threshold(pred, target, risky=0.5)
    # Thresholds in (0.22, 0.32] draw exactly the risky cells: the smallest is 0.25.
    assert best['threshold'] == pytest.approx(0.25)
    assert best['precision'] == 1.0 and best['recall'] == 1.0 and best['f1'] == 1.0
    assert len(best['curve']) == 19
