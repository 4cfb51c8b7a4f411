"""Configuration of closed-loop evaluation: dataclasses validated on construction, read from
``config/closedloop.yaml`` (the source of truth; the defaults here mirror it and a test keeps the
two equal)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from rsd_drive import build_config, config_file


@dataclass
class ControllerConfig:
    """Path tracking: pure pursuit on the plan's path, speed from the plan's timing.

    lookahead_min_m, lookahead_gain_s, lookahead_max_m: pure-pursuit lookahead distance
        ``clip(min + gain * v, min, max)``.
    speed_lead_s: the target speed is the plan's speed this far ahead of now (the plan is timed:
        waypoint k at ``(k + 1) / frequency_hz`` after its planning time).
    speed_gain: proportional gain on the speed error (1/s).
    position_gain: gain on the arc-length error between where the plan is at now and the ego
        (1/s^2), so a plan that stops at a point stops there.
    accel_max, decel_max: limits of the commanded acceleration (m/s^2, both positive).
    jerk_max: limit of the change of the commanded acceleration (m/s^3).
    curvature_max: steering limit as path curvature (1/m).
    curvature_rate_max: limit of the change of curvature (1/m per second).
    lateral_accel_max: ``|curvature| <= lateral_accel_max / v^2``.
    stop_speed: a plan slower than this (m/s) is a stop: brake to standstill.
    """

    lookahead_min_m: float = 3.0
    lookahead_gain_s: float = 0.5
    lookahead_max_m: float = 15.0
    speed_lead_s: float = 0.5
    speed_gain: float = 1.5
    position_gain: float = 0.3
    accel_max: float = 2.0
    decel_max: float = 7.0
    jerk_max: float = 10.0
    curvature_max: float = 0.2
    curvature_rate_max: float = 0.5
    lateral_accel_max: float = 8.0
    stop_speed: float = 0.3

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ('speed_lead_s', 'position_gain'):
                if value < 0:
                    raise ValueError(f'controller.{f.name} must be >= 0, got {value}')
            elif value <= 0:
                raise ValueError(f'controller.{f.name} must be > 0, got {value}')
        if self.lookahead_max_m < self.lookahead_min_m:
            raise ValueError('controller.lookahead_max_m must be >= lookahead_min_m')


@dataclass
class ComfortConfig:
    """NAVSIM / nuPlan comfort limits: longitudinal acceleration range (m/s^2), absolute limits
    of lateral acceleration (m/s^2), jerk (m/s^3), yaw rate (rad/s), yaw acceleration (rad/s^2)."""

    lon_accel: tuple = (-4.05, 2.40)
    lat_accel: float = 4.89
    jerk: float = 4.13
    yaw_rate: float = 0.95
    yaw_accel: float = 1.93

    def __post_init__(self):
        lo, hi = (float(v) for v in self.lon_accel)
        if not lo < 0 < hi:
            raise ValueError(f'comfort.lon_accel must be a range lo < 0 < hi, got {(lo, hi)}')
        self.lon_accel = (lo, hi)
        for key in ('lat_accel', 'jerk', 'yaw_rate', 'yaw_accel'):
            if getattr(self, key) <= 0:
                raise ValueError(f'comfort.{key} must be > 0')


@dataclass
class ScoringConfig:
    """Route scores with the CARLA leaderboard / Bench2Drive definitions.

    penalty_pedestrian, penalty_vehicle, penalty_static: the factor each collision multiplies the
        infraction penalty by (leaderboard: 0.50, 0.60, 0.65).
    penalty_off_road: factor per off-road event (leaderboard: 1.0, i.e. none; there, the distance
        driven off the road does not count towards route completion, which we also do).
    off_road_terminate_s: being off the road this long ends the route (route deviation).
    completion_tolerance_m: a route is completed when less than this remains.
    ttc_threshold_s: NAVSIM's time-to-collision sub-score is 0 once the minimum TTC falls below.
    comfort: :class:`ComfortConfig`.
    """

    penalty_pedestrian: float = 0.50
    penalty_vehicle: float = 0.60
    penalty_static: float = 0.65
    penalty_off_road: float = 1.0
    off_road_terminate_s: float = 3.0
    completion_tolerance_m: float = 2.0
    ttc_threshold_s: float = 1.0
    comfort: ComfortConfig = field(default_factory=ComfortConfig)

    def __post_init__(self):
        if isinstance(self.comfort, dict):
            self.comfort = build_config(ComfortConfig, self.comfort, 'scoring.comfort')
        for key in ('penalty_pedestrian', 'penalty_vehicle', 'penalty_static',
                    'penalty_off_road'):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f'scoring.{key} must be in [0, 1]')
        if self.off_road_terminate_s <= 0 or self.completion_tolerance_m < 0:
            raise ValueError('scoring.off_road_terminate_s must be > 0, '
                             'completion_tolerance_m >= 0')

    def penalty(self, kind: str) -> float:
        """The factor of one infraction: 'pedestrian' | 'vehicle' | 'static' | 'off_road'."""
        try:
            return float(getattr(self, f'penalty_{kind}'))
        except AttributeError:
            raise ValueError(f'unknown infraction {kind!r}') from None


@dataclass
class RosLoopConfig:
    """``--ros``: the world as a ROS 2 node and ``planner_node`` in its own process.

    plan_deadline_s: wall-clock wait for the plan of a frame; a plan that does not come by then
        is late (counted; the last plan is kept).
    max_missing_plans: that many late plans in a row mean the planner hangs: the route fails.
    node_start_timeout_s: wall-clock wait for planner_node to configure and subscribe.
    route_gap_s: sim time left between routes, longer than the node's odometry horizon, so one
        node serves every route without mixing their histories.
    compressed: cameras as ``sensor_msgs/CompressedImage`` (JPEG) instead of ``Image``; the
        in-process loop then plans on the same JPEG round trip.
    intent_ack_timeout_s: after a new intent is published, wait (wall clock) until the node's
        ``/diagnostics`` reports it, so every frame is planned with its own intent.
    diagnostics_period_s: planner_node's diagnostics period (its acknowledgement of the intent).
    threads: ONNX Runtime intra-op threads of planner_node and of the in-process backend.
    """

    plan_deadline_s: float = 20.0
    max_missing_plans: int = 3
    node_start_timeout_s: float = 180.0
    route_gap_s: float = 30.0
    compressed: bool = False
    intent_ack_timeout_s: float = 5.0
    diagnostics_period_s: float = 0.2
    threads: int = 1

    def __post_init__(self):
        if min(self.plan_deadline_s, self.node_start_timeout_s, self.route_gap_s,
               self.intent_ack_timeout_s, self.diagnostics_period_s) <= 0:
            raise ValueError('ros: timeouts, route_gap_s and diagnostics_period_s must be > 0')
        if self.max_missing_plans < 1 or self.threads < 0:
            raise ValueError('ros.max_missing_plans must be >= 1 and ros.threads >= 0')


@dataclass
class ClosedLoopConfig:
    """Closed-loop evaluation.

    plan_hz: planning rate in sim time; the world steps at the simulation's dt (10 Hz) and the
        planning period must be a whole number of steps.
    odom_hz: rate of the odometry the planner sees (the past states; ``/odom`` in ``--ros``); a
        whole number of world steps that divides the planning period.
    route_timeout_factor, route_timeout_slack_s: a route ends after ``factor *
        scenario.duration_s + slack`` of sim time (waiting behind a stopped car takes time).
    image_size: 'model' (render at the model's input size: no resize) or [width, height].
    cameras: camera names of the scenario rig fed to the model, in model order; empty: the rig's
        first N (N = the model's ``num_cameras``).
    stop_on_collision: end the route at its first collision (CARLA and Bench2Drive go on).
    gif_frames_max: frames kept for the animated rollouts (evenly subsampled beyond).
    route: give a model with the route input the navigation route (the ego lane's centre line,
        as planner_node's ``~/route``); false evaluates the same checkpoint intent-only.
    controller, scoring, ros: see their classes.
    """

    plan_hz: float = 2.0
    odom_hz: float = 10.0
    route_timeout_factor: float = 2.0
    route_timeout_slack_s: float = 10.0
    image_size: object = 'model'
    cameras: list = field(default_factory=list)
    stop_on_collision: bool = False
    gif_frames_max: int = 80
    route: bool = True
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    ros: RosLoopConfig = field(default_factory=RosLoopConfig)

    def __post_init__(self):
        for key, cls in (('controller', ControllerConfig), ('scoring', ScoringConfig),
                         ('ros', RosLoopConfig)):
            if isinstance(getattr(self, key), dict):
                setattr(self, key, build_config(cls, getattr(self, key), key))
        if not 0 < self.plan_hz <= 20 or not self.plan_hz <= self.odom_hz <= 100:
            raise ValueError(f'need 0 < plan_hz <= 20 and plan_hz <= odom_hz <= 100, got '
                             f'{self.plan_hz}, {self.odom_hz}')
        if self.route_timeout_factor <= 0 or self.route_timeout_slack_s < 0 \
                or self.gif_frames_max < 2:
            raise ValueError('route_timeout_factor must be > 0, route_timeout_slack_s >= 0 and '
                             'gif_frames_max >= 2')
        if self.image_size != 'model':
            size = list(self.image_size)
            if len(size) != 2 or min(size) < 16:
                raise ValueError(f"image_size must be 'model' or [width, height] >= 16, "
                                 f'got {self.image_size}')
            self.image_size = [int(size[0]), int(size[1])]
        self.cameras = list(self.cameras)

    def to_dict(self) -> dict:
        d = asdict(self)
        d['scoring']['comfort']['lon_accel'] = list(d['scoring']['comfort']['lon_accel'])
        return d

    @classmethod
    def from_dict(cls, data: dict) -> 'ClosedLoopConfig':
        return build_config(cls, data, 'closedloop')

    @classmethod
    def from_yaml(cls, path=None) -> 'ClosedLoopConfig':
        """The ``closedloop:`` section of ``path`` (default: config/closedloop.yaml)."""
        path = Path(path) if path else default_config_path()
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.from_dict(data.get('closedloop', data))


def default_config_path() -> Path:
    return config_file('closedloop.yaml')
