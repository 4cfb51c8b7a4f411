"""Reading real rosbag2 drives (MCAP and sqlite3, raw and compressed) with rsd_drive.data.bag."""
import shutil

import numpy as np
import pytest

from helpers_bags import (H, START_NS, W, camera_K, camera_mount, dataset_config, write_drive,
                          _image)
from rsd_drive.data.bag import (BagError, BagReader, BagWriter, DatasetConfig,
                                MissingTopicsError, SkippedFrame, SyncedFrame)
from rsd_drive.data.targets import (TargetConfig, TargetError, build_targets, index_frame,
                                    intent_index)
from rsd_drive import INTENTS

CAMS = ['front', 'front_left', 'back']


@pytest.mark.parametrize('storage,compressed', [('mcap', False), ('sqlite3', True),
                                                ('mcap', True), ('sqlite3', False)])
def test_reads_synchronised_frames(tmp_path, storage, compressed):
    bag = write_drive(tmp_path / 'drive', storage=storage, compressed=compressed, cameras=CAMS,
                      n_frames=5, jitter_ns=4_000_000)
    with BagReader(bag, dataset_config(CAMS, compressed)) as reader:
        frames = list(reader.frames())
        assert reader.expected_frames == 5
        assert reader.extrinsics_source == {c: 'tf_static' for c in CAMS}
    assert [f.seq for f in frames] == list(range(5))
    assert [f.stamp_ns for f in frames] == [START_NS + 4 * 10**9 + k * 10**8 for k in range(5)]
    f = frames[2]
    assert f.cameras == CAMS and f.image_hw == [(48, 64)] * 3
    assert max(abs(s - f.stamp_ns) for s in f.stamps_ns) == 4_000_000  # jittered, within slop
    np.testing.assert_allclose(f.K[1], camera_K())
    np.testing.assert_allclose(f.cam_to_ego[1], camera_mount('front_left'), atol=1e-9)
    for i in range(3):
        ref = _image(i, 2)  # camera i of the drive, frame 2
        err = np.abs(f.images[i].astype(int) - ref).mean()
        assert err == 0 if not compressed else err < 12


def test_skips_are_counted_per_reason(tmp_path):
    bag = write_drive(tmp_path / 'drive', cameras=CAMS, n_frames=8,
                      drop={('front_left', 2)}, corrupt_images={('back', 5)},
                      nan_odometry={250})
    with BagReader(bag, dataset_config(CAMS)) as reader:
        items = list(reader.frames(include_skipped=True))
        assert reader.bad_messages == {'odometry:nan_odometry': 1}
        assert reader.skipped == {'sync:missing:front_left': 1, 'image:bad_size:back': 1}
    good = [i.seq for i in items if isinstance(i, SyncedFrame)]
    skipped = [(i.seq, i.reason) for i in items if isinstance(i, SkippedFrame)]
    assert good == [0, 1, 2, 3, 5, 6]  # 7 synchronised sets; seq 4 (frame 5) is corrupt
    assert ('image:bad_size:back', 4) in [(r, s) for s, r in skipped]


def test_decode_predicate_leaves_images_out(tmp_path):
    bag = write_drive(tmp_path / 'drive', cameras=CAMS, n_frames=4)
    with BagReader(bag, dataset_config(CAMS)) as reader:
        frames = list(reader.frames(decode=lambda seq: seq >= 2))
    assert [f.images is None for f in frames] == [True, True, False, False]
    assert frames[0].image_hw == [(48, 64)] * 3


def test_extrinsics_from_config_when_no_tf_static(tmp_path):
    bag = write_drive(tmp_path / 'drive', cameras=['front'], n_frames=2, tf_static=False)
    with pytest.raises(MissingTopicsError, match='no extrinsics for front'):
        BagReader(bag, dataset_config(['front'])).open()
    mount = {'front': {'x': 1.5, 'y': 0.0, 'z': 1.6, 'yaw': 0.0, 'pitch': 0.08}}
    with BagReader(bag, dataset_config(['front'], extrinsics=mount)) as reader:
        frame = next(reader.frames())
        assert reader.extrinsics_source == {'front': 'config'}
    np.testing.assert_allclose(frame.cam_to_ego[0], camera_mount('front'), atol=1e-12)


