"""The closed loop of one route, in process: the world steps at its dt (10 Hz sim time); at the
planning rate the cameras are rendered from the ego's *current* state and the policy plans; the
path-tracking controller drives the kinematic ego every step.

Past states come from the closed-loop ego history through the node's own ``OdometryHistory``
(odometry built like ``/odom``: yaw through the quaternion), padded at the start at constant
velocity like planner_node's ``pad_short_history``, so the in-process loop feeds the model exactly
what planner_node computes from the world node's topics in ``--ros`` mode.

A policy may also implement ``begin_route(sim, cameras)``, ``on_step(stamp_ns, odometry)`` and
``end_route()`` (the ROS bridge publishes ``/clock`` and ``/odom`` there) and raise
:class:`PlannerFailure` to fail the route with a reason.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from rsd_drive.closedloop.config import ClosedLoopConfig
from rsd_drive.closedloop.controller import PurePursuit
from rsd_drive.closedloop.scoring import RouteTrace, score_route
from rsd_drive.closedloop.policies import Observation, Policy
from rsd_drive.data.convert import EgoState, yaw_from_quaternion
from rsd_drive.data.targets import intent_index

GIF_CAMERA_HW = (144, 256)
ROUTE_AHEAD_M = 120.0


class PlannerFailure(RuntimeError):
    """The planner crashed or hangs: the route fails with this reason, the run goes on."""


def odometry_state(stamp_ns: int, ego) -> EgoState:
    """The EgoState planner_node gets from the world's ``/odom`` for this ego state (yaw through
    the quaternion, speed as the norm of the body twist)."""
    q = SimpleNamespace(x=0.0, y=0.0, z=math.sin(ego.yaw / 2.0), w=math.cos(ego.yaw / 2.0))
    return EgoState(int(stamp_ns), float(ego.x), float(ego.y), yaw_from_quaternion(q),
                    float(math.hypot(float(ego.v), 0.0)))


JPEG_QUALITY = 90


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """RGB -> JPEG bytes (what the world node publishes as a CompressedImage)."""
    import cv2

    ok, buf = cv2.imencode('.jpg', np.ascontiguousarray(rgb[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError('JPEG encoding failed')
    return buf.tobytes()


def jpeg_round_trip(rgb: np.ndarray) -> np.ndarray:
    """The image planner_node decodes from the world's CompressedImage (same decoder)."""
    from rsd_drive.data.convert import image_to_rgb

    return image_to_rgb(SimpleNamespace(format='jpeg', data=encode_jpeg(rgb)))


@dataclass
class RouteRig:
    """The cameras a policy sees (model order) and their calibrations at the render size."""

    cameras: list
    calibrations: list
    names: list = field(default_factory=list)


def make_rig(scenario_cfg, names, image_hw) -> RouteRig:
    from rsd_drive.deploy.pipeline import CameraCalibration
    from rsd_drive.scenario.render import Camera

    specs = {c.name: c for c in scenario_cfg.cameras}
    missing = [n for n in names if n not in specs]
    if missing:
        raise ValueError(f'cameras {missing} are not in the scenario rig {sorted(specs)}')
    h, w = image_hw
    cams = [Camera(specs[n], w, h) for n in names]
    calibs = [CameraCalibration(c.K, (h, w), c.cam_to_ego) for c in cams]
    return RouteRig(cams, calibs, list(names))


def camera_names_for(policy: Policy, cfg: ClosedLoopConfig, scenario_cfg) -> list:
    """cfg.cameras, else the rig's first N cameras (N = the model's number of cameras)."""
    if cfg.cameras:
        return list(cfg.cameras)
    n = policy.config.num_cameras if hasattr(policy, 'config') else 1
    rig = [c.name for c in scenario_cfg.cameras]
    if n > len(rig):
        raise ValueError(f'the model takes {n} cameras, the scenario rig has {len(rig)}')
    return rig[:n]


def render_size(policy: Policy, cfg: ClosedLoopConfig) -> tuple:
    if cfg.image_size == 'model':
        return tuple(policy.image_hw)
    return (cfg.image_size[1], cfg.image_size[0])


