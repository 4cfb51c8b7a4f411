"""The route ahead as a model input: N points along the navigation route, in ``base_link``.

Every real stack plans with a route (Autoware's route, nuPlan's route, the target points of
TCP/TransFuser on Bench2Drive). The route is map knowledge given before the drive (a polyline in
the odometry frame, ``nav_msgs/Path`` on ``~/route``), never the logged future: the scenario world
records its ego lane's centre line, a real bag without a route trains and evaluates with the mask
off.

One function serves the node, the labeler (training index), and the closed loop, so the model
sees the same route input everywhere: the ego is projected onto the polyline, and the points are
taken every ``spacing_m`` of arc length from that projection on (the first point is the
projection itself, so the model sees its lateral offset from the route), then expressed in the
``base_link`` frame of the given pose. Beyond the polyline's end the last segment is extended.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A route is refused (mask off) when the ego is farther than this from it: a wrong or stale route
# (another frame, another drive) would steer the planner somewhere else.
MAX_OFFSET_M = 8.0


@dataclass
class RouteInput:
    """``points`` float32 [n, 2] in base_link (zeros when not valid), ``valid`` (the mask), and
    ``reason`` ('ok' or why the mask is off: 'none', 'too_short', 'off_route')."""

    points: np.ndarray
    valid: bool
    reason: str = 'ok'

    @property
    def valid_flag(self) -> np.float32:
        return np.float32(1.0 if self.valid else 0.0)


def no_route(n: int, reason: str = 'none') -> RouteInput:
    return RouteInput(np.zeros((int(n), 2), np.float32), False, reason)


def _project(xy: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(arc length of the closest point of polyline ``xy`` to ``p``, its distance)."""
    a, b = xy[:-1], xy[1:]
    seg = b - a
    length2 = np.maximum((seg ** 2).sum(axis=1), 1e-12)
    u = np.clip(((p - a) * seg).sum(axis=1) / length2, 0.0, 1.0)
    closest = a + u[:, None] * seg
    dist = np.linalg.norm(closest - p, axis=1)
    i = int(np.argmin(dist))
    cum = np.concatenate([[0.0], np.cumsum(np.sqrt(length2))])
    return float(cum[i] + u[i] * math.sqrt(length2[i])), float(dist[i])


def resample(xy: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Points of polyline ``xy`` at arc lengths ``s`` (the last segment extended beyond the end,
    the first one before the start)."""
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    keep = np.concatenate([[True], steps > 1e-9])  # repeated points carry no direction
    xy, cum = xy[keep], np.concatenate([[0.0], np.cumsum(steps[steps > 1e-9])])
    i = np.clip(np.searchsorted(cum, s, side='right') - 1, 0, len(cum) - 2)
    u = (s - cum[i]) / (cum[i + 1] - cum[i])
    return xy[i] + u[:, None] * (xy[i + 1] - xy[i])


def route_in_base_link(route_xy, pose, n: int, spacing_m: float,
                       max_offset_m: float = MAX_OFFSET_M) -> RouteInput:
    """The model's route input at ``pose`` = (x, y, yaw) in the route's frame.

    ``route_xy`` [M, 2]: the route polyline in the odometry frame (None or fewer than two distinct
    points: no route). Returns :class:`RouteInput` with ``n`` points every ``spacing_m`` from the
    ego's projection on the route, in base_link.
    """
    if route_xy is None:
        return no_route(n, 'none')
    xy = np.asarray(route_xy, dtype=np.float64).reshape(-1, 2)
    if len(xy) < 2 or not np.isfinite(xy).all() \
            or float(np.linalg.norm(xy[-1] - xy[0])) < 1e-6:
        return no_route(n, 'too_short')
    x, y, yaw = (float(v) for v in pose)
    s0, offset = _project(xy, np.array([x, y]))
    if offset > max_offset_m:
        return no_route(n, 'off_route')
    world = resample(xy, s0 + spacing_m * np.arange(n))
    c, s = math.cos(yaw), math.sin(yaw)
    d = world - (x, y)
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=-1)
    return RouteInput(local.astype(np.float32), True)


def route_for_plan(route, t0_ns: int, pose, n: int, spacing_m: float, max_age_ns: int = 0,
                   frame: str | None = None) -> tuple[RouteInput | None, str]:
    """The node's rule for the route of one plan: ``route`` is the last route received,
    (stamp_ns, frame_id, [M, 2]) or None. Returns (RouteInput or None, status), status one of
    'ok', 'none' (no route received), 'stale' (older than ``max_age_ns`` at t0; 0: never),
    'wrong_frame' (not in the odometry frame ``frame``), 'off_route' or 'too_short'. Every
    status but 'ok' plans intent-only (the mask off)."""
    if route is None:
        return None, 'none'
    stamp_ns, route_frame, xy = route
    if frame is not None and route_frame != frame:
        return None, 'wrong_frame'
    if max_age_ns > 0 and t0_ns - stamp_ns > max_age_ns:
        return None, 'stale'
    out = route_in_base_link(xy, pose, n, spacing_m)
    return (out, 'ok') if out.valid else (None, out.reason)
