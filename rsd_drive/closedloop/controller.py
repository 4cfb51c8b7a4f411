"""Path tracking: a timed plan (waypoints in ``base_link`` at its planning time) -> acceleration
and curvature for a kinematic ego.

Steering is pure pursuit (Coulter, 1992) on the plan's path: the target point lies one lookahead
distance along the path ahead of the ego's projection onto it, and the commanded curvature is
``2 * y / d^2`` of that point in the ego frame. Speed follows the plan's timing (waypoint k at
``(k + 1) / frequency_hz`` after planning): the target is the plan's speed ``speed_lead_s`` ahead,
plus a term on the arc-length error to where the plan is now, so a plan that stops short makes
the ego stop there. Acceleration, jerk, curvature, curvature rate and lateral acceleration are
limited (:class:`~rsd_drive.closedloop.config.ControllerConfig`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rsd_drive.closedloop.config import ControllerConfig
from rsd_drive.metrics import constant_velocity_baseline


@dataclass
class Plan:
    """One plan: ``waypoints`` [T,2] in base_link at sim time ``t``, where the ego was at
    ``pose`` = (x, y, yaw) in the world; waypoint k is due ``(k + 1) / frequency_hz`` later.
    ``risk`` is the RiskHead grid (None for baselines) laid out by ``grid`` (a GridSpec)."""

    t: float
    pose: tuple
    waypoints: np.ndarray
    frequency_hz: float
    risk: np.ndarray | None = None
    grid: object = None

    def world_points(self) -> np.ndarray:
        """[T+1, 2] the ego's pose at planning time followed by the waypoints, in the world."""
        x, y, yaw = self.pose
        c, s = math.cos(yaw), math.sin(yaw)
        wp = np.asarray(self.waypoints, dtype=np.float64).reshape(-1, 2)
        pts = np.stack([x + c * wp[:, 0] - s * wp[:, 1], y + s * wp[:, 0] + c * wp[:, 1]], -1)
        return np.vstack([[x, y], pts])

    def times(self) -> np.ndarray:
        """[T+1] sim times of :meth:`world_points`."""
        return self.t + np.arange(len(self.waypoints) + 1) / float(self.frequency_hz)


def constant_velocity_plan(t: float, pose, speed: float, steps: int = 20,
                           frequency_hz: float = 4.0) -> Plan:
    """Straight ahead at the current speed: never brakes, never turns."""
    wp = constant_velocity_baseline([speed], steps, frequency_hz)[0]
    return Plan(float(t), tuple(pose), wp, frequency_hz)


def project(points: np.ndarray, xy, cum: np.ndarray | None = None) -> tuple[float, int]:
    """Arc length of the point of polyline ``points`` [M,2] nearest to ``xy``, and its segment.
    ``cum``: the polyline's cumulative lengths [M] when already known."""
    a, b = points[:-1], points[1:]
    ab = b - a
    seg_len2 = (ab ** 2).sum(axis=1)
    u = np.clip(((np.asarray(xy) - a) * ab).sum(axis=1) / np.maximum(seg_len2, 1e-12), 0, 1)
    foot = a + u[:, None] * ab
    i = int(np.argmin(((foot - np.asarray(xy)) ** 2).sum(axis=1)))
    if cum is None:
        cum = np.concatenate([[0.0], np.cumsum(np.sqrt(seg_len2))])
    return float(cum[i] + u[i] * math.sqrt(seg_len2[i])), i


def point_at(points: np.ndarray, cum: np.ndarray, s: float) -> np.ndarray | None:
    """The point at arc length ``s``, extended straight beyond the end; None when the path has
    no direction to extend along (all points together)."""
    if s <= cum[-1]:
        return np.array([np.interp(s, cum, points[:, 0]), np.interp(s, cum, points[:, 1])])
    for j in range(len(points) - 1, 0, -1):
        step = points[j] - points[j - 1]
        n = math.hypot(*step)
        if n > 1e-3:
            return points[-1] + step / n * (s - cum[-1])
    return None


