"""Geometry of the scenario world: the road (clothoid centre line, lanes, ground mesh) and the
object containers (``Boxes``, ``WorldState``) shared by the simulation, the recorder and the
renderer.

Frames: the world frame is ``odom`` (REP-105), placed at the ego's start pose, so the odometry of a
drive starts at (0, 0) with yaw 0. Positions along the road are (s, d): arc length along the road's
centre line and lateral offset, left positive. Traffic keeps to the right: the ego drives in the
lane at d = -lane_width / 2, oncoming traffic at +lane_width / 2.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

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
# Parked vehicles: centre this far beyond the road edge (mostly on the sidewalk, 0.15 m into the
# lane).
PARKED_OFFSET = 0.8
# The route published with the objects: the ego lane's centre line this far ahead, every 2 m.
ROUTE_AHEAD_M, ROUTE_SPACING_M = 80.0, 2.0


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
    rendered but not published; ground: road polygons (None: bare ground plane); route: [N,2]
    world points of the ego's route (its lane centre line) ahead of it (None: unknown).
    """

    t: float
    ego: tuple
    objects: Boxes = field(default_factory=Boxes.empty)
    scenery: Boxes = field(default_factory=Boxes.empty)
    ground: GroundMesh | None = None
    route: np.ndarray | None = None

    def objects_json(self, stamp_ns: int) -> str:
        """The ``/scenario/objects`` message: objects (odom frame) and, when known, ``route``:
        the ego lane's centre line ahead of the ego ([[x, y], ...] in odom, map knowledge, not
        the logged future)."""
        msg = {'stamp_ns': int(stamp_ns), 'frame': 'odom', 'objects': self.objects.to_objects()}
        if self.route is not None:
            msg['route'] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.route]
        return json.dumps(msg, separators=(',', ':'))


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

    def heading_at(self, s):
        return np.interp(s, self.s, self.heading)

    def locate(self, x: float, y: float, s_guess: float, iterations: int = 3) -> tuple:
        """(s, d) of the world point (x, y) near arc length ``s_guess`` (Newton steps on the
        projection onto the centre line; exact to < 1 mm within a few metres of the guess)."""
        s = float(s_guess)
        for _ in range(iterations):
            px, py, h = (float(v) for v in self.pose(s, 0.0))
            dx, dy = x - px, y - py
            d = -math.sin(h) * dx + math.cos(h) * dy
            along = math.cos(h) * dx + math.sin(h) * dy
            s += along / max(1.0 - float(self.curvature(s)) * d, 0.2)
        px, py, h = (float(v) for v in self.pose(s, 0.0))
        return s, -math.sin(h) * (x - px) + math.cos(h) * (y - py)

    def lane_curvature(self, s, d):
        """Curvature of the path at constant offset ``d`` (left positive) at arc length s."""
        k = self.curvature(s)
        return k / (1.0 - k * d)

    def lane_speed_limit(self, d: float, lateral_accel: float, decel: float, v_max: float,
                         direction: int = 1) -> np.ndarray:
        """Curve speed limit ``sqrt(a_lat / |k|)`` of the lane at offset d on the table ``self.s``,
        lowered ahead of curves so that ``decel`` suffices to reach it (travel ``direction``
        +1: increasing s, -1: decreasing)."""
        k_lane = np.abs(self.kappa / (1.0 - self.kappa * d))
        v_lim = np.minimum(np.sqrt(lateral_accel / np.maximum(k_lane, 1e-9)), v_max)
        ds = np.diff(self.s) * (1.0 - self.kappa[:-1] * d)
        order = range(len(v_lim) - 2, -1, -1) if direction > 0 else range(1, len(v_lim))
        for i in order:
            j, step = (i + 1, ds[i]) if direction > 0 else (i - 1, ds[i - 1])
            v_lim[i] = min(v_lim[i], math.sqrt(v_lim[j] ** 2 + 2.0 * decel * step))
        return v_lim

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


