"""Evaluation metrics: Waymo E2E Rater Feedback Score, ADE/FDE and risk-map agreement.

Numpy only, so evaluation runs on any machine (no torch, no GPU). Trajectories are in the vehicle
frame at the current time, REP-103 axes (x forward, y left, metres), starting *after* the origin:
waypoint k is at time (k + 1) / frequency seconds.
"""
from typing import Optional, Sequence, Tuple

import numpy as np

# Official constants of the WOD E2E challenge (waymo-open-dataset,
# src/waymo_open_dataset/metrics/python/rater_feedback_utils.py).
RFS_HORIZONS_S = (3.0, 5.0)
RFS_LAT_THRESHOLDS = (1.0, 1.8)  # metres at (3 s, 5 s), before the speed scale
RFS_LNG_THRESHOLDS = (4.0, 7.2)  # metres at (3 s, 5 s): 4x the lateral ones
RFS_DECAY = 0.1
RFS_MIN_SCORE_OUTSIDE_TRUST_REGION = 4.0
RFS_NUM_RATED = 3
# Speed scale: 0.5 at and below 1.4 m/s, 1.0 at and above 11 m/s, linear between.
RFS_SPEED_LOW = 1.4
RFS_SPEED_HIGH = 11.0


def speed_scale(init_speed) -> np.ndarray:
    """Threshold scale from the initial speed: ``clip(0.5 + 0.5*(v0-1.4)/(11-1.4), 0.5, 1)``."""
    v0 = np.asarray(init_speed, dtype=np.float64)
    return np.clip(
        0.5 + 0.5 * (v0 - RFS_SPEED_LOW) / (RFS_SPEED_HIGH - RFS_SPEED_LOW), 0.5, 1.0)


def horizon_index(horizon_s: float, frequency: float) -> int:
    """Index of the waypoint at ``horizon_s`` (waypoint k lies at (k+1)/frequency s)."""
    return int(horizon_s * frequency) - 1


BRAKE_HORIZON_S = 2.0   # braking is read off the speed 2 s ahead
BRAKE_DROP = 2.0        # m/s: the expert brakes when its speed then is this much below now
ONSET_PAST_DROP = 0.3   # m/s over the last second: less than this and braking has not begun


def segment_speeds(traj, frequency: float) -> np.ndarray:
    """[M, T] speed along each waypoint segment (from base_link's origin), m/s."""
    traj = np.asarray(traj, dtype=np.float64)
    points = np.concatenate([np.zeros((len(traj), 1, 2)), traj], axis=1)
    return np.linalg.norm(np.diff(points, axis=1), axis=-1) * frequency


def brake_groups(future, init_speed, past_speed, frequency: float) -> dict:
    """Frames split by the logged future and past (boolean [M] masks): ``onset`` (the expert's
    speed ``BRAKE_HORIZON_S`` ahead is >= ``BRAKE_DROP`` below now and it has slowed less than
    ``ONSET_PAST_DROP`` over the last second: only the scene can tell), ``braking`` (it will and
    already is: the ego history tells) and ``no_brake``. ``past_speed`` [M, P], the last column
    now. The evaluation's braking table and the training's onset weight share this definition."""
    k = horizon_index(BRAKE_HORIZON_S, frequency)
    v0 = np.asarray(init_speed, dtype=np.float64).reshape(-1)
    expert = segment_speeds(future, frequency)[:, k] - v0
    past = np.asarray(past_speed, dtype=np.float64)
    slowed = past[:, -1] - past[:, -1 - int(round(frequency))]
    will = expert <= -BRAKE_DROP
    return {'onset': will & (slowed > -ONSET_PAST_DROP),
            'braking': will & (slowed <= -ONSET_PAST_DROP), 'no_brake': ~will}


def heading_directions(trajs: np.ndarray) -> np.ndarray:
    """Return unit longitudinal directions of trajectories [..., T, 2] -> [..., T, 2].

    The direction at step t is the displacement from the previous point, with the origin
    prepended (the ego position now). A zero displacement (stopped vehicle) keeps the previous
    direction; a zero displacement at t=0 gives (1, 0), the vehicle's own heading. This is the
    official RFS rule; the carry-forward is vectorised with a running maximum of the index of the
    last step that moved, instead of the official Python loop over time.
    """
    trajs = np.asarray(trajs, dtype=np.float64)
    prev = np.concatenate([np.zeros_like(trajs[..., :1, :]), trajs[..., :-1, :]], axis=-2)
    disp = trajs - prev
    # Exact zero test, as in the official code: any motion at all defines a heading.
    moved = np.linalg.norm(disp, axis=-1) != 0
    steps = np.arange(trajs.shape[-2])
    last_moved = np.maximum.accumulate(np.where(moved, steps, -1), axis=-1)  # [..., T]
    carried = np.take_along_axis(disp, np.maximum(last_moved, 0)[..., None], axis=-2)
    never_moved = (last_moved < 0)[..., None]
    forward = np.broadcast_to(np.array([1.0, 0.0]), carried.shape)
    direction = np.where(never_moved, forward, carried)
    return direction / np.linalg.norm(direction, axis=-1, keepdims=True)


