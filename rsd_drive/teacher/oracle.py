"""``scene-oracle``: a privileged teacher that reads the ground-truth objects of a scenario drive.

Input: the ``/scenario/objects`` JSON (std_msgs/String) recorded by :mod:`rsd_drive.scenario`::

    {"stamp_ns": int, "frame": "odom" | "base_link",
     "objects": [{"id", "class", "x", "y", "z" (box centre), "yaw", "length", "width", "height",
                  "vx", "vy" (world-frame velocity, m/s)}, ...],
     "route": [[x, y], ...]}   (optional: the ego lane's centre line ahead, message frame)

Leak-free by construction: a frame's risk uses only what is knowable at its time t0. Each object
is moved to t0 with its velocity and into ``base_link`` at t0. The ego's *corridor* is its route
ahead, the lane centre line from the map (the message's ``route``); without one (bags from other
sources) it is the arc of the ego's current speed and yaw rate (from odometry at and before t0).
The ego is assumed to keep its current speed along the corridor. The logged future path
(``FrameContext.future``) and any odometry after t0 are never read.

Per object (constant velocity, ``horizon_s``):

    ttc       first time the object's footprint meets the ego's (box vs box in the corridor frame)
    clearance the smallest gap between the object's footprint, predicted over ``predict_s``, and
              the corridor (``max(v0 * horizon_s, corridor_min_m)`` long, ``ego_half_width_m``
              wide)
    risk      max(1 - ttc / horizon, w * path_weight * exp(-0.5 * (clearance / path_sigma)^2))

with w = ``standing_vehicle_weight`` for a vehicle that stands outside the corridor (a parked
car), else 1.

Outputs carry both the ground footprint (splatted by the same code as the VLM backends' projected
boxes) and image boxes from projecting the 3D boxes into every camera (for markers, previews and
for checking the image-based backends against the truth).
"""
from __future__ import annotations

import json
import math

import numpy as np

from rsd_drive.geometry import project_points
from rsd_drive.teacher.base import FrameContext, RiskyObject, Teacher, TeacherOutput


def _rot(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s], [s, c]])


def objects_in_base_link(message: dict, ctx: FrameContext) -> list:
    """Objects of a ground-truth message as dicts in ``base_link`` at the frame stamp (x, y, z,
    yaw, vx, vy rotated into base_link); objects with non-finite fields are dropped."""
    frame = str(message.get('frame', message.get('frame_id', 'odom')))
    dt = (ctx.stamp_ns - int(message.get('stamp_ns', ctx.stamp_ns))) / 1e9
    ex, ey, eyaw = ctx.ego_pose
    world_from_msg = None
    if frame == 'base_link':
        # Relative to the ego at the message stamp: go through the world frame.
        st = ctx.odometry.at(int(message.get('stamp_ns', ctx.stamp_ns)))
        world_from_msg = (st.x, st.y, st.yaw)
    out = []
    for o in message.get('objects', []):
        try:
            vals = {k: float(o[k]) for k in ('x', 'y', 'yaw', 'length', 'width', 'height')}
            vals['z'] = float(o.get('z', vals['height'] / 2))
            vel = np.array([float(o.get('vx', 0.0)), float(o.get('vy', 0.0))])
        except (KeyError, TypeError, ValueError):
            continue
        if not all(math.isfinite(v) for v in vals.values()) or not np.all(np.isfinite(vel)):
            continue
        p, yaw = np.array([vals['x'], vals['y']]), vals['yaw']
        if world_from_msg is not None:
            mx, my, myaw = world_from_msg
            p = np.array([mx, my]) + _rot(myaw) @ p
            vel, yaw = _rot(myaw) @ vel, yaw + myaw
        p = p + vel * dt
        p_ego = _rot(-eyaw) @ (p - np.array([ex, ey]))
        v_ego = _rot(-eyaw) @ vel
        out.append({'id': o.get('id'), 'class': str(o.get('class', 'object')),
                    'x': float(p_ego[0]), 'y': float(p_ego[1]), 'z': vals['z'],
                    'yaw': math.atan2(math.sin(yaw - eyaw), math.cos(yaw - eyaw)),
                    'length': vals['length'], 'width': vals['width'], 'height': vals['height'],
                    'vx': float(v_ego[0]), 'vy': float(v_ego[1])})
    return out


