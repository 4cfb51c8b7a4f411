"""Who drives in the closed loop: the privileged expert, constant velocity, or a trained model.

A policy either returns a control every world step (``kind = 'control'``: the expert, which reads
the simulation's privileged state) or a :class:`~rsd_drive.closedloop.controller.Plan` at the
planning rate from an :class:`Observation` (``kind = 'plan'``), which the path-tracking controller
follows. A model plans through the same code as ``planner_node``:
``rsd_drive.deploy.pipeline.FramePlanner.preprocess`` and a backend's ``infer``
(``rsd_drive.deploy.backends.create_backend``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsd_drive.closedloop.controller import Plan, constant_velocity_plan

BASELINES = ('expert', 'constant-velocity', 'straight')


@dataclass
class Observation:
    """What a planner gets at one planning time (never the future): rendered camera images
    (RGB, model camera order) with their calibrations, past states [past_steps, 4] from the
    closed-loop ego history (padded at the start like planner_node's ``pad_short_history``),
    the route intent index, and the ego pose/speed the plan is anchored at."""

    t: float
    stamp_ns: int
    pose: tuple
    speed: float
    intent: int
    past_states: np.ndarray | None = None
    images: list | None = None
    calibrations: list | None = None
    images_raw: list | None = None   # as rendered (before a JPEG round trip, if any)
    route: np.ndarray | None = None  # [N,2] the route ahead (lane centre) in the world frame
    route_xy: np.ndarray | None = None  # [M,2] the whole navigation route (what ~/route carries)


class Policy:
    """Interface: ``name``, ``kind`` ('plan' | 'control'), ``needs_cameras``; ``plan(obs)`` or
    ``control(sim)``; ``close()``. ``frequency_hz``/``steps``: the plan's timing."""

    name = 'abstract'
    kind = 'plan'
    needs_cameras = False
    frequency_hz = 4.0
    steps = 20
    past_steps = 16
    camera_names: list = []
    image_hw = None

    def plan(self, obs: Observation) -> Plan:
        raise NotImplementedError

    def control(self, sim):
        raise NotImplementedError

    def close(self) -> None:
        """Free what the policy holds (backend sessions, processes)."""


class ExpertPolicy(Policy):
    """The simulation's privileged expert (lane following + IDM on what lies in its corridor):
    an upper bound, it drives every world step."""

    name = 'expert'
    kind = 'control'

    def control(self, sim):
        return sim.expert_control()


class ConstantVelocityPolicy(Policy):
    """Keeps its speed along the route: steers on the route's lane centre line (the navigation
    route every policy gets, as the intent) and never brakes or speeds up, whatever is ahead."""

    name = 'constant-velocity'
    needs_route = True

    def plan(self, obs: Observation) -> Plan:
        x, y, yaw = obs.pose
        c, s = np.cos(yaw), np.sin(yaw)
        d = np.asarray(obs.route, dtype=np.float64) - (x, y)
        local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], -1)
        local = local[np.argmin((local ** 2).sum(axis=1)):]
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(local, axis=0), axis=1))])
        want = obs.speed * np.arange(1, self.steps + 1) / self.frequency_hz + cum[0]
        wp = np.stack([np.interp(want, cum, local[:, 0]), np.interp(want, cum, local[:, 1])], -1)
        return Plan(obs.t, obs.pose, wp, self.frequency_hz)


class StraightPolicy(Policy):
    """Straight ahead at the current speed: never brakes, never turns (leaves the road at the
    first turn: a sanity floor, not a driving baseline)."""

    name = 'straight'

    def plan(self, obs: Observation) -> Plan:
        return constant_velocity_plan(obs.t, obs.pose, obs.speed, self.steps, self.frequency_hz)


def resolve_model_dir(path) -> Path:
    """A checkpoint directory, or an exported ``model.onnx`` inside one (its sidecar and the
    checkpoint's config.yaml beside it)."""
    path = Path(path)
    model_dir = path.parent if path.suffix == '.onnx' else path
    if not (model_dir / 'config.yaml').is_file():
        raise FileNotFoundError(f'{path}: not a policy: neither {BASELINES} nor a checkpoint '
                                f'directory (config.yaml + model.safetensors) or its model.onnx')
    return model_dir


class ModelPolicy(Policy):
    """A trained RiskPlanner (checkpoint or exported ONNX) on one of the node's backends."""

    needs_cameras = True

    def __init__(self, path, backend: str = 'onnxruntime', device: str = 'cpu',
                 threads: int = 1, camera_names=None, name: str | None = None,
                 logger=print):
        from rsd_drive.deploy.backends import create_backend

        self.model_dir = resolve_model_dir(path)
        self.path = Path(path)
        self.name = name or self.model_dir.name
        self.backend_kind = backend
        self.backend = create_backend(backend, self.model_dir, 'fp32', device, None, threads,
                                      logger=logger)
        cfg = self.backend.config
        self.config = cfg
        self.frequency_hz, self.steps = float(cfg.frequency_hz), int(cfg.future_steps)
        self.past_steps = int(cfg.past_steps)
        self.image_hw = (int(cfg.image_height), int(cfg.image_width))
        self.camera_names = list(camera_names or [])
        self.pipeline = None
        if self.camera_names:
            self.bind_cameras(self.camera_names)

    def bind_cameras(self, camera_names) -> None:
        from rsd_drive.deploy.pipeline import FramePlanner

        self.camera_names = list(camera_names)
        self.pipeline = FramePlanner(self.backend, self.camera_names)

    @property
    def has_route_input(self) -> bool:
        return bool(self.config.route_points)

    def route_input(self, obs: Observation):
        """The route input planner_node computes from ``~/route`` at this odometry (None: none
        given, the model plans from the intent)."""
        if not self.has_route_input or obs.route_xy is None:
            return None
        from rsd_drive.data.route import route_in_base_link

        return route_in_base_link(obs.route_xy, obs.pose, self.config.route_points,
                                  self.config.route_spacing_m)

    def plan(self, obs: Observation) -> Plan:
        feeds = self.pipeline.preprocess(obs.images, obs.calibrations, obs.past_states,
                                         obs.intent, route=self.route_input(obs))
        out = self.backend.infer(feeds)
        return Plan(obs.t, obs.pose, out['waypoints'][0], self.frequency_hz, out['risk'][0],
                    self.config.grid)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def make_policy(spec: str, backend: str = 'onnxruntime', device: str = 'cpu', threads: int = 1,
                name: str | None = None) -> Policy:
    """'expert' | 'constant-velocity' | 'straight' | a checkpoint directory | an exported
    model.onnx."""
    if spec == 'expert':
        return ExpertPolicy()
    if spec in ('constant-velocity', 'cv'):
        return ConstantVelocityPolicy()
    if spec == 'straight':
        return StraightPolicy()
    return ModelPolicy(spec, backend, device, threads, name=name)
