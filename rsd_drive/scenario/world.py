"""The simulated world of one drive: a road, the ego's trajectory along it, traffic and scenery.

Everything is a pure function of (seed, config): random numbers come from independent streams of
one ``numpy.random.SeedSequence`` (road, speed, traffic, pedestrians, scenery, camera jitter), so
changing, say, the number of pedestrians leaves the road and the ego's drive unchanged.

Frames: the world frame is ``odom`` (REP-105), placed at the ego's start pose, so the odometry of a
drive starts at (0, 0) with yaw 0. Positions along the road are (s, d): arc length along the road's
centre line and lateral offset, left positive. Traffic keeps to the right: the ego drives in the
lane at d = -lane_width / 2, oncoming traffic at +lane_width / 2.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from rsd_drive import INTENTS
from rsd_drive.scenario.config import ScenarioConfig

CLASSES = ('vehicle', 'pedestrian', 'scenery')
VEHICLE_SIZE = (4.5, 1.9, 1.5)
PEDESTRIAN_SIZE = (0.6, 0.6, 1.7)

# RGB base colours; faces are shaded from these when rendered.
VEHICLE_COLOURS = np.array([[40, 70, 180], [30, 110, 200], [70, 80, 150], [180, 40, 40],
                            [200, 75, 60], [140, 30, 55]], dtype=np.uint8)
PEDESTRIAN_COLOURS = np.array([[255, 140, 0], [255, 185, 30], [245, 205, 40], [235, 115, 20]],
                              dtype=np.uint8)
TREE_COLOUR = (40, 95, 45)
BUILDING_COLOURS = np.array([[175, 165, 150], [150, 150, 155], [190, 175, 160]], dtype=np.uint8)
ROAD_COLOUR = (95, 95, 100)
SIDEWALK_COLOUR = (150, 128, 100)
MARKING_COLOUR = (235, 235, 235)

# Lane markings: dash length and period of the centre line; edge lines sit inside the road edge.
DASH_LENGTH, DASH_PERIOD = 3.0, 9.0
MARKING_WIDTH, EDGE_LINE_INSET = 0.15, 0.2
# Road behind the ego's start (rendered by the back cameras at t = 0).
ROAD_BEHIND = 80.0
# Parked vehicles: centre this far beyond the road edge (half on the sidewalk).
PARKED_OFFSET = 0.5

# Agent motion models, vectorised over agents (see ``World._agent_arrays``).
FOLLOW_EGO, ALONG_ROAD, CROSSING = 0, 1, 2


@dataclass
class Boxes:
    """Oriented boxes standing on the ground, as arrays (one row per box).

    centre [N,3] (x, y, z of the box centre, z = height / 2), yaw [N], size [N,3] (length, width,
    height), colour [N,3] uint8 RGB, velocity [N,2] (vx, vy in the world frame), ids [N] and
    classes (one of ``CLASSES`` per box).
    """

    centre: np.ndarray
    yaw: np.ndarray
    size: np.ndarray
    colour: np.ndarray
    velocity: np.ndarray
    ids: np.ndarray
    classes: list

    def __len__(self) -> int:
        return len(self.yaw)

    @classmethod
    def empty(cls) -> 'Boxes':
        return cls(np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3), np.uint8),
                   np.zeros((0, 2)), np.zeros(0, np.int64), [])

    @classmethod
    def from_objects(cls, objects) -> 'Boxes':
        """Boxes from dicts in the ``/scenario/objects`` schema; an optional ``colour`` (RGB)
        overrides the class's first palette colour."""
        if not objects:
            return cls.empty()
        default = {'vehicle': VEHICLE_COLOURS[0], 'pedestrian': PEDESTRIAN_COLOURS[0],
                   'scenery': np.array(TREE_COLOUR, np.uint8)}
        return cls(
            centre=np.array([[o['x'], o['y'], o.get('z', o['height'] / 2)] for o in objects],
                            dtype=np.float64),
            yaw=np.array([o['yaw'] for o in objects], dtype=np.float64),
            size=np.array([[o['length'], o['width'], o['height']] for o in objects], np.float64),
            colour=np.array([o.get('colour', default[o['class']]) for o in objects], np.uint8),
            velocity=np.array([[o.get('vx', 0.0), o.get('vy', 0.0)] for o in objects], np.float64),
            ids=np.array([o.get('id', i) for i, o in enumerate(objects)], dtype=np.int64),
            classes=[o['class'] for o in objects])

    def to_objects(self) -> list:
        """Dicts in the ``/scenario/objects`` schema (rounded to mm / mrad: JSON stays small)."""
        return [{'id': int(self.ids[i]), 'class': self.classes[i],
                 'x': round(float(self.centre[i, 0]), 3), 'y': round(float(self.centre[i, 1]), 3),
                 'z': round(float(self.centre[i, 2]), 3), 'yaw': round(float(self.yaw[i]), 4),
                 'length': float(self.size[i, 0]), 'width': float(self.size[i, 1]),
                 'height': float(self.size[i, 2]),
                 'vx': round(float(self.velocity[i, 0]), 3),
                 'vy': round(float(self.velocity[i, 1]), 3)} for i in range(len(self))]

    @staticmethod
    def concat(parts) -> 'Boxes':
        parts = [p for p in parts if len(p)]
        if not parts:
            return Boxes.empty()
        return Boxes(*(np.concatenate([getattr(p, k) for p in parts])
                       for k in ('centre', 'yaw', 'size', 'colour', 'velocity', 'ids')),
                     classes=[c for p in parts for c in p.classes])


