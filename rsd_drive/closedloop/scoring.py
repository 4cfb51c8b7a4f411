"""Route scores with the CARLA leaderboard / Bench2Drive definitions, plus NAVSIM-style
sub-scores, and their aggregation per policy and family.

Per route (see ``config/closedloop.yaml`` ``scoring``):

* route completion ``RC``: the fraction of the route driven, where distance driven off the road
  does not count (leaderboard); 1 once less than ``completion_tolerance_m`` remains on the road;
* infraction penalty ``P``: the product of one factor per infraction: collision with a pedestrian
  0.50, a vehicle 0.60, a static object 0.65 (each agent counts once), off-road events
  ``penalty_off_road`` (leaderboard: 1.0);
* driving score ``DS = RC * P``; success: route completed with no infraction (and the planner
  did not fail);
* NAVSIM-style: minimum time-to-collision (``min_ttc_s``; the sub-score is 0 below
  ``ttc_threshold_s``), ego progress (metres and fraction of the route), comfort (fraction of time
  within the nuPlan/NAVSIM limits on longitudinal and lateral acceleration, jerk, yaw rate and yaw
  acceleration; ``comfortable`` when always within).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from rsd_drive.closedloop.config import ComfortConfig, ScoringConfig

COLLISION_CLASSES = ('pedestrian', 'vehicle', 'static')


@dataclass
class RouteTrace:
    """What the loop records per world step (arrays of equal length, one entry per step, the
    first being the start) and per route."""

    t: list = field(default_factory=list)
    x: list = field(default_factory=list)
    y: list = field(default_factory=list)
    yaw: list = field(default_factory=list)
    v: list = field(default_factory=list)
    yaw_rate: list = field(default_factory=list)
    progress: list = field(default_factory=list)
    off_road: list = field(default_factory=list)
    ttc: list = field(default_factory=list)

    def add(self, t, ego, yaw_rate, progress, off_road, ttc) -> None:
        self.t.append(float(t))
        for key, value in zip(('x', 'y', 'yaw', 'v'), ego[:4]):
            getattr(self, key).append(float(value))
        self.yaw_rate.append(float(yaw_rate))
        self.progress.append(float(progress))
        self.off_road.append(bool(off_road))
        self.ttc.append(None if ttc is None or not math.isfinite(float(ttc)) else float(ttc))

    def arrays(self) -> dict:
        return {k: np.asarray(getattr(self, k), dtype=np.float64) for k in
                ('t', 'x', 'y', 'yaw', 'v', 'yaw_rate', 'progress')}


def unique_collisions(collisions) -> list:
    """First contact per agent id, in time order, as {id, class, time_s, speed}."""
    seen, out = set(), []
    for c in sorted(collisions, key=lambda c: float(c['time_s'])):
        key = c.get('id')
        if key in seen:
            continue
        seen.add(key)
        cls = c['class']
        if cls not in COLLISION_CLASSES:
            raise ValueError(f'collision class must be one of {COLLISION_CLASSES}, got {cls!r}')
        out.append({'id': key, 'class': cls, 'time_s': round(float(c['time_s']), 3),
                    'speed': round(float(c['speed']), 3)})
    return out


def off_road_events(off_road) -> int:
    """Number of times the ego left the road (on -> off transitions; off at the start counts)."""
    flags = [bool(f) for f in off_road]
    return sum(1 for i, f in enumerate(flags) if f and (i == 0 or not flags[i - 1]))


def on_road_progress(progress, off_road) -> float:
    """Route progress (m) made while on the road: steps that end off the road do not count."""
    p = np.asarray(progress, dtype=np.float64)
    if len(p) < 2:
        return 0.0
    steps = np.diff(p)
    keep = ~np.asarray(off_road[1:], dtype=bool)
    return float(max(steps[keep].sum(), 0.0))


def infraction_penalty(collisions, n_off_road: int, scoring: ScoringConfig) -> float:
    p = 1.0
    for c in collisions:
        p *= scoring.penalty(c['class'])
    return p * scoring.penalty('off_road') ** int(n_off_road)


def comfort_scores(t, v, yaw_rate, limits: ComfortConfig) -> tuple[float, bool, dict]:
    """(fraction of steps within every limit, always within, {quantity: max |value|})."""
    t, v, w = (np.asarray(a, dtype=np.float64) for a in (t, v, yaw_rate))
    if len(t) < 3:
        return 1.0, True, {}
    dt = np.diff(t)
    lon = np.diff(v) / dt
    jerk = np.concatenate([[0.0], np.diff(lon) / dt[1:]])
    lat = (v * w)[1:]
    yaw_acc = np.diff(w) / dt
    ok = ((lon >= limits.lon_accel[0]) & (lon <= limits.lon_accel[1])
          & (np.abs(lat) <= limits.lat_accel) & (np.abs(jerk) <= limits.jerk)
          & (np.abs(w[1:]) <= limits.yaw_rate) & (np.abs(yaw_acc) <= limits.yaw_accel))
    peaks = {'lon_accel_min': float(lon.min()), 'lon_accel_max': float(lon.max()),
             'lat_accel': float(np.abs(lat).max()), 'jerk': float(np.abs(jerk).max()),
             'yaw_rate': float(np.abs(w).max()), 'yaw_accel': float(np.abs(yaw_acc).max())}
    return float(ok.mean()), bool(ok.all()), {k: round(v, 3) for k, v in peaks.items()}


def score_route(trace: RouteTrace, collisions, route_length: float, scoring: ScoringConfig,
                failure: str | None = None) -> dict:
    """The per-route record's scores (see the module docstring)."""
    cols = unique_collisions(collisions)
    n_off = off_road_events(trace.off_road)
    driven = trace.progress[-1] - trace.progress[0] if trace.progress else 0.0
    on_road = on_road_progress(trace.progress, trace.off_road)
    remaining = route_length - (trace.progress[-1] if trace.progress else 0.0)
    completed = bool(remaining <= scoring.completion_tolerance_m and failure is None)
    rc = 1.0 if completed and n_off == 0 else min(max(on_road / route_length, 0.0), 1.0)
    penalty = infraction_penalty(cols, n_off, scoring)
    ttcs = [x for x in trace.ttc if x is not None]
    min_ttc = min(ttcs) if ttcs else None
    comfort, comfortable, peaks = comfort_scores(trace.t, trace.v, trace.yaw_rate,
                                                 scoring.comfort)
    infractions = {'collisions_pedestrian': sum(c['class'] == 'pedestrian' for c in cols),
                   'collisions_vehicle': sum(c['class'] == 'vehicle' for c in cols),
                   'collisions_static': sum(c['class'] == 'static' for c in cols),
                   'off_road': n_off}
    return {
        'route_completion': round(rc, 4),
        'infraction_penalty': round(penalty, 4),
        'driving_score': round(rc * penalty, 4) if failure is None else 0.0,
        'success': bool(completed and not cols and n_off == 0),
        'completed': completed,
        'collisions': [{k: c[k] for k in ('class', 'time_s', 'speed', 'id')} for c in cols],
        'infractions': infractions,
        'min_ttc_s': None if min_ttc is None else round(min_ttc, 3),
        'ttc_score': 1.0 if min_ttc is None or min_ttc >= scoring.ttc_threshold_s else 0.0,
        'progress_m': round(float(driven), 2),
        'progress': round(min(max(driven / route_length, 0.0), 1.0), 4),
        'comfort': round(comfort, 4),
        'comfortable': comfortable,
        'comfort_peaks': peaks,
        'duration_s': round(trace.t[-1] - trace.t[0], 2) if trace.t else 0.0,
        'mean_speed': round(float(np.mean(trace.v)), 3) if trace.v else 0.0,
        'failure': failure,
    }


