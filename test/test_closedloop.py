"""Closed-loop evaluation without ROS: config, path-tracking controller, route metrics, the
expert vs constant velocity on hazard routes, determinism, the report and resuming."""
import json
import math

import numpy as np
import pytest

from rsd_drive.closedloop.config import ClosedLoopConfig, ControllerConfig, ScoringConfig
from rsd_drive.closedloop.controller import Plan, PurePursuit, kinematic_step
from rsd_drive.closedloop.scoring import (RouteTrace, aggregate, infraction_penalty,
                                          on_road_progress, score_route, unique_collisions)

pytestmark = pytest.mark.timeout(600)
SHORT = dict(duration_s=10.0)   # short routes: hazards are timed on the duration


def scenario(**kw):
    from rsd_drive.scenario.config import ScenarioConfig

    return ScenarioConfig(**{**SHORT, **kw})


def test_config_defaults_mirror_the_yaml():
    assert ClosedLoopConfig.from_yaml() == ClosedLoopConfig()


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match='unknown keys'):
        ClosedLoopConfig.from_dict({'plan_hz': 2.0, 'bogus': 1})
    with pytest.raises(ValueError, match='plan_hz'):
        ClosedLoopConfig(plan_hz=0.0)
    with pytest.raises(ValueError, match='penalty_vehicle'):
        ScoringConfig(penalty_vehicle=1.5)


# -- controller -----------------------------------------------------------------------------------
def circle_plan(t, pose, speed, radius):
    """A left circle through the pose at constant speed, 20 waypoints at 4 Hz."""
    arc = speed * np.arange(1, 21) / 4.0 / radius
    return Plan(t, pose, np.stack([radius * np.sin(arc), radius * (1 - np.cos(arc))], -1), 4.0)


def test_pure_pursuit_tracks_a_circle_and_the_plan_speed():
    dt, radius = 0.1, 30.0
    ctrl = PurePursuit(ControllerConfig(), dt)
    state, errors = (0.0, 0.0, 0.0, 5.0), []
    for step in range(300):
        if step % 5 == 0:
            ctrl.set_plan(circle_plan(step * dt, state[:3], 8.0, radius))
        accel, kappa = ctrl.control(state, step * dt)
        assert -ctrl.cfg.decel_max <= accel <= ctrl.cfg.accel_max
        assert abs(kappa) <= ctrl.cfg.curvature_max
        state = kinematic_step(state, accel, kappa, dt)
        errors.append(abs(math.hypot(state[0], state[1] - radius) - radius))
    assert abs(state[3] - 8.0) < 0.2
    assert max(errors[50:]) < 0.6


def test_pure_pursuit_stops_where_the_plan_stops():
    dt, x_stop = 0.1, 20.0
    ctrl = PurePursuit(ControllerConfig(), dt)
    state = (0.0, 0.0, 0.0, 8.0)
    for step in range(200):
        if step % 5 == 0:
            gap, v = max(x_stop - state[0], 0.0), state[3]
            k = np.arange(1, 21) / 4.0
            if gap < 1e-3 or v < 1e-3:
                x = np.zeros(20)
            else:
                dec = v * v / (2 * gap)
                tk = np.minimum(k, v / dec)
                x = v * tk - 0.5 * dec * tk ** 2
            ctrl.set_plan(Plan(step * dt, state[:3], np.stack([x, np.zeros(20)], -1), 4.0))
        state = kinematic_step(state, *ctrl.control(state, step * dt), dt)
        assert state[0] < x_stop + 0.5
    assert state[3] == 0.0 and state[0] > x_stop - 2.0


def test_controller_limits_jerk_and_curvature_rate():
    cfg = ControllerConfig()
    ctrl = PurePursuit(cfg, 0.1)
    ctrl.set_plan(Plan(0.0, (0.0, 0.0, 0.0), np.zeros((20, 2)), 4.0))  # stop now
    accel, _ = ctrl.control((0.0, 0.0, 0.0, 10.0), 0.0)
    assert accel == pytest.approx(-cfg.jerk_max * 0.1)
    ctrl = PurePursuit(cfg, 0.1)
    ctrl.set_plan(circle_plan(0.0, (0.0, 0.0, 0.0), 5.0, 12.0))
    _, kappa = ctrl.control((0.0, 0.0, 0.0, 5.0), 0.0)
    assert 0 < kappa <= cfg.curvature_rate_max * 0.1 + 1e-12