def _pad_rated(rated_trajs, rated_labels, batch: int, steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rated sets -> arrays [B, 3, T, 2] and [B, 3], padded/truncated as the official code does.

    Sets are truncated to the first three or padded by repeating the last trajectory and its
    label; each trajectory is truncated to T waypoints or padded by repeating its last waypoint
    (which is a zero displacement, so it keeps the last heading).
    """
    if len(rated_trajs) != batch or len(rated_labels) != batch:
        raise ValueError(
            f'rated_trajs and rated_labels must have one entry per sample (B={batch}), got '
            f'{len(rated_trajs)} and {len(rated_labels)}')
    out_trajs = np.empty((batch, RFS_NUM_RATED, steps, 2), dtype=np.float64)
    out_labels = np.empty((batch, RFS_NUM_RATED), dtype=np.float64)
    for b in range(batch):
        trajs_b = list(rated_trajs[b])
        labels_b = np.asarray(rated_labels[b], dtype=np.float64).reshape(-1)
        if len(trajs_b) != labels_b.shape[0]:
            raise ValueError(
                f'sample {b}: {len(trajs_b)} rated trajectories but {labels_b.shape[0]} labels')
        if not trajs_b:
            raise ValueError(f'sample {b}: at least one rated trajectory is required')
        for p in range(RFS_NUM_RATED):
            src = min(p, len(trajs_b) - 1)
            traj = np.asarray(trajs_b[src], dtype=np.float64)
            if traj.ndim != 2 or traj.shape[1] != 2 or traj.shape[0] == 0:
                raise ValueError(
                    f'sample {b}, rated trajectory {src}: expected shape [T, 2] with T >= 1, '
                    f'got {traj.shape}')
            traj = traj[:steps]
            if traj.shape[0] < steps:
                traj = np.concatenate([traj, np.repeat(traj[-1:], steps - traj.shape[0], 0)])
            out_trajs[b, p] = traj
            out_labels[b, p] = labels_b[src]
    return out_trajs, out_labels


def rater_feedback_score(pred_trajs, pred_probs, rated_trajs: Sequence, rated_labels: Sequence,
                         init_speed, frequency: float = 4) -> np.ndarray:
    """Waymo Open Dataset E2E Rater Feedback Score (RFS) per sample, in [0, 10].

    Follows the official definition, ``get_rater_feedback_score`` in waymo-open-dataset
    ``src/waymo_open_dataset/metrics/python/rater_feedback_utils.py``
    (https://waymo.com/open/challenges/2025/e2e-driving/):

    * rated sets are truncated/padded to 3 trajectories by repeating the last one (and label);
    * per rated trajectory p, the longitudinal axis at step t is the displacement from the
      previous point (origin prepended, zero displacement keeps the previous axis, (1, 0) at
      t=0), the lateral axis is that rotated +90 degrees;
    * at the 3 s and 5 s waypoints (index ``int(h*frequency)-1``: 11 and 19 at 4 Hz) the error
      prediction - rated is projected onto both axes and normalised by the thresholds
      lateral (1.0, 1.8) m and longitudinal (4.0, 7.2) m, times
      ``clip(0.5 + 0.5*(v0-1.4)/(11-1.4), 0.5, 1)``; ``n = max(|lng|/thr_lng, |lat|/thr_lat)``;
    * score(p, h) = ``label_p * 0.1**max(n-1, 0)``; max over p per horizon, mean over horizons;
    * if no single rated trajectory holds the prediction inside (n <= 1) at both horizons, the
      score is floored: ``max(score, 4)``;
    * RFS = sum over predicted trajectories of prob * score.

    One deliberate difference: ``pred_probs`` are normalised to sum to 1 per sample (the
    official code uses them as given); for probabilities that already sum to 1 this is identical.

    Args:
        pred_trajs: [B, I, T, 2] predicted trajectories, T >= 5 * frequency.
        pred_probs: [B, I] non-negative weights of the predictions (not all zero per sample).
        rated_trajs: length-B sequence; entry b is a sequence of [T_p, 2] rated trajectories.
        rated_labels: length-B sequence; entry b holds one label (0..10) per rated trajectory.
        init_speed: [B] initial ego speed in m/s.
        frequency: waypoint rate in Hz.

    Returns:
        [B] float64 scores.
    """
    pred = np.asarray(pred_trajs, dtype=np.float64)
    if pred.ndim != 4 or pred.shape[-1] != 2:
        raise ValueError(f'pred_trajs must have shape [B, I, T, 2], got {pred.shape}')
    batch, num_pred, steps, _ = pred.shape
    probs = np.asarray(pred_probs, dtype=np.float64)
    if probs.shape != (batch, num_pred):
        raise ValueError(
            f'pred_probs must have shape [B, I] = {(batch, num_pred)}, got {probs.shape}')
    if np.any(probs < 0) or np.any(probs.sum(axis=1) <= 0):
        raise ValueError('pred_probs must be non-negative with a positive sum per sample')
    v0 = np.asarray(init_speed, dtype=np.float64)
    if v0.shape != (batch,):
        raise ValueError(f'init_speed must have shape [B] = ({batch},), got {v0.shape}')
    idx = np.array([horizon_index(h, frequency) for h in RFS_HORIZONS_S])
    if idx.min() < 0 or steps <= idx.max():
        raise ValueError(
            f'pred_trajs need at least {idx.max() + 1} waypoints to reach '
            f'{RFS_HORIZONS_S[-1]} s at {frequency} Hz, got T={steps}')

    rated, labels = _pad_rated(rated_trajs, rated_labels, batch, steps)  # [B,P,T,2], [B,P]
    lng_dir = heading_directions(rated)[:, :, idx]  # [B, P, H, 2]
    lat_dir = np.stack([-lng_dir[..., 1], lng_dir[..., 0]], axis=-1)  # +90 degrees
    # Error of every prediction against every rated trajectory at the horizons: [B, P, I, H, 2].
    err = pred[:, None][:, :, :, idx] - rated[:, :, None][:, :, :, idx]
    lng = np.abs(np.sum(err * lng_dir[:, :, None], axis=-1))  # [B, P, I, H]
    lat = np.abs(np.sum(err * lat_dir[:, :, None], axis=-1))

    scale = speed_scale(v0)[:, None]  # [B, 1]
    thr_lat = scale * np.asarray(RFS_LAT_THRESHOLDS)  # [B, H]
    thr_lng = scale * np.asarray(RFS_LNG_THRESHOLDS)
    norm = np.maximum(lng / thr_lng[:, None, None], lat / thr_lat[:, None, None])  # [B,P,I,H]

    # Inside the trust region the score is flat at the label; outside it decays 10x per
    # threshold-width.
    pair = labels[:, :, None, None] * RFS_DECAY ** np.maximum(norm - 1.0, 0.0)
    per_pred = pair.max(axis=1).mean(axis=-1)  # max over rated, mean over horizons: [B, I]
    # The trust region must be held by the *same* rated trajectory at both horizons.
    inside = np.any(np.all(norm <= 1.0, axis=-1), axis=1)  # [B, I]
    per_pred = np.where(inside, per_pred,
                        np.maximum(per_pred, RFS_MIN_SCORE_OUTSIDE_TRUST_REGION))
    probs = probs / probs.sum(axis=1, keepdims=True)
    return np.sum(per_pred * probs, axis=1)


def _check_traj_pair(pred, gt) -> Tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.ndim != 3 or pred.shape[-1] != 2 or pred.shape != gt.shape or pred.shape[1] == 0:
        raise ValueError(
            f'pred and gt must both have shape [B, T, 2] with T >= 1, got {pred.shape} and '
            f'{gt.shape}')
    return pred, gt


def ade(pred, gt, horizon_s: Optional[float] = None, frequency: float = 4) -> np.ndarray:
    """Average displacement error [B]: mean L2 distance over the waypoints up to ``horizon_s``.

    Waypoint k lies at (k+1)/frequency s, so ADE@3s averages the first 12 waypoints at 4 Hz and
    ADE@5s the first 20. ``horizon_s=None`` uses every waypoint.
    """
    pred, gt = _check_traj_pair(pred, gt)
    steps = pred.shape[1]
    if horizon_s is not None:
        steps = int(round(horizon_s * frequency))
        if not 1 <= steps <= pred.shape[1]:
            raise ValueError(
                f'horizon {horizon_s} s at {frequency} Hz needs {steps} waypoints, trajectories '
                f'have {pred.shape[1]}')
    return np.linalg.norm(pred[:, :steps] - gt[:, :steps], axis=-1).mean(axis=1)


def fde(pred, gt) -> np.ndarray:
    """Return the final displacement error [B]: L2 distance at the last waypoint."""
    pred, gt = _check_traj_pair(pred, gt)
    return np.linalg.norm(pred[:, -1] - gt[:, -1], axis=-1)


def constant_velocity_baseline(init_speed, steps: int = 20, frequency: float = 4) -> np.ndarray:
    """Straight-ahead plan at the initial speed, [B, T, 2]: waypoint k at (v0*(k+1)/f, 0).

    The floor any learned planner has to beat on ADE and RFS.
    """
    v0 = np.asarray(init_speed, dtype=np.float64)
    if v0.ndim != 1:
        raise ValueError(f'init_speed must have shape [B], got {v0.shape}')
    if steps < 1 or frequency <= 0:
        raise ValueError(f'need steps >= 1 and frequency > 0, got {steps} and {frequency}')
    times = np.arange(1, steps + 1, dtype=np.float64) / frequency  # [T]
    out = np.zeros((v0.shape[0], steps, 2), dtype=np.float64)
    out[..., 0] = v0[:, None] * times[None, :]
    return out


def _flat_maps(pred, target) -> Tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.ndim < 2 or pred.shape != target.shape:
        raise ValueError(
            f'pred and target must both have shape [B, H, W], got {pred.shape} and '
            f'{target.shape}')
    return pred.reshape(pred.shape[0], -1), target.reshape(target.shape[0], -1)


def risk_pearson(pred, target) -> np.ndarray:
    """Pearson correlation [B] between predicted and target risk maps [B, H, W].

    A constant map carries no spatial information, so its correlation is defined as 0 (instead
    of NaN) and the batch mean stays finite.
    """
    p, t = _flat_maps(pred, target)
    p = p - p.mean(axis=1, keepdims=True)
    t = t - t.mean(axis=1, keepdims=True)
    denom = np.sqrt(np.sum(p * p, axis=1) * np.sum(t * t, axis=1))
    num = np.sum(p * t, axis=1)
    ok = denom > 0
    return np.where(ok, num / np.where(ok, denom, 1.0), 0.0)


def _as_distribution(maps: np.ndarray, eps: float) -> np.ndarray:
    # eps keeps empty (all-zero) maps defined (uniform) and the log finite.
    maps = np.clip(maps, 0.0, None) + eps
    return maps / maps.sum(axis=1, keepdims=True)


def risk_kl(pred, target, eps: float = 1e-6) -> np.ndarray:
    """KL(target || pred) [B] between risk maps [B, H, W], each normalised to sum to 1.

    Same normalisation as the ``kl`` distillation loss (eps added to every cell first).
    """
    if eps <= 0:
        raise ValueError(f'eps must be positive, got {eps}')
    p, t = _flat_maps(pred, target)
    p = _as_distribution(p, eps)
    t = _as_distribution(t, eps)
    return np.sum(t * (np.log(t) - np.log(p)), axis=1)


def risk_topk_recall(pred, target, k_frac: float = 0.05) -> np.ndarray:
    """Fraction [B] of the target's k riskiest cells that are also among pred's k riskiest.

    k = max(1, round(k_frac * H * W)). Ties are broken by cell index (stable sort), identically
    for both maps, so identical maps always give recall 1.
    """
    if not 0 < k_frac <= 1:
        raise ValueError(f'k_frac must be in (0, 1], got {k_frac}')
    p, t = _flat_maps(pred, target)
    k = max(1, int(round(k_frac * p.shape[1])))
    top_p = np.argsort(-p, axis=1, kind='stable')[:, :k]
    top_t = np.argsort(-t, axis=1, kind='stable')[:, :k]
    hits = (top_t[:, :, None] == top_p[:, None, :]).any(axis=-1).sum(axis=1)
    return hits / k


# -- calibration of the risk map ----------------------------------------------------------------
def risk_reliability(pred, target, bins: int = 10) -> dict:
    """Reliability table of predicted risk against the teacher's, over every cell of [B, H, W].

    Cells are binned by predicted value into ``bins`` equal-width bins over [0, 1]; per bin the
    mean prediction, the mean teacher value and the cell count. A calibrated student has
    mean teacher == mean prediction in every bin ("when it says 0.7, the teacher says 0.7").
    Returns arrays ``edges`` [bins+1], ``mean_pred``, ``mean_target`` (NaN for empty bins) and
    ``count`` [bins].
    """
    if bins < 1:
        raise ValueError(f'bins must be >= 1, got {bins}')
    p, t = _flat_maps(pred, target)
    p, t = p.ravel(), t.ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, p, side='right') - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.int64)
    sum_p = np.bincount(which, weights=p, minlength=bins)
    sum_t = np.bincount(which, weights=t, minlength=bins)
    with np.errstate(invalid='ignore', divide='ignore'):
        mean_p = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
        mean_t = np.where(count > 0, sum_t / np.maximum(count, 1), np.nan)
    return {'edges': edges, 'mean_pred': mean_p, 'mean_target': mean_t, 'count': count}


def expected_calibration_error(pred, target, bins: int = 10, min_value: float = 0.0) -> float:
    """ECE of a risk map against the teacher: ``sum_b n_b / N * |mean_pred_b - mean_target_b|``.

    The usual ECE (Guo et al., 2017) with the teacher's soft value in place of the 0/1 outcome.
    On sparse maps the near-zero cells dominate every count, so ``min_value`` > 0 restricts it
    to cells where the student *or* the teacher says at least that much (the cells a person
    would look at); 0 uses every cell.
    """
    p, t = _flat_maps(pred, target)
    p, t = p.ravel(), t.ravel()
    keep = np.maximum(p, t) >= min_value
    if not keep.any():
        return 0.0
    table = risk_reliability(p[keep][None], t[keep][None], bins)
    n = table['count']
    gap = np.abs(np.nan_to_num(table['mean_pred']) - np.nan_to_num(table['mean_target']))
    return float(np.sum(n * gap) / n.sum())


def best_marker_threshold(pred, target, risky: float = 0.5, candidates=None) -> dict:
    """The student threshold that best finds the teacher's risky cells (teacher >= ``risky``).

    For each candidate threshold, cells with student >= threshold are "drawn"; precision,
    recall and F1 against the teacher's risky cells. Returns the threshold with the highest F1
    (the smallest one on ties) with its precision, recall and F1, and the whole curve.
    """
    p, t = _flat_maps(pred, target)
    p, t = p.ravel(), t.ravel()
    positive = t >= risky
    candidates = np.round(np.arange(0.05, 0.951, 0.05), 2) if candidates is None else candidates
    curve = []
    for thr in candidates:
        drawn = p >= thr
        tp = float(np.sum(drawn & positive))
        precision = tp / drawn.sum() if drawn.any() else 0.0
        recall = tp / positive.sum() if positive.any() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        curve.append({'threshold': float(thr), 'precision': precision, 'recall': recall,
                      'f1': f1})
    best = max(curve, key=lambda r: (r['f1'], -r['threshold']))
    return {**best, 'risky': float(risky), 'curve': curve}


# -- paired comparison of two arms ----------------------------------------------------------
def _betacf(a: float, b: float, x: float, iterations: int = 300, tol: float = 3e-16) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iterations + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < tol:
            return h
    raise ArithmeticError(f'incomplete beta continued fraction did not converge (a={a}, b={b}, '
                          f'x={x})')


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), by the continued fraction (Numerical Recipes, ``betai``); a, b > 0."""
    import math

    if a <= 0 or b <= 0:
        raise ValueError(f'a and b must be positive, got {a} and {b}')
    if not 0.0 <= x <= 1.0:
        raise ValueError(f'x must be in [0, 1], got {x}')
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value P(|T| >= |t|) of Student's t with ``df`` degrees of freedom:
    ``I_{df / (df + t^2)}(df / 2, 1 / 2)``."""
    if df <= 0:
        raise ValueError(f'degrees of freedom must be positive, got {df}')
    if not np.isfinite(t):
        return 0.0
    return float(regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t)))


def paired_t_test(a, b) -> dict:
    """Paired t-test of ``a - b`` (same seeds, same data): mean difference, its sample standard
    deviation, t, degrees of freedom and the two-sided p-value. n < 2 gives p = NaN; identical
    pairs (zero spread) give t = 0, p = 1 if the mean difference is 0, else t = inf, p = 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f'paired samples need equal 1-D shapes, got {a.shape} and {b.shape}')
    d = a - b
    n = int(d.size)
    out = {'n': n, 'mean_diff': float(d.mean()) if n else float('nan')}
    if n < 2:
        return {**out, 'sd_diff': float('nan'), 't': float('nan'), 'df': n - 1,
                'p': float('nan')}
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        t = 0.0 if out['mean_diff'] == 0.0 else float(np.sign(out['mean_diff']) * np.inf)
    else:
        t = out['mean_diff'] / (sd / np.sqrt(n))
    p = 1.0 if t == 0.0 else student_t_two_sided_p(t, n - 1)
    return {**out, 'sd_diff': sd, 't': float(t), 'df': n - 1, 'p': p}
