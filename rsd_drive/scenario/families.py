"""Scenario families: named, seeded generators that place a hazard and the background traffic.

Each family reads its parameters from ``cfg.families[name]`` (config/scenario.yaml) and draws
from the simulation's ``hazard`` random stream, so a family changes nothing but its own hazard.
Hazards are timed on the ego's nominal (hazard-free) progress and triggered CARLA-style on the
ego's time to arrival (distance / max(speed, 2 m/s)) so that the hazard enters the ego's corridor
``ttc_at_onset_s`` before the ego would get there; the expert has to slow down for it.

    cruise           background traffic, sometimes a lead vehicle at its own desired speed
    lead_brake       a lead vehicle brakes hard to a stop, waits, drives on
    stopped_vehicle  a car stands in the ego's lane; it drives off once the ego has waited
    ped_crossing     a pedestrian waits at the kerb (visible from afar), crosses and stands in the
                     ego's lane until past the ego's constant-speed arrival (a policy that does
                     not brake meets it there)
    ped_occluded     a pedestrian steps out from behind a parked car (and stands, as above)
    cut_in           a car pulls out from the kerb into the ego's lane ahead (the road has one
                     lane per direction, so a cut-in comes from the kerb)
    ped_kerb         a pedestrian walks along the kerb of the ego's side and never crosses (risk
                     without braking)

``sim.hazard`` records what was placed: {family, agent_id, trigger_time, onset_time,
ttc_at_onset_s, ...}. ``trigger_time`` is when the script fired; ``onset_time`` is when the hazard
was first inside the ego's corridor (None if never).
"""
from __future__ import annotations

import math

import numpy as np

from rsd_drive.scenario.road import (PARKED_OFFSET, PEDESTRIAN_COLOURS, PEDESTRIAN_SIZE,
                                     ROAD_BEHIND, VEHICLE_COLOURS, VEHICLE_SIZE, clear_of_road)
from rsd_drive.scenario.constants import (EGO_CENTRE_X, EGO_LENGTH, EGO_WIDTH,
                                          TRIGGER_MIN_SPEED)

HOLD = -20.0  # acceleration override that keeps a standing vehicle standing
MIN_ARRIVAL_S = 4.0  # the ego is never due at a placed hazard sooner than this


def uniform(rng, value) -> float:
    """A draw from a (lo, hi) range, or the value itself."""
    return float(rng.uniform(*value)) if isinstance(value, tuple) else float(value)


def ego_front(sim) -> float:
    return sim.ego_s + EGO_CENTRE_X + EGO_LENGTH / 2


def time_to_arrival(sim, s: float) -> float:
    """The ego's time to reach arc length s with its front, at its current speed."""
    return (s - ego_front(sim)) / max(sim.ego.v, TRIGGER_MIN_SPEED)


def note_trigger(sim) -> None:
    if sim.hazard.get('trigger_time') is None:
        sim.hazard['trigger_time'] = round(sim.t, 3)


def note_onset(sim, agent) -> None:
    """Record the first time ``agent`` is inside the ego's corridor ahead."""
    if sim.hazard.get('onset_time') is not None:
        return
    for gap, _, other, _ in sim.corridor_obstacles(predict=False):
        if other is agent and gap > -EGO_LENGTH:
            sim.hazard['onset_time'] = round(sim.t, 3)
            sim.hazard['ttc_at_onset_s'] = round(max(gap, 0.0) / max(sim.ego.v, 0.1), 3)
            sim.hazard['speed_at_onset'] = round(sim.ego.v, 3)


class Script:
    """A hazard behaviour: ``update`` runs before each step; ``accel_override`` caps a vehicle's
    IDM acceleration (None: IDM alone)."""

    state = 'idle'

    def update(self, sim, agent) -> None:
        pass

    def accel_override(self, sim, agent):
        return None