@dataclass
class GroundMesh:
    """Flat ground polygons in the world frame, drawn in order: ``layers`` is a list of
    (quads [M,4,3], RGB colour); ``centres`` [M,2] and ``radius`` [M] of each layer's quads let the
    renderer skip the far ones."""

    layers: list = field(default_factory=list)

    def add(self, quads: np.ndarray, colour) -> None:
        if len(quads):
            centres = quads[:, :, :2].mean(axis=1)
            radius = np.linalg.norm(quads[:, :, :2] - centres[:, None], axis=2).max(axis=1)
            self.layers.append((quads, tuple(int(c) for c in colour), centres, radius))


@dataclass
class WorldState:
    """What the world looks like at one instant: enough to render any camera.

    t: seconds since the drive started; ego: (x, y, yaw) of ``base_link`` in the world (odom)
    frame; objects: the agents (published on /scenario/objects); scenery: static boxes that are
    rendered but not published; ground: road polygons (None: bare ground plane).
    """

    t: float
    ego: tuple
    objects: Boxes = field(default_factory=Boxes.empty)
    scenery: Boxes = field(default_factory=Boxes.empty)
    ground: GroundMesh | None = None

    def objects_json(self, stamp_ns: int) -> str:
        return json.dumps({'stamp_ns': int(stamp_ns), 'frame': 'odom',
                           'objects': self.objects.to_objects()}, separators=(',', ':'))