class RouteRunner:
    """One route of one policy; ``run()`` -> (record, frames). ``sim``: the simulation to drive
    (None: a new one of (seed, family); a DAgger drive hands in its world's own)."""

    def __init__(self, policy: Policy, family: str, seed: int, cfg: ClosedLoopConfig,
                 scenario_cfg, keep_frames: bool = True, on_frame=None, sim=None):
        from rsd_drive.scenario.sim import Simulation
        from rsd_drive.data.sync import OdometryHistory

        self.policy, self.family, self.seed, self.cfg = policy, family, int(seed), cfg
        self.scenario_cfg = scenario_cfg
        self.sim = sim if sim is not None else Simulation(self.seed, scenario_cfg, family)
        self.dt = float(self.sim.dt)
        self.dt_ns = int(round(self.dt * 1e9))
        period = 1.0 / (cfg.plan_hz * self.dt)
        if abs(period - round(period)) > 1e-6 or round(period) < 1:
            raise ValueError(f'plan_hz {cfg.plan_hz} is not a whole number of world steps of '
                             f'{self.dt} s')
        self.plan_every = int(round(period))
        odom_period = 1.0 / (cfg.odom_hz * self.dt)
        self.odom_every = int(round(odom_period))
        if abs(odom_period - self.odom_every) > 1e-6 or self.odom_every < 1 \
                or self.plan_every % self.odom_every:
            raise ValueError(f'odom_hz {cfg.odom_hz} must be a whole number of world steps of '
                             f'{self.dt} s and divide the planning period')
        self.t_limit = float(scenario_cfg.duration_s) * cfg.route_timeout_factor \
            + cfg.route_timeout_slack_s
        # The route to drive (m along the ego lane): where the hazard-free speed plan takes the ego
        # in duration_s (never past sim.route_length: the simulation checks its speed plan ends
        # before route_end_s; the full lane route goes on further than a drive lasts).
        self.route_length = self.sim.route_goal()
        # the navigation route a model with the route input gets (planner_node's ~/route)
        self.route_xy = self.sim.route_polyline() if cfg.route else None
        self.controller = PurePursuit(cfg.controller, self.dt)
        self.history = OdometryHistory(max_gap_ns=int(1e9))
        self.trace = RouteTrace()
        self.keep_frames, self.on_frame = keep_frames, on_frame
        self.frames = []
        self.rig = None
        if policy.needs_cameras:
            self.rig = make_rig(scenario_cfg, camera_names_for(policy, cfg, scenario_cfg),
                                render_size(policy, cfg))
            if hasattr(policy, 'bind_cameras') and policy.camera_names != self.rig.names:
                policy.bind_cameras(self.rig.names)
        self.gif_camera = None
        if keep_frames:
            self.gif_camera = (self.rig.cameras[0] if self.rig else
                               make_rig(scenario_cfg, [scenario_cfg.cameras[0].name],
                                        GIF_CAMERA_HW).cameras[0])
        self.plans, self.late_plans = 0, 0
        self.plan = None
        self.plan_digest = hashlib.sha1()  # of every plan followed (waypoints to 10 um)

    # -- observation ------------------------------------------------------------------------------
    def observe(self, stamp_ns: int, state) -> Observation:
        odom = self.history.at(stamp_ns)
        obs = Observation(t=self.sim.t, stamp_ns=stamp_ns, pose=(odom.x, odom.y, odom.yaw),
                          speed=odom.speed, intent=intent_index(self.sim.intent()))
        if self.policy.kind == 'plan' and hasattr(self.policy, 'config'):
            cfg = self.policy.config
            obs.past_states = self.history.past_states(stamp_ns, cfg.past_steps,
                                                       cfg.frequency_hz, True)
        if getattr(self.policy, 'needs_route', False):
            obs.route = self.sim.route_ahead(ROUTE_AHEAD_M)
        obs.route_xy = self.route_xy
        if self.rig is not None:
            from rsd_drive.scenario.render import render_camera

            obs.images_raw = [render_camera(state, cam) for cam in self.rig.cameras]
            obs.calibrations = self.rig.calibrations
            obs.images = self.encode_images(obs.images_raw)
        return obs

    def encode_images(self, images: list) -> list:
        """With ``ros.compressed`` the images take the JPEG round trip the node's input takes."""
        if not self.cfg.ros.compressed:
            return images
        return [jpeg_round_trip(img) for img in images]

    # -- the loop ---------------------------------------------------------------------------------
    def _terminated(self, off_road_s: float) -> str | None:
        sim, scoring = self.sim, self.cfg.scoring
        if self.trace.progress[-1] >= self.route_length - scoring.completion_tolerance_m:
            return 'completed'
        if sim.t >= self.t_limit - 1e-9:
            return 'timeout'
        if off_road_s >= scoring.off_road_terminate_s:
            return 'off_road'
        if self.cfg.stop_on_collision and sim.collision_log:
            return 'collision'
        return None

    def plan_step(self, step: int, stamp_ns: int) -> None:
        """Observe, plan with the policy and hand the plan to the controller (a late plan: keep
        following the last one)."""
        state = self.sim.state(velocities=True)
        obs = self.observe(stamp_ns, state)
        plan = self.policy.plan(obs)
        if plan is None:
            self.late_plans += 1  # (ROS) no plan by the deadline: keep following the last one
        else:
            self.plans += 1
            self.plan = plan
            self.controller.set_plan(plan)
            wp = np.round(np.asarray(plan.waypoints, dtype=np.float64), 5) + 0.0  # no -0.0
            self.plan_digest.update(wp.tobytes())
        if self.keep_frames:
            self.frames.append(self._frame(state, obs))
        if self.on_frame is not None:
            self.on_frame(self, step)

    def follow(self):
        """The controller's EgoControl on the current plan for the ego now."""
        ego = self.sim.ego
        return _control(self.controller.control((ego.x, ego.y, ego.yaw, ego.v), self.sim.t))

    def _frame(self, state, obs) -> dict:
        from rsd_drive.scenario.render import render_camera

        image = obs.images[0] if obs.images else render_camera(state, self.gif_camera)
        return {'t': float(self.sim.t), 'image': image, 'state': state, 'pose': obs.pose,
                'speed': obs.speed, 'plan': self.plan}

    def run(self) -> tuple[dict, list]:
        policy, sim = self.policy, self.sim
        wall0 = time.perf_counter()
        failure, step, off_road_s, reason = None, 0, 0.0, None
        try:
            if hasattr(policy, 'begin_route'):
                policy.begin_route(self)
            while True:
                stamp_ns = step * self.dt_ns
                ego = sim.ego
                odom = odometry_state(stamp_ns, ego)
                if step % self.odom_every == 0:
                    self.history.add(odom)
                    if hasattr(policy, 'on_step'):
                        policy.on_step(stamp_ns, odom, ego)
                off = bool(sim.off_road())
                off_road_s = off_road_s + self.dt if off else 0.0
                self.trace.add(sim.t, (ego.x, ego.y, ego.yaw, ego.v), ego.yaw_rate,
                               sim.route_progress(), off, sim.ttc())
                reason = self._terminated(off_road_s)
                if reason is not None:
                    break
                if policy.kind == 'plan' and step % self.plan_every == 0:
                    self.plan_step(step, stamp_ns)
                if policy.kind == 'control':
                    if self.keep_frames and step % self.plan_every == 0:
                        state = sim.state(velocities=True)
                        obs = Observation(sim.t, stamp_ns, (odom.x, odom.y, odom.yaw),
                                          odom.speed, 0)
                        self.frames.append(self._frame(state, obs))
                    control = policy.control(sim)
                else:
                    control = self.follow()
                sim.step(control)
                step += 1
        except PlannerFailure as e:
            failure, reason = str(e), 'planner_failed'
        finally:
            if hasattr(policy, 'end_route'):
                policy.end_route(self)
        scores = score_route(self.trace, list(sim.collision_log), self.route_length,
                             self.cfg.scoring, failure)
        record = {'family': self.family, 'seed': self.seed, 'policy': policy.name, **scores,
                  'termination': reason, 'route_length_m': round(self.route_length, 2),
                  'plans': self.plans, 'late_plans': self.late_plans, 'steps': step,
                  'plan_digest': self.plan_digest.hexdigest()[:16],
                  'wall_s': round(time.perf_counter() - wall0, 3),
                  'concrete_family': getattr(sim, 'family', self.family)}
        if hasattr(policy, 'route_info'):
            record.update(policy.route_info())
        return record, self.frames


def _control(accel_curvature):
    """(accel, curvature) -> the simulation's EgoControl."""
    from rsd_drive.scenario.sim import EgoControl

    accel, curvature = accel_curvature
    return EgoControl(accel=float(accel), curvature=float(curvature))


def run_route(policy: Policy, family: str, seed: int, cfg: ClosedLoopConfig, scenario_cfg,
              keep_frames: bool = True, on_frame=None) -> tuple[dict, list]:
    """(record, frames) of one route: see :class:`RouteRunner`."""
    return RouteRunner(policy, family, seed, cfg, scenario_cfg, keep_frames, on_frame).run()