class LeadBrake(Script):
    """Follows by IDM; from ``t_trigger`` on, once the ego is within ``trigger_gap``, brakes at
    ``decel`` to a stop, stands ``hold_s`` and drives on."""

    def __init__(self, t_trigger, trigger_gap, decel, hold_s):
        self.t_trigger, self.trigger_gap, self.decel, self.hold_s = (t_trigger, trigger_gap,
                                                                     decel, hold_s)
        self.state, self.t_stop = 'follow', None

    def update(self, sim, agent):
        gap = agent.s - agent.size[0] / 2 - ego_front(sim)
        if self.state == 'follow' and sim.t >= self.t_trigger and 0 < gap < self.trigger_gap:
            self.state = 'brake'
            note_trigger(sim)
            sim.hazard['onset_time'] = round(sim.t, 3)
            sim.hazard['ttc_at_onset_s'] = round(sim.ttc(), 3)
            sim.hazard['speed_at_onset'] = round(sim.ego.v, 3)
        elif self.state == 'brake' and agent.v <= 0.05:
            self.state, self.t_stop = 'hold', sim.t
        elif self.state == 'hold' and sim.t - self.t_stop >= self.hold_s:
            self.state = 'go'

    def accel_override(self, sim, agent):
        return {'brake': -self.decel, 'hold': HOLD}.get(self.state)


class StoppedVehicle(Script):
    """Stands in the lane until the ego has waited ``release_wait_s`` behind it (within 25 m,
    slower than 0.5 m/s); then drives off by IDM."""

    def __init__(self, release_wait_s):
        self.release_wait_s, self.waited, self.state = release_wait_s, 0.0, 'stopped'

    def update(self, sim, agent):
        rear = agent.s - agent.size[0] / 2
        if time_to_arrival(sim, rear) <= 4.0:
            note_trigger(sim)
        note_onset(sim, agent)
        if self.state == 'stopped' and rear - ego_front(sim) < 25.0 and sim.ego.v < 0.5:
            self.waited += sim.dt
            if self.waited >= self.release_wait_s:
                self.state = 'go'
                sim.hazard['release_time'] = round(sim.t, 3)

    def accel_override(self, sim, agent):
        return HOLD if self.state == 'stopped' else None


class PullOut(Script):
    """Parked at the kerb; when the ego is ``t_trigger`` seconds away, steers into the lane
    (cosine lateral profile over ``duration`` s) while accelerating by IDM."""

    def __init__(self, t_trigger, d_to, duration):
        self.t_trigger, self.d_to, self.duration = t_trigger, d_to, duration
        self.state, self.t0, self.d_from = 'parked', None, None

    def update(self, sim, agent):
        if self.state == 'parked' and time_to_arrival(sim, agent.s - agent.size[0] / 2) \
                <= self.t_trigger:
            self.state, self.t0, self.d_from = 'merge', sim.t, agent.d
            note_trigger(sim)
        if self.state == 'merge':
            u = (sim.t - self.t0) / self.duration
            if u >= 1.0:
                self.state, agent.vd, agent.d = 'lane', 0.0, self.d_to
            else:
                # The lateral speed that lands on the cosine profile at the next step.
                u1 = min(u + sim.dt / self.duration, 1.0)
                shape = 0.5 * (1 - math.cos(math.pi * u1))
                target = self.d_from + (self.d_to - self.d_from) * shape
                agent.vd = (target - agent.d) / sim.dt
        if self.state != 'parked':
            note_onset(sim, agent)

    def accel_override(self, sim, agent):
        return HOLD if self.state == 'parked' else None


class Crosser(Script):
    """Waits at the kerb; when the ego is ``t_trigger`` seconds away, walks across at ``speed``,
    stands ``pause_s`` in the middle of the ego's lane (at ``d_pause``; it hesitates, as CARLA's
    pedestrian scenarios do), walks on to ``d_end``, then off along the sidewalk."""

    def __init__(self, t_trigger, speed, d_end, d_pause=None, pause_s=0.0):
        self.t_trigger, self.speed, self.d_end, self.state = t_trigger, speed, d_end, 'wait'
        self.d_pause, self.pause_s, self.t_pause = d_pause, pause_s, None

    def update(self, sim, agent):
        direction = 1.0 if self.d_end > agent.d else -1.0
        if self.state == 'wait' and time_to_arrival(sim, agent.s) <= self.t_trigger:
            self.state, agent.vd = 'walk', direction * self.speed
            note_trigger(sim)
        elif self.state == 'walk':
            note_onset(sim, agent)
            if self.d_pause is not None and self.t_pause is None \
                    and (self.d_pause - agent.d) * direction <= 0:
                self.state, self.t_pause, agent.vd, agent.d = 'pause', sim.t, 0.0, self.d_pause
            elif (self.d_end - agent.d) * math.copysign(1.0, agent.vd or direction) <= 0:
                self.state, agent.vd, agent.d = 'done', 0.0, self.d_end
                agent.vs_walk = 1.0
                agent.yaw_off = 0.0
        elif self.state == 'pause' and sim.t - self.t_pause >= self.pause_s:
            self.state, agent.vd = 'walk', direction * self.speed