def _mean_sd(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    if not len(a):
        return float('nan'), float('nan')
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def aggregate(routes) -> dict:
    """Summary of route records: n, mean/sd driving score, success rate, collision rate (routes
    with at least one collision), mean route completion, failed routes, mean min TTC, comfort."""
    ds_mean, ds_sd = _mean_sd([r['driving_score'] for r in routes])
    ttcs = [r['min_ttc_s'] for r in routes if r.get('min_ttc_s') is not None]
    n = len(routes)
    return {
        'routes': n,
        'driving_score': round(ds_mean, 4), 'driving_score_sd': round(ds_sd, 4),
        'success_rate': round(sum(bool(r['success']) for r in routes) / n, 4) if n else None,
        'collision_rate': round(sum(bool(r['collisions']) for r in routes) / n, 4) if n else None,
        'route_completion': round(float(np.mean([r['route_completion'] for r in routes])), 4)
        if n else None,
        'failed': sum(r.get('failure') is not None for r in routes),
        'min_ttc_s': round(float(np.mean(ttcs)), 3) if ttcs else None,
        'comfort': round(float(np.mean([r['comfort'] for r in routes])), 4) if n else None,
    }


def summarize(routes) -> dict:
    """{policy: {family: aggregate, ..., 'all': aggregate}} over route records."""
    out = {}
    for policy in sorted({r['policy'] for r in routes}):
        mine = [r for r in routes if r['policy'] == policy]
        per = {fam: aggregate([r for r in mine if r['family'] == fam])
               for fam in sorted({r['family'] for r in mine})}
        per['all'] = aggregate(mine)
        out[policy] = per
    return out