def test_missing_topics_lists_what_the_bag_has(tmp_path):
    bag = write_drive(tmp_path / 'drive', cameras=['front'], n_frames=2)
    with pytest.raises(MissingTopicsError) as e:
        BagReader(bag, dataset_config(['front', 'back'])).open()
    text = str(e.value)
    assert str(bag) in text and '/cameras/back/image_raw' in text
    assert 'The bag has:' in text and '/cameras/front/image_raw [sensor_msgs/msg/Image]' in text
    assert '/odom [nav_msgs/msg/Odometry]' in text


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_truncated_or_corrupt_bag_raises_naming_the_file(tmp_path, storage):
    bag = write_drive(tmp_path / 'drive', storage=storage, cameras=CAMS, n_frames=6)
    data_file = next(p for p in bag.iterdir() if p.suffix in ('.mcap', '.db3'))
    raw = data_file.read_bytes()
    if storage == 'mcap':
        data_file.write_bytes(raw[:len(raw) // 2])  # truncated mid-chunk
    else:
        data_file.write_bytes(raw[:100] + b'\xde\xad' * 5000 + raw[10100:])
    with pytest.raises(BagError) as e:
        with BagReader(bag, dataset_config(CAMS)) as reader:
            list(reader.frames())
    assert str(bag) in str(e.value)
    assert 'corrupt or truncated' in str(e.value)


def test_not_a_bag_and_missing_path(tmp_path):
    with pytest.raises(BagError, match='no such bag'):
        BagReader(tmp_path / 'nope', dataset_config()).open()
    (tmp_path / 'junk.mcap').write_bytes(b'\x89MCAP0\r\n garbage')
    with pytest.raises(BagError, match='junk.mcap'):
        BagReader(tmp_path / 'junk.mcap', dataset_config()).open()


def test_intent_topic_and_objects(tmp_path):
    bag = write_drive(tmp_path / 'drive', cameras=['front'], n_frames=3, intent='left')
    cfg = dataset_config(['front'], intent_topic='/scenario/intent')
    with BagReader(bag, cfg) as reader:
        frame = next(reader.frames())
        assert reader.intent_at(frame.stamp_ns) == 'left'
        assert reader.intent_at(frame.stamp_ns - 1) is None
        objects = reader.objects_at(frame.stamp_ns)
        assert len(objects['objects']) == 3 and objects['frame'] == 'odom'
        targets = build_targets(reader.odometry, frame.stamp_ns, TargetConfig(),
                                reader.intent_at(frame.stamp_ns))
    assert targets.intent == INTENTS.index('left') and targets.intent_source == 'topic'


@pytest.mark.parametrize('yaw_rate,intent', [(0.0, 'straight'), (0.25, 'left'),
                                             (-0.25, 'right')])
def test_targets_from_odometry(tmp_path, yaw_rate, intent):
    bag = write_drive(tmp_path / 'drive', cameras=['front'], n_frames=2, yaw_rate=yaw_rate,
                      speed=6.0)
    with BagReader(bag, dataset_config(['front'])) as reader:
        frame = next(reader.frames())
        t = build_targets(reader.odometry, frame.stamp_ns, TargetConfig())
        with pytest.raises(TargetError) as e:  # 4 s after the start: not 3.75 s of past
            build_targets(reader.odometry, START_NS + 3 * 10**9, TargetConfig())
        assert e.value.reason == 'past:odom_before_start'
        row = index_frame(frame, t, np.full((64, 64), 0.5), (32, 40))
    assert INTENTS[t.intent] == intent and t.intent_source == 'heading'
    assert t.past_states.shape == (16, 4) and t.future.shape == (20, 2)
    assert t.init_speed == pytest.approx(6.0)
    path = np.vstack([[0, 0], t.future])
    assert np.linalg.norm(np.diff(path, axis=0), axis=1).sum() == pytest.approx(30.0, rel=0.01)
    assert np.sign(t.future[-1, 1]) == np.sign(yaw_rate)
    assert row['images'].shape == (1, 32, 40, 3) and row['intrinsics'][0, 0, 0] == \
        pytest.approx(40.0 * 40 / 64)
    assert intent_index('LEFT ') == 2 and intent_index('sideways') == 0


def test_writer_is_atomic(tmp_path):
    target = tmp_path / 'out' / 'bag'
    with pytest.raises(RuntimeError):
        with BagWriter(target) as w:
            w.write('/x', 1, w.typestore.types['std_msgs/msg/String'](data='a'))
            raise RuntimeError('interrupted')
    assert not target.exists() and list((tmp_path / 'out').iterdir()) == []
    with BagWriter(target, storage='sqlite3') as w:
        w.write('/x', 1, w.typestore.types['std_msgs/msg/String'](data='a'))
    assert (target / 'metadata.yaml').is_file()
    shutil.rmtree(target)


def rewrite_bag(src, dst, edit):
    """Copy a bag message by message through ``edit(topic, msg) -> msg`` (rosbags only)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    with AnyReader([src], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader, \
            BagWriter(dst) as writer:
        for conn, t, raw in reader.messages():
            writer.write(conn.topic, t, edit(conn.topic, reader.deserialize(raw, conn.msgtype)))
    return dst


def with_config(cfg, **changes):
    return DatasetConfig(**{**cfg.to_dict(), **changes})


def test_base_frame_comes_from_the_dataset_config(tmp_path):
    def rename(topic, msg):
        if topic == '/tf_static':
            for tf in msg.transforms:
                tf.header.frame_id = 'vehicle'
        return msg

    bag = rewrite_bag(write_drive(tmp_path / 'a', cameras=['front'], n_frames=2),
                      tmp_path / 'b', rename)
    with pytest.raises(MissingTopicsError, match='no base_link -> front_optical'):
        BagReader(bag, dataset_config(['front'])).open()
    with BagReader(bag, with_config(dataset_config(['front']), base_frame='vehicle')) as reader:
        frame = next(reader.frames())
        assert reader.extrinsics_source == {'front': 'tf_static'}
    np.testing.assert_allclose(frame.cam_to_ego[0], camera_mount('front'), atol=1e-9)
    with pytest.raises(ValueError, match='base_frame'):
        with_config(dataset_config(['front']), base_frame='')


def test_config_extrinsics_take_roll_and_a_quaternion_like_the_node(tmp_path):
    from rsd_drive.geometry import camera_to_ego, extrinsics_to_matrix, matrix_to_quaternion
    from rsd_drive.ros.planner_node import extrinsics_to_matrix as node_parser

    assert node_parser is extrinsics_to_matrix  # one parser, in the core
    bag = write_drive(tmp_path / 'drive', cameras=['front'], n_frames=2, tf_static=False)
    M = camera_to_ego(1.5, 0.2, 1.6, 0.3, 0.08, 0.05)
    qx, qy, qz, qw = matrix_to_quaternion(M[:3, :3])
    mounts = {'mount': {'x': 1.5, 'y': 0.2, 'z': 1.6, 'yaw': 0.3, 'pitch': 0.08, 'roll': 0.05},
              'pose': {'x': 1.5, 'y': 0.2, 'z': 1.6, 'qx': qx, 'qy': qy, 'qz': qz, 'qw': qw}}
    for form, mount in mounts.items():
        with BagReader(bag, dataset_config(['front'], extrinsics={'front': mount})) as reader:
            frame = next(reader.frames())
        np.testing.assert_allclose(frame.cam_to_ego[0], M, atol=1e-9, err_msg=form)
        np.testing.assert_allclose(extrinsics_to_matrix(list(mount.values())), M, atol=1e-9)
    # Roll turns the image about the viewing axis: the optical z axis stays, x tilts.
    flat = camera_to_ego(1.5, 0.2, 1.6, 0.3, 0.08)
    np.testing.assert_allclose(M[:3, 2], flat[:3, 2], atol=1e-12)
    assert np.degrees(np.arccos(M[:3, 0] @ flat[:3, 0])) == pytest.approx(np.degrees(0.05))
    for bad in ({'x': 1.0, 'roll': 0.1, 'qw': 1.0}, {'x': 1.0, 'qx': 0.0}, {'x': 1, 'foo': 2}):
        with pytest.raises(ValueError, match='extrinsics of .front'):
            dataset_config(['front'], extrinsics={'front': bad})


def test_image_size_differing_from_camera_info_rescales_K_like_the_node(tmp_path):
    """A driver publishing a half-size stream with full-size CameraInfo: the frame is used, with
    K rescaled to the image size by the same rule as the planner node."""
    from rsd_drive.deploy.pipeline import CameraCalibration
    from rsd_drive.geometry import resize_intrinsics

    big_hw = (2 * H, 2 * W)
    K_big = resize_intrinsics(camera_K(), (H, W), big_hw)

    def full_size_info(topic, msg):
        if topic.endswith('camera_info'):
            msg.height, msg.width = big_hw
            msg.k = K_big.reshape(-1).copy()
        return msg

    bag = rewrite_bag(write_drive(tmp_path / 'a', cameras=CAMS, n_frames=3), tmp_path / 'b',
                      full_size_info)
    with BagReader(bag, dataset_config(CAMS)) as reader:
        frames = list(reader.frames())
        assert not reader.skipped and reader.info_hw['front'] == big_hw
    assert len(frames) == 3 and frames[0].image_hw == [(H, W)] * 3
    node_K = CameraCalibration(K_big, big_hw, np.eye(4)).K_for((H, W))
    for K in frames[0].K:
        np.testing.assert_allclose(K, node_K, atol=1e-12)
        np.testing.assert_allclose(K, camera_K(), atol=1e-9)
