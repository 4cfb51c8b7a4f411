"""``rsd-drive replay``: a bag played into ROS 2 through rclpy with /clock, recorded back with the
raw-subscription recorder, byte for byte; errors leave nothing half-written."""
import subprocess
import sys

import pytest
from node_helpers import START_NS, write_drive_bag

pytestmark = pytest.mark.timeout(120)


def read_raw(path):
    from rosbags.highlevel import AnyReader

    out = {}
    with AnyReader([path]) as reader:
        for conn, t_ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t_ns, bytes(raw), conn.msgtype))
    return out


def test_replay_publishes_with_clock_and_records_byte_identical(tmp_path):
    bag = tmp_path / 'drive'
    write_drive_bag(bag, duration_s=2.0)
    out = tmp_path / 'echo'
    topics = ['/odom', '/cameras/front/image_raw', '/scenario/intent', '/clock']
    proc = subprocess.run(
        [sys.executable, '-m', 'rsd_drive.cli', 'replay', str(bag), '--record', str(out),
         '--record-topics', *topics, '--rate', '2', '--tail', '0.5', '--wait', '2',
         '--no-progress'],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'tf2_msgs/msg/TFMessage not installed' in proc.stdout  # skipped and said so
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.echo')]

    source, recorded = read_raw(bag), read_raw(out)
    for topic in ('/odom', '/cameras/front/image_raw', '/scenario/intent'):
        sent = [raw for _, raw, _ in source[topic]]
        got = [raw for _, raw, _ in recorded[topic]]
        assert got == sent, f'{topic}: {len(got)} of {len(sent)} recorded, or bytes differ'
        assert recorded[topic][0][2] == source[topic][0][2]  # message type kept
        # recorded at the bag time they were played at (the clock is set before each publish)
        for (t_src, _, _), (t_rec, _, _) in zip(source[topic], recorded[topic]):
            assert 0 <= t_rec - t_src < 200_000_000

    clock = recorded['/clock']
    assert len(clock) > 10
    from rclpy.serialization import deserialize_message
    from rosgraph_msgs.msg import Clock

    times = [deserialize_message(raw, Clock).clock for _, raw, _ in clock]
    ns = [t.sec * 10**9 + t.nanosec for t in times]
    assert ns == sorted(ns), '/clock went backwards'
    assert ns[0] >= START_NS and ns[-1] <= START_NS + int(2.5e9) + 1


def test_missing_bag_is_a_clear_error(tmp_path):
    from rsd_drive.ros.replay import replay

    with pytest.raises(FileNotFoundError, match='nope'):
        replay(tmp_path / 'nope', record=tmp_path / 'out', progress=False)
    assert not (tmp_path / 'out').exists()


def test_bag_without_playable_topics_leaves_no_recording(tmp_path):
    from rsd_drive.ros.replay import replay

    bag = tmp_path / 'drive'
    write_drive_bag(bag, duration_s=0.5)
    with pytest.raises(ValueError, match='no playable topics'):
        replay(bag, topics=['/tf_static'], record=tmp_path / 'out', wait_s=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['drive']