def along_path(path: np.ndarray, distances) -> np.ndarray:
    """Points [K,2] at arc lengths ``distances`` along a polyline (extended straight past its
    end); also their headings [K]."""
    path = np.asarray(path, np.float64)
    seg = np.diff(path, axis=0)
    length = np.linalg.norm(seg, axis=1)
    keep = length > 1e-9
    seg, length = seg[keep], length[keep]
    if not len(seg):
        seg, length = np.array([[1.0, 0.0]]), np.array([1.0])
        path = np.vstack([path[:1], path[:1] + seg])
    else:
        path = np.vstack([path[:1], path[1:][keep]])
    arc = np.concatenate([[0.0], np.cumsum(length)])
    d = np.asarray(distances, np.float64)
    i = np.clip(np.searchsorted(arc, d, side='right') - 1, 0, len(seg) - 1)
    u = (d - arc[i]) / length[i]
    points = path[i] + u[:, None] * seg[i]
    return points, np.arctan2(seg[i, 1], seg[i, 0])


def frenet(line: np.ndarray, points: np.ndarray) -> tuple:
    """(s, l, heading) of points [K,2] relative to a polyline [N,2]: arc length of the nearest
    foot point (extended straight before the start and past the end), signed lateral offset (left
    positive) and the polyline's heading there."""
    line = np.asarray(line, np.float64)
    ab = np.diff(line, axis=0)
    length = np.linalg.norm(ab, axis=1)
    keep = length > 1e-9
    a, ab, length = line[:-1][keep], ab[keep], length[keep]
    if not len(ab):
        a, ab, length = line[:1], np.array([[1.0, 0.0]]), np.array([1.0])
    arc = np.concatenate([[0.0], np.cumsum(length)])[:-1]
    p = np.asarray(points, np.float64).reshape(-1, 2)
    u = ((p[:, None] - a[None]) * ab[None]).sum(2) / (length ** 2)[None]
    lo = np.where(np.arange(len(ab)) == 0, -np.inf, 0.0)
    hi = np.where(np.arange(len(ab)) == len(ab) - 1, np.inf, 1.0)
    u = np.clip(u, lo[None], hi[None])
    foot = a[None] + u[..., None] * ab[None]
    i = np.argmin(np.linalg.norm(foot - p[:, None], axis=2), axis=1)
    k = np.arange(len(p))
    tangent = ab[i] / length[i, None]
    d = p - foot[k, i]
    lateral = tangent[:, 0] * d[:, 1] - tangent[:, 1] * d[:, 0]
    return arc[i] + u[k, i] * length[i], lateral, np.arctan2(tangent[:, 1], tangent[:, 0])


def _boxes_meet(dx, dy, half_len, half_w, rel_yaw, obj_half_len, obj_half_w) -> np.ndarray:
    """Whether the ego box (half extents half_len x half_w, axis-aligned) and an object box
    centred at (dx, dy) [K] from it, rotated by rel_yaw, overlap: separating-axis test."""
    c, s = abs(math.cos(rel_yaw)), abs(math.sin(rel_yaw))
    cr, sr = math.cos(rel_yaw), math.sin(rel_yaw)
    seps = (np.abs(dx) - half_len - (obj_half_len * c + obj_half_w * s),
            np.abs(dy) - half_w - (obj_half_len * s + obj_half_w * c),
            np.abs(dx * cr + dy * sr) - obj_half_len - (half_len * c + half_w * s),
            np.abs(-dx * sr + dy * cr) - obj_half_w - (half_len * s + half_w * c))
    return np.maximum.reduce(seps) <= 0


