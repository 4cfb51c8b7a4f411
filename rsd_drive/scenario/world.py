"""The recorded drive: the :class:`~rsd_drive.scenario.sim.Simulation` stepped with its expert.

``World(seed, cfg, family)`` runs the simulation once, with the privileged expert driving, and
stores the trajectories of the ego and of every agent at the simulation step. ``ego(t)``,
``state(t)`` and ``intent(t)`` read them back by interpolation at any time (the cameras fire a
little after the frame time), so the recorder, the renderer and everything downstream see the
same drive. The logged future is the expert's reaction to the hazards the cameras show.

Who drives is a *driver*: an object with ``control(sim)`` (the control for the next step, None for
the expert's own) and optionally ``begin(sim)`` (called once before the first step),
``expert_futures`` / ``expert_hz`` (per recorded step, a target the recorder writes on
``/expert/future``) and ``info()`` (recorded in ``/scenario/info``). The default,
:class:`NoisyExpert`, is the expert plus the configured noise injection; another driver
(``rsd_drive.closedloop.dagger``) drives without injected noise.

Geometry (roads, boxes, ground) lives in :mod:`rsd_drive.scenario.road`; ``Boxes`` and
``WorldState`` are re-exported here for older imports.
"""
from __future__ import annotations

import math

import numpy as np

from rsd_drive.scenario.config import ScenarioConfig, noise_at
from rsd_drive.scenario.road import ROUTE_AHEAD_M, ROUTE_SPACING_M, Boxes, WorldState
from rsd_drive.scenario.sim import EgoControl, Simulation

# Recorded beyond duration_s so that jittered camera stamps near the end still interpolate.
TAIL_S = 0.1


class NoisyExpert:
    """The default driver: the expert, plus the injected noise (recovery data) where a burst is
    (None elsewhere: the expert's own control, exactly as without noise)."""

    def __init__(self, noise: list):
        self.noise = noise

    def control(self, sim: Simulation):
        dk, da = noise_at(self.noise, sim.t)
        if dk == 0.0 and da == 0.0:
            return None
        control = sim.expert_control()
        return EgoControl(accel=control.accel + da, curvature=control.curvature + dk)


