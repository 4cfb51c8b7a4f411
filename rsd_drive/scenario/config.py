"""Configuration of synthetic drives: a dataclass tree, validated on construction, YAML round trip.

``config/scenario.yaml`` is the source of truth; the defaults here mirror it (a test keeps the two
equal) so that ``ScenarioConfig()`` is the same drive a user gets from the command line.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import yaml

from rsd_drive import build_config, config_file
from rsd_drive.geometry import camera_to_ego, intrinsics

STORAGES = ('mcap', 'sqlite3')

# Scenario families (``rsd-drive scenario --family``); ``mixed`` draws one of the others per seed.
FAMILIES = ('cruise', 'lead_brake', 'stopped_vehicle', 'ped_crossing', 'ped_occluded', 'cut_in',
            'ped_kerb')
FAMILY_CHOICES = FAMILIES + ('mixed',)

# Per-family parameters (mirrored by config/scenario.yaml, which documents them). Two-element
# lists are ranges [lo, hi] drawn uniformly per seed. ``arrival``: when the ego is due at the
# hazard, as a fraction of ``duration_s`` (on the ego's nominal, hazard-free speed profile).
# ``ttc_at_onset_s``: the ego's time to arrival (at its current speed) when the hazard enters its
# corridor; the hazard's trigger fires that long (plus the time it needs to reach the corridor)
# before the ego arrives, CARLA-style.
FAMILY_DEFAULTS = {
    'cruise': {'lead_prob': 0.5, 'lead_gap_m': [25.0, 45.0], 'lead_speed_factor': [0.8, 1.2]},
    'lead_brake': {'lead_gap_m': [14.0, 22.0], 'lead_speed_factor': [0.75, 0.9],
                   'trigger_time': [0.35, 0.55], 'trigger_gap_m': 40.0,
                   'brake_decel': [4.0, 6.0], 'hold_s': [1.5, 3.0]},
    'stopped_vehicle': {'arrival': [0.4, 0.6], 'release_wait_s': [2.0, 4.0],
                        'release_speed': [5.0, 8.0]},
    'ped_crossing': {'arrival': [0.4, 0.65], 'ttc_at_onset_s': [2.0, 4.0],
                     'walk_speed': [1.2, 1.6], 'from_left_prob': 0.5, 'pause_s': [2.0, 3.5]},
    'ped_occluded': {'arrival': [0.4, 0.65], 'ttc_at_onset_s': [1.6, 2.6],
                     'walk_speed': [1.6, 2.2], 'pause_s': [2.0, 3.5]},
    'cut_in': {'arrival': [0.4, 0.65], 'ttc_at_onset_s': [2.0, 3.5],
               'lateral_duration_s': [1.8, 2.6], 'speed': [3.0, 6.0]},
    'ped_kerb': {'arrival': [0.4, 0.65], 'walk_speed': [0.8, 1.4], 'kerb_offset_m': 0.4,
                 'toward_prob': 0.5},
}


def _merge_families(data) -> dict:
    """FAMILY_DEFAULTS with a (partial) user mapping applied; unknown families or keys and bad
    ranges raise ValueError; ranges become tuples."""
    out = copy.deepcopy(FAMILY_DEFAULTS)
    for name, params in dict(data or {}).items():
        if name not in out:
            raise ValueError(f'unknown scenario family {name!r}; known: {list(FAMILIES)}')
        unknown = sorted(set(params or {}) - set(out[name]))
        if unknown:
            raise ValueError(f'families.{name}: unknown keys {unknown}; '
                             f'expected {sorted(out[name])}')
        out[name].update(params or {})
    for name, params in out.items():
        for key, value in params.items():
            if isinstance(value, (list, tuple)):
                lo, hi = (float(v) for v in value)
                if not lo <= hi:
                    raise ValueError(f'families.{name}.{key} must be a range lo <= hi, '
                                     f'got {value}')
                params[key] = (lo, hi)
            else:
                params[key] = float(value)
    return out


@dataclass
class NoiseConfig:
    """Noise injection (conditional imitation learning, Codevilla et al. 2018): bursts of
    temporally correlated steering and speed perturbations added to the expert's control on the
    executed ego, while the expert keeps correcting from the state it is in. The labeler keeps a
    frame only when its target window holds no injected noise, so every target is the expert's
    own correction (recovery data).

    enabled: off by default (drives are then exactly those without noise).
    gap_s: time from the start (or the end of a burst) to the next burst, uniform in the range.
    duration_s: length of a burst, uniform in the range; its profile is a half sine.
    curvature: peak steering perturbation (1/m), sign random per burst.
    accel: peak longitudinal perturbation (m/s^2), sign random per burst.
    """

    enabled: bool = False
    gap_s: tuple = (8.0, 14.0)
    duration_s: tuple = (1.0, 2.0)
    curvature: float = 0.12
    accel: float = 1.0

    def __post_init__(self):
        for key in ('gap_s', 'duration_s'):
            lo, hi = (float(v) for v in getattr(self, key))
            if not 0 < lo <= hi:
                raise ValueError(f'noise.{key} must be a range 0 < lo <= hi, got {(lo, hi)}')
            setattr(self, key, (lo, hi))
        if self.curvature < 0 or self.accel < 0:
            raise ValueError('noise.curvature and noise.accel must be >= 0')

    def bursts(self, seed: int, until_s: float) -> list:
        """[(t_start, t_end, peak_curvature, peak_accel)] for a drive, from its own random
        stream (the world's draws are the same with and without noise)."""
        if not self.enabled:
            return []
        rng = np.random.default_rng([int(seed) % 2**32, 0x5EED])
        out, t = [], 0.0
        while True:
            t += float(rng.uniform(*self.gap_s))
            d = float(rng.uniform(*self.duration_s))
            if t >= until_s:
                return out
            k = self.curvature * float(rng.choice([-1.0, 1.0])) * float(rng.uniform(0.5, 1.0))
            a = self.accel * float(rng.choice([-1.0, 1.0])) * float(rng.uniform(0.5, 1.0))
            out.append((t, t + d, k, a))
            t += d


def noise_at(bursts, t: float) -> tuple[float, float]:
    """(curvature, accel) perturbation at t: a half sine over each burst, 0 outside."""
    for t0, t1, k, a in bursts:
        if t0 <= t < t1:
            w = math.sin(math.pi * (t - t0) / (t1 - t0))
            return k * w, a * w
    return 0.0, 0.0


@dataclass
class ExpertConfig:
    """The privileged expert and the other vehicles' driver model (IDM, Treiber et al. 2000).

    dt: simulation step (s); /odom is sampled from it, so 1 / odom_hz must be a multiple of it.
    headway_s, min_gap_m: IDM time headway T and standstill gap s0; the IDM acceleration is
        ``ScenarioConfig.accel_max`` and its comfortable deceleration ``decel_max``.
    decel_emergency: hardest braking (IDM's interaction term may exceed ``decel_max`` up to here).
    curvature_max: physical path-curvature limit of the ego (1/m).
    lateral_gain, heading_gain: lane keeping, curvature = k_lane - lateral_gain * e_lat -
        heading_gain * e_heading (errors in metres / radians; speed-independent in distance).
    pedestrian_horizon_s, vehicle_horizon_s: pedestrians (vehicles) predicted at constant
        velocity into the ego's corridor within this horizon count as speed-0 (their own speed)
        leaders.
    corridor_margin_m: added to the half widths of ego and obstacle for the corridor test.
    """

    dt: float = 0.02
    headway_s: float = 1.3
    min_gap_m: float = 3.0
    decel_emergency: float = 7.0
    curvature_max: float = 0.2
    lateral_gain: float = 0.1
    heading_gain: float = 0.6
    pedestrian_horizon_s: float = 4.0
    vehicle_horizon_s: float = 1.5
    corridor_margin_m: float = 0.3

    def __post_init__(self):
        for f in fields(self):
            if float(getattr(self, f.name)) <= 0:
                raise ValueError(f'expert.{f.name} must be positive')


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
    vehicles: background vehicles driving by IDM: oncoming, or behind the ego in its lane (they
        follow the ego and react to its braking).
    parked_vehicles: vehicles standing at the road edge.
    pedestrians: pedestrians walking along the sidewalks.
    family: scenario family (``FAMILY_CHOICES``): the hazard of the drive; ``mixed`` draws one of
        ``FAMILIES`` per seed.
    families: per-family parameters (``FAMILY_DEFAULTS``; config/scenario.yaml documents them).
    expert: the privileged expert that drives the ego (``ExpertConfig``).
    noise: noise injection on the recorded ego (``NoiseConfig``; off by default).
    scenery_per_100m: trees and buildings beside the road (rendered only, not published).
    intent_horizon_s, intent_threshold_deg: a frame's intent is left/right when the route (the
        ego's lane) turns by more than the threshold over the next ``intent_horizon_s`` at the
        current speed (at least ``intent_min_lookahead_m`` metres), else straight.
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
    scenery_per_100m: float = 6.0
    intent_horizon_s: float = 5.0
    intent_threshold_deg: float = 20.0
    intent_min_lookahead_m: float = 15.0
    draw_distance: float = 150.0
    family: str = 'mixed'
    families: dict = field(default_factory=lambda: _merge_families({}))
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)

    def __post_init__(self):
        self.families = _merge_families(self.families)
        self.expert = build_config(ExpertConfig, self.expert, 'scenario.expert')
        self.noise = build_config(NoiseConfig, self.noise, 'scenario.noise')
        if self.family not in FAMILY_CHOICES:
            raise ValueError(f'family must be one of {FAMILY_CHOICES}, got {self.family!r}')
        steps = 1.0 / (self.odom_hz * self.expert.dt)
        if abs(steps - round(steps)) > 1e-6:
            raise ValueError(f'1 / odom_hz must be a multiple of expert.dt ({self.expert.dt})')
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
        for key in ('vehicles', 'parked_vehicles', 'pedestrians'):
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
        d['noise'] = {k: list(v) if isinstance(v, tuple) else v for k, v in d['noise'].items()}
        d['families'] = {name: {k: list(v) if isinstance(v, tuple) else v
                                for k, v in params.items()}
                         for name, params in d['families'].items()}
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
