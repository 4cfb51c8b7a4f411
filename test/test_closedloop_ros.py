"""Closed loop through ROS 2: the world node publishes cameras, CameraInfo, /odom, /clock and the
intent; the real planner_node (own process, params file) plans; lockstep in sim time. The metrics
must equal the in-process loop's with the same tiny model; a killed or hung planner fails its
route with the reason and the run goes on."""
import os
import signal

import pytest

from node_helpers import make_checkpoint
from rsd_drive.closedloop.config import ClosedLoopConfig

pytestmark = pytest.mark.timeout(600)
COMPARED = ('route_completion', 'driving_score', 'success', 'collisions', 'min_ttc_s',
            'progress_m', 'steps', 'plans', 'comfort', 'termination', 'plan_digest')


def scenario():
    from rsd_drive.scenario.config import ScenarioConfig

    return ScenarioConfig(duration_s=6.0)


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    """A tiny 3-camera RiskPlanner (front, front_left, front_right: the rig's first three)."""
    return make_checkpoint(tmp_path_factory.mktemp('closedloop_model') / 'tiny', seed=3)


def config(**ros) -> ClosedLoopConfig:
    cfg = ClosedLoopConfig()
    cfg.ros.plan_deadline_s = 60.0   # pace to the node: a loaded machine is slow, not late
    cfg.ros.intent_ack_timeout_s = 60.0
    for key, value in ros.items():
        setattr(cfg.ros, key, value)
    return cfg


@pytest.mark.parametrize('compressed', [False, True], ids=['Image', 'CompressedImage'])
def test_ros_loop_agrees_with_in_process(tiny_model, tmp_path, compressed):
    from rsd_drive.closedloop import run_closed_loop
    from rsd_drive.closedloop.run import load_routes

    cfg = config(compressed=compressed)
    family, seed = ('lead_brake', '0') if not compressed else ('ped_occluded', '2')
    run_closed_loop(str(tiny_model), [family], seed, tmp_path, ros=True, cfg=cfg,
                    scenario_cfg=scenario(), progress=False)
    run_closed_loop(str(tiny_model), [family], seed, tmp_path, cfg=cfg,
                    scenario_cfg=scenario(), progress=False)
    routes = {r['policy']: r for r in load_routes(tmp_path)}
    ros, local = routes['tiny@ros'], routes['tiny']
    assert ros['failure'] is None and ros['plans'] > 3
    assert ros['late_plans'] == 0 and ros['odom_lost'] == 0
    assert ros['odom_published'] > ros['plans']
    for key in COMPARED:
        assert ros[key] == local[key], key
    assert ros['collisions'], 'a route where the tiny model collides: a stronger comparison'
    assert (tmp_path / 'planner_closedloop.yaml').is_file()
    assert 'active:' in (tmp_path / 'planner_node.log').read_text()


def test_killed_planner_fails_the_route_and_the_run_goes_on(tiny_model, tmp_path):
    from rsd_drive.closedloop import run_closed_loop
    from rsd_drive.closedloop.run import load_routes

    killed = []

    def kill_planner(runner, step):
        if runner.seed == 0 and runner.plans == 2 and not killed:
            pid = runner.policy.process.pid
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    run_closed_loop(str(tiny_model), ['lead_brake'], '0-1', tmp_path, ros=True, cfg=config(),
                    scenario_cfg=scenario(), progress=False, on_frame=kill_planner)
    assert killed
    first, second = sorted(load_routes(tmp_path), key=lambda r: r['seed'])
    assert 'planner_node exited with code -9' in first['failure']
    assert first['termination'] == 'planner_failed'
    assert first['driving_score'] == 0.0 and not first['success']
    assert second['failure'] is None and second['plans'] > 3
    assert second['planner_pid'] != killed[0] and second['planner_start_s'] > 0


def test_hung_planner_fails_the_route(tiny_model, tmp_path):
    from rsd_drive.closedloop import run_closed_loop
    from rsd_drive.closedloop.run import load_routes

    stopped = []

    def freeze_planner(runner, step):
        if runner.plans == 2 and not stopped:
            os.kill(runner.policy.process.pid, signal.SIGSTOP)
            stopped.append(runner.policy.process.pid)

    # Deadlines short enough to detect the hang soon, long enough that a plan on a loaded 2-core
    # machine is never late before the freeze (late_plans is asserted exactly).
    cfg = config(plan_deadline_s=10.0, max_missing_plans=2, intent_ack_timeout_s=10.0)
    run_closed_loop(str(tiny_model), ['cruise'], '0', tmp_path, ros=True, cfg=cfg,
                    scenario_cfg=scenario(), progress=False, on_frame=freeze_planner)
    (route,) = load_routes(tmp_path)
    assert stopped and 'hangs' in route['failure']
    assert route['late_plans'] == 2 and route['plans'] == 2


def test_ros_loop_with_the_route_input_agrees_with_in_process(tmp_path_factory, tmp_path):
    """A model with the route input: the world publishes each route's navigation route on
    /route and waits until planner_node counts it; over two routes the node plans exactly what
    the in-process loop plans. Intent-only mode (closedloop.route false) of the same checkpoint
    plans differently."""
    from dataclasses import replace

    from node_helpers import tiny_config
    from rsd_drive.closedloop import run_closed_loop
    from rsd_drive.closedloop.run import load_routes

    model = make_checkpoint(tmp_path_factory.mktemp('route_model') / 'route',
                            seed=4, config=replace(tiny_config(), route_points=16))
    cfg = config()
    run_closed_loop(str(model), ['cruise'], '0-1', tmp_path / 'route', ros=True, cfg=cfg,
                    scenario_cfg=scenario(), progress=False)
    run_closed_loop(str(model), ['cruise'], '0-1', tmp_path / 'route', cfg=cfg,
                    scenario_cfg=scenario(), progress=False)
    intent_only = replace(config(), route=False)
    run_closed_loop(str(model), ['cruise'], '0-1', tmp_path / 'intent', cfg=intent_only,
                    scenario_cfg=scenario(), progress=False)
    routes = load_routes(tmp_path / 'route')
    for seed in (0, 1):
        ros = next(r for r in routes if r['policy'] == 'route@ros' and r['seed'] == seed)
        local = next(r for r in routes if r['policy'] == 'route' and r['seed'] == seed)
        assert ros['failure'] is None and ros['late_plans'] == 0 and ros['odom_lost'] == 0
        assert ros.get('route_ack_timeouts') == 0
        for key in COMPARED:
            assert ros[key] == local[key], (seed, key)
    digests = {r['seed']: r['plan_digest'] for r in load_routes(tmp_path / 'intent')}
    assert all(digests[r['seed']] != r['plan_digest'] for r in routes if r['policy'] == 'route')
