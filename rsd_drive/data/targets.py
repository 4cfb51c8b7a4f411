"""Planning targets and ego inputs of one frame, from the logged odometry.

Kept apart from the inputs on purpose (NAVSIM's feature/target split): ``past_states`` and
``intent`` are model inputs; ``future`` (20 waypoints at 4 Hz in ``base_link`` at t0) is the
planning target and never reaches the model's inputs. The intent comes from an intent topic when
the drive recorded one, else from the heading change of the logged route.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rsd_drive import INTENTS
from rsd_drive.data.preprocess import jpeg_model_input, resize_camera
from rsd_drive.data.sync import OdometryHistory, SyncError


class TargetError(LookupError):
    """Targets can't be built for a frame; ``reason`` is a counter key."""

    def __init__(self, reason: str, detail: str = ''):
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason


@dataclass
class TargetConfig:
    """past_steps/future_steps at frequency_hz (the model's); a heading change beyond
    ``turn_threshold_rad`` within ``intent_horizon_s`` makes the intent left (positive, REP-103
    yaw) or right (negative), else straight. ``route_points`` every ``route_spacing_m``: the route
    input stored in the index (``rsd_drive.data.route``; the mask is off without a route)."""

    past_steps: int = 16
    future_steps: int = 20
    frequency_hz: float = 4.0
    turn_threshold_rad: float = 0.35
    intent_horizon_s: float = 5.0
    route_points: int = 16
    route_spacing_m: float = 4.0

    def __post_init__(self):
        if self.past_steps <= 0 or self.future_steps <= 0 or self.frequency_hz <= 0:
            raise ValueError('past_steps, future_steps and frequency_hz must be positive')
        if self.turn_threshold_rad <= 0 or self.intent_horizon_s <= 0:
            raise ValueError('turn_threshold_rad and intent_horizon_s must be positive')


@dataclass
class Targets:
    past_states: np.ndarray   # [past_steps, 4] x, y, yaw, speed in base_link at t0
    future: np.ndarray        # [future_steps, 2]
    init_speed: float
    intent: int               # index into rsd_drive.INTENTS
    intent_source: str        # 'topic' or 'heading'


def intent_index(name) -> int:
    """Index of an intent name; unknown names (and None) map to 'unknown'."""
    name = str(name or '').strip().lower()
    return INTENTS.index(name) if name in INTENTS else INTENTS.index('unknown')


def intent_from_heading(odometry: OdometryHistory, t0_ns: int, cfg: TargetConfig) -> int:
    """left/straight/right from the logged heading change between t0 and t0 + horizon."""
    try:
        end = odometry.sample_in_frame(t0_ns, [cfg.intent_horizon_s])[0]
    except SyncError as exc:
        raise TargetError(f'intent:{exc.reason}', str(exc)) from exc
    dyaw = float(end[2])
    if dyaw > cfg.turn_threshold_rad:
        return INTENTS.index('left')
    if dyaw < -cfg.turn_threshold_rad:
        return INTENTS.index('right')
    return INTENTS.index('straight')


def build_targets(odometry: OdometryHistory, t0_ns: int, cfg: TargetConfig,
                  intent_name: str | None = None, future=None) -> Targets:
    """Past states, future waypoints, speed and intent at ``t0_ns``.

    ``intent_name``: the recorded intent at t0 (from the intent topic), None to derive it from
    the heading change. ``future``: a recorded target [future_steps, 2] in base_link at t0 (a
    DAgger drive's expert rollout) instead of the logged odometry's future. Raises TargetError
    (reason ``past:<why>``/``future:<why>``) when the odometry doesn't cover the past window or
    the future horizon.
    """
    try:
        past = odometry.past_states(t0_ns, cfg.past_steps, cfg.frequency_hz)
    except SyncError as exc:
        raise TargetError(f'past:{exc.reason}', str(exc)) from exc
    try:
        future = odometry.future_waypoints(t0_ns, cfg.future_steps, cfg.frequency_hz) \
            if future is None else np.asarray(future, dtype=np.float64)
    except SyncError as exc:
        raise TargetError(f'future:{exc.reason}', str(exc)) from exc
    if not (np.all(np.isfinite(past)) and np.all(np.isfinite(future))):
        raise TargetError('nan_targets', 'non-finite odometry in the target window')
    if intent_name is not None:
        intent, source = intent_index(intent_name), 'topic'
    else:
        intent, source = intent_from_heading(odometry, t0_ns, cfg), 'heading'
    speed = float(past[-1, 3])
    if not math.isfinite(speed):
        raise TargetError('nan_targets', 'non-finite speed at t0')
    return Targets(past.astype(np.float32), future.astype(np.float32), speed, intent, source)


def index_frame(frame, targets: Targets, risk: np.ndarray, image_hw, route=None) -> dict:
    """One training-index frame (the fields of rsd_drive.data.index.FIELDS) from a decoded
    :class:`rsd_drive.data.bag.SyncedFrame`, its targets, the teacher's risk grid and the route
    input (a :class:`rsd_drive.data.route.RouteInput`; None: no route, stored with the mask off);
    cameras are resized to the model input size ``image_hw`` with the shared preprocessing."""
    from rsd_drive.data.route import no_route

    route = route if route is not None else no_route(0)
    if frame.images is None:
        raise ValueError(f'frame {frame.seq} was read without decoding its images')
    images, Ks = [], []
    n = len(frame.images)
    lenses = getattr(frame, 'distortion', None) or [None] * n
    messages = getattr(frame, 'messages', None) or [None] * n
    for rgb, K, lens, msg, hw in zip(frame.images, frame.K, lenses, messages, frame.image_hw):
        # the node's own decode + remap where the message is a JPEG, so the index holds the
        # pixels the vehicle will see; else the full image, box-reduced + remapped
        prepared = jpeg_model_input(msg, K, hw, tuple(image_hw), lens) \
            if msg is not None else None
        img, K2 = prepared or resize_camera(rgb, K, tuple(image_hw), lens)  # pinhole K2
        images.append(img)
        Ks.append(K2)
    return {
        'images': np.stack(images).astype(np.uint8),
        'intrinsics': np.stack(Ks).astype(np.float32),
        'cam_to_ego': np.asarray(frame.cam_to_ego, dtype=np.float32),
        'past_states': targets.past_states,
        'intent': np.int64(targets.intent),
        'init_speed': np.float32(targets.init_speed),
        'future': targets.future,
        'risk': np.clip(np.nan_to_num(np.asarray(risk, dtype=np.float32)), 0.0, 1.0),
        'stamps': np.int64(frame.stamp_ns),
        'route': np.asarray(route.points, dtype=np.float32).reshape(-1, 2),
        'route_valid': np.float32(route.valid_flag),
    }
