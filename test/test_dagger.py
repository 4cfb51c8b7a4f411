"""DAgger with the privileged expert (issue 22, 2b): a tiny route checkpoint drives the scenario
world beta-mixed with the expert; the bag's /expert/future of each frame is the expert's rollout
from the visited state. Checked against an independent rollout: a fresh Simulation replayed with
the controls the driver executed, then stepped with the expert; beta = 1 is the expert's own
drive; the labeler trains on the rollout, with past states from the visited odometry."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers_bags import read_topic
from node_helpers import make_checkpoint, tiny_config
from rsd_drive.cli import main as cli_main
from rsd_drive.closedloop.config import ClosedLoopConfig
from rsd_drive.closedloop.dagger import dagger_drive, drive_path
from rsd_drive.closedloop.policies import ModelPolicy
from rsd_drive.data.convert import odometry_to_state, path_to_xy, stamp_to_ns
from rsd_drive.data.index import FrameIndex
from rsd_drive.data.sync import OdometryHistory
from rsd_drive.scenario.config import ScenarioConfig
from rsd_drive.scenario.record import drive_start_ns, generate_drive
from rsd_drive.scenario.sim import Simulation

REPO = Path(__file__).resolve().parents[1]
SEED, FAMILY, BETA = 3, 'lead_brake', 0.5
DURATION_S, IMAGE_HZ = 8.0, 2.0
STEPS, HZ = 20, 4.0


def scenario_config() -> ScenarioConfig:
    base = ScenarioConfig.from_yaml(REPO / 'config' / 'scenario.yaml')
    front = [c for c in base.cameras if c.name == 'front']
    return dataclasses.replace(base, cameras=front, duration_s=DURATION_S, image_hz=IMAGE_HZ,
                               image_width=96, image_height=64)


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    cfg = dataclasses.replace(tiny_config(num_cameras=1), route_points=16)
    return make_checkpoint(tmp_path_factory.mktemp('dagger_model') / 'route', seed=1,
                           config=cfg)


@pytest.fixture(scope='module')
def mixed(tmp_path_factory, model):
    """A beta = 0.5 DAgger drive: (bag path, driver, scenario config)."""
    cfg = scenario_config()
    policy = ModelPolicy(model, backend='torch')
    try:
        out = tmp_path_factory.mktemp('dagger') / 'drive_0003'
        summary, driver = dagger_drive(policy, FAMILY, SEED, out, BETA, ClosedLoopConfig(), cfg,
                                       progress=False)
    finally:
        policy.close()
    return summary.path, driver, cfg


def expert_futures(bag) -> dict:
    """{stamp_ns: [20, 2]} of /expert/future; checks the frame and the pose timing."""
    out = {}
    for _, msg in read_topic(bag, '/expert/future'):
        frame, xy = path_to_xy(msg)
        t0 = stamp_to_ns(msg.header.stamp)
        assert frame == 'base_link' and xy.shape == (STEPS, 2)
        offsets = [stamp_to_ns(p.header.stamp) - t0 for p in msg.poses]
        assert offsets == [round((k + 1) * 1e9 / HZ) for k in range(STEPS)]
        out[t0] = xy
    return out


def odometry(bag) -> dict:
    return {t: odometry_to_state(msg) for t, msg in read_topic(bag, '/odom')}


def odom_values(msg) -> tuple:
    p, q, tw = msg.pose.pose.position, msg.pose.pose.orientation, msg.twist.twist
    return (p.x, p.y, p.z, q.x, q.y, q.z, q.w, tw.linear.x, tw.linear.y, tw.angular.z)


def frame_stamps(cfg) -> list:
    start = drive_start_ns(SEED)
    return [start + round(k * 1e9 / cfg.image_hz) for k in range(cfg.n_frames)]


def independent_rollout(sim: Simulation) -> np.ndarray:
    """The expert's next 5 s from ``sim`` (stepped in place), at 4 Hz in base_link now."""
    x0, y0, yaw0 = sim.ego.x, sim.ego.y, sim.ego.yaw
    per_wp = 1.0 / HZ / sim.dt  # world steps per waypoint (12.5 at dt 0.02)
    pos = [(x0, y0)]
    for _ in range(int(np.ceil(STEPS * per_wp))):
        sim.step(None)
        pos.append((sim.ego.x, sim.ego.y))
    pos = np.array(pos)
    out = []
    for k in range(1, STEPS + 1):
        u = k * per_wp
        i = int(np.floor(u + 1e-9))
        w = u - i
        p = pos[i] if w < 1e-9 else (1 - w) * pos[i] + w * pos[i + 1]
        dx, dy = p[0] - x0, p[1] - y0
        out.append((np.cos(yaw0) * dx + np.sin(yaw0) * dy,
                    -np.sin(yaw0) * dx + np.cos(yaw0) * dy))
    return np.array(out)