def clear_of_road(road: Road, half: float, s: float, d: float, size, margin: float) -> bool:
    """Whether a box at (s, d) keeps ``margin`` beyond the road edge (``half`` from the centre)
    from every part of the road (a turn can bring another stretch of road close)."""
    x, y, h = road.pose(s, d)
    c, sn = np.cos(h), np.sin(h)
    lx, ly = size[0] / 2, size[1] / 2
    corners = np.array([[x + c * a - sn * b, y + sn * a + c * b]
                        for a in (-lx, lx) for b in (-ly, ly)])
    return bool((road.distance_to_centre(corners) >= half + margin).all())


def make_scenery(rng: np.random.Generator, road: Road, cfg: ScenarioConfig, s_lo: float,
                 s_hi: float) -> Boxes:
    """Trees and buildings beside the road between arc lengths s_lo and s_hi (ids -1, -2, ...)."""
    half = cfg.lane_width
    count = int(round((s_hi - s_lo) / 100.0 * cfg.scenery_per_100m))
    edge = half + cfg.sidewalk_width
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
        if not clear_of_road(road, half, s, d, size, margin=cfg.sidewalk_width + 0.2):
            continue
        x, y, h = road.pose(s, d)
        rows.append((x, y, h, size, colour))
    return Boxes(
        centre=np.array([[r[0], r[1], r[3][2] / 2] for r in rows]).reshape(-1, 3),
        yaw=np.array([r[2] for r in rows], dtype=np.float64),
        size=np.array([r[3] for r in rows], dtype=np.float64).reshape(-1, 3),
        colour=np.array([r[4] for r in rows], dtype=np.uint8).reshape(-1, 3),
        velocity=np.zeros((len(rows), 2)), ids=-1 - np.arange(len(rows), dtype=np.int64),
        classes=['scenery'] * len(rows))


def make_ground(road: Road, half: float, sidewalk_width: float) -> GroundMesh:
    """Sidewalks, road surface, solid edge lines, dashed centre line (drawn in that order)."""
    edge_in, edge_out = half - EDGE_LINE_INSET - MARKING_WIDTH, half - EDGE_LINE_INSET
    mesh = GroundMesh()
    walk = half + sidewalk_width
    mesh.add(road.ribbon(-walk, walk), SIDEWALK_COLOUR)
    mesh.add(road.ribbon(-half, half), ROAD_COLOUR)
    mesh.add(np.concatenate([road.ribbon(edge_in, edge_out),
                             road.ribbon(-edge_out, -edge_in)]), MARKING_COLOUR)
    mesh.add(road.dashes(-MARKING_WIDTH / 2, MARKING_WIDTH / 2, road.s[0], DASH_LENGTH,
                         DASH_PERIOD), MARKING_COLOUR)
    return mesh


def boxes_overlap(centre, yaw: float, half, centres, yaws, halves) -> np.ndarray:
    """Whether the oriented rectangle (centre [2], yaw, half extents [2]) overlaps each of N others
    (centres [N,2], yaws [N], halves [N,2]): separating-axis test on the four edge normals."""
    centres = np.asarray(centres, np.float64).reshape(-1, 2)
    if not len(centres):
        return np.zeros(0, bool)
    axes_a = np.array([[math.cos(yaw), math.sin(yaw)], [-math.sin(yaw), math.cos(yaw)]])
    c, s = np.cos(yaws), np.sin(yaws)
    axes_b = np.stack([np.stack([c, s], 1), np.stack([-s, c], 1)], 1)  # [N,2,2]
    delta = centres - np.asarray(centre)[None]
    separated = np.zeros(len(centres), bool)
    for k in range(2):
        ax, ra = axes_a[k], half[k]  # an axis of the single box
        rb = (np.abs(axes_b @ ax) * halves).sum(1)
        separated |= np.abs(delta @ ax) > ra + rb
        axn = axes_b[:, k]  # the others' axes
        ra_n = np.abs(axn @ axes_a.T) @ np.asarray(half)
        rb_n = halves[:, k]
        separated |= np.abs((delta * axn).sum(1)) > ra_n + rb_n
    return ~separated