class KerbWalker(Script):
    """Walks along the kerb; records as trigger the moment the ego is 3 s away."""

    def update(self, sim, agent):
        if abs(agent.s - ego_front(sim)) / max(sim.ego.v, TRIGGER_MIN_SPEED) <= 3.0:
            note_trigger(sim)
        note_onset(sim, agent)


# -- the families -----------------------------------------------------------------------------

def _arrival_point(sim, params, rng) -> tuple:
    """(time, arc length of the ego's front) when the ego is due at the hazard: the family's
    fraction of the drive, but never sooner than ``MIN_ARRIVAL_S`` (room to stop; in short drives
    the hazard then lies beyond their end)."""
    t_arr = max(uniform(rng, params['arrival']) * sim.cfg.duration_s, MIN_ARRIVAL_S)
    return t_arr, sim.nominal_s(t_arr) + EGO_CENTRE_X + EGO_LENGTH / 2


def _corridor_half(obstacle_width: float, sim) -> float:
    return EGO_WIDTH / 2 + obstacle_width / 2 + sim.cfg.expert.corridor_margin_m


def _colour(rng, palette):
    return palette[rng.integers(len(palette))]


def _lead(sim, rng, gap, v0, role='lead'):
    s = EGO_CENTRE_X + EGO_LENGTH / 2 + gap + VEHICLE_SIZE[0] / 2
    return sim.add_agent('vehicle', role, s, sim.lane_d, VEHICLE_SIZE,
                         _colour(rng, VEHICLE_COLOURS), v=min(v0, sim.ego.v), v0=v0, idm=True)


def family_cruise(sim, rng, p):
    if rng.random() < p['lead_prob']:
        _lead(sim, rng, uniform(rng, p['lead_gap_m']),
              uniform(rng, p['lead_speed_factor']) * float(np.mean(sim._key_v)))


def family_lead_brake(sim, rng, p):
    v0 = uniform(rng, p['lead_speed_factor']) * float(np.mean(sim._key_v))
    lead = _lead(sim, rng, uniform(rng, p['lead_gap_m']), v0)
    t_trigger = uniform(rng, p['trigger_time']) * sim.cfg.duration_s
    lead.script = LeadBrake(t_trigger, p['trigger_gap_m'], uniform(rng, p['brake_decel']),
                            uniform(rng, p['hold_s']))
    sim.hazard.update(agent_id=lead.id, planned_trigger_time=round(t_trigger, 3))


def family_stopped_vehicle(sim, rng, p):
    t_arr, s_front = _arrival_point(sim, p, rng)
    s = s_front + VEHICLE_SIZE[0] / 2
    car = sim.add_agent('vehicle', 'stopped', s, sim.lane_d, VEHICLE_SIZE,
                        _colour(rng, VEHICLE_COLOURS), v0=uniform(rng, p['release_speed']),
                        idm=True, script=StoppedVehicle(uniform(rng, p['release_wait_s'])))
    sim.exclusions.append((s - 15.0, s + 10.0))
    sim.hazard.update(agent_id=car.id, planned_arrival_time=round(t_arr, 3))


def _crosser(sim, rng, s, d0, d_end, speed, ttc, pause, role):
    """A pedestrian at (s, d0) that crosses to d_end, triggered ``ttc`` s before the ego would
    reach it plus the time it needs to reach the corridor. It stands in the middle of the ego's
    lane for at least ``pause`` s and until 1.5 s past the ego's arrival at its trigger-time
    speed: a policy that does not brake meets it there."""
    half = _corridor_half(PEDESTRIAN_SIZE[1], sim)
    t_enter = max(abs(d0 - sim.lane_d) - half, 0.0) / speed
    t_centre = abs(d0 - sim.lane_d) / speed
    direction = 1.0 if d_end > d0 else -1.0
    t_trigger = t_enter + ttc
    script = Crosser(t_trigger, speed, d_end, d_pause=sim.lane_d,
                     pause_s=max(pause, t_trigger - t_centre + 1.5))
    return sim.add_agent('pedestrian', role, s, d0, PEDESTRIAN_SIZE,
                         _colour(rng, PEDESTRIAN_COLOURS), yaw_off=direction * math.pi / 2,
                         script=script)


