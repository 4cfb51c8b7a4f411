"""`rsd-drive label` as Ray tasks on a real local Ray cluster (127.0.0.1 only): the same index as
the process pool, progress from the tasks, a worker SIGKILLed mid-task (retried), a bag whose
worker dies on every try (reported by name while the others finish), a killed driver (rerun
resumes). One cluster of 2 CPUs is shared by the module; it takes seconds to start."""
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers_bags import START_NS, write_drive
from test_label_job import write_dataset_yaml, write_teacher_yaml

from rsd_drive.data.bag import DatasetConfig
from rsd_drive.bench.label_soak import descendants
from rsd_drive.data.index import FrameIndex, read_manifest
from rsd_drive.teacher.config import TeacherConfig
from rsd_drive.teacher.job import make_spec, run_job

pytestmark = [pytest.mark.skipif(importlib.util.find_spec('ray') is None,
                                 reason='ray is not installed (requirements.txt pins it)'),
              pytest.mark.timeout(600)]
FIRST_STAMP = START_NS + 4 * 10**9


@pytest.fixture(scope='module')
def ray_cluster():
    from rsd_drive.teacher.ray_run import connect, import_ray

    ray = import_ray('local')
    assert connect('local', num_cpus=2)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope='module')
def tiny_vlm(tmp_path_factory):
    from rsd_drive.teacher.tiny import build_tiny_vlm
    return build_tiny_vlm(tmp_path_factory.mktemp('models') / 'vlm')


def stamps_by_bag(out):
    index = FrameIndex(out / 'index')
    found = {}
    for i in range(len(index)):
        shard, _ = index.locate(i)
        found.setdefault(shard.rsplit('-', 1)[0], []).append(int(index[i]['stamps']))
    return found


def expected_stamps(n):
    return [FIRST_STAMP + k * 10**8 for k in range(n)]


