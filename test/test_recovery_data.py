"""Recovery data (issue 22): noise injected on the recorded ego, as in conditional imitation
learning. The perturbation moves the ego off the lane while the expert keeps correcting; the
labeler keeps a frame only when its whole target window is free of noise, so every training
target is the expert's own correction. Checked against the noise schedule recomputed from the
config (not read back from the bag), and the route the bag records is the lane centre line."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers_bags import read_topic
from rsd_drive.cli import main as cli_main
from rsd_drive.data.index import FrameIndex, read_manifest
from rsd_drive.scenario.config import NoiseConfig, ScenarioConfig
from rsd_drive.scenario.record import drive_start_ns, generate_drive
from rsd_drive.scenario.world import World

REPO = Path(__file__).resolve().parents[1]
SEED, DURATION_S, HORIZON_NS = 5, 24.0, 5 * 10**9


def noisy_config() -> ScenarioConfig:
    base = ScenarioConfig.from_yaml(REPO / 'config' / 'scenario.yaml')
    front = [c for c in base.cameras if c.name == 'front']
    noise = dataclasses.replace(base.noise, enabled=True, gap_s=(7.0, 9.0))
    return dataclasses.replace(base, cameras=front, duration_s=DURATION_S, image_hz=4.0,
                               image_width=96, image_height=64, noise=noise)


def test_noise_schedule_is_its_own_random_stream():
    cfg = noisy_config()
    off = dataclasses.replace(cfg, noise=NoiseConfig())
    bursts = cfg.noise.bursts(SEED, 20.0)
    assert bursts and off.noise.bursts(SEED, 20.0) == []
    assert all(1.0 <= b - a <= 2.0 for a, b, _, _ in bursts)
    # the world draws (road, agents, hazard) are the same with and without noise
    w_on, w_off = World(SEED, cfg, 'cruise'), World(SEED, off, 'cruise')
    assert w_on.hazard == w_off.hazard and w_on.agent_classes == w_off.agent_classes
    first = bursts[0][0]
    before = w_on.sim_t < first
    np.testing.assert_array_equal(w_on._ego[before], w_off._ego[before])
    assert np.abs(w_on._ego[:, 1] - w_off._ego[:, 1]).max() > 0.1  # the noise moves the ego


@pytest.fixture(scope='module')
def labelled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('recovery')
    cfg = noisy_config()
    summary = generate_drive(tmp / 'drive', SEED, cfg, progress=False, family='cruise')
    data = yaml.safe_load((REPO / 'config' / 'dataset.yaml').read_text())
    data['dataset']['cameras'] = [c for c in data['dataset']['cameras'] if c['name'] == 'front']
    (tmp / 'dataset.yaml').write_text(yaml.safe_dump(data))
    code = cli_main(['label', str(summary.path), '--out', str(tmp / 'out'), '--image-size',
                     '32x48', '--dataset-config', str(tmp / 'dataset.yaml'), '--no-progress',
                     '--workers', '1'])
    assert code == 0
    return cfg, summary, tmp / 'out' / 'index'


def test_no_training_target_carries_injected_noise(labelled):
    cfg, summary, index_dir = labelled
    start = drive_start_ns(SEED)
    intervals = [(start + int(a * 1e9), start + int(b * 1e9))
                 for a, b, _, _ in cfg.noise.bursts(SEED, DURATION_S + 10.0)]
    index = FrameIndex(index_dir)
    stamps = [int(index[i]['stamps']) for i in range(len(index))]
    assert stamps, 'no frame survived'
    for t0 in stamps:
        for a, b in intervals:
            assert not (a <= t0 + HORIZON_NS and b >= t0), \
                f'frame {t0} has noise [{a}, {b}] in its target window'
    skipped = sum(s['skipped'].get('targets:injected_noise', 0)
                  for s in read_manifest(index_dir)['shards'].values())
    assert skipped > 0
    # recovery frames: the noise lies in their past, their targets are the correction
    recovering = [t0 for t0 in stamps if any(t0 - 4 * 10**9 <= b < t0 for _, b in intervals)]
    assert recovering, 'no frame right after a burst (the recovery the noise is for)'


def test_the_bag_records_the_route_and_the_index_its_route_input(labelled):
    cfg, summary, index_dir = labelled
    routes = read_topic(summary.path, '/route')
    assert len(routes) == 1
    route = routes[0][1]
    assert route.header.frame_id == 'odom' and len(route.poses) > 10
    world = World(SEED, cfg, 'cruise')
    xy = np.array([(p.pose.position.x, p.pose.position.y) for p in route.poses])
    np.testing.assert_allclose(xy, world.route_xy, atol=1e-9)
    index = FrameIndex(index_dir)
    frame = index[0]
    assert frame['route'].shape == (16, 2) and float(frame['route_valid']) == 1.0
    # base_link route: the first point is the ego's projection on the lane (within the noise),
    # the points are 4 m apart along it
    assert abs(frame['route'][0, 0]) < 1.0 and abs(frame['route'][0, 1]) < 1.0
    steps = np.linalg.norm(np.diff(frame['route'], axis=0), axis=1)
    assert np.all(steps < 4.0 + 1e-3) and np.all(steps > 3.5)
    assert read_manifest(index_dir)['route'] == {'points': 16, 'spacing_m': 4.0}


def test_replay_latches_the_recorded_route_as_ros2_bag_play_does(labelled):
    """/route is recorded transient local: the replay offers it latched, so a node that starts
    (or subscribes) after the route's one message still gets it; /odom stays volatile."""
    from rosbags.rosbag2 import Reader

    from rsd_drive.ros.replay import _recorded_latched

    _, summary, _ = labelled
    with Reader(summary.path) as reader:
        latched = {c.topic: _recorded_latched(c) for c in reader.connections}
    assert latched['/route'] and latched['/tf_static'] and not latched['/odom']
