"""A reactive, steppable scenario world in sim time, driven by a privileged expert or a policy.

``Simulation(seed, cfg, family)`` builds a road, the ego's route (its lane along the road, from the
start to the end of the road), background traffic, the family's hazard (see
:mod:`rsd_drive.scenario.families`) and scenery, deterministically from (seed, family, cfg).
``step(control)`` advances ``dt`` seconds:

- the ego is a kinematic bicycle (rear-axle reference, ``base_link``) driven by an
  :class:`EgoControl` (longitudinal acceleration m/s^2, path curvature 1/m) clipped to physical
  limits; ``control=None`` lets the privileged expert (:meth:`Simulation.expert_control`) drive;
- other vehicles run IDM (Treiber et al., 2000) on their own leader, the ego included, so they
  react to whatever the ego does; scripted hazards (a lead that brakes, a stopped car that drives
  off after the ego has waited, a car that pulls out) override it while their script runs;
- pedestrians follow scripts whose triggers fire on the ego's time to arrival (CARLA-style).

The expert (the CARLA / Bench2Drive / PDM-style privileged planner) keeps its lane with a
lane-frame feedback law and sets its speed with IDM on the nearest obstacle in its corridor: the
vehicle ahead, a stopped vehicle, or a pedestrian / vehicle predicted into the corridor at
constant velocity (pedestrians as speed-0 leaders), under its comfort limits and the curve speed
limit; IDM brakes harder than comfortable only when the gap demands it (up to
``decel_emergency``).

Frames: world = ``odom`` (REP-103/105) at the ego's start pose; road coordinates (s, d) as in
:mod:`rsd_drive.scenario.road`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rsd_drive import INTENTS
from rsd_drive.scenario.config import FAMILIES, ScenarioConfig
from rsd_drive.scenario.constants import EGO_CENTRE_X, EGO_LENGTH, EGO_WIDTH
from rsd_drive.scenario.road import (ROUTE_AHEAD_M, ROUTE_SPACING_M, Boxes, Road, WorldState,
                                     boxes_overlap, make_ground, make_road, make_scenery)

# Physical limits applied to any control (the expert keeps inside its own, tighter ones).
ACCEL_LIMIT, DECEL_LIMIT = 4.0, 9.0
# Other vehicles: IDM parameters and their hardest braking.
IDM_DELTA = 4.0
OTHER_DECEL_LIMIT = 9.0
LATERAL_MARGIN = 0.2   # lane-overlap margin for other vehicles' leader search
SEED_STREAMS = ('road', 'speed', 'traffic', 'pedestrians', 'scenery', 'jitter', 'hazard',
                'family')


@dataclass
class SimEgo:
    """The ego in the world (odom) frame: base_link position (m), yaw (rad, REP-103), speed
    (m/s, >= 0), longitudinal acceleration (m/s^2) and yaw rate (rad/s)."""

    x: float
    y: float
    yaw: float
    v: float
    a: float = 0.0
    yaw_rate: float = 0.0


@dataclass
class EgoControl:
    """One control: longitudinal acceleration (m/s^2) and path curvature (1/m, left positive)."""

    accel: float
    curvature: float


@dataclass
class Agent:
    """A traffic participant in road coordinates.

    s, d: position of the box centre; v: speed along ``direction`` (+1: with the ego, -1:
    oncoming), vd: lateral speed (d per second), vs_walk: a pedestrian's speed along s (signed).
    v0: a vehicle's desired speed (IDM); idm: whether IDM moves it (parked cars and pedestrians:
    no); script: a hazard behaviour (``update(sim, agent)``) or None.
    """

    id: int
    cls: str
    role: str
    s: float
    d: float
    size: tuple
    colour: tuple
    direction: int = 1
    v: float = 0.0
    vd: float = 0.0
    vs_walk: float = 0.0
    v0: float = 0.0
    idm: bool = False
    yaw_off: float = 0.0
    script: object = None
    accel: float = 0.0

    @property
    def s_speed(self) -> float:
        """Signed speed along s (m/s; pedestrians walk with vs_walk)."""
        return self.direction * self.v if self.cls == 'vehicle' else self.vs_walk


def resolve_family(seed: int, family: str) -> str:
    """The concrete family of a seed: ``mixed`` draws one of ``FAMILIES`` (uniformly, by seed)."""
    if family == 'mixed':
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
        return FAMILIES[int(rng.integers(len(FAMILIES)))]
    if family not in FAMILIES:
        raise ValueError(f'unknown scenario family {family!r}; known: {FAMILIES + ("mixed",)}')
    return family


def idm_accel(v, v0, gap, dv, a_max: float, b: float, headway: float, s0: float):
    """IDM acceleration ``a_max (1 - (v/v0)^4 - (s*/gap)^2)``, with
    s* = s0 + v T + v dv / (2 sqrt(a b)); gap = inf for a free road. Arrays broadcast. Returns
    (acceleration, its free-road part)."""
    v, v0, gap, dv = (np.asarray(x, np.float64) for x in (v, v0, gap, dv))
    free = 1.0 - (v / np.maximum(v0, 0.1)) ** IDM_DELTA
    s_star = s0 + np.maximum(0.0, v * headway + v * dv / (2.0 * math.sqrt(a_max * b)))
    interaction = np.where(np.isfinite(gap), (s_star / np.maximum(gap, 0.05)) ** 2, 0.0)
    return a_max * (free - interaction), a_max * free


class Simulation:
    """The world of one drive, stepped in sim time (see the module docstring).

    Public state: ``t`` (s), ``dt`` (s), ``ego`` (:class:`SimEgo`), ``road``, ``family`` (the
    concrete family), ``requested_family``, ``agents``, ``scenery``, ``ground``, ``hazard`` (what
    the family placed and when it fired: a dict), ``route_length`` (m, the ego lane to the end of
    the road), ``collision_log`` (every contact of the ego since the start, once per contact, in
    the :meth:`ego_collisions` schema), ``expert_leader`` / ``expert_interaction`` (the agent id
    the expert's IDM followed at its last call and the deceleration, m/s^2, that leader caused).
    """

    def __init__(self, seed: int, cfg: ScenarioConfig, family: str | None = None):
        from rsd_drive.scenario import families as fam

        self.seed, self.cfg = int(seed), cfg
        self.requested_family = family or cfg.family
        self.family = resolve_family(self.seed, self.requested_family)
        seeds = np.random.SeedSequence(self.seed).spawn(len(SEED_STREAMS))
        self.rngs = {name: np.random.default_rng(s) for name, s in zip(SEED_STREAMS, seeds)}
        self.jitter_seed = seeds[SEED_STREAMS.index('jitter')]
        self.dt = float(cfg.expert.dt)
        self.t, self._step, self._lane_pose_step = 0.0, 0, -1
        self.expert_leader = None  # id of the agent the expert's IDM followed at its last call
        self.expert_interaction = 0.0  # the deceleration (m/s^2) that leader caused
        self.half = cfg.lane_width
        self.lane_d = -cfg.lane_width / 2
        self.t_plan = cfg.duration_s + cfg.intent_horizon_s
        length = self.t_plan * cfg.speed_max + cfg.draw_distance + 60.0
        knots_s, knots_k, self.turns = make_road(self.rngs['road'], cfg, length)
        self.road = Road(knots_s, knots_k, self.lane_d)
        self._init_route()
        self._init_speed_plan(self.rngs['speed'])
        v_start = min(self.v_target(0.0), self.curve_limit(0.0))
        self.ego = SimEgo(0.0, 0.0, 0.0, v_start, 0.0, 0.0)
        self._ego_s, self._curvature = 0.0, float(self.road.lane_curvature(0.0, self.lane_d))
        self.ego.yaw_rate = self._curvature * v_start
        # Exclusions: (s_lo, s_hi) zones of the hazard that background traffic keeps out of.
        self.agents, self.exclusions, self.hazard = [], [], {'family': self.family}
        fam.build(self)
        self.scenery = make_scenery(self.rngs['scenery'], self.road, cfg, -60.0,
                                    self.nominal_s(self.t_plan) + cfg.draw_distance * 0.7)
        self.ground = make_ground(self.road, self.half, cfg.sidewalk_width)
        self.collision_log, self._touching = [], set()
        self._check_collisions()

    # -- route and speed plan ------------------------------------------------------------------

    def _init_route(self) -> None:
        """The route: the ego's lane from s = 0 to the end of the road less the draw distance;
        lane arc length tabulated on the road's table, curve speed limits per lane."""
        road, cfg = self.road, self.cfg
        factor = 1.0 - road.kappa * self.lane_d
        steps = 0.5 * (factor[1:] + factor[:-1]) * np.diff(road.s)
        arc = np.concatenate([[0.0], np.cumsum(steps)])
        self._lane_arc = arc - np.interp(0.0, road.s, arc)
        self.route_end_s = road.length - cfg.draw_distance
        self.route_length = float(np.interp(self.route_end_s, road.s, self._lane_arc))
        self._v_lim = {d: road.lane_speed_limit(d, cfg.lateral_accel_max, 0.5 * cfg.decel_max,
                                                cfg.speed_max, direction)
                       for d, direction in ((self.lane_d, 1), (-self.lane_d, -1))}

    def curve_limit(self, s: float, d: float | None = None) -> float:
        d = self.lane_d if d is None else d
        table = self._v_lim[self.lane_d if d <= 0 else -self.lane_d]
        return float(np.interp(s, self.road.s, table))

    def _init_speed_plan(self, rng: np.random.Generator) -> None:
        """The expert's desired speed: key speeds every 3-7 s joined by cosine ramps; and the
        nominal (hazard-free) progress s(t) that the families time their hazards on."""
        cfg = self.cfg
        key_t = [0.0]
        while key_t[-1] < self.t_plan + 1.0:
            key_t.append(key_t[-1] + float(rng.uniform(3.0, 7.0)))
        self._key_t = np.array(key_t)
        self._key_v = rng.uniform(cfg.speed_min, cfg.speed_max, size=len(key_t))
        dt = 0.05
        n = int(math.ceil(self.t_plan / dt)) + 2
        s_arr, s = np.zeros(n), 0.0
        v = min(self.v_target(0.0), self.curve_limit(0.0))
        for i in range(n):
            s_arr[i] = s
            v_cmd = min(self.v_target(i * dt), self.curve_limit(s + v))
            v = max(v + float(np.clip(v_cmd - v, -cfg.decel_max, cfg.accel_max)) * dt, 0.0)
            s += v * dt / (1.0 - float(self.road.curvature(s)) * self.lane_d)
        self._nominal_t, self._nominal_s = np.arange(n) * dt, s_arr
        if s_arr[-1] > self.route_end_s:
            raise RuntimeError('road too short for the simulated drive')

    def v_target(self, t: float) -> float:
        kt, kv = self._key_t, self._key_v
        i = int(np.clip(np.searchsorted(kt, t, side='right') - 1, 0, len(kt) - 2))
        u = float(np.clip((t - kt[i]) / (kt[i + 1] - kt[i]), 0.0, 1.0))
        w = 0.5 - 0.5 * math.cos(math.pi * u)
        return float(kv[i] * (1 - w) + kv[i + 1] * w)

    def nominal_s(self, t: float) -> float:
        """Where the ego would be at t on its hazard-free speed plan (for placing hazards)."""
        return float(np.interp(t, self._nominal_t, self._nominal_s))

    # -- agents --------------------------------------------------------------------------------

    def add_agent(self, cls: str, role: str, s: float, d: float, size, colour, **kw) -> Agent:
        agent = Agent(id=len(self.agents), cls=cls, role=role, s=float(s), d=float(d),
                      size=tuple(float(v) for v in size),
                      colour=tuple(int(c) for c in colour), **kw)
        self.agents.append(agent)
        return agent

    # -- ego geometry --------------------------------------------------------------------------

    @property
    def ego_s(self) -> float:
        """Road arc length of base_link."""
        return self._ego_s

    def ego_lane_pose(self) -> tuple:
        """(s of the box centre, d of base_link, heading error) of the ego in road coordinates."""
        if self._lane_pose_step != self._step:
            s_c = self._ego_s + EGO_CENTRE_X
            _, d = self.road.locate(self.ego.x, self.ego.y, self._ego_s, iterations=1)
            err = self.ego.yaw - float(self.road.heading_at(self._ego_s))
            self._lane_pose = (s_c, d, math.atan2(math.sin(err), math.cos(err)))
            self._lane_pose_step = self._step
        return self._lane_pose

    def ego_box(self) -> tuple:
        """(centre [2], yaw, half extents [2]) of the ego footprint in the world."""
        e = self.ego
        centre = np.array([e.x + EGO_CENTRE_X * math.cos(e.yaw),
                           e.y + EGO_CENTRE_X * math.sin(e.yaw)])
        return centre, e.yaw, np.array([EGO_LENGTH / 2, EGO_WIDTH / 2])

    def route_progress(self) -> float:
        """Metres along the route (the ego lane's arc length) at base_link."""
        return self.route_progress_at(self._ego_s)

    def route_progress_at(self, s: float) -> float:
        """Route progress (m along the ego lane) at road arc length s."""
        return float(np.interp(s, self.road.s, self._lane_arc))

    def route_goal(self, duration_s: float | None = None) -> float:
        """Route progress (m) the ego's hazard-free speed plan reaches in ``duration_s``
        (default ``cfg.duration_s``): the route a drive of that length is scored on."""
        t = self.cfg.duration_s if duration_s is None else duration_s
        return self.route_progress_at(self.nominal_s(t))

    def intent(self) -> str:
        """Where the route goes: left/right when the lane's heading turns by more than
        ``intent_threshold_deg`` over the next ``intent_horizon_s`` at the current speed (at least
        ``intent_min_lookahead_m``), else straight. Uses the map and the current speed only."""
        cfg = self.cfg
        ahead = max(self.ego.v * cfg.intent_horizon_s, cfg.intent_min_lookahead_m)
        turn = math.degrees(float(self.road.heading_at(self._ego_s + ahead)
                                  - self.road.heading_at(self._ego_s)))
        if turn > cfg.intent_threshold_deg:
            return INTENTS[2]
        if turn < -cfg.intent_threshold_deg:
            return INTENTS[3]
        return INTENTS[1]

    def route_polyline(self, spacing: float = 2.0) -> np.ndarray:
        """[N,2] world points of the whole route (the ego lane's centre line from the start to
        the end of the road): the navigation route, map knowledge given before the drive."""
        s = np.append(np.arange(0.0, self.road.length, spacing), self.road.length)
        x, y, _ = self.road.pose(s, self.lane_d)
        return np.stack([x, y], axis=1)

    def route_ahead(self, length: float, spacing: float = 2.0) -> np.ndarray:
        """[N,2] world points of the route (ego lane centre line) from the ego's position ahead."""
        s = self._ego_s + np.arange(0.0, length + 1e-9, spacing)
        x, y, _ = self.road.pose(np.minimum(s, self.road.length), self.lane_d)
        return np.stack([x, y], axis=1)

    # -- corridor queries ----------------------------------------------------------------------

    def _static(self) -> dict:
        """Per-agent constants as arrays (rebuilt when agents are added)."""
        if getattr(self, '_static_n', -1) != len(self.agents):
            a = self.agents
            size = np.array([x.size for x in a], np.float64).reshape(-1, 3)
            self._static_arrays = {
                'L': size[:, 0], 'W': size[:, 1], 'size': size,
                'ped': np.array([x.cls == 'pedestrian' for x in a], bool),
                'vehicle': np.array([x.cls == 'vehicle' for x in a], bool)}
            self._static_n = len(a)
        return self._static_arrays

    def _arrays(self) -> dict:
        """Agents as arrays: s, d, length, width, s_speed, vd, is_ped."""
        a = self.agents
        out = dict(self._static())
        out.update(s=np.array([x.s for x in a]), d=np.array([x.d for x in a]),
                   vs=np.array([x.s_speed for x in a]),
                   vd=np.array([x.vd for x in a]))
        return out

    def corridor_obstacles(self, predict: bool = True) -> list:
        """Obstacles in the ego's corridor ahead: (gap m, speed along s m/s, agent, entry time s).

        The corridor is the lane ahead at the ego's lateral position, as wide as the ego plus the
        obstacle plus ``corridor_margin_m``. ``predict``: pedestrians (vehicles) predicted at
        constant velocity into it within ``pedestrian_horizon_s`` (``vehicle_horizon_s``) count,
        pedestrians at speed 0 and placed where they enter; unless the ego (at its current speed)
        is past that point before they get there.
        """
        if not self.agents:
            return []
        ex, arr = self.cfg.expert, self._arrays()
        s_c, d_ego, _ = self.ego_lane_pose()
        front, v = s_c + EGO_LENGTH / 2, self.ego.v
        half = EGO_WIDTH / 2 + arr['W'] / 2 + ex.corridor_margin_m
        taus = np.arange(0.0, ex.pedestrian_horizon_s + 1e-9, 0.2) if predict else np.zeros(1)
        horizon = np.where(arr['ped'], ex.pedestrian_horizon_s, ex.vehicle_horizon_s)
        inside = ((np.abs(arr['d'][:, None] + arr['vd'][:, None] * taus[None] - d_ego)
                   < half[:, None]) & (taus[None] <= horizon[:, None]))
        tau = taus[np.argmax(inside, axis=1)]
        s_in = arr['s'] + arr['vs'] * tau
        gap = s_in - arr['L'] / 2 - front
        keep = inside.any(axis=1) & (s_in + arr['L'] / 2 >= front - EGO_LENGTH)
        # Not when the ego (at its current speed) is through before the obstacle gets there.
        keep &= ~((tau > 0) & ((gap + EGO_LENGTH + arr['L']) / max(v, 0.5) < tau - 0.5))
        speed = np.where(arr['ped'], 0.0, arr['vs'])
        return [(float(gap[i]), float(speed[i]), self.agents[i], float(tau[i]))
                for i in np.flatnonzero(keep)]

    def ttc(self) -> float:
        """Time to collision (s) with the nearest obstacle now in the corridor ahead at the
        current closing speed; inf when none closes in."""
        best = math.inf
        for gap, speed, _, _ in self.corridor_obstacles(predict=False):
            closing = self.ego.v - speed
            if gap >= -EGO_LENGTH and closing > 1e-3:
                best = min(best, max(gap, 0.0) / closing)
        return best

    # -- the expert ----------------------------------------------------------------------------

    def expert_control(self) -> EgoControl:
        """The privileged expert's control for the current state (lane keeping + IDM)."""
        cfg, ex = self.cfg, self.cfg.expert
        s_c, d_ego, err_h = self.ego_lane_pose()
        k_ref = float(self.road.lane_curvature(self._ego_s, self.lane_d))
        curvature = k_ref - ex.lateral_gain * (d_ego - self.lane_d) - ex.heading_gain * err_h
        v = self.ego.v
        v0 = min(self.v_target(self.t), self.curve_limit(self._ego_s + v))
        gap, dv, self.expert_leader = math.inf, 0.0, None
        for g, speed, agent, _ in self.corridor_obstacles(predict=True):
            if g < gap:
                gap, dv, self.expert_leader = g, v - speed, agent.id
        a, a_free = idm_accel(v, v0, gap, dv, cfg.accel_max, cfg.decel_max, ex.headway_s,
                              ex.min_gap_m)
        # How much of the braking the leader causes (IDM's interaction term, m/s^2).
        self.expert_interaction = float(a_free - a)
        # The free-road term (speed plan, curves) stays comfortable; only a gap may demand more.
        if math.isfinite(gap):
            a = float(np.clip(a, -ex.decel_emergency, cfg.accel_max))
        else:
            a = float(np.clip(a_free, -cfg.decel_max, cfg.accel_max))
        return EgoControl(accel=a,
                          curvature=float(curvature))

    # -- stepping ------------------------------------------------------------------------------

    def step(self, control: EgoControl | None = None) -> None:
        """Advance one ``dt``: agents decide on the state at t, then everything moves."""
        control = self.expert_control() if control is None else control
        for agent in self.agents:
            if agent.script is not None:
                agent.script.update(self, agent)
        self._vehicle_accels()
        self._move_ego(control)
        self._move_agents()
        self._step += 1
        self.t = self._step * self.dt
        self._check_collisions()

    def _move_ego(self, control: EgoControl) -> None:
        dt, e = self.dt, self.ego
        a = float(np.clip(control.accel, -DECEL_LIMIT, ACCEL_LIMIT))
        k = float(np.clip(control.curvature, -self.cfg.expert.curvature_max,
                          self.cfg.expert.curvature_max))
        if not (math.isfinite(a) and math.isfinite(k)):
            raise ValueError(f'non-finite control {control}')
        v1 = max(e.v + a * dt, 0.0)
        dist = 0.5 * (e.v + v1) * dt
        dyaw = k * dist
        mid = e.yaw + 0.5 * dyaw
        x, y = e.x + dist * math.cos(mid), e.y + dist * math.sin(mid)
        self.ego = SimEgo(x, y, e.yaw + dyaw, v1, (v1 - e.v) / dt, k * v1)
        self._curvature = k
        self._ego_s, _ = self.road.locate(x, y, self._ego_s + dist)

    def _vehicle_accels(self) -> None:
        """IDM for every vehicle with ``idm`` set, on its leader: the nearest vehicle, pedestrian
        or the ego ahead in its own direction that overlaps its lane position."""
        movers = [a for a in self.agents if a.idm]
        if not movers:
            return
        arr = self._arrays()
        s_c, d_ego, _ = self.ego_lane_pose()
        s_all, d_all = np.append(arr['s'], s_c), np.append(arr['d'], d_ego)
        L_all, W_all = np.append(arr['L'], EGO_LENGTH), np.append(arr['W'], EGO_WIDTH)
        vs_all = np.append(np.where(arr['ped'], 0.0, arr['vs']), self.ego.v)
        idx = np.array([a.id for a in movers])
        direction = np.array([a.direction for a in movers], np.float64)
        v = np.array([a.v for a in movers])
        rel = (s_all[None] - s_all[idx, None]) * direction[:, None]
        overlap = (np.abs(d_all[None] - d_all[idx, None])
                   < (W_all[None] + W_all[idx, None]) / 2 + LATERAL_MARGIN)
        valid = overlap & (rel > 0)
        valid[np.arange(len(idx)), idx] = False
        gaps = np.where(valid, rel - (L_all[None] + L_all[idx, None]) / 2, np.inf)
        j = np.argmin(gaps, axis=1)
        gap = gaps[np.arange(len(idx)), j]
        dv = np.where(np.isfinite(gap), v - vs_all[j] * direction, 0.0)
        ahead = s_all[idx] + direction * v
        limit = np.where(d_all[idx] <= 0,
                         np.interp(ahead, self.road.s, self._v_lim[self.lane_d]),
                         np.interp(ahead, self.road.s, self._v_lim[-self.lane_d]))
        v0 = np.minimum([a.v0 for a in movers], limit)
        cfg, ex = self.cfg, self.cfg.expert
        acc, _ = idm_accel(v, v0, gap, dv, cfg.accel_max, cfg.decel_max, ex.headway_s,
                           ex.min_gap_m)
        for a, value in zip(movers, acc):
            override = a.script.accel_override(self, a) if a.script is not None else None
            value = float(value) if override is None else min(float(value), override)
            a.accel = max(value, -OTHER_DECEL_LIMIT)

    def _move_agents(self) -> None:
        dt, lo, hi = self.dt, self.road.s[0] + 3.0, self.road.length - 3.0
        for a in self.agents:
            if a.cls == 'vehicle' and not lo < a.s < hi:
                a.v, a.idm = 0.0, False  # the end of the road: park there
            if a.cls == 'vehicle':
                v1 = max(a.v + a.accel * dt, 0.0) if a.idm else a.v
                factor = max(1.0 - float(self.road.curvature(a.s)) * a.d, 0.2)
                a.s += a.direction * 0.5 * (a.v + v1) * dt / factor
                a.v = v1
            else:
                a.s += a.vs_walk * dt
            a.d += a.vd * dt

    # -- collisions and road -------------------------------------------------------------------

    def _agent_boxes(self) -> tuple:
        x, y, yaw = self._agent_poses()
        return np.stack([x, y], 1), yaw, self._static()['size'][:, :2] / 2

    def _check_collisions(self) -> None:
        now = []
        centre, yaw, half = self.ego_box()
        if self.agents:
            c, yaws, halves = self._agent_boxes()
            near = np.flatnonzero(np.abs(c - centre).max(axis=1) < 8.0)
            hit = near[boxes_overlap(centre, yaw, half, c[near], yaws[near], halves[near])] \
                if len(near) else near
            for i in hit:
                now.append({'id': int(self.agents[i].id), 'class': self.agents[i].cls,
                            'time_s': round(self.t, 3), 'speed': round(self.ego.v, 3)})
        sc = self.scenery
        if len(sc):
            near = np.abs(sc.centre[:, :2] - centre).max(axis=1) < 12.0
            if near.any():
                hit = boxes_overlap(centre, yaw, half, sc.centre[near, :2], sc.yaw[near],
                                    sc.size[near, :2] / 2)
                for i in np.flatnonzero(hit):
                    now.append({'id': int(sc.ids[near][i]), 'class': 'static',
                                'time_s': round(self.t, 3), 'speed': round(self.ego.v, 3)})
        self._current = now
        for c in now:
            if c['id'] not in self._touching:
                self.collision_log.append(c)
        self._touching = {c['id'] for c in now}

    def ego_collisions(self) -> list:
        """Objects whose footprint overlaps the ego's (oriented boxes) at the current step:
        dicts {id, class ('vehicle' | 'pedestrian' | 'static'), time_s, speed (the ego's)}."""
        return list(self._current)

    def off_road(self) -> bool:
        """Whether a corner of the ego footprint is beyond the road edge."""
        centre, yaw, half = self.ego_box()
        c, s = math.cos(yaw), math.sin(yaw)
        for a in (-half[0], half[0]):
            for b in (-half[1], half[1]):
                x, y = centre[0] + c * a - s * b, centre[1] + s * a + c * b
                _, d = self.road.locate(x, y, self._ego_s + EGO_CENTRE_X + a)
                if abs(d) > self.half:
                    return True
        return False

    # -- state ---------------------------------------------------------------------------------

    def _agent_poses(self) -> tuple:
        if not self.agents:
            return np.zeros(0), np.zeros(0), np.zeros(0)
        s = np.array([a.s for a in self.agents])
        d = np.array([a.d for a in self.agents])
        x, y, h = self.road.pose(s, d)
        yaw = []
        for a, hh in zip(self.agents, h):
            base = hh + (0.0 if a.direction > 0 else math.pi) + a.yaw_off
            if a.cls == 'vehicle' and a.vd != 0.0 and a.v > 0.1:
                base += math.atan2(a.vd, a.v) * a.direction
            yaw.append(base)
        return x, y, np.array(yaw)

    def agent_velocities(self) -> np.ndarray:
        """[N,2] world-frame velocities of the agents."""
        if not self.agents:
            return np.zeros((0, 2))
        s = np.array([a.s for a in self.agents])
        d = np.array([a.d for a in self.agents])
        h = self.road.heading_at(s)
        k = self.road.curvature(s)
        along = self._arrays()['vs']
        along = np.where(self._static()['vehicle'], along, along * (1 - k * d))
        vd = np.array([a.vd for a in self.agents])
        return np.stack([along * np.cos(h) - vd * np.sin(h),
                         along * np.sin(h) + vd * np.cos(h)], axis=1)

    def objects(self, velocities: bool = True) -> Boxes:
        x, y, yaw = self._agent_poses()
        size = self._static()['size']
        return Boxes(centre=np.stack([x, y, size[:, 2] / 2], axis=1), yaw=yaw, size=size,
                     colour=np.array([a.colour for a in self.agents], np.uint8).reshape(-1, 3),
                     velocity=self.agent_velocities() if velocities else np.zeros((len(x), 2)),
                     ids=np.array([a.id for a in self.agents], np.int64),
                     classes=[a.cls for a in self.agents])

    def state(self, velocities: bool = True) -> WorldState:
        """The world now, ready to render (``render_camera``) or publish (``objects_json``)."""
        e = self.ego
        route = self.route_ahead(ROUTE_AHEAD_M, ROUTE_SPACING_M)
        return WorldState(t=float(self.t), ego=(e.x, e.y, e.yaw),
                          objects=self.objects(velocities), scenery=self.scenery,
                          ground=self.ground, route=route)