def family_ped_crossing(sim, rng, p):
    t_arr, s = _arrival_point(sim, p, rng)
    kerb = sim.half + 0.8
    side = 1.0 if rng.random() < p['from_left_prob'] else -1.0
    ped = _crosser(sim, rng, s, side * kerb, -side * kerb, uniform(rng, p['walk_speed']),
                   uniform(rng, p['ttc_at_onset_s']), uniform(rng, p['pause_s']), 'crossing')
    sim.exclusions.append((s - 10.0, s + 10.0))
    sim.hazard.update(agent_id=ped.id, planned_arrival_time=round(t_arr, 3),
                      from_side='left' if side > 0 else 'right')


def family_ped_occluded(sim, rng, p):
    t_arr, s = _arrival_point(sim, p, rng)
    d_park = -(sim.half + PARKED_OFFSET)
    s_car = s - VEHICLE_SIZE[0] / 2 - 0.6
    car = sim.add_agent('vehicle', 'occluder', s_car, d_park, VEHICLE_SIZE,
                        _colour(rng, VEHICLE_COLOURS))
    ped = _crosser(sim, rng, s, d_park, sim.half + 0.8, uniform(rng, p['walk_speed']),
                   uniform(rng, p['ttc_at_onset_s']), uniform(rng, p['pause_s']), 'occluded')
    sim.exclusions.append((s_car - 10.0, s + 10.0))
    sim.hazard.update(agent_id=ped.id, occluder_id=car.id, planned_arrival_time=round(t_arr, 3))


def family_cut_in(sim, rng, p):
    t_arr, s_front = _arrival_point(sim, p, rng)
    s = s_front + VEHICLE_SIZE[0] / 2
    duration = uniform(rng, p['lateral_duration_s'])
    d_park = -(sim.half + PARKED_OFFSET)
    # The footprint enters the corridor after ~0.2 of the manoeuvre (cosine profile).
    t_enter = 0.2 * duration
    car = sim.add_agent('vehicle', 'cut_in', s, d_park, VEHICLE_SIZE,
                        _colour(rng, VEHICLE_COLOURS), v0=uniform(rng, p['speed']), idm=True,
                        script=PullOut(t_enter + uniform(rng, p['ttc_at_onset_s']), sim.lane_d,
                                       duration))
    sim.exclusions.append((s - 15.0, s + 10.0))
    sim.hazard.update(agent_id=car.id, planned_arrival_time=round(t_arr, 3))


def family_ped_kerb(sim, rng, p):
    t_arr, s_meet = _arrival_point(sim, p, rng)
    speed = uniform(rng, p['walk_speed'])
    vs = -speed if rng.random() < p['toward_prob'] else speed
    s0 = s_meet - vs * t_arr
    d = -(sim.half + p['kerb_offset_m'])
    ped = sim.add_agent('pedestrian', 'kerb', s0, d, PEDESTRIAN_SIZE,
                        _colour(rng, PEDESTRIAN_COLOURS), vs_walk=vs,
                        yaw_off=0.0 if vs > 0 else math.pi, script=KerbWalker())
    s_end = s0 + vs * sim.t_plan
    sim.exclusions.append((min(s0, s_end) - 6.0, max(s0, s_end) + 6.0))
    sim.hazard.update(agent_id=ped.id, planned_arrival_time=round(t_arr, 3))


FAMILY_BUILDERS = {
    'cruise': family_cruise, 'lead_brake': family_lead_brake,
    'stopped_vehicle': family_stopped_vehicle, 'ped_crossing': family_ped_crossing,
    'ped_occluded': family_ped_occluded, 'cut_in': family_cut_in, 'ped_kerb': family_ped_kerb,
}


# -- background traffic -----------------------------------------------------------------------

