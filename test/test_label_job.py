"""`rsd-drive label` end to end on real bags: every backend, label bags read back, the training
index, corrupt bags, a process pool, and a run killed with SIGKILL then resumed."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers_bags import START_NS, dataset_config, read_topic, write_drive
from rsd_drive.cli import main as cli_main
from rsd_drive.data.index import FrameIndex, read_manifest
from rsd_drive.model.config import ModelConfig
from rsd_drive.teacher.labelbag import ANSWER_TOPIC, GRID_TOPIC, OBJECTS_TOPIC, PATH_TOPIC

GRID = ModelConfig().grid
REPO = Path(__file__).resolve().parents[1]
FIRST_STAMP = START_NS + 4 * 10**9


def write_dataset_yaml(path, cameras):
    path.write_text(yaml.safe_dump({'dataset': dataset_config(cameras).to_dict()}))
    return path


def write_teacher_yaml(path, **teacher):
    data = yaml.safe_load((REPO / 'config' / 'teacher.yaml').read_text())
    for key, value in teacher.items():
        if isinstance(value, dict):
            data['teacher'].setdefault(key, {}).update(value)
        else:
            data['teacher'][key] = value
    path.write_text(yaml.safe_dump(data))
    return path


def check_label_bag(path, stamps, n_answers=None):
    """Read a label bag back: one grid/markers/path per labelled stamp, geometry of the grid."""
    grids = read_topic(path, GRID_TOPIC)
    assert [t for t, _ in grids] == sorted(stamps)
    for t, msg in grids:
        assert msg.header.frame_id == 'base_link'
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == t
        info = msg.info
        assert (info.width, info.height) == (GRID.cols, GRID.rows)
        assert info.resolution == pytest.approx(GRID.resolution)
        assert (info.origin.position.x, info.origin.position.y) == (GRID.origin_x, GRID.origin_y)
        assert len(msg.data) == GRID.rows * GRID.cols
        assert msg.data.min() >= 0 and msg.data.max() <= 100
    paths = read_topic(path, PATH_TOPIC)
    assert [t for t, _ in paths] == sorted(stamps)
    for t, msg in paths:
        assert msg.header.frame_id == 'base_link' and len(msg.poses) == 21
        assert msg.poses[0].pose.position.x == 0.0
        last = msg.poses[-1].header.stamp
        assert last.sec * 10**9 + last.nanosec == t + 5 * 10**9
    markers = read_topic(path, OBJECTS_TOPIC)
    assert [t for t, _ in markers] == sorted(stamps)
    assert all(m.markers[0].action == 3 for _, m in markers)  # DELETEALL first
    answers = read_topic(path, ANSWER_TOPIC)
    assert len(answers) == (len(stamps) if n_answers is None else n_answers)
    return grids, markers, answers


def test_oracle_labels_mcap_and_sqlite_bags_in_a_process_pool(tmp_path, capsys):
    a = write_drive(tmp_path / 'bags' / 'raw_mcap', n_frames=10, drop={('back', 4)})
    b = write_drive(tmp_path / 'bags' / 'jpeg_sqlite', storage='sqlite3', compressed=True,
                    n_frames=6, yaw_rate=0.25)
    out = tmp_path / 'out'
    code = cli_main(['label', str(a), str(b), '--out', str(out), '--workers', '2',
                     '--image-size', '32x48', '--chunk-frames', '4', '--no-progress'])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert 'raw_mcap' in printed and 'sync:missing:back=1' in printed
    index = FrameIndex(out / 'index')
    assert len(index) == 9 + 6
    manifest = read_manifest(out / 'index')
    assert manifest['grid'] == GRID.to_dict() and manifest['image_hw'] == [32, 48]
    assert manifest['teacher'] == 'scene-oracle'
    assert sum(s['skipped'].get('sync:missing:back', 0) for s in manifest['shards'].values()) == 1
    frame = index[0]
    assert frame['images'].shape == (6, 32, 48, 3)
    assert frame['risk'].shape == (GRID.rows, GRID.cols)
    stamps = {n: [] for n in ('raw_mcap', 'jpeg_sqlite')}
    for i in range(len(index)):
        shard, _ = index.locate(i)
        stamps[shard.rsplit('-', 1)[0]].append(int(index[i]['stamps']))
        assert 0 <= float(index[i]['risk'].max()) <= 1
    assert stamps['raw_mcap'] == [FIRST_STAMP + k * 10**8 for k in range(10) if k != 4]
    intents = {int(index[i]['intent']) for i in range(len(index))
               if index.locate(i)[0].startswith('jpeg')}
    assert intents == {2}  # turning left at 0.25 rad/s
    for name, st in stamps.items():
        grids, markers, _ = check_label_bag(out / 'labels' / name, st)
        assert (out / 'previews' / f'{name}.png').stat().st_size > 1000
        if name == 'raw_mcap':  # straight at the crossing pedestrian (the other drive turns away)
            assert max(int(m.data.max()) for _, m in grids) > 30
            assert any(len(m.markers) > 1 for _, m in markers)
    # Index risk == label bag grid (both are the same teacher output).
    first = next(i for i in range(len(index)) if index.locate(i)[0].startswith('raw_mcap'))
    occ = read_topic(out / 'labels' / 'raw_mcap', GRID_TOPIC)[0][1].data.reshape(GRID.rows,
                                                                                 GRID.cols)
    np.testing.assert_allclose(index[first]['risk'].astype(np.float32) * 100, occ, atol=1.01)
    summary = json.loads((out / 'summary.json').read_text())
    assert [b['status'] for b in summary['bags']] == ['ok', 'ok']
    # A second run finds everything done and changes nothing.
    code = cli_main(['label', str(a), str(b), '--out', str(out), '--image-size', '32x48',
                     '--chunk-frames', '4', '--no-progress'])
    assert code == 0 and 'already_done' in capsys.readouterr().out
    assert len(FrameIndex(out / 'index')) == 15


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    from rsd_drive.teacher.tiny import build_tiny_clipseg, build_tiny_detector, build_tiny_vlm
    root = tmp_path_factory.mktemp('models')
    return {'vlm': build_tiny_vlm(root / 'vlm'), 'detector': build_tiny_detector(root / 'det'),
            'clipseg': build_tiny_clipseg(root / 'seg')}


@pytest.fixture(scope='module')
def small_drive(tmp_path_factory):
    root = tmp_path_factory.mktemp('small')
    bag = write_drive(root / 'small', cameras=['front', 'back'], n_frames=4)
    return bag, write_dataset_yaml(root / 'dataset.yaml', ['front', 'back'])


def test_vlm_backend_through_the_cli(models, small_drive, tmp_path, capsys):
    bag, dataset = small_drive
    cfg = write_teacher_yaml(tmp_path / 'teacher.yaml', vlm={'max_new_tokens': 16})
    args = ['label', str(bag), '--backend', 'vlm', '--model-dir', str(models['vlm']),
            '--config', str(cfg), '--dataset-config', str(dataset), '--image-size', '28x28',
            '--no-progress']
    assert cli_main(args + ['--out', str(tmp_path / 'skip')]) == 0
    printed = capsys.readouterr().out
    # The random model answers garbage: every frame is counted as unparsable and skipped, but
    # its raw answer is still in the label bag.
    result = json.loads((tmp_path / 'skip' / 'summary.json').read_text())['bags'][0]
    n_unreadable = result['skipped'].get('teacher:unparsable', 0)
    assert result['frames_labelled'] + n_unreadable == 4
    assert 'teacher:unparsable' in printed or result['frames_labelled'] == 4
    _, _, answers = check_label_bag(tmp_path / 'skip' / 'labels' / 'small',
                                    _index_stamps(tmp_path / 'skip'), n_answers=4)
    assert [t for t, _ in answers] == [FIRST_STAMP + k * 10**8 for k in range(4)]
    assert all(set(json.loads(m.data)) == {'front'} for _, m in answers)
    # Labelling unreadable answers as "no risk" instead keeps every frame.
    cfg = write_teacher_yaml(tmp_path / 'teacher2.yaml', vlm={'max_new_tokens': 16},
                             unparsable_answer='empty')
    args[args.index('--config') + 1] = str(cfg)
    assert cli_main(args + ['--out', str(tmp_path / 'empty')]) == 0
    assert len(FrameIndex(tmp_path / 'empty' / 'index')) == 4
    check_label_bag(tmp_path / 'empty' / 'labels' / 'small', _index_stamps(tmp_path / 'empty'))


def _index_stamps(out):
    index = FrameIndex(out / 'index') if (out / 'index' / 'manifest.json').is_file() else []
    return [int(index[i]['stamps']) for i in range(len(index))]


def test_detector_vlm_and_clipseg_backends_through_the_cli(models, small_drive, tmp_path):
    bag, dataset = small_drive
    cfg = write_teacher_yaml(tmp_path / 'teacher.yaml', vlm={'max_new_tokens': 8},
                             detector={'min_score': 0.0, 'max_proposals': 2},
                             unparsable_answer='empty', clipseg={'min_heat': 0.0})
    common = ['--config', str(cfg), '--dataset-config', str(dataset), '--image-size', '28x28',
              '--no-progress']
    out = tmp_path / 'det'
    assert cli_main(['label', str(bag), '--out', str(out), '--backend', 'detector+vlm',
                     '--model-dir', str(models['vlm']), '--detector-dir',
                     str(models['detector'])] + common) == 0
    _, _, answers = check_label_bag(out / 'labels' / 'small', _index_stamps(out))
    assert all(json.loads(m.data)['front']['proposals'] for _, m in answers)
    out = tmp_path / 'seg'
    assert cli_main(['label', str(bag), '--out', str(out), '--backend', 'clipseg',
                     '--model-dir', str(models['clipseg'])] + common) == 0
    grids, _, _ = check_label_bag(out / 'labels' / 'small', _index_stamps(out))
    assert len(grids) == 4 and all(int(m.data.max()) > 0 for _, m in grids)
    index = FrameIndex(out / 'index')
    risk = index[0]['risk'].astype(np.float32)
    assert risk[GRID.cell_of(-8.0, 0.0)] == 0.0  # the front camera can't see behind the car


def test_corrupt_and_incomplete_bags_fail_alone(tmp_path, capsys):
    good = write_drive(tmp_path / 'good', cameras=['front'], n_frames=3)
    broken = write_drive(tmp_path / 'broken', cameras=['front'], n_frames=6)
    mcap = next(broken.glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[:mcap.stat().st_size // 2])
    no_odom = tmp_path / 'no_odom'
    from rsd_drive.data.bag import BagWriter
    with BagWriter(no_odom) as w:
        w.write('/cameras/front/image_raw', 1, w.typestore.types['std_msgs/msg/String'](data='x'))
    dataset = write_dataset_yaml(tmp_path / 'dataset.yaml', ['front'])
    code = cli_main(['label', str(good), str(broken), str(no_odom), '--out',
                     str(tmp_path / 'out'), '--dataset-config', str(dataset),
                     '--image-size', '16x16', '--no-progress'])
    printed = capsys.readouterr().out
    assert code == 1
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    status = {Path(b['bag']).name: b for b in summary['bags']}
    assert status['good']['status'] == 'ok' and status['good']['frames_labelled'] == 3
    assert status['broken']['status'] == 'failed'
    assert str(broken) in status['broken']['error'] and 'corrupt or truncated' in \
        status['broken']['error']
    err = status['no_odom']['error']
    assert 'missing topics' in err and '/odom' in err and \
        '/cameras/front/image_raw [std_msgs/msg/String]' in err
    assert '2 failed' in printed and str(broken) in printed
    assert FrameIndex(tmp_path / 'out' / 'index').shard_names == ['good-00000']
    assert not (tmp_path / 'out' / 'labels' / 'broken').exists()


def _label_cmd(bags, out, cfg, dataset):
    return [sys.executable, '-m', 'rsd_drive.cli', 'label', *map(str, bags), '--out', str(out),
            '--backend', 'vlm', '--config', str(cfg), '--dataset-config', str(dataset),
            '--image-size', '28x28', '--chunk-frames', '2', '--workers', '1', '--no-progress']


def test_killed_with_sigkill_and_rerun_labels_every_frame_exactly_once(models, tmp_path):
    bags = [write_drive(tmp_path / f'drive{i}', cameras=['front'], n_frames=n)
            for i, n in enumerate((9, 6))]
    dataset = write_dataset_yaml(tmp_path / 'dataset.yaml', ['front'])
    cfg = write_teacher_yaml(tmp_path / 'teacher.yaml', model_dir=str(models['vlm']),
                             unparsable_answer='empty', vlm={'max_new_tokens': 48})
    out = tmp_path / 'out'
    proc = subprocess.Popen(_label_cmd(bags, out, cfg, dataset), env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:  # kill once the first chunk is committed
            if read_manifest(out / 'index')['shards'] or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
        assert read_manifest(out / 'index')['shards'], \
            'timed out after 240 s waiting for the first committed chunk (the moment to kill)'
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    partial = read_manifest(out / 'index')['shards']
    assert 1 <= len(partial) < 8, 'the kill must land mid-run'
    assert not (out / 'work' / 'drive1' / 'done.json').exists()
    # Rerun: finishes, and every frame is in the index once.
    done = subprocess.run(_label_cmd(bags, out, cfg, dataset), env=os.environ.copy(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    stamps = _index_stamps(out)
    expected = sorted([FIRST_STAMP + k * 10**8 for k in range(9)] +
                      [FIRST_STAMP + k * 10**8 for k in range(6)])
    assert sorted(stamps) == expected  # 15 frames, none twice, none lost
    shards = read_manifest(out / 'index')['shards']
    assert sorted(shards) == [f'drive0-{k:05d}' for k in range(5)] + \
        [f'drive1-{k:05d}' for k in range(3)]
    for name, n in (('drive0', 9), ('drive1', 6)):
        _, _, answers = check_label_bag(out / 'labels' / name,
                                        [FIRST_STAMP + k * 10**8 for k in range(n)])
        assert len({t for t, _ in answers}) == n
    assert not list(out.rglob('*.tmp')) and not list((out / 'index' / 'shards').glob('.*'))


@pytest.mark.skipif(importlib.util.find_spec('ray') is not None, reason='ray is installed')
def test_ray_address_without_ray_is_a_clear_error(tmp_path, capsys):
    bag = write_drive(tmp_path / 'drive', cameras=['front'], n_frames=2)
    code = cli_main(['label', str(bag), '--out', str(tmp_path / 'out'), '--ray-address',
                     'ray://127.0.0.1:10001', '--no-progress'])
    assert code == 2
    assert "needs the 'ray' package" in capsys.readouterr().err


def test_a_bag_that_changed_since_labelling_is_refused(tmp_path, capsys):
    import shutil
    dataset = write_dataset_yaml(tmp_path / 'dataset.yaml', ['front'])
    bag = write_drive(tmp_path / 'drive', cameras=['front'], n_frames=3)
    args = ['label', str(bag), '--out', str(tmp_path / 'out'), '--dataset-config', str(dataset),
            '--image-size', '16x16', '--no-progress']
    assert cli_main(args) == 0
    shutil.rmtree(bag)
    write_drive(bag, cameras=['front'], n_frames=5)
    assert cli_main(args) == 1
    assert 'changed since it was labelled' in capsys.readouterr().out
    assert len(FrameIndex(tmp_path / 'out' / 'index')) == 3  # the old labels are untouched