class Road:
    """A road centre line made of straights and turns joined by clothoids (curvature linear in
    arc length), so the heading, and the ego's yaw, is smooth.

    ``knots_s``/``knots_k``: curvature is piecewise linear between these knots. The centre line is
    tabulated every ``ds`` metres from ``-ROAD_BEHIND``; ``pose`` interpolates the table.
    """

    def __init__(self, knots_s, knots_k, ego_offset: float, ds: float = 0.25):
        self.knots_s = np.asarray(knots_s, dtype=np.float64)
        self.knots_k = np.asarray(knots_k, dtype=np.float64)
        self.s = np.arange(self.knots_s[0], self.knots_s[-1] + ds / 2, ds)
        self.kappa = np.interp(self.s, self.knots_s, self.knots_k)
        steps = 0.5 * (self.kappa[1:] + self.kappa[:-1]) * ds
        self.heading = np.concatenate([[0.0], np.cumsum(steps)])
        self.heading -= np.interp(0.0, self.s, self.heading)
        c, s = np.cos(self.heading), np.sin(self.heading)
        x = np.concatenate([[0.0], np.cumsum(0.5 * (c[1:] + c[:-1]) * ds)])
        y = np.concatenate([[0.0], np.cumsum(0.5 * (s[1:] + s[:-1]) * ds)])
        # The world origin is the ego's start: lane centre at s = 0, where the heading is 0.
        self.x = x - np.interp(0.0, self.s, x)
        self.y = y - np.interp(0.0, self.s, y) - ego_offset

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def pose(self, s, d):
        """World (x, y, heading) of road coordinates (s, d); arrays broadcast."""
        s = np.asarray(s, dtype=np.float64)
        h = np.interp(s, self.s, self.heading)
        x = np.interp(s, self.s, self.x) - np.sin(h) * d
        y = np.interp(s, self.s, self.y) + np.cos(h) * d
        return x, y, h

    def curvature(self, s):
        return np.interp(s, self.knots_s, self.knots_k)

    def ribbon(self, d0: float, d1: float) -> np.ndarray:
        """Quads [M,4,3] covering lateral band [d0, d1] along the whole road: 10 m long on
        straights, 1.5 m in curves (near-plane clipping keeps long quads exact)."""
        ss = [self.knots_s[:1]]
        for a, b, ka, kb in zip(self.knots_s[:-1], self.knots_s[1:], self.knots_k[:-1],
                                self.knots_k[1:]):
            step = 10.0 if ka == 0 and kb == 0 else 1.5
            ss.append(np.linspace(a, b, max(2, int(np.ceil((b - a) / step)) + 1))[1:])
        return self._band(np.concatenate(ss), d0, d1)

    def dashes(self, d0: float, d1: float, start: float, length: float, period: float):
        """Quads of dashes in band [d0, d1]: each ``length`` long, one every ``period``."""
        s0 = np.arange(start, self.s[-1] - length, period)
        quads = self._band(np.stack([s0, s0 + length], axis=1).ravel(), d0, d1)
        return quads[::2]

    def _band(self, ss: np.ndarray, d0: float, d1: float) -> np.ndarray:
        x0, y0, _ = self.pose(ss, d0)
        x1, y1, _ = self.pose(ss, d1)
        a, b = np.stack([x0, y0], axis=1), np.stack([x1, y1], axis=1)
        quads = np.stack([a[:-1], b[:-1], b[1:], a[1:]], axis=1)
        return np.concatenate([quads, np.zeros(quads.shape[:2] + (1,))], axis=2)

    def distance_to_centre(self, xy: np.ndarray) -> np.ndarray:
        """Distance of points [N,2] to the centre line (to its 1 m samples)."""
        step = max(1, int(round(1.0 / (self.s[1] - self.s[0]))))
        line = np.stack([self.x[::step], self.y[::step]], axis=1)
        return np.sqrt(((np.asarray(xy)[:, None, :] - line[None]) ** 2).sum(-1)).min(axis=1)


def make_road(rng: np.random.Generator, cfg: ScenarioConfig, length: float) -> tuple:
    """Random curvature knots: a first straight of at most ``first_turn_within`` metres, then
    turns and straights until ``length`` metres are covered. Returns (knots_s, knots_k, turns),
    turns being +1 (left) / -1 (right) per turn. Never three turns the same way in a row, so the
    road does not wind back onto itself."""
    s = float(rng.uniform(0.25 * cfg.first_turn_within, cfg.first_turn_within))
    knots_s, knots_k, turns = [-ROAD_BEHIND, s], [0.0, 0.0], []
    while s < length:
        sign = float(rng.choice([-1.0, 1.0]))
        if len(turns) >= 2 and turns[-1] == turns[-2]:
            sign = -turns[-1]
        turns.append(sign)
        angle = np.radians(rng.uniform(*cfg.turn_angle_deg))
        radius = rng.uniform(*cfg.turn_radius)
        kappa = sign / radius
        # Clothoid entry/exit; shortened on small turns so the constant-curvature arc stays >= 0.
        ease = min(float(rng.uniform(6.0, 15.0)), 0.4 * angle * radius)
        arc = angle * radius - ease
        for piece, k in ((ease, kappa), (arc, kappa), (ease, 0.0)):
            s += piece
            knots_s.append(s)
            knots_k.append(k)
        s += float(rng.uniform(*cfg.straight_length))
        knots_s.append(s)
        knots_k.append(0.0)
    return knots_s, knots_k, turns