# -- metrics --------------------------------------------------------------------------------------
def straight_trace(n=50, speed=5.0, dt=0.1, off=()):
    trace = RouteTrace()
    for i in range(n):
        trace.add(i * dt, (speed * i * dt, 0.0, 0.0, speed), 0.0, speed * i * dt, i in off,
                  None if i < 10 else 3.0 - 0.01 * i)
    return trace


def test_penalties_driving_score_and_success():
    scoring = ScoringConfig()
    cols = [{'id': 1, 'class': 'pedestrian', 'time_s': 1.0, 'speed': 4.0},
            {'id': 2, 'class': 'vehicle', 'time_s': 2.0, 'speed': 3.0},
            {'id': 1, 'class': 'pedestrian', 'time_s': 2.5, 'speed': 1.0}]  # same agent again
    assert len(unique_collisions(cols)) == 2
    assert infraction_penalty(unique_collisions(cols), 0, scoring) == pytest.approx(0.5 * 0.6)
    assert infraction_penalty([{'class': 'static'}], 0, scoring) == pytest.approx(0.65)
    trace = straight_trace()                      # 24.5 m driven
    r = score_route(trace, cols, 49.0, scoring)
    assert r['route_completion'] == pytest.approx(0.5)
    assert r['driving_score'] == pytest.approx(0.5 * 0.3)
    assert not r['success'] and not r['completed']
    assert [c['class'] for c in r['collisions']] == ['pedestrian', 'vehicle']
    clean = score_route(trace, [], 24.5, scoring)
    assert clean['success'] and clean['driving_score'] == 1.0
    assert clean['min_ttc_s'] == pytest.approx(3.0 - 0.49)
    assert score_route(trace, cols[:1], 24.5, scoring)['success'] is False
    failed = score_route(trace, [], 24.5, scoring, failure='planner_node exited')
    assert failed['driving_score'] == 0.0 and not failed['success']


def test_off_road_distance_does_not_count_and_fails_success():
    scoring = ScoringConfig()
    trace = straight_trace(off=range(20, 30))
    assert on_road_progress(trace.progress, trace.off_road) == pytest.approx(24.5 - 5.0)
    r = score_route(trace, [], 24.5, scoring)
    assert r['infractions']['off_road'] == 1 and not r['success']
    assert r['route_completion'] == pytest.approx((24.5 - 5.0) / 24.5, abs=1e-4)


def test_comfort_flags_hard_braking():
    trace = RouteTrace()
    for i in range(30):
        v = 10.0 if i < 15 else max(10.0 - 8.0 * (i - 14) * 0.1, 0.0)
        trace.add(i * 0.1, (i, 0.0, 0.0, v), 0.0, i, False, None)
    r = score_route(trace, [], 100.0, ScoringConfig())
    assert not r['comfortable'] and r['comfort'] < 1.0
    assert r['comfort_peaks']['lon_accel_min'] == pytest.approx(-8.0)


def test_aggregate_rates():
    routes = [{'driving_score': 1.0, 'success': True, 'collisions': [], 'route_completion': 1.0,
               'min_ttc_s': 2.0, 'comfort': 1.0},
              {'driving_score': 0.3, 'success': False, 'collisions': [{'class': 'vehicle'}],
               'route_completion': 0.5, 'min_ttc_s': None, 'comfort': 0.5, 'failure': None}]
    agg = aggregate(routes)
    assert agg['driving_score'] == pytest.approx(0.65)
    assert agg['success_rate'] == 0.5 and agg['collision_rate'] == 0.5
    assert agg['min_ttc_s'] == 2.0 and agg['failed'] == 0


# -- closed loop on the scenario world ------------------------------------------------------------
def route(policy_name, family, seed, **kw):
    from rsd_drive.closedloop.loop import run_route
    from rsd_drive.closedloop.policies import make_policy

    cfg = ClosedLoopConfig()
    return run_route(make_policy(policy_name), family, seed, cfg, scenario(), keep_frames=False,
                     **kw)[0]


@pytest.mark.parametrize('family', ['lead_brake', 'stopped_vehicle', 'ped_crossing',
                                    'ped_occluded'])
def test_expert_drives_hazards_without_collision_constant_velocity_collides(family):
    for seed in (0, 1):
        expert = route('expert', family, seed)
        cv = route('constant-velocity', family, seed)
        assert expert['collisions'] == [] and expert['success'], expert
        assert expert['driving_score'] >= 0.95
        assert cv['collisions'], cv
        assert cv['driving_score'] < expert['driving_score']
        # The hazard is what it hits: the expert slows for it, constant velocity does not.
        hazard = 'pedestrian' if family.startswith('ped_') else 'vehicle'
        assert cv['collisions'][0]['class'] == hazard and cv['collisions'][0]['speed'] > 2.0


