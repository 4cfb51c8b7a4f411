"""Synthetic drives: determinism, bag contents, rendering geometry, atomic writes, CLI."""
import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from rosbags.interfaces import QosDurability
from rosbags.rosbag2 import Reader

from rsd_drive import INTENTS
from rsd_drive.cli import main as cli_main
from rsd_drive.geometry import make_transform, project_points, quaternion_to_matrix, yaw_matrix
from rsd_drive.scenario import (Boxes, Camera, ScenarioConfig, World, WorldState, generate_drive,
                                generate_drives, render_camera, save_contact_sheet)
from rsd_drive.scenario import read_drive_info, record
from rsd_drive.scenario.preview import decode_image
from rsd_drive.scenario.record import TYPESTORE
from rsd_drive.scenario.render import clip_polygon_near

REPO = Path(__file__).resolve().parents[1]
SHORT = 3.0


def short_config(**kw) -> ScenarioConfig:
    return dataclasses.replace(ScenarioConfig.from_yaml(REPO / 'config' / 'scenario.yaml'),
                               duration_s=kw.pop('duration_s', SHORT), **kw)


def read_bag(path) -> dict:
    """{topic: [(bag stamp, msgtype, message)]} of a whole bag, plus the connections."""
    out = defaultdict(list)
    with Reader(path) as reader:
        for conn, stamp, raw in reader.messages():
            out[conn.topic].append((stamp, conn.msgtype,
                                    TYPESTORE.deserialize_cdr(raw, conn.msgtype)))
        out['__connections__'] = list(reader.connections)
    return out