class PurePursuit:
    """Tracks the latest plan; keeps following it (by its timing) until a new one replaces it."""

    def __init__(self, cfg: ControllerConfig, dt: float):
        self.cfg, self.dt = cfg, float(dt)
        self.reset()

    def reset(self) -> None:
        self.plan = None
        self._points = self._cum = self._times = self._seg_v = self._mids = None
        self.last_accel, self.last_curvature = 0.0, 0.0

    def set_plan(self, plan: Plan) -> None:
        self.plan = plan
        self._points = plan.world_points()
        seg = np.sqrt((np.diff(self._points, axis=0) ** 2).sum(axis=1))
        self._cum = np.concatenate([[0.0], np.cumsum(seg)])
        self._times = plan.times()
        self._seg_v = np.diff(self._cum) / np.diff(self._times)
        self._mids = 0.5 * (self._times[1:] + self._times[:-1])

    def _plan_speed(self, t: float) -> float:
        """The plan's speed at sim time t (piecewise linear through the segment midpoints)."""
        return float(np.interp(t, self._mids, self._seg_v))

    def target_accel(self, ego, t: float, s_ego: float) -> float:
        cfg = self.cfg
        v = float(ego[3])
        v_target = self._plan_speed(t + cfg.speed_lead_s)
        s_plan = float(np.interp(t, self._times, self._cum))
        accel = cfg.speed_gain * (v_target - v) + cfg.position_gain * (s_plan - s_ego)
        if self._seg_v[-1] < cfg.stop_speed:
            # The plan comes to a stop: brake so the ego stops where the plan does.
            gap = self._cum[-1] - s_ego - 0.5
            accel = min(accel, -v * v / (2.0 * max(gap, 0.1)))
        if v_target < cfg.stop_speed and v < cfg.stop_speed:
            accel = min(accel, -v / self.dt)
        return accel

    def target_curvature(self, ego, s_ego: float) -> float:
        cfg = self.cfg
        x, y, yaw, v = (float(e) for e in ego[:4])
        if self._cum[-1] < 0.5:
            return 0.0  # a standing plan has no direction: hold the wheel straight
        lookahead = min(max(cfg.lookahead_min_m + cfg.lookahead_gain_s * v, cfg.lookahead_min_m),
                        cfg.lookahead_max_m)
        target = point_at(self._points, self._cum, s_ego + lookahead)
        if target is None:
            return 0.0
        dx, dy = target[0] - x, target[1] - y
        c, s = math.cos(yaw), math.sin(yaw)
        lx, ly = c * dx + s * dy, -s * dx + c * dy
        d2 = lx * lx + ly * ly
        return 0.0 if d2 < 1e-6 else 2.0 * ly / d2

    def control(self, ego, t: float) -> tuple[float, float]:
        """(accel m/s^2, curvature 1/m) for ego = (x, y, yaw, v) at sim time t, limited."""
        cfg = self.cfg
        if self.plan is None:
            accel, kappa = -cfg.decel_max, 0.0  # nothing to follow yet: stand still
        else:
            s_ego, _ = project(self._points, (float(ego[0]), float(ego[1])), self._cum)
            accel = self.target_accel(ego, t, s_ego)
            kappa = self.target_curvature(ego, s_ego)
        v = max(float(ego[3]), 0.0)
        da = cfg.jerk_max * self.dt
        accel = float(np.clip(accel, self.last_accel - da, self.last_accel + da))
        accel = float(np.clip(accel, -cfg.decel_max, cfg.accel_max))
        k_max = min(cfg.curvature_max, cfg.lateral_accel_max / max(v * v, 1e-6))
        dk = cfg.curvature_rate_max * self.dt
        kappa = float(np.clip(kappa, self.last_curvature - dk, self.last_curvature + dk))
        kappa = float(np.clip(kappa, -k_max, k_max))
        self.last_accel, self.last_curvature = accel, kappa
        return accel, kappa


def kinematic_step(state, accel: float, curvature: float, dt: float) -> tuple:
    """A kinematic unicycle/bicycle step of (x, y, yaw, v) with the speed kept >= 0 (the model
    the controller is designed for; the simulation has its own)."""
    x, y, yaw, v = (float(s) for s in state[:4])
    v_new = max(v + accel * dt, 0.0)
    dist = 0.5 * (v + v_new) * dt
    yaw_mid = yaw + 0.5 * curvature * dist
    return (x + dist * math.cos(yaw_mid), y + dist * math.sin(yaw_mid), yaw + curvature * dist,
            v_new)