def test_mixed_drive_has_model_and_expert_periods(mixed):
    bag, driver, cfg = mixed
    assert 0 < driver.expert_periods < driver.periods
    assert driver.runner.plans == driver.periods - driver.expert_periods
    info = driver.info()
    assert info['kind'] == 'dagger' and info['beta'] == BETA
    futures = expert_futures(bag)
    assert sorted(futures) == frame_stamps(cfg)
    assert read_topic(bag, '/scenario/noise')[0][1].data == '{"intervals_ns":[]}'


def test_targets_equal_an_independent_expert_rollout(mixed):
    bag, driver, cfg = mixed
    futures, odom = expert_futures(bag), odometry(bag)
    stamps = frame_stamps(cfg)
    dt = cfg.expert.dt
    per_frame = int(round(1.0 / (cfg.image_hz * dt)))
    worst = 0.0
    for k in (0, len(stamps) // 2, len(stamps) - 1):
        sim = Simulation(SEED, cfg, FAMILY)
        for control in driver.controls[:k * per_frame]:
            sim.step(control)
        logged = odom[stamps[k]]
        assert abs(sim.ego.x - logged.x) < 1e-9 and abs(sim.ego.y - logged.y) < 1e-9
        assert abs(np.sin(sim.ego.yaw - logged.yaw)) < 1e-9
        rollout = independent_rollout(sim)
        err = float(np.abs(rollout - futures[stamps[k]]).max())
        worst = max(worst, err)
    assert worst < 1e-6, worst
    # the visited drive is not the expert's: where the model drove, the target differs from the
    # logged future
    hist = OdometryHistory()
    for st in odom.values():
        hist.add(st)
    covered = [t for t in stamps if t + 5 * 10**9 <= max(odom)]
    gaps = [np.abs(hist.future_waypoints(t, STEPS, HZ) - futures[t]).max() for t in covered]
    assert max(gaps) > 0.1, gaps


def test_beta_one_is_the_expert_drive_through_the_cli(tmp_path, model, capsys):
    cfg = scenario_config()
    cfg.to_yaml(tmp_path / 'scenario.yaml')
    args = ['dagger', str(model), '--family', FAMILY, '--seeds', f'{SEED}-{SEED}', '--out',
            str(tmp_path / 'out'), '--beta', '1', '--backend', 'torch', '--scenario-config',
            str(tmp_path / 'scenario.yaml'), '--no-progress']
    assert cli_main(args) == 0
    bag = drive_path(tmp_path / 'out', FAMILY, SEED)
    assert bag.name == 'drive_0003' and bag.is_dir()
    expert = generate_drive(tmp_path / 'expert', SEED, cfg, progress=False, family=FAMILY)
    ours, theirs = read_topic(bag, '/odom'), read_topic(expert.path, '/odom')
    assert [t for t, _ in ours] == [t for t, _ in theirs]
    for (_, a), (_, b) in zip(ours, theirs):
        assert odom_values(a) == odom_values(b)
    # and the rollout from every state of the expert's drive is that drive's logged future
    hist = OdometryHistory()
    for st in odometry(expert.path).values():
        hist.add(st)
    futures = expert_futures(bag)
    end = max(odometry(expert.path))
    covered = [t for t in futures if t + 5 * 10**9 <= end]
    assert covered
    for t in covered:
        np.testing.assert_allclose(futures[t], hist.future_waypoints(t, STEPS, HZ), atol=1e-4)
    # resumable: a second run keeps the bag
    mtime = bag.stat().st_mtime_ns
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    assert bag.stat().st_mtime_ns == mtime and 'already in' in captured.out + captured.err


def test_the_labeler_trains_on_the_expert_rollout(mixed, tmp_path):
    bag, driver, cfg = mixed
    data = yaml.safe_load((REPO / 'config' / 'dataset.yaml').read_text())
    assert data['dataset']['target_topic'] == '/expert/future'
    data['dataset']['cameras'] = [c for c in data['dataset']['cameras'] if c['name'] == 'front']
    (tmp_path / 'dataset.yaml').write_text(yaml.safe_dump(data))
    code = cli_main(['label', str(bag), '--out', str(tmp_path / 'out'), '--image-size', '32x48',
                     '--dataset-config', str(tmp_path / 'dataset.yaml'), '--no-progress',
                     '--workers', '1'])
    assert code == 0
    index = FrameIndex(tmp_path / 'out' / 'index')
    futures = expert_futures(bag)
    hist = OdometryHistory()
    for st in odometry(bag).values():
        hist.add(st)
    stamps = [int(index[i]['stamps']) for i in range(len(index))]
    # every frame with 4 s of past is labelled, the last ones too: the target needs no logged
    # future (a normal drive of 8 s would label none)
    assert stamps == [t for t in frame_stamps(cfg) if t - 3.75e9 >= drive_start_ns(SEED)]
    for i, t in enumerate(stamps):
        frame = index[i]
        np.testing.assert_allclose(frame['future'], futures[t], atol=1e-5)
        np.testing.assert_allclose(frame['past_states'], hist.past_states(t, 16, HZ), atol=1e-5)