def object_risk(obj: dict, future: np.ndarray, frequency_hz: float, cfg, corridor=None,
                reach: float | None = None):
    """(risk, ttc_s or None, clearance_m) of one base_link object.

    future: [T,2] the ego's positions at times (k + 1) / frequency_hz (the SceneOracle passes
    its corridor at the current speed, never the logged future). corridor: the polyline both
    are measured along (default: ``future`` from the origin); reach: how far along it the
    clearance counts (default: its whole length). The object moves at constant velocity in the
    corridor's frame (lane-aligned: along and across the corridor, as lane-following
    predictions do), so traffic in the other lane of a curve does not cut across it.
    """
    pts = np.vstack([np.zeros((1, 2)), np.asarray(future, dtype=np.float64)])
    line = pts if corridor is None else np.asarray(corridor, np.float64)
    times = np.arange(len(pts)) / frequency_hz
    s_pts = frenet(line, pts)[0]
    reach = float(np.sum(np.linalg.norm(np.diff(line, axis=0), axis=1))) if reach is None \
        else float(reach)
    fine = np.arange(0.0, min(cfg.horizon_s, times[-1]) + 1e-9, 0.05)
    s_ego = np.interp(fine, times, s_pts)
    (s0,), (l0,), (h0,) = frenet(line, np.array([[obj['x'], obj['y']]]))
    c, s = math.cos(h0), math.sin(h0)
    v_s, v_l = c * obj['vx'] + s * obj['vy'], -s * obj['vx'] + c * obj['vy']
    rel = obj['yaw'] - h0
    ext_s = 0.5 * (obj['length'] * abs(math.cos(rel)) + obj['width'] * abs(math.sin(rel)))
    ext_l = 0.5 * (obj['length'] * abs(math.sin(rel)) + obj['width'] * abs(math.cos(rel)))
    front, rear, half_w = cfg.ego_front_m, cfg.ego_rear_m, cfg.ego_half_width_m
    s_obj, l_obj = s0 + v_s * fine, l0 + v_l * fine
    hit = _boxes_meet(s_obj - (s_ego + 0.5 * (front - rear)), l_obj, 0.5 * (front + rear),
                      half_w, rel, obj['length'] / 2, obj['width'] / 2)
    ttc = float(fine[np.argmax(hit)]) if hit.any() else None
    risk_ttc = 0.0 if ttc is None else 1.0 - ttc / cfg.horizon_s
    # Clearance to the corridor ahead of the moving ego, [s_ego - rear, reach] x [-half_w,
    # half_w], over the prediction (a follower keeping its distance stays clear of it).
    taus = np.arange(0.0, cfg.predict_s + 1e-9, 0.25)
    sp, lp = s0 + v_s * taus, l0 + v_l * taus
    behind = np.interp(taus, times, s_pts) - rear - (sp + ext_s)
    out_s = np.maximum.reduce([sp - ext_s - reach, behind, np.zeros_like(sp)])
    out_l = np.maximum(np.abs(lp) - ext_l - half_w, 0.0)
    clearance = float(np.hypot(out_s, out_l).min())
    weight = 1.0
    if obj.get('class') == 'vehicle' and math.hypot(obj['vx'], obj['vy']) < 0.5 \
            and clearance > 0:
        weight = cfg.standing_vehicle_weight
    risk_path = weight * cfg.path_weight * math.exp(-0.5 * (clearance / cfg.path_sigma_m) ** 2)
    return float(np.clip(max(risk_ttc, risk_path), 0.0, 1.0)), ttc, clearance