class World:
    """The world of one drive: road, ego trajectory, agents, scenery, ground mesh.

    ``state(t)`` gives the world at t seconds after the start; ``ego(t)`` the ego's odometry;
    ``intent(t)`` the route-derived driving intent (one of ``rsd_drive.INTENTS``).
    """

    SIM_DT = 0.01

    def __init__(self, seed: int, cfg: ScenarioConfig):
        self.seed, self.cfg = int(seed), cfg
        seeds = np.random.SeedSequence(self.seed).spawn(6)
        rngs = [np.random.default_rng(s) for s in seeds[:5]]
        rng_road, rng_speed, rng_traffic, rng_peds, rng_scenery = rngs
        self._jitter_seed = seeds[5]
        self.t_end = cfg.duration_s + cfg.intent_horizon_s
        self.half = cfg.lane_width
        self.ego_offset = -cfg.lane_width / 2
        length = self.t_end * cfg.speed_max + cfg.draw_distance + 60.0
        knots_s, knots_k, self.turns = make_road(rng_road, cfg, length)
        self.road = Road(knots_s, knots_k, self.ego_offset)
        self._simulate_ego(rng_speed)
        self._make_traffic(rng_traffic)
        self._make_pedestrians(rng_peds)
        self._make_scenery(rng_scenery)
        self.ground = self._make_ground()

    # -- ego ----------------------------------------------------------------------------------

    def _simulate_ego(self, rng: np.random.Generator) -> None:
        """Integrate the ego along its lane: target speeds change every 3-7 s (smoothly),
        curves cap the speed at sqrt(a_lat / curvature) with braking planned ahead, and the
        acceleration is limited."""
        cfg, road, d = self.cfg, self.road, self.ego_offset
        key_t = [0.0]
        while key_t[-1] < self.t_end:
            key_t.append(key_t[-1] + float(rng.uniform(3.0, 7.0)))
        key_v = rng.uniform(cfg.speed_min, cfg.speed_max, size=len(key_t))

        # Curve limit along the lane; the backward pass brakes ahead of curves at half decel_max.
        k_lane = np.abs(road.kappa / (1.0 - road.kappa * d))
        v_lim = np.minimum(np.sqrt(cfg.lateral_accel_max / np.maximum(k_lane, 1e-9)),
                           cfg.speed_max)
        ds_lane = np.diff(road.s) * (1.0 - road.kappa[:-1] * d)
        for i in range(len(v_lim) - 2, -1, -1):
            v_lim[i] = min(v_lim[i], np.sqrt(v_lim[i + 1] ** 2 + cfg.decel_max * ds_lane[i]))

        n = int(np.ceil(self.t_end / self.SIM_DT)) + 2
        t = np.arange(n) * self.SIM_DT
        seg = np.clip(np.searchsorted(key_t, t, side='right') - 1, 0, len(key_t) - 2)
        u = (t - np.take(key_t, seg)) / (np.take(key_t, seg + 1) - np.take(key_t, seg))
        w = 0.5 - 0.5 * np.cos(np.pi * np.clip(u, 0, 1))
        v_target = key_v[seg] * (1 - w) + key_v[seg + 1] * w
        s_arr, v_arr = np.zeros(n), np.zeros(n)
        s, v = 0.0, min(v_target[0], float(np.interp(0.0, road.s, v_lim)))
        for i in range(n):
            s_arr[i], v_arr[i] = s, v
            # Look ahead by the 1 s response time of the speed controller.
            v_cmd = min(v_target[i], float(np.interp(s + v, road.s, v_lim)))
            v += float(np.clip(v_cmd - v, -cfg.decel_max, cfg.accel_max)) * self.SIM_DT
            v = max(v, 0.0)
            s += v * self.SIM_DT / (1.0 - float(road.curvature(s)) * d)
        if s_arr[-1] > road.length - cfg.draw_distance:
            raise RuntimeError('road too short for the simulated drive')
        self.sim_t, self.sim_s, self.sim_v = t, s_arr, v_arr
        self.min_speed = float(v_arr.min())

    def ego_s(self, t):
        return np.interp(t, self.sim_t, self.sim_s)

    def ego(self, t: float) -> dict:
        """Odometry at t: x, y, yaw (odom frame), speed (body x, m/s), yaw_rate (rad/s)."""
        s = float(self.ego_s(t))
        v = float(np.interp(t, self.sim_t, self.sim_v))
        x, y, h = self.road.pose(s, self.ego_offset)
        k = float(self.road.curvature(s))
        yaw_rate = k * v / (1.0 - k * self.ego_offset)
        return {'x': float(x), 'y': float(y), 'yaw': float(h), 'speed': v, 'yaw_rate': yaw_rate}

    def ego_heading(self, t):
        return np.interp(self.ego_s(t), self.road.s, self.road.heading)

    def intent(self, t: float) -> str:
        """Route intent at t: where the ego's heading goes over the next ``intent_horizon_s``."""
        turn = np.degrees(self.ego_heading(t + self.cfg.intent_horizon_s) - self.ego_heading(t))
        if turn > self.cfg.intent_threshold_deg:
            return INTENTS[2]
        if turn < -self.cfg.intent_threshold_deg:
            return INTENTS[3]
        return INTENTS[1]

    # -- agents -------------------------------------------------------------------------------

    def _make_traffic(self, rng: np.random.Generator) -> None:
        """Moving vehicles follow the ego's own speed profile at a gap that breathes a little
        (ahead of it or behind it, in its lane) or drive the other lane at constant speed, meeting
        the ego during the drive; parked vehicles stand half on the shoulder."""
        cfg = self.cfg
        self._agents, self._parked_s = [], []
        s_start, s_stop = float(self.ego_s(0.0)), float(self.ego_s(cfg.duration_s))
        roles = rng.choice(['ahead', 'behind', 'oncoming'], size=cfg.vehicles, p=[0.3, 0.2, 0.5])
        gaps = {'ahead': 0.0, 'behind': 0.0}
        for role in roles:
            if role == 'behind' and gaps['behind'] + 30.0 > ROAD_BEHIND - 5.0:
                role = 'ahead'  # no road behind the start for a longer queue
            colour = VEHICLE_COLOURS[rng.integers(len(VEHICLE_COLOURS))]
            if role == 'oncoming':
                t_meet = rng.uniform(0.0, cfg.duration_s)
                speed = rng.uniform(cfg.speed_min, cfg.speed_max)
                s_meet = float(self.ego_s(t_meet))
                self._agent('vehicle', VEHICLE_SIZE, colour, ALONG_ROAD,
                            s0=s_meet + speed * t_meet, vs=-speed, d=-self.ego_offset,
                            yaw_off=np.pi)
                continue
            # Stacked gaps keep a queue of vehicles apart; the breathing amplitude is capped so
            # the vehicle never reverses (its speed is the ego's speed +- amplitude * omega).
            gaps[role] += rng.uniform(12.0, 30.0)
            omega = rng.uniform(0.2, 0.5)
            amp = min(rng.uniform(0.0, 3.0), 0.5 * self.min_speed / omega)
            sign = 1.0 if role == 'ahead' else -1.0
            self._agent('vehicle', VEHICLE_SIZE, colour, FOLLOW_EGO, gap=sign * gaps[role],
                        amp=amp, omega=omega, phase=rng.uniform(0, 2 * np.pi), d=self.ego_offset)
        for _ in range(cfg.parked_vehicles):
            colour = VEHICLE_COLOURS[rng.integers(len(VEHICLE_COLOURS))]
            side = float(rng.choice([-1.0, 1.0]))
            d = side * (self.half + PARKED_OFFSET)
            inner = abs(d) - VEHICLE_SIZE[1] / 2 - self.half
            for _attempt in range(20):
                s0 = rng.uniform(s_start - 20.0, s_stop + 60.0)
                if self._clear_of_road(s0, d, VEHICLE_SIZE, margin=inner - 0.05):
                    break
            else:
                continue  # only on a road that keeps winding back: leave this one out
            self._parked_s.append(s0)
            self._agent('vehicle', VEHICLE_SIZE, colour, ALONG_ROAD, s0=s0, vs=0.0, d=d,
                        yaw_off=(0.0 if side < 0 else np.pi) + rng.uniform(-0.05, 0.05))

    def _make_pedestrians(self, rng: np.random.Generator) -> None:
        """Sidewalk walkers, and crossers that are in the ego's lane 2.5-4.5 s before the ego
        reaches their crossing point (they wait at the kerb before and after crossing)."""
        cfg = self.cfg
        s_start, s_stop = float(self.ego_s(0.0)), float(self.ego_s(cfg.duration_s))
        # Walkers keep to the outer side of the sidewalk, clear of the parked vehicles.
        walk = self.half + cfg.sidewalk_width - 0.5
        for _ in range(cfg.pedestrians):
            colour = PEDESTRIAN_COLOURS[rng.integers(len(PEDESTRIAN_COLOURS))]
            side, direction = rng.choice([-1.0, 1.0], size=2)
            speed = rng.uniform(0.8, 1.6)
            d = side * (walk + rng.uniform(-0.15, 0.15))
            self._agent('pedestrian', PEDESTRIAN_SIZE, colour, ALONG_ROAD,
                        s0=rng.uniform(s_start - 10.0, s_stop + 40.0), vs=direction * speed, d=d,
                        yaw_off=0.0 if direction > 0 else np.pi)
        kerb = self.half + 0.8
        for _ in range(cfg.crossing_pedestrians):
            colour = PEDESTRIAN_COLOURS[rng.integers(len(PEDESTRIAN_COLOURS))]
            # Crossers wait at the kerb: not where a vehicle is parked.
            for _attempt in range(20):
                t_cross = rng.uniform(0.0, cfg.duration_s)
                s_cross = float(self.ego_s(t_cross + rng.uniform(2.5, 4.5)))
                if all(abs(s_cross - s) > 4.0 for s in self._parked_s):
                    break
            direction = float(rng.choice([-1.0, 1.0]))
            self._agent('pedestrian', PEDESTRIAN_SIZE, colour, CROSSING,
                        s0=s_cross, d=self.ego_offset, t0=t_cross,
                        vd=direction * rng.uniform(1.0, 1.6), dmax=kerb,
                        yaw_off=direction * np.pi / 2)
        self._pack_agents()

    def _agent(self, cls, size, colour, mode, s0=0.0, vs=0.0, d=0.0, yaw_off=0.0, gap=0.0,
               amp=0.0, omega=0.0, phase=0.0, t0=0.0, vd=0.0, dmax=0.0) -> None:
        self._agents.append(dict(cls=cls, size=size, colour=colour, mode=mode, s0=s0, vs=vs, d=d,
                                 yaw_off=yaw_off, gap=gap, amp=amp, omega=omega, phase=phase,
                                 t0=t0, vd=vd, dmax=dmax))

    def _pack_agents(self) -> None:
        a = self._agents
        self.agent_classes = [x['cls'] for x in a]
        self.agent_size = np.array([x['size'] for x in a], dtype=np.float64).reshape(-1, 3)
        self.agent_colour = np.array([x['colour'] for x in a], dtype=np.uint8).reshape(-1, 3)
        self.agent_ids = np.arange(len(a), dtype=np.int64)
        self._p = {k: np.array([x[k] for x in a], dtype=np.float64)
                   for k in ('mode', 's0', 'vs', 'd', 'yaw_off', 'gap', 'amp', 'omega', 'phase',
                             't0', 'vd', 'dmax')}

    def _agent_poses(self, t: float):
        p = self._p
        follow = self.ego_s(t) + p['gap'] + p['amp'] * np.sin(p['omega'] * t + p['phase'])
        s = np.where(p['mode'] == FOLLOW_EGO, follow,
                     np.where(p['mode'] == CROSSING, p['s0'], p['s0'] + p['vs'] * t))
        crossing = np.clip(p['d'] + p['vd'] * (t - p['t0']), -p['dmax'], p['dmax'])
        d = np.where(p['mode'] == CROSSING, crossing, p['d'])
        x, y, h = self.road.pose(s, d)
        return x, y, h + p['yaw_off']

    @property
    def n_objects(self) -> int:
        return len(self._agents)

    # -- scenery and ground -------------------------------------------------------------------

    def _clear_of_road(self, s: float, d: float, size, margin: float) -> bool:
        """Whether a box at (s, d) keeps ``margin`` beyond the road edge from every part of the
        road (a turn can bring another stretch of road close)."""
        x, y, h = self.road.pose(s, d)
        c, sn = np.cos(h), np.sin(h)
        lx, ly = size[0] / 2, size[1] / 2
        corners = np.array([[x + c * a - sn * b, y + sn * a + c * b]
                            for a in (-lx, lx) for b in (-ly, ly)])
        return bool((self.road.distance_to_centre(corners) >= self.half + margin).all())

    def _make_scenery(self, rng: np.random.Generator) -> None:
        cfg = self.cfg
        s_lo = float(self.ego_s(0.0)) - 60.0
        s_hi = float(self.ego_s(self.t_end)) + cfg.draw_distance * 0.7
        count = int(round((s_hi - s_lo) / 100.0 * cfg.scenery_per_100m))
        edge = self.half + cfg.sidewalk_width
        rows = []
        for _ in range(count):
            s = rng.uniform(s_lo, s_hi)
            side = float(rng.choice([-1.0, 1.0]))
            if rng.random() < 0.6:
                size, colour = (1.4, 1.4, rng.uniform(3.5, 6.0)), TREE_COLOUR
                d = side * (edge + rng.uniform(1.0, 4.0))
            else:
                size = (rng.uniform(8.0, 16.0), rng.uniform(6.0, 10.0), rng.uniform(5.0, 12.0))
                colour = BUILDING_COLOURS[rng.integers(len(BUILDING_COLOURS))]
                d = side * (edge + 3.0 + size[1] / 2 + rng.uniform(0.0, 6.0))
            if not self._clear_of_road(s, d, size, margin=cfg.sidewalk_width + 0.2):
                continue
            x, y, h = self.road.pose(s, d)
            rows.append((x, y, h, size, colour))
        self.scenery = Boxes(
            centre=np.array([[r[0], r[1], r[3][2] / 2] for r in rows]).reshape(-1, 3),
            yaw=np.array([r[2] for r in rows], dtype=np.float64),
            size=np.array([r[3] for r in rows], dtype=np.float64).reshape(-1, 3),
            colour=np.array([r[4] for r in rows], dtype=np.uint8).reshape(-1, 3),
            velocity=np.zeros((len(rows), 2)), ids=-1 - np.arange(len(rows), dtype=np.int64),
            classes=['scenery'] * len(rows))

    def _make_ground(self) -> GroundMesh:
        """Sidewalks, road surface, solid edge lines, dashed centre line (drawn in that order)."""
        road, half = self.road, self.half
        edge_in, edge_out = half - EDGE_LINE_INSET - MARKING_WIDTH, half - EDGE_LINE_INSET
        mesh = GroundMesh()
        walk = half + self.cfg.sidewalk_width
        mesh.add(road.ribbon(-walk, walk), SIDEWALK_COLOUR)
        mesh.add(road.ribbon(-half, half), ROAD_COLOUR)
        mesh.add(np.concatenate([road.ribbon(edge_in, edge_out),
                                 road.ribbon(-edge_out, -edge_in)]), MARKING_COLOUR)
        mesh.add(road.dashes(-MARKING_WIDTH / 2, MARKING_WIDTH / 2, road.s[0], DASH_LENGTH,
                             DASH_PERIOD), MARKING_COLOUR)
        return mesh

    # -- state --------------------------------------------------------------------------------

    def state(self, t: float, velocities: bool = False) -> WorldState:
        """The world at t seconds; ``velocities`` adds agent velocities (central differences over
        10 ms; only the published objects need them, rendering does not)."""
        x, y, yaw = self._agent_poses(t)
        vel = np.zeros((len(x), 2))
        if velocities:
            dt = 0.005
            x1, y1, _ = self._agent_poses(t + dt)
            x0, y0, _ = self._agent_poses(t - dt)
            vel = np.stack([x1 - x0, y1 - y0], axis=1) / (2 * dt)
        objects = Boxes(centre=np.stack([x, y, self.agent_size[:, 2] / 2], axis=1), yaw=yaw,
                        size=self.agent_size, colour=self.agent_colour, velocity=vel,
                        ids=self.agent_ids, classes=self.agent_classes)
        e = self.ego(t)
        return WorldState(t=float(t), ego=(e['x'], e['y'], e['yaw']), objects=objects,
                          scenery=self.scenery, ground=self.ground)

    def camera_offsets_ns(self, n_frames: int, n_cameras: int) -> np.ndarray:
        """[n_frames, n_cameras] stamp offsets (ns) from the frame time; camera 0 (the reference)
        is exact, the others trigger up to ``camera_jitter_s`` after it (never before: no
        message of a drive precedes its start)."""
        rng = np.random.default_rng(self._jitter_seed)
        jitter = rng.uniform(0.0, 1.0, size=(n_frames, n_cameras))
        jitter[:, 0] = 0.0
        return np.round(jitter * self.cfg.camera_jitter_s * 1e9).astype(np.int64)