def test_expert_succeeds_on_every_family():
    from rsd_drive.scenario.config import FAMILIES

    for family in FAMILIES:
        r = route('expert', family, 2)
        assert r['success'] and r['driving_score'] >= 0.95, (family, r)


def test_same_seed_same_metrics():
    a = route('constant-velocity', 'ped_occluded', 3)
    b = route('constant-velocity', 'ped_occluded', 3)
    a.pop('wall_s'), b.pop('wall_s')
    assert a == b
    c = route('constant-velocity', 'ped_occluded', 4)
    assert c['progress_m'] != a['progress_m'] or c['collisions'] != a['collisions']


def test_run_closed_loop_writes_report_and_resumes(tmp_path):
    from rsd_drive.closedloop import format_arms_table, format_summary_table, run_closed_loop
    from rsd_drive.closedloop.run import route_paths

    cfg = ClosedLoopConfig()
    for policy in ('expert', 'constant-velocity'):
        summary = run_closed_loop(policy, ['lead_brake'], '0-1', tmp_path, cfg=cfg,
                                  scenario_cfg=scenario(), progress=False)
    report = json.loads((tmp_path / 'report.json').read_text())
    assert len(report['routes']) == 4
    for r in report['routes']:
        for key in ('family', 'seed', 'policy', 'route_completion', 'driving_score', 'success',
                    'collisions', 'min_ttc_s'):
            assert key in r
        assert route_paths(tmp_path, r['policy'], r['family'], r['seed'])['png'].is_file()
    assert summary['expert']['all']['collision_rate'] == 0.0
    assert summary['constant-velocity']['lead_brake']['collision_rate'] > 0
    assert sorted((tmp_path / 'rollouts').glob('*.gif'))
    md = (tmp_path / 'report.md').read_text()
    assert '| expert | 2 |' in md and 'rollouts/' in md
    assert '| constant-velocity |' in format_summary_table(summary)
    arms = format_arms_table(summary, {'baselines': ['expert', 'constant-velocity']})
    ds = [summary[p]['all']['driving_score'] for p in ('expert', 'constant-velocity')]
    assert f'| baselines | 2 | {np.mean(ds):.2f} ± {np.std(ds, ddof=1):.2f} |' in arms
    # A rerun skips finished routes: their records are not rewritten, nor are GIFs whose
    # route did not change; a rerun route's GIF is.
    record = route_paths(tmp_path, 'expert', 'lead_brake', 0)['json']
    before = record.stat().st_mtime_ns
    gifs = {g: g.stat().st_mtime_ns for g in (tmp_path / 'rollouts').glob('*.gif')}
    run_closed_loop('expert', ['lead_brake'], '0-1', tmp_path, cfg=cfg, scenario_cfg=scenario(),
                    progress=False)
    assert record.stat().st_mtime_ns == before
    assert {g: g.stat().st_mtime_ns for g in gifs} == gifs
    sources = json.loads((tmp_path / 'rollouts' / 'sources.json').read_text())
    assert set(sources) == {g.name for g in gifs}
    for seed in (0, 1):  # the expert's routes are rerun: its GIFs are rewritten, no other
        for key in ('json', 'frames'):
            route_paths(tmp_path, 'expert', 'lead_brake', seed)[key].unlink()
    run_closed_loop('expert', ['lead_brake'], '0-1', tmp_path, cfg=cfg, scenario_cfg=scenario(),
                    progress=False)
    for gif, mtime in gifs.items():
        assert (gif.stat().st_mtime_ns != mtime) == gif.name.startswith('expert-'), gif.name


def test_cli_closedloop(tmp_path, capsys):
    from rsd_drive.cli import main

    cfg = tmp_path / 'scenario.yaml'
    scenario().to_yaml(cfg)
    assert main(['closedloop', 'expert', '--family', 'cruise', '--seeds', '0', '--out',
                 str(tmp_path / 'out'), '--scenario-config', str(cfg)]) == 0
    assert '| expert | 1 |' in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match='not a policy'):
        main(['closedloop', str(tmp_path), '--family', 'cruise', '--seeds', '0', '--out',
              str(tmp_path / 'out2'), '--scenario-config', str(cfg)])
    with pytest.raises(ValueError, match='needs a model policy'):
        main(['closedloop', 'expert', '--ros', '--family', 'cruise', '--seeds', '0', '--out',
              str(tmp_path / 'out3'), '--scenario-config', str(cfg)])