def stamp_ns(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def image_bytes(bag: dict) -> dict:
    return {topic: [bytes(m.data) for _, _, m in msgs] for topic, msgs in bag.items()
            if topic.startswith('/cameras/') and '/image_raw' in topic}


@pytest.fixture(scope='module')
def drive(tmp_path_factory):
    """One short raw drive (seed 7), read back completely."""
    cfg = short_config()
    summary = generate_drive(tmp_path_factory.mktemp('drive') / 'drive_0007', 7, cfg,
                             progress=False)
    return cfg, summary, read_bag(summary.path)


def test_config_file_matches_defaults_and_dataset_cameras():
    cfg = ScenarioConfig.from_yaml(REPO / 'config' / 'scenario.yaml')
    assert cfg == ScenarioConfig()
    dataset = yaml.safe_load((REPO / 'config' / 'dataset.yaml').read_text())['dataset']
    assert [c.name for c in cfg.cameras] == [c['name'] for c in dataset['cameras']]
    with pytest.raises(ValueError, match='unknown scenario config keys'):
        ScenarioConfig.from_dict({'duration': 3})


def test_same_seed_is_byte_identical_and_seeds_differ(tmp_path, drive):
    cfg, first, bag = drive
    again = generate_drive(tmp_path / 'again', 7, cfg, progress=False)
    other = generate_drives(tmp_path / 'other', 8, 1, cfg, progress=False)
    assert [p.name for p in other] == ['drive_0008']
    bag_again, bag_other = read_bag(again.path), read_bag(other[0])
    images, images_again, images_other = image_bytes(bag), image_bytes(bag_again), image_bytes(
        bag_other)
    assert len(images) == len(cfg.cameras)
    assert images == images_again
    assert [m.data for _, _, m in bag['/scenario/objects']] == [
        m.data for _, _, m in bag_again['/scenario/objects']]
    for topic in images:
        assert images[topic] != images_other[topic]
    assert bag_other['/odom'][0][0] != bag['/odom'][0][0]  # seeds start at different times


def test_bag_topics_counts_frames_and_stamps(drive):
    cfg, summary, bag = drive
    n_img, n_odom = int(SHORT * cfg.image_hz), int(SHORT * cfg.odom_hz)
    dataset = yaml.safe_load((REPO / 'config' / 'dataset.yaml').read_text())['dataset']
    expected = {'/tf_static': 1, '/tf': n_odom, '/odom': n_odom, '/scenario/objects': n_img,
                '/scenario/object_markers': n_img, '/scenario/intent': n_img,
                '/scenario/info': 1, '/route': 1, '/scenario/noise': 1}
    for cam in dataset['cameras']:
        expected[cam['image_topic']] = n_img
        expected[cam['info_topic']] = n_img
    counts = {t: len(v) for t, v in bag.items() if t != '__connections__'}
    assert counts == expected
    # Nothing precedes the static transforms and the first odometry.
    first = min(s for t, v in bag.items() if t != '__connections__' for s, _, _ in v)
    assert first == bag['/tf_static'][0][0] == bag['/odom'][0][0]
    assert summary.frames == n_img and sum(summary.intents.values()) == n_img

    # Bag time equals header time everywhere.
    for topic, msgs in bag.items():
        if topic in ('__connections__', '/scenario/objects', '/scenario/intent',
                     '/scenario/info', '/scenario/noise'):
            continue
        for stamp, _, msg in msgs:
            headers = ([t.header for t in msg.transforms] if hasattr(msg, 'transforms')
                       else [m.header for m in msg.markers] if hasattr(msg, 'markers')
                       else [msg.header])
            assert all(stamp_ns(h) == stamp for h in headers), topic
    for stamp, _, msg in bag['/scenario/objects']:
        assert json.loads(msg.data)['stamp_ns'] == stamp

    tf_static = next(c for c in bag['__connections__'] if c.topic == '/tf_static')
    assert tf_static.ext.offered_qos_profiles[0].durability == QosDurability.TRANSIENT_LOCAL
    transforms = {t.child_frame_id: t for t in bag['/tf_static'][0][2].transforms}
    front_stamps = [s for s, _, _ in bag['/cameras/front/image_raw']]
    for spec in cfg.cameras:
        cam = Camera(spec, cfg.image_width, cfg.image_height)
        images = bag[f'/cameras/{spec.name}/image_raw']
        infos = bag[f'/cameras/{spec.name}/camera_info']
        for (s_img, _, img), (s_info, _, info), s_front in zip(images, infos, front_stamps):
            assert img.header.frame_id == info.header.frame_id == f'{spec.name}_optical'
            assert (img.encoding, img.height, img.width) == ('rgb8', cfg.image_height,
                                                             cfg.image_width)
            assert s_img == s_info and 0 <= s_img - s_front <= cfg.camera_jitter_s * 1e9
        np.testing.assert_allclose(info.k.reshape(3, 3), cam.K)
        np.testing.assert_allclose(info.p.reshape(3, 4)[:, :3], cam.K)
        assert info.distortion_model == 'plumb_bob' and not np.any(info.d)
        fx = cfg.image_width / 2 / np.tan(np.radians(spec.fov_deg) / 2)
        assert info.k[0] == pytest.approx(fx)
        tf = transforms[f'{spec.name}_optical']
        assert tf.header.frame_id == 'base_link'
        q = tf.transform.rotation
        pose = make_transform(quaternion_to_matrix(q.x, q.y, q.z, q.w),
                              (tf.transform.translation.x, tf.transform.translation.y,
                               tf.transform.translation.z))
        np.testing.assert_allclose(pose, spec.cam_to_ego(), atol=1e-9)


def test_odometry_is_consistent_with_its_twist(drive):
    cfg, _, bag = drive
    odom = [m for _, _, m in bag['/odom']]
    assert {(m.header.frame_id, m.child_frame_id) for m in odom} == {('odom', 'base_link')}
    p = odom[0].pose.pose
    assert (p.position.x, p.position.y, p.orientation.z) == pytest.approx((0, 0, 0), abs=1e-9)
    xy = np.array([[m.pose.pose.position.x, m.pose.pose.position.y] for m in odom])
    yaw = np.array([2 * np.arctan2(m.pose.pose.orientation.z, m.pose.pose.orientation.w)
                    for m in odom])
    speed = np.array([m.twist.twist.linear.x for m in odom])
    yaw_rate = np.array([m.twist.twist.angular.z for m in odom])
    dt = 1.0 / cfg.odom_hz
    step = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    np.testing.assert_allclose(step, 0.5 * (speed[1:] + speed[:-1]) * dt, rtol=0.02, atol=1e-3)
    dyaw = np.angle(np.exp(1j * np.diff(yaw)))
    np.testing.assert_allclose(dyaw, 0.5 * (yaw_rate[1:] + yaw_rate[:-1]) * dt, atol=2e-4)
    # Moving along the heading, not sideways.
    heading = np.arctan2(np.diff(xy[:, 1]), np.diff(xy[:, 0]))
    np.testing.assert_allclose(np.angle(np.exp(1j * (heading - yaw[:-1]))), 0, atol=0.02)
    assert speed.min() > 0 and speed.max() <= cfg.speed_max + 1e-6


def test_objects_json_schema(drive):
    _, summary, bag = drive
    first = json.loads(bag['/scenario/objects'][0][2].data)
    assert first['frame'] == 'odom' and len(first['objects']) == summary.n_objects
    keys = {'id', 'class', 'x', 'y', 'z', 'yaw', 'length', 'width', 'height', 'vx', 'vy'}
    assert all(set(o) == keys for o in first['objects'])
    assert {o['class'] for o in first['objects']} == {'vehicle', 'pedestrian'}
    markers = bag['/scenario/object_markers'][0][2].markers
    assert len(markers) == summary.n_objects and markers[0].header.frame_id == 'odom'
    assert {m.data for _, _, m in bag['/scenario/intent']} <= set(INTENTS)
    # The route: the ego lane's centre line from the ego's position ahead, 2 m apart.
    odom = {s: m for s, _, m in bag['/odom']}
    for stamp, _, msg in bag['/scenario/objects'][::10]:
        route = np.array(json.loads(msg.data)['route'])
        pose = odom[stamp].pose.pose
        assert np.hypot(*(route[0] - [pose.position.x, pose.position.y])) < 0.05
        steps = np.linalg.norm(np.diff(route, axis=0), axis=1)
        assert len(route) == 41 and np.all(np.abs(steps - 2.0) < 0.2)  # 2 m of road arc
    info = json.loads(bag['/scenario/info'][0][2].data)
    assert read_drive_info(summary.path) == info
    assert info['family'] == summary.family and info['seed'] == 7
    assert info['requested_family'] == 'mixed' and info['collisions'] == []
    assert info['hazard']['family'] == summary.family


def pedestrian_at(ego, x, y):
    """A pedestrian object at (x, y) in base_link of an ego at pose ``ego`` (odom)."""
    world = make_transform(yaw_matrix(ego[2]), (ego[0], ego[1], 0.0)) @ np.array([x, y, 0, 1])
    return {'class': 'pedestrian', 'x': world[0], 'y': world[1], 'yaw': 0.3, 'length': 0.6,
            'width': 0.6, 'height': 1.7, 'colour': (255, 140, 0)}


def test_pedestrian_renders_where_geometry_projects_it():
    cfg = ScenarioConfig()
    cams = {s.name: Camera(s, cfg.image_width, cfg.image_height) for s in cfg.cameras}
    ego = (5.0, -3.0, 0.7)  # off the origin: the odom -> base_link -> camera chain is exercised
    empty = WorldState(t=0.0, ego=ego)
    scene = WorldState(t=0.0, ego=ego, objects=Boxes.from_objects(
        [pedestrian_at(ego, 10.0, 0.5), pedestrian_at(ego, 3.0, 6.0)]))
    cases = [('front', (10.0, 0.5)), ('front_left', (3.0, 6.0))]
    for name, (x, y) in cases:
        cam = cams[name]
        img, bare = render_camera(scene, cam), render_camera(empty, cam)
        uv, depth = project_points(np.array([[x, y, 0.85]]), cam.K, cam.cam_to_ego)
        u, v = np.round(uv[0]).astype(int)
        assert depth[0] > 0 and 0 <= u < cfg.image_width and 0 <= v < cfg.image_height
        r, g, b = img[v, u].astype(int)
        # Orange under any face shading: red dominant, blue nearly absent.
        assert r > g > b and r >= 100 and b <= 0.25 * r, (name, img[v, u])
        assert not np.array_equal(img[v, u], bare[v, u])
        # Only the pedestrian changed the image, and only near where it projects.
        changed = np.argwhere((img != bare).any(axis=2))
        assert np.abs(changed - [v, u]).max(axis=0).tolist() < [60, 30]
    # The pedestrian on the left is not seen by the right-hand cameras.
    for name in ('front_right', 'back_right'):
        assert np.array_equal(render_camera(scene, cams[name]), render_camera(empty, cams[name]))


def test_clip_polygon_near_plane():
    quad = np.array([[-1.0, 0.0, -2.0], [1.0, 0.0, -2.0], [1.0, 0.0, 4.0], [-1.0, 0.0, 4.0]])
    clipped = clip_polygon_near(quad, 0.1)
    assert clipped is not None and clipped[:, 2].min() == pytest.approx(0.1)
    assert len(clipped) == 4 and clipped[:, 2].max() == 4.0
    assert clip_polygon_near(quad - [0, 0, 5.0], 0.1) is None


def test_compressed_drive_decodes_to_the_rendered_image(tmp_path):
    cfg = short_config(duration_s=0.5, compressed=True)
    summary = generate_drive(tmp_path / 'jpeg', 11, cfg, progress=False)
    bag = read_bag(summary.path)
    world = World(11, cfg)
    start = bag['/odom'][0][0]
    for spec in cfg.cameras:
        msgs = bag[f'/cameras/{spec.name}/image_raw/compressed']
        assert len(msgs) == 5 and f'/cameras/{spec.name}/image_raw' not in bag
        stamp, msgtype, msg = msgs[-1]
        assert msgtype == 'sensor_msgs/msg/CompressedImage' and msg.format == 'jpeg'
        bgr = cv2.imdecode(np.asarray(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        assert bgr.shape == (cfg.image_height, cfg.image_width, 3)
        rendered = render_camera(world.state((stamp - start) * 1e-9),
                                 Camera(spec, cfg.image_width, cfg.image_height))
        rgb = decode_image(msg)
        assert np.abs(rgb.astype(int) - rendered).mean() < 4.0
        assert np.abs(bgr.astype(int) - rendered).mean() > 10.0  # channel order matters


def test_intents_vary_and_crossers_enter_the_ego_path():
    cfg = ScenarioConfig()
    times = np.arange(cfg.n_frames) / cfg.image_hz
    seen = set()
    for seed in range(4):
        world = World(seed, cfg, 'ped_crossing')
        intents = {world.intent(t) for t in times}
        assert intents & {'left', 'right'}, f'seed {seed} never turns'
        seen |= intents
        # The crossing pedestrian stands in the ego's lane 5-40 m ahead at some frame (in road
        # coordinates: the crossing may lie in a curve).
        ahead = False
        ped = world.hazard['agent_id']
        for t in times:
            x, y = world.state(t).objects.centre[ped, :2]
            s_ego = float(world.ego_s(t))
            s_ped, d_ped = world.road.locate(x, y, s_ego + 20.0, iterations=6)
            ahead |= bool(5 < s_ped - s_ego < 40 and abs(d_ped - world.ego_offset) < 1.5)
        assert ahead, f'seed {seed}: the pedestrian never crosses ahead of the ego'
        assert world.collisions == []
    assert {'left', 'right', 'straight'} <= seen


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    cfg = short_config(duration_s=1.0)
    calls = []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) > 8:
            raise RuntimeError('injected renderer failure')
        return real_render(*args, **kwargs)

    real_render = record.render_camera
    monkeypatch.setattr(record, 'render_camera', failing_render)
    out = tmp_path / 'out'
    with pytest.raises(RuntimeError, match='injected'):
        generate_drive(out / 'drive_0001', 1, cfg, progress=False)
    assert len(calls) == 9 and list(out.iterdir()) == []
    monkeypatch.undo()

    blocker = tmp_path / 'not_a_dir'
    blocker.write_text('x')
    with pytest.raises(OSError):
        generate_drive(blocker / 'drive_0001', 1, cfg, progress=False)
    assert blocker.read_text() == 'x' and sorted(tmp_path.iterdir()) == [blocker, out]

    existing = out / 'drive_0002'
    existing.mkdir()
    with pytest.raises(FileExistsError):
        generate_drive(existing, 2, cfg, progress=False)
    assert list(out.iterdir()) == [existing] and list(existing.iterdir()) == []


def test_contact_sheet_from_bag(tmp_path, drive):
    cfg, summary, _ = drive
    png = save_contact_sheet(summary.path, tmp_path / 'sheet.png', frame=0)
    sheet = cv2.imread(str(png))
    assert sheet.shape == (2 * cfg.image_height, 3 * cfg.image_width, 3)
    h, w = cfg.image_height, cfg.image_width
    tiles = [sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] for r in (0, 1) for c in (0, 1, 2)]
    assert all(t.std() > 10 for t in tiles)
    assert len({t.tobytes() for t in tiles}) == 6


def test_cli_writes_sqlite3_bags(tmp_path, capsys):
    rc = cli_main(['scenario', '--out', str(tmp_path), '--seed', '3', '--count', '2',
                   '--duration', '0.4', '--storage', 'sqlite3', '--no-progress'])
    assert rc == 0
    out = capsys.readouterr().out
    assert 'drive_0003' in out and 'drive_0004' in out
    for name in ('drive_0003', 'drive_0004'):
        assert list((tmp_path / name).glob('*.db3'))
        bag = read_bag(tmp_path / name)
        assert len(bag['/cameras/front/image_raw']) == 4 and len(bag['/odom']) == 20


def test_cli_records_every_family(tmp_path, capsys):
    from rsd_drive.scenario.config import FAMILY_CHOICES
    for i, family in enumerate(FAMILY_CHOICES):
        out = tmp_path / family
        sheet = ['--family-sheet'] if family == 'lead_brake' else []
        rc = cli_main(['scenario', '--out', str(out), '--seed', str(i), '--family', family,
                       '--duration', '0.3', '--no-progress'] + sheet)
        assert rc == 0
        if sheet:
            png = cv2.imread(str(out / f'drive_{i:04d}_lead_brake.png'))
            assert png is not None and png.shape[0] > 300 and png.std() > 10
        printed = capsys.readouterr().out
        bag = read_bag(out / f'drive_{i:04d}')
        info = json.loads(bag['/scenario/info'][0][2].data)
        assert info['requested_family'] == family
        assert info['family'] == family if family != 'mixed' else info['family'] in FAMILY_CHOICES
        assert f'family {info["family"]}' in printed and '0 collisions' in printed
        assert len(bag['/cameras/front/image_raw']) == 3
