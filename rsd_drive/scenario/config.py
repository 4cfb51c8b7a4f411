"""Configuration of synthetic drives: a dataclass tree, validated on construction, YAML round trip.

``config/scenario.yaml`` is the source of truth; the defaults here mirror it (a test keeps the two
equal) so that ``ScenarioConfig()`` is the same drive a user gets from the command line.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import yaml

from rsd_drive import config_file
from rsd_drive.geometry import camera_to_ego, intrinsics

STORAGES = ('mcap', 'sqlite3')


@dataclass
class CameraSpec:
    """One camera of the rig.

    name: camera name; topics are ``/cameras/<name>/...`` and the frame is ``<name>_optical``.
    x, y, z: mount position in ``base_link`` (metres).
    yaw_deg: viewing direction, left positive (0 = forward, 180 = backward).
    pitch_deg: downward tilt.
    fov_deg: horizontal field of view; square pixels, so the vertical one follows from the size.
    """

    name: str
    x: float
    y: float
    z: float
    yaw_deg: float
    pitch_deg: float = 5.0
    fov_deg: float = 70.0

    def __post_init__(self):
        if not self.name or '/' in self.name:
            raise ValueError(f'camera name must be a non-empty topic token, got {self.name!r}')
        if not 10.0 <= self.fov_deg <= 170.0:
            raise ValueError(f'camera {self.name}: fov_deg must be in [10, 170], '
                             f'got {self.fov_deg}')
        if self.z <= 0:
            raise ValueError(f'camera {self.name}: z must be above the ground, got {self.z}')

    def K(self, width: int, height: int) -> np.ndarray:
        """Pinhole matrix; pixel centres sit on integer coordinates (cx = (W - 1) / 2)."""
        fx = 0.5 * width / np.tan(np.radians(self.fov_deg) / 2)
        return intrinsics(fx, fx, (width - 1) / 2, (height - 1) / 2)

    def cam_to_ego(self) -> np.ndarray:
        return camera_to_ego(self.x, self.y, self.z, np.radians(self.yaw_deg),
                             np.radians(self.pitch_deg))


def default_cameras() -> list:
    """Six cameras around the roof, in the order of ``config/dataset.yaml``."""
    return [
        CameraSpec('front', 1.5, 0.0, 1.6, 0.0, 5.0, 70.0),
        CameraSpec('front_left', 1.3, 0.3, 1.6, 55.0, 5.0, 70.0),
        CameraSpec('front_right', 1.3, -0.3, 1.6, -55.0, 5.0, 70.0),
        CameraSpec('back', 1.0, 0.0, 1.6, 180.0, 5.0, 90.0),
        CameraSpec('back_left', 1.1, 0.3, 1.6, 110.0, 5.0, 70.0),
        CameraSpec('back_right', 1.1, -0.3, 1.6, -110.0, 5.0, 70.0),
    ]


@dataclass
class ScenarioConfig:
    """A synthetic drive: timing, sensors, road, traffic and how the bag is stored.

    duration_s: recorded time; the ego trajectory is simulated ``intent_horizon_s`` further so the
        intent of the last frames is defined.
    image_hz: rate of the cameras, camera_info, objects, markers and intent.
    odom_hz: rate of /odom and /tf.
    image_width, image_height: rendered image size in pixels.
    compressed: record ``sensor_msgs/CompressedImage`` (JPEG) instead of raw rgb8 ``Image``.
    jpeg_quality: OpenCV JPEG quality when ``compressed``.
    storage: rosbag2 storage plugin, ``mcap`` or ``sqlite3``.
    chunk_compression: zstd-compress MCAP chunks (rendered images shrink ~30x); not for sqlite3.
    camera_jitter_s: non-reference cameras are stamped up to this long after the reference camera
        (uniform, deterministic per seed), like a rig with loosely synchronised triggers.
    cameras: the rig; the first camera is the synchronisation reference and is never jittered.
    speed_min, speed_max: range of the ego's target speeds (m/s); curves may slow it further.
    accel_max, decel_max: longitudinal limits of the ego (m/s^2).
    lateral_accel_max: curve speed limit, v <= sqrt(a_lat / curvature).
    lane_width, sidewalk_width: road cross-section (two lanes, right-hand traffic) in metres.
    turn_angle_deg, turn_radius: ranges of the road's turns (left or right, random per seed).
    straight_length: range of the straight pieces between turns; the first one is at most
        ``first_turn_within`` metres so every drive has a turn early.
    vehicles: moving vehicles (ahead of / behind the ego in its lane, or oncoming).
    parked_vehicles: vehicles standing at the road edge.
    pedestrians: pedestrians walking along the sidewalks.
    crossing_pedestrians: pedestrians that cross the road ahead of the ego, a few seconds before it
        passes (risky, never hit).
    scenery_per_100m: trees and buildings beside the road (rendered only, not published).
    intent_horizon_s, intent_threshold_deg: a frame's intent is left/right when the ego's yaw
        changes by more than the threshold over the horizon, else straight.
    draw_distance: ground and objects farther than this (metres) are not drawn.
    """

    duration_s: float = 20.0
    image_hz: float = 10.0
    odom_hz: float = 50.0
    image_width: int = 400
    image_height: int = 224
    compressed: bool = False
    jpeg_quality: int = 90
    storage: str = 'mcap'
    chunk_compression: bool = True
    camera_jitter_s: float = 0.002
    cameras: list = field(default_factory=default_cameras)
    speed_min: float = 5.0
    speed_max: float = 12.0
    accel_max: float = 1.5
    decel_max: float = 3.0
    lateral_accel_max: float = 2.5
    lane_width: float = 3.5
    sidewalk_width: float = 3.0
    turn_angle_deg: tuple = (35.0, 95.0)
    turn_radius: tuple = (12.0, 45.0)
    straight_length: tuple = (25.0, 80.0)
    first_turn_within: float = 45.0
    vehicles: int = 8
    parked_vehicles: int = 4
    pedestrians: int = 8
    crossing_pedestrians: int = 3
    scenery_per_100m: float = 6.0
    intent_horizon_s: float = 5.0
    intent_threshold_deg: float = 20.0
    draw_distance: float = 150.0

    def __post_init__(self):
        self.cameras = [c if isinstance(c, CameraSpec) else CameraSpec(**c) for c in self.cameras]
        names = [c.name for c in self.cameras]
        if not names or len(set(names)) != len(names):
            raise ValueError(f'cameras need unique names, got {names}')
        for key in ('turn_angle_deg', 'turn_radius', 'straight_length'):
            lo, hi = (float(v) for v in getattr(self, key))
            if not 0 < lo <= hi:
                raise ValueError(f'{key} must be a range 0 < lo <= hi, got {(lo, hi)}')
            setattr(self, key, (lo, hi))
        if self.duration_s <= 0 or self.image_hz <= 0 or self.odom_hz <= 0:
            raise ValueError('duration_s, image_hz and odom_hz must be positive')
        if self.image_width < 16 or self.image_height < 16:
            raise ValueError(f'image size too small: {self.image_width}x{self.image_height}')
        if not 0 < self.speed_min <= self.speed_max:
            raise ValueError(f'need 0 < speed_min <= speed_max, got {self.speed_min}, '
                             f'{self.speed_max}')
        if min(self.accel_max, self.decel_max, self.lateral_accel_max) <= 0:
            raise ValueError('accel_max, decel_max and lateral_accel_max must be positive')
        if self.turn_radius[0] <= self.lane_width + self.sidewalk_width:
            raise ValueError('turn_radius must exceed lane_width + sidewalk_width '
                             '(the road would fold over itself)')
        if self.storage not in STORAGES:
            raise ValueError(f'storage must be one of {STORAGES}, got {self.storage!r}')
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f'jpeg_quality must be in [1, 100], got {self.jpeg_quality}')
        if not 0 <= self.camera_jitter_s < 0.5 / self.image_hz:
            raise ValueError('camera_jitter_s must be in [0, half the image period)')
        for key in ('vehicles', 'parked_vehicles', 'pedestrians', 'crossing_pedestrians'):
            if getattr(self, key) < 0:
                raise ValueError(f'{key} must be >= 0')
        if self.first_turn_within <= 0 or self.draw_distance <= 0 or self.intent_horizon_s <= 0:
            raise ValueError('first_turn_within, draw_distance and intent_horizon_s must be > 0')

    @property
    def n_frames(self) -> int:
        return int(round(self.duration_s * self.image_hz))

    @property
    def n_odom(self) -> int:
        return int(round(self.duration_s * self.odom_hz))

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ('turn_angle_deg', 'turn_radius', 'straight_length'):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, data: dict) -> 'ScenarioConfig':
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f'unknown scenario config keys: {unknown}')
        return cls(**data)

    @classmethod
    def from_yaml(cls, path) -> 'ScenarioConfig':
        """Read the ``scenario:`` section of a YAML file (or the whole file if it has none)."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict(data.get('scenario', data))

    def to_yaml(self, path) -> None:
        Path(path).write_text(yaml.safe_dump({'scenario': self.to_dict()}, sort_keys=False))


def default_config_path() -> Path | None:
    """``config/scenario.yaml`` of a source checkout, or of an installed package's share dir."""
    path = config_file('scenario.yaml')
    return path if path.is_file() else None