class World:
    """The world of one recorded drive (see the module docstring).

    ``family``: None takes ``cfg.family``; ``self.family`` is the concrete family (``mixed``
    resolved by seed), ``self.hazard`` what the family placed and when it fired,
    ``self.collisions`` the ego's contacts (empty for the expert). ``driver``: who drives (None:
    :class:`NoisyExpert` with ``cfg.noise``).
    """

    def __init__(self, seed: int, cfg: ScenarioConfig, family: str | None = None,
                 driver=None):
        self.seed, self.cfg = int(seed), cfg
        sim = Simulation(seed, cfg, family)
        self.family, self.requested_family = sim.family, sim.requested_family
        self.road, self.half = sim.road, sim.half
        self.ego_offset = sim.lane_d
        self.route_xy = sim.route_polyline()
        self.scenery, self.ground = sim.scenery, sim.ground
        self._jitter_seed = sim.jitter_seed
        self.dt = sim.dt
        n = int(math.ceil((cfg.duration_s + TAIL_S) / sim.dt)) + 1
        # injected noise (recovery data): bursts over the recorded time and its tail, only on
        # the default driver's drives
        self.driver = driver if driver is not None else \
            NoisyExpert(cfg.noise.bursts(seed, (n - 1) * sim.dt))
        self.noise = list(getattr(self.driver, 'noise', []))
        if hasattr(self.driver, 'begin'):
            self.driver.begin(sim)
        self._record(sim, n)
        # per recorded step a target from that state (a DAgger driver's expert rollouts), or None
        self.expert_futures = getattr(self.driver, 'expert_futures', None)
        self.expert_hz = getattr(self.driver, 'expert_hz', None)
        self.driver_info = self.driver.info() if hasattr(self.driver, 'info') else None
        self.hazard, self.collisions = dict(sim.hazard), list(sim.collision_log)
        self.agent_classes = [a.cls for a in sim.agents]
        self.agent_ids = np.array([a.id for a in sim.agents], np.int64)
        self.agent_size = np.array([a.size for a in sim.agents], np.float64).reshape(-1, 3)
        self.agent_colour = np.array([a.colour for a in sim.agents], np.uint8).reshape(-1, 3)
        self.min_speed = float(self._ego[:, 3].min())

    def _record(self, sim: Simulation, n: int) -> None:
        """Step the expert n - 1 times, storing every state (ego, agents, intent, route s)."""
        n_agents = len(sim.agents)
        self.sim_t = np.arange(n) * sim.dt
        self._ego = np.zeros((n, 6))
        self._ego_s = np.zeros(n)
        self._xy = np.zeros((n, n_agents, 2))
        self._yaw = np.zeros((n, n_agents))
        self._vel = np.zeros((n, n_agents, 2))
        self._intents = []
        self.leader = np.full(n, -1, np.int64)
        self.interaction = np.zeros(n)
        for i in range(n):
            if i:
                sim.step(self.driver.control(sim))
                self.leader[i - 1] = -1 if sim.expert_leader is None else sim.expert_leader
                self.interaction[i - 1] = sim.expert_interaction
            e = sim.ego
            self._ego[i] = (e.x, e.y, e.yaw, e.v, e.a, e.yaw_rate)
            self._ego_s[i] = sim.ego_s
            boxes = sim.objects(velocities=True)
            self._xy[i], self._yaw[i], self._vel[i] = (boxes.centre[:, :2], boxes.yaw,
                                                       boxes.velocity)
            self._intents.append(sim.intent())
        self._ego[:, 2] = np.unwrap(self._ego[:, 2])
        if n_agents:
            self._yaw = np.unwrap(self._yaw, axis=0)

    def noise_intervals(self) -> list:
        """[(t_start, t_end)] seconds of injected noise (empty without)."""
        return [(t0, t1) for t0, t1, _, _ in self.noise]

    # -- read back -----------------------------------------------------------------------------

    def _index(self, t: float) -> tuple:
        """(i, w): t lies between steps i and i + 1 with weight w on i + 1 (clamped)."""
        u = float(np.clip(t / self.dt, 0.0, len(self.sim_t) - 1.0))
        i = min(int(u), len(self.sim_t) - 2)
        return i, u - i

    def _lerp(self, table: np.ndarray, t: float) -> np.ndarray:
        i, w = self._index(t)
        return table[i] * (1.0 - w) + table[i + 1] * w

    def ego(self, t: float) -> dict:
        """Odometry at t: x, y, yaw (odom frame), speed (body x, m/s), yaw_rate (rad/s)."""
        x, y, yaw, v, _, yaw_rate = (float(v) for v in self._lerp(self._ego, t))
        yaw = math.atan2(math.sin(yaw), math.cos(yaw))
        return {'x': x, 'y': y, 'yaw': yaw, 'speed': v, 'yaw_rate': yaw_rate}

    def ego_s(self, t):
        return np.interp(t, self.sim_t, self._ego_s)

    def speed(self, t):
        """The ego's speed at t (arrays broadcast)."""
        return np.interp(t, self.sim_t, self._ego[:, 3])

    def expert_future(self, t: float):
        """The driver's target at the step nearest t ([T, 2] in base_link), None without."""
        if self.expert_futures is None:
            return None
        return self.expert_futures.get(self._nearest(t))

    def _nearest(self, t: float) -> int:
        return int(np.clip(round(t / self.dt), 0, len(self.sim_t) - 1))

    def expert_leader(self, t: float):
        """Id of the agent the expert followed (its IDM leader) at the step nearest t, or None."""
        lead = int(self.leader[self._nearest(t)])
        return None if lead < 0 else lead

    def braking_for(self, t: float, min_decel: float = 1.0):
        """Id of the agent the expert brakes for at t (its IDM leader, when the leader's
        interaction term decelerates it by at least ``min_decel`` m/s^2), else None."""
        i = self._nearest(t)
        return self.expert_leader(t) if self.interaction[i] >= min_decel else None

    def intent(self, t: float) -> str:
        """Route intent at t (from the map and the speed at t: :meth:`Simulation.intent`)."""
        return self._intents[self._nearest(t)]

    def route_ahead(self, t: float, length: float, spacing: float = 2.0) -> np.ndarray:
        """[N,2] world points of the route (the ego's lane centre line) ahead of the ego at t."""
        s = float(self.ego_s(t)) + np.arange(0.0, length + 1e-9, spacing)
        x, y, _ = self.road.pose(np.minimum(s, self.road.length), self.ego_offset)
        return np.stack([x, y], axis=1)

    @property
    def n_objects(self) -> int:
        return len(self.agent_classes)

    def state(self, t: float, velocities: bool = False) -> WorldState:
        """The world at t seconds; ``velocities`` adds agent velocities (world frame) and the route
        ahead (what the published objects message needs; rendering does not)."""
        xy, yaw = self._lerp(self._xy, t), self._lerp(self._yaw, t)
        vel = self._lerp(self._vel, t) if velocities else np.zeros((len(yaw), 2))
        objects = Boxes(centre=np.concatenate([xy, self.agent_size[:, 2:] / 2], axis=1),
                        yaw=yaw, size=self.agent_size, colour=self.agent_colour, velocity=vel,
                        ids=self.agent_ids, classes=self.agent_classes)
        e = self.ego(t)
        route = self.route_ahead(t, ROUTE_AHEAD_M, ROUTE_SPACING_M) if velocities else None
        return WorldState(t=float(t), ego=(e['x'], e['y'], e['yaw']), objects=objects,
                          scenery=self.scenery, ground=self.ground, route=route)

    def camera_offsets_ns(self, n_frames: int, n_cameras: int) -> np.ndarray:
        """[n_frames, n_cameras] stamp offsets (ns) from the frame time; camera 0 (the reference)
        is exact, the others trigger up to ``camera_jitter_s`` after it (never before: no
        message of a drive precedes its start)."""
        rng = np.random.default_rng(self._jitter_seed)
        jitter = rng.uniform(0.0, 1.0, size=(n_frames, n_cameras))
        jitter[:, 0] = 0.0
        return np.round(jitter * self.cfg.camera_jitter_s * 1e9).astype(np.int64)
