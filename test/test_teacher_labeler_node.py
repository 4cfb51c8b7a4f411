"""The teacher_labeler node over real DDS: a subprocess runs the job; this test listens to its
progress topic and /diagnostics with rclpy."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers_bags import dataset_config, write_drive
from rsd_drive.data.index import FrameIndex

REPO = Path(__file__).resolve().parents[1]


def spin_until(executor, predicate, timeout: float, what: str, log: str = '') -> None:
    """Spin the listener until ``predicate()`` holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for {what}; node log:\n'
                                 f'{log[-3000:]}')
        executor.spin_once(timeout_sec=0.05)


@pytest.fixture
def ros_node():
    import rclpy
    from rclpy.node import Node

    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node('teacher_labeler_listener', context=context)
    try:
        yield rclpy, node
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_node_labels_reports_progress_and_diagnostics(tmp_path, ros_node):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    rclpy, node = ros_node
    good = write_drive(tmp_path / 'good', cameras=['front'], n_frames=4)
    broken = write_drive(tmp_path / 'broken', cameras=['front'], n_frames=4)
    mcap = next(broken.glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[:mcap.stat().st_size // 2])
    dataset = tmp_path / 'dataset.yaml'
    dataset.write_text(yaml.safe_dump({'dataset': dataset_config(['front']).to_dict()}))
    cfg = yaml.safe_load((REPO / 'config' / 'teacher.yaml').read_text())
    cfg['label'].update(image_size=[16, 16], chunk_frames=2, workers=1)
    cfg['node'].update(progress_topic='/test/teacher_progress', progress_period_s=0.2)
    cfg_file = tmp_path / 'teacher.yaml'
    cfg_file.write_text(yaml.safe_dump(cfg))

    progress, diagnostics = [], []
    node.create_subscription(String, '/test/teacher_progress',
                             lambda m: progress.append(json.loads(m.data)), 10)
    node.create_subscription(DiagnosticArray, '/diagnostics',
                             lambda m: diagnostics.extend(
                                 s for s in m.status if s.name.startswith('teacher_labeler')), 10)
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    out = tmp_path / 'out'
    cmd = [sys.executable, '-m', 'rsd_drive.ros.teacher_labeler', '--ros-args',
           '-p', f'config_file:={cfg_file}', '-p', f'bags:=[{good},{broken}]',
           '-p', f'out_dir:={out}', '-p', f'dataset_config:={dataset}']
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert proc.poll() is not None, 'node did not exit within 90 s when the job was done'
    finally:
        if proc.poll() is None:
            proc.kill()
        log = proc.communicate(timeout=10)[0].decode()
    # What it published last may still be in flight: spin until the final state is here.
    spin_until(executor, lambda: progress and progress[-1]['state'] == 'done' and diagnostics
               and any(kv.key == 'state' and kv.value == 'done' for kv in diagnostics[-1].values),
               30.0, 'the final progress message and diagnostics (state done)', log)
    assert proc.returncode == 1, log  # one bag failed
    assert progress, f'no progress messages; node log:\n{log}'
    final = progress[-1]
    assert final['state'] == 'done' and final['bags_done'] == 2 and final['bags_failed'] == 1
    assert final['frames_labelled'] == 4
    assert any(str(broken) in e for e in final['errors'])
    assert diagnostics and diagnostics[-1].level == DiagnosticStatus.ERROR
    values = {kv.key: kv.value for kv in diagnostics[-1].values}
    assert values['bags_done'] == '2/2' and values['frames_labelled'] == '4'
    assert 'bag failed' in log
    assert len(FrameIndex(out / 'index')) == 4
    assert (out / 'labels' / 'good' / 'metadata.yaml').is_file()


def test_node_without_bags_exits_with_a_clear_error(tmp_path):
    cfg = yaml.safe_load((REPO / 'config' / 'teacher.yaml').read_text())
    cfg_file = tmp_path / 'teacher.yaml'
    cfg_file.write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, '-m', 'rsd_drive.ros.teacher_labeler', '--ros-args',
                           '-p', f'config_file:={cfg_file}'], env=os.environ.copy(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert 'needs bags and out_dir' in done.stderr


@pytest.mark.skipif(importlib.util.find_spec('ray') is None, reason='ray is not installed')
def test_node_on_a_local_ray_cluster_reports_the_tasks_progress(tmp_path, ros_node):
    """ray_address:=local: the bags run as Ray tasks; the frame counts the tasks report reach the
    node's progress topic (the job's final summary carries none of them)."""
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    rclpy, node = ros_node
    bags = [write_drive(tmp_path / f'drive{i}', cameras=['front'], n_frames=n)
            for i, n in enumerate((5, 3))]
    dataset = tmp_path / 'dataset.yaml'
    dataset.write_text(yaml.safe_dump({'dataset': dataset_config(['front']).to_dict()}))
    cfg = yaml.safe_load((REPO / 'config' / 'teacher.yaml').read_text())
    cfg['label'].update(image_size=[16, 16], chunk_frames=2, workers=2)
    cfg['node'].update(progress_topic='/test/teacher_progress_ray', progress_period_s=0.2)
    cfg_file = tmp_path / 'teacher.yaml'
    cfg_file.write_text(yaml.safe_dump(cfg))
    progress = []
    node.create_subscription(String, '/test/teacher_progress_ray',
                             lambda m: progress.append(json.loads(m.data)), 10)
    executor = SingleThreadedExecutor(context=node.context)
    executor.add_node(node)
    cmd = [sys.executable, '-m', 'rsd_drive.ros.teacher_labeler', '--ros-args',
           '-p', f'config_file:={cfg_file}', '-p', f'bags:=[{bags[0]},{bags[1]}]',
           '-p', f'out_dir:={tmp_path / "out"}', '-p', f'dataset_config:={dataset}',
           '-p', 'ray_address:=local']
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert proc.poll() is not None, 'node did not exit within 240 s when the job was done'
    finally:
        if proc.poll() is None:
            proc.kill()
        log = proc.communicate(timeout=30)[0].decode()
    spin_until(executor, lambda: progress and progress[-1]['state'] == 'done', 30.0,
               'the final progress message (state done)', log)
    assert proc.returncode == 0, log
    assert 'Ray at local' in log
    final = progress[-1]
    assert final['state'] == 'done' and final['bags_done'] == 2 and final['bags_failed'] == 0
    assert final['frames_labelled'] == 8 and final['frames_seen'] == 8, final
    assert len(FrameIndex(tmp_path / 'out' / 'index')) == 8


def test_parallel_runs_claim_distinct_ros_domain_ids():
    """test/conftest.py's claim: runs alive at the same time never get the same ROS_DOMAIN_ID,
    including this one (whose id stays locked while it runs), even when their pids would map to
    the same id (all four pretend to have pid 4242 here)."""
    code = ('import os, sys; os.getpid = lambda: 4242; sys.path.insert(0, sys.argv[1]); '
            "import conftest; print(os.environ['ROS_DOMAIN_ID'], flush=True); sys.stdin.read()")
    procs = [subprocess.Popen([sys.executable, '-c', code, str(REPO / 'test')],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    try:
        ids = [int(p.stdout.readline()) for p in procs]  # all four alive and holding their id
    finally:
        for p in procs:
            p.communicate('', timeout=30)
    ids.append(int(os.environ['ROS_DOMAIN_ID']))
    assert len(set(ids)) == 5 and all(101 <= i <= 232 for i in ids), ids