def listening_addresses(pids):
    """Local addresses of the TCP sockets in LISTEN state that these processes hold."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f'/proc/{pid}/fd').iterdir():
                target = os.readlink(fd)
                if target.startswith('socket:['):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table in ('tcp', 'tcp6'):
        for line in Path(f'/proc/net/{table}').read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == '0A' and cols[9] in inodes:  # 0A: LISTEN
                found.append(cols[1].split(':')[0])
    return found


LOOPBACK = {'0100007F', '0000000000000000FFFF00000100007F'}  # 127.0.0.1, ::ffff:127.0.0.1


def test_local_workers_run_at_the_driver_s_priority(ray_cluster):
    """Ray's default worker niceness (15) starves a labeling job beside any busy process (the
    sigkill test below once ran past its timeout beside a training run)."""
    @ray_cluster.remote
    def niceness():
        return os.nice(0)

    assert ray_cluster.get(niceness.remote(), timeout=120) == os.nice(0)


def test_four_bags_on_two_ray_workers_give_the_pool_s_index(ray_cluster, tmp_path):
    lengths = {'drive0': 7, 'drive1': 5, 'drive2': 4, 'drive3': 3}
    bags = [write_drive(tmp_path / 'bags' / name, cameras=['front', 'back'], n_frames=n)
            for name, n in lengths.items()]
    dataset = DatasetConfig.from_yaml(write_dataset_yaml(tmp_path / 'dataset.yaml',
                                                         ['front', 'back']))
    teacher = TeacherConfig(backend='scene-oracle')
    spec = {k: make_spec(tmp_path / k, teacher, dataset, image_hw=(16, 24), chunk_frames=2)
            for k in ('pool', 'ray')}
    pool = run_job(bags, spec['pool'], workers=2, show_progress=False)
    events, sockets = [], []

    def on_progress(event):
        events.append(event)
        if not sockets:  # while the tasks run: what does the cluster listen on?
            sockets.extend(listening_addresses([os.getpid(), *descendants(os.getpid())]))

    ray = run_job(bags, spec['ray'], workers=2, ray_address='local', show_progress=False,
                  on_progress=on_progress)
    assert [b['status'] for b in ray.bags] == ['ok'] * 4
    assert [b['frames_labelled'] for b in ray.bags] == \
        [b['frames_labelled'] for b in pool.bags] == list(lengths.values())
    assert stamps_by_bag(tmp_path / 'ray') == stamps_by_bag(tmp_path / 'pool') == \
        {name: expected_stamps(n) for name, n in lengths.items()}
    a, b = FrameIndex(tmp_path / 'pool' / 'index'), FrameIndex(tmp_path / 'ray' / 'index')
    for i in range(len(a)):
        for key in ('images', 'risk', 'future', 'intent'):
            np.testing.assert_array_equal(a[i][key], b[i][key])
    assert read_manifest(tmp_path / 'ray' / 'index')['shards'].keys() == \
        read_manifest(tmp_path / 'pool' / 'index')['shards'].keys()
    # Progress came from the tasks (other processes), every bag up to its last frame.
    running = [e for e in events if e.get('state') == 'running']
    assert running and all(e['pid'] != os.getpid() for e in running)
    last = {}
    for e in running:
        last[e['bag_id']] = e['frames_done']
    assert last == lengths
    assert [e['bag_id'] for e in events if e.get('state') == 'done'] and \
        sorted(e['bag_id'] for e in events if e.get('state') == 'done') == sorted(lengths)
    # Every socket the local cluster listens on is bound to the loopback address.
    assert sockets and set(sockets) <= LOOPBACK, sockets


def test_sigkilled_workers_retry_and_a_bag_dying_every_try_is_named(ray_cluster, tiny_vlm,
                                                                    tmp_path):
    killed_once = write_drive(tmp_path / 'killed_once', cameras=['front'], n_frames=12)
    # Long enough that a retry resumed from whatever the killed try committed (the driver sees
    # progress a little late, so the first kill may land several frames after 3) still has
    # most of its frames ahead of it when its own first progress event arrives.
    always = write_drive(tmp_path / 'always_killed', cameras=['front'], n_frames=40)
    good = write_drive(tmp_path / 'good', cameras=['front'], n_frames=3)
    corrupt = write_drive(tmp_path / 'corrupt', cameras=['front'], n_frames=4)
    mcap = next(corrupt.glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[:mcap.stat().st_size // 2])
    dataset = DatasetConfig.from_yaml(write_dataset_yaml(tmp_path / 'dataset.yaml', ['front']))
    teacher = TeacherConfig(backend='vlm', model_dir=str(tiny_vlm), unparsable_answer='empty',
                            vlm={'max_new_tokens': 48})
    spec = make_spec(tmp_path / 'out', teacher, dataset, image_hw=(28, 28), chunk_frames=2)
    bags = [killed_once, always, good, corrupt]
    kills, mid_run = [], []

    def kill_mid_task(event):
        """SIGKILL the worker of killed_once once and of always_killed on every try, once it is
        past its first chunk (committed: something to resume from) and far from done."""
        bag, pid, done = event.get('bag_id'), event.get('pid'), event.get('frames_done', 0)
        if event.get('state') != 'running':
            return
        tried = any(b == bag for b, _ in kills)
        if (bag == 'killed_once' and not tried and 3 <= done < 9) or \
                (bag == 'always_killed' and (bag, pid) not in kills and
                 (3 <= done < 9 or (tried and done < 30))):
            os.kill(pid, signal.SIGKILL)
            kills.append((bag, pid))
            mid_run.append(not (tmp_path / 'out' / 'work' / bag / 'done.json').exists())

    summary = run_job(bags, spec, workers=2, ray_address='local', show_progress=False,
                      on_progress=kill_mid_task, max_retries=1)
    status = {b['bag_id']: b for b in summary.bags}
    assert all(mid_run) and len(kills) == 3, kills  # once + twice (the first try and the retry)
    assert status['killed_once']['status'] == 'ok'
    assert status['killed_once']['frames_labelled'] == 12
    assert status['good']['status'] == 'ok' and status['good']['frames_labelled'] == 3
    assert status['always_killed']['status'] == 'failed'
    assert str(always) in status['always_killed']['error']
    assert 'failed 2 times' in status['always_killed']['error']
    assert status['corrupt']['status'] == 'failed' and str(corrupt) in status['corrupt']['error']
    assert 'corrupt or truncated' in status['corrupt']['error']
    # The rerun resumes always_killed from its committed chunks; every frame is there once.
    committed = [s for s in read_manifest(tmp_path / 'out' / 'index')['shards']
                 if s.startswith('always_killed')]
    assert committed, 'the killed tries committed no chunk to resume from'
    again = run_job(bags, spec, workers=2, ray_address='local', show_progress=False)
    status = {b['bag_id']: b for b in again.bags}
    assert status['always_killed']['status'] == 'ok'
    assert status['killed_once']['status'] == status['good']['status'] == 'already_done'
    assert stamps_by_bag(tmp_path / 'out') == {'killed_once': expected_stamps(12),
                                               'always_killed': expected_stamps(40),
                                               'good': expected_stamps(3)}
    assert not list((tmp_path / 'out' / 'index' / 'shards').glob('.*'))


def test_killed_driver_then_rerun_resumes(tiny_vlm, tmp_path):
    """The CLI with its own `local` cluster, killed (driver and cluster) once a chunk is in."""
    bags = [write_drive(tmp_path / f'drive{i}', cameras=['front'], n_frames=n)
            for i, n in enumerate((10, 6))]
    dataset = write_dataset_yaml(tmp_path / 'dataset.yaml', ['front'])
    cfg = write_teacher_yaml(tmp_path / 'teacher.yaml', model_dir=str(tiny_vlm),
                             unparsable_answer='empty', vlm={'max_new_tokens': 48})
    out = tmp_path / 'out'
    cmd = [sys.executable, '-m', 'rsd_drive.cli', 'label', *map(str, bags), '--out', str(out),
           '--backend', 'vlm', '--config', str(cfg), '--dataset-config', str(dataset),
           '--image-size', '28x28', '--chunk-frames', '2', '--workers', '2',
           '--ray-address', 'local', '--no-progress']
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if read_manifest(out / 'index')['shards'] or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert read_manifest(out / 'index')['shards'], \
            'timed out after 240 s waiting for the first committed chunk (the moment to kill)'
        cluster = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
    partial = read_manifest(out / 'index')['shards']
    assert 1 <= len(partial) < 8, 'the kill must land mid-run'
    for pid in cluster:  # the cluster's own processes must not outlive a killed driver here
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done = subprocess.run(cmd, env=os.environ.copy(), capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert stamps_by_bag(out) == {'drive0': expected_stamps(10), 'drive1': expected_stamps(6)}
    assert sorted(read_manifest(out / 'index')['shards']) == \
        [f'drive0-{k:05d}' for k in range(5)] + [f'drive1-{k:05d}' for k in range(3)]