def _excluded(sim, s: float, margin: float) -> bool:
    return any(lo - margin <= s <= hi + margin for lo, hi in sim.exclusions)


def add_vehicles(sim, rng) -> None:
    """Background vehicles: oncoming ones that meet the ego during the drive (spaced >= 20 m)
    and at most two behind the ego in its lane; all drive by IDM."""
    cfg = sim.cfg
    roles = rng.choice(['behind', 'oncoming'], size=cfg.vehicles, p=[0.25, 0.75])
    behind_gap, oncoming = 0.0, []
    for role in roles:
        colour = _colour(rng, VEHICLE_COLOURS)
        v0 = float(rng.uniform(cfg.speed_min, cfg.speed_max))
        if role == 'behind' and behind_gap + 30.0 < ROAD_BEHIND - 10.0:
            behind_gap += float(rng.uniform(15.0, 28.0))
            sim.add_agent('vehicle', 'behind', -behind_gap, sim.lane_d, VEHICLE_SIZE, colour,
                          v=sim.ego.v, v0=v0 + 2.0, idm=True)
            continue
        t_meet = float(rng.uniform(0.0, cfg.duration_s))
        oncoming.append((sim.nominal_s(t_meet) + v0 * t_meet, v0, colour))
    last = -math.inf
    for s0, v0, colour in sorted(oncoming, key=lambda x: x[0]):
        s0 = max(s0, last + 20.0)
        last = s0
        if s0 > sim.route_end_s + cfg.draw_distance - 10.0:
            continue
        sim.add_agent('vehicle', 'oncoming', s0, -sim.lane_d, VEHICLE_SIZE, colour,
                      direction=-1, v=min(v0, sim.curve_limit(s0, -sim.lane_d)), v0=v0,
                      idm=True)


def add_parked(sim, rng) -> None:
    """Parked vehicles half on the shoulder, clear of the hazards' zones."""
    cfg = sim.cfg
    s_stop = sim.nominal_s(cfg.duration_s)
    for _ in range(cfg.parked_vehicles):
        colour = _colour(rng, VEHICLE_COLOURS)
        side = float(rng.choice([-1.0, 1.0]))
        d = side * (sim.half + PARKED_OFFSET)
        inner = abs(d) - VEHICLE_SIZE[1] / 2 - sim.half
        yaw = (0.0 if side < 0 else math.pi) + float(rng.uniform(-0.05, 0.05))
        for _attempt in range(20):
            s0 = float(rng.uniform(-20.0, s_stop + 60.0))
            if not _excluded(sim, s0, VEHICLE_SIZE[0]) and clear_of_road(
                    sim.road, sim.half, s0, d, VEHICLE_SIZE, margin=inner - 0.05):
                sim.add_agent('vehicle', 'parked', s0, d, VEHICLE_SIZE, colour, yaw_off=yaw)
                break


def add_walkers(sim, rng) -> None:
    """Pedestrians walking along the outer side of the sidewalks (never towards the road)."""
    cfg = sim.cfg
    s_stop = sim.nominal_s(cfg.duration_s)
    walk = sim.half + cfg.sidewalk_width - 0.5
    for _ in range(cfg.pedestrians):
        colour = _colour(rng, PEDESTRIAN_COLOURS)
        side, direction = rng.choice([-1.0, 1.0], size=2)
        speed = float(rng.uniform(0.8, 1.6))
        d = side * (walk + float(rng.uniform(-0.15, 0.15)))
        sim.add_agent('pedestrian', 'walker', float(rng.uniform(-10.0, s_stop + 40.0)), d,
                      PEDESTRIAN_SIZE, colour, vs_walk=direction * speed,
                      yaw_off=0.0 if direction > 0 else math.pi)


def build(sim) -> None:
    """Place the family's hazard, then the background traffic around it."""
    params = sim.cfg.families[sim.family]
    FAMILY_BUILDERS[sim.family](sim, sim.rngs['hazard'], params)
    add_parked(sim, sim.rngs['traffic'])
    add_vehicles(sim, sim.rngs['traffic'])
    add_walkers(sim, sim.rngs['pedestrians'])
    sim.hazard.setdefault('trigger_time', None)
    sim.hazard.setdefault('onset_time', None)