def route_corridor(context: FrameContext, cfg) -> tuple:
    """(polyline [N,2] in base_link at t0 starting at the ego, source) of the ego's corridor ahead:
    the message's route (map) when it has one, else the arc of the current speed and yaw rate
    (odometry at and before t0 only)."""
    length = max(context.init_speed * cfg.horizon_s, cfg.corridor_min_m) + 5.0
    route = (context.objects or {}).get('route')
    if route:
        try:
            pts = np.asarray(route, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            pts = np.zeros((0, 2))
        if len(pts) >= 2 and np.all(np.isfinite(pts)):
            if str(context.objects.get('frame', 'odom')) == 'odom':
                ex, ey, eyaw = context.ego_pose
                pts = (_rot(-eyaw) @ (pts - np.array([ex, ey])).T).T
            # From the ego's foot point on the route onward (extended straight past its end).
            s_ego = float(frenet(pts, np.zeros((1, 2)))[0][0])
            return along_path(pts, s_ego + np.arange(0.0, length + 1e-9, 0.5))[0], 'route'
    yaw_rate = _past_yaw_rate(context)
    kappa = yaw_rate / context.init_speed if context.init_speed > 0.5 else 0.0
    s = np.arange(0.0, length + 1e-9, 0.5)
    if abs(kappa) < 1e-6:
        return np.stack([s, np.zeros_like(s)], axis=1), 'arc'
    return np.stack([np.sin(kappa * s) / kappa, (1 - np.cos(kappa * s)) / kappa], axis=1), 'arc'


def _past_yaw_rate(context: FrameContext, window_s: float = 0.5) -> float:
    """Yaw rate over the last ``window_s`` before t0 from the odometry (0 without history)."""
    odo = context.odometry
    if odo is None:
        return 0.0
    try:
        now = odo.at(context.stamp_ns)
        before = odo.at(context.stamp_ns - int(window_s * 1e9))
    except Exception:  # noqa: BLE001 - too little history: a straight corridor
        return 0.0
    dyaw = math.atan2(math.sin(now.yaw - before.yaw), math.cos(now.yaw - before.yaw))
    return dyaw / window_s


def corridor_path(corridor: np.ndarray, speed: float, frequency_hz: float, cfg) -> np.ndarray:
    """The ego's positions [T,2] at times (k + 1) / frequency_hz over the horizon, keeping its
    current ``speed`` along the corridor."""
    steps = int(round(cfg.horizon_s * frequency_hz))
    times = (np.arange(steps) + 1) / frequency_hz
    points, _ = along_path(corridor, max(speed, 0.0) * times)
    return points


def box_corners(obj: dict) -> np.ndarray:
    """[8, 3] corners of a base_link box."""
    L, W, H = obj['length'] / 2, obj['width'] / 2, obj['height'] / 2
    local = np.array([[sx * L, sy * W, sz * H] for sx in (-1, 1) for sy in (-1, 1)
                      for sz in (-1, 1)])
    R = np.eye(3)
    R[:2, :2] = _rot(obj['yaw'])
    return local @ R.T + np.array([obj['x'], obj['y'], obj['z']])


def image_box(obj: dict, K, cam_to_ego, image_hw):
    """Image box (x1, y1, x2, y2) of a 3D box clipped to the image, and its visible area; None
    when any corner is behind the camera or the box misses the image."""
    uv, depth = project_points(box_corners(obj), K, cam_to_ego)
    if np.any(depth <= 0.1):
        return None
    h, w = image_hw
    x1, y1 = uv.min(0)
    x2, y2 = uv.max(0)
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, w - 1.0), min(y2, h - 1.0)
    if cx2 - cx1 < 1 or cy2 - cy1 < 1:
        return None
    return (float(cx1), float(cy1), float(cx2), float(cy2)), (cx2 - cx1) * (cy2 - cy1)


class SceneOracle(Teacher):
    """Ground-truth teacher for scenario drives (the demo's teacher)."""

    name = 'scene-oracle'
    needs_objects = True

    def __init__(self, config):
        self.cfg = config.oracle

    def describe(self) -> dict:
        return {'backend': self.name, 'oracle': vars(self.cfg).copy()}

    def label(self, frame, context: FrameContext) -> TeacherOutput:
        out = TeacherOutput()
        if context.objects is None:
            out.parsed = False
            out.answer = json.dumps({'error': 'no ground-truth objects message at this frame'})
            out.rejected['no_objects_message'] += 1
            return out
        answer = []
        # Never context.future: the corridor is the route ahead at the current speed.
        corridor, source = route_corridor(context, self.cfg)
        path = corridor_path(corridor, context.init_speed, context.frequency_hz, self.cfg)
        reach = max(context.init_speed * self.cfg.horizon_s, self.cfg.corridor_min_m)
        for obj in objects_in_base_link(context.objects, context):
            risk, ttc, clearance = object_risk(obj, path, context.frequency_hz, self.cfg,
                                               corridor=corridor, reach=reach)
            if risk < self.cfg.min_risk:
                continue
            best = None
            for i, cam in enumerate(frame.cameras):
                hit = image_box(obj, frame.K[i], frame.cam_to_ego[i], frame.image_hw[i])
                if hit is not None and (best is None or hit[1] > best[2]):
                    best = (cam, hit[0], hit[1])
            reason = (f'collision in {ttc:.2f} s' if ttc is not None
                      else f'{clearance:.1f} m from the path')
            out.objects.append(RiskyObject(
                label=obj['class'], risk=risk, reason=reason,
                camera=best[0] if best else None, box=best[1] if best else None,
                ground=(obj['x'], obj['y']), width_m=obj['width'], length_m=obj['length'],
                yaw=obj['yaw']))
            answer.append({'id': obj['id'], 'label': obj['class'], 'risk': round(risk, 3),
                           'corridor': source,
                           'ttc_s': None if ttc is None else round(ttc, 2),
                           'clearance_m': round(clearance, 2), 'reason': reason})
        out.answer = json.dumps(answer)
        return out
