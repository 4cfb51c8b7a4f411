"""``scene-oracle``: a privileged teacher that reads the ground-truth objects of a scenario drive.

Input: the ``/scenario/objects`` JSON (std_msgs/String) recorded by :mod:`rsd_drive.scenario`::

    {"stamp_ns": int, "frame": "odom" | "base_link",
     "objects": [{"id", "class", "x", "y", "z" (box centre), "yaw", "length", "width", "height",
                  "vx", "vy" (world-frame velocity, m/s)}, ...]}

Each object is moved to the frame stamp with its velocity and into ``base_link`` at t0. Its risk
combines a time-to-collision with the ego's *logged* future path (constant-velocity object, ego
footprint ``ego_half_width_m``) and its distance to that path:

    risk = max(1 - ttc / horizon, path_weight * exp(-0.5 * (clearance / path_sigma)^2))

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


def object_risk(obj: dict, future: np.ndarray, frequency_hz: float, cfg):
    """(risk, ttc_s or None, clearance_m) of one base_link object against the ego's future."""
    times = np.arange(len(future) + 1) / frequency_hz
    ego = np.vstack([np.zeros((1, 2)), np.asarray(future, dtype=np.float64)])
    pos = np.array([obj['x'], obj['y']])[None] + times[:, None] * np.array([obj['vx'],
                                                                            obj['vy']])[None]
    # Object footprint as a circle of its half width plus half the excess length along the way
    # it faces (cheap, conservative for long vehicles seen from the side).
    radius = 0.5 * obj['width'] + cfg.ego_half_width_m
    gaps = np.linalg.norm(pos - ego, axis=1) - radius - 0.25 * max(obj['length'] - obj['width'], 0)
    inside = (gaps <= 0) & (times <= cfg.horizon_s)
    ttc = float(times[np.argmax(inside)]) if inside.any() else None
    risk_ttc = 0.0 if ttc is None else 1.0 - ttc / cfg.horizon_s
    # Clearance of the object (now) to the ego's path polyline.
    p = np.array([obj['x'], obj['y']])
    a, b = ego[:-1], ego[1:]
    ab = b - a
    denom = np.maximum((ab ** 2).sum(1), 1e-9)
    s = np.clip(((p - a) * ab).sum(1) / denom, 0.0, 1.0)
    dist = float(np.min(np.linalg.norm(a + s[:, None] * ab - p, axis=1)))
    clearance = max(dist - 0.5 * obj['width'] - cfg.ego_half_width_m, 0.0)
    risk_path = cfg.path_weight * math.exp(-0.5 * (clearance / cfg.path_sigma_m) ** 2)
    return float(np.clip(max(risk_ttc, risk_path), 0.0, 1.0)), ttc, clearance


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
        for obj in objects_in_base_link(context.objects, context):
            risk, ttc, clearance = object_risk(obj, context.future, context.frequency_hz,
                                               self.cfg)
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
                           'ttc_s': None if ttc is None else round(ttc, 2),
                           'clearance_m': round(clearance, 2), 'reason': reason})
        out.answer = json.dumps(answer)
        return out
