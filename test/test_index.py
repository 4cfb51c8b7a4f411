"""The training index: shards appear whole or not at all; the reader sees exactly what was
committed."""
import multiprocessing as mp

import numpy as np
import pytest

from rsd_drive.data.index import FIELDS, FrameIndex, ShardWriter, read_manifest


def fake_frame(i, n=2, hw=(8, 12), grid=(4, 4)):
    rng = np.random.default_rng(i)
    return dict(
        images=rng.integers(0, 255, (n, *hw, 3), dtype=np.uint8),
        intrinsics=np.tile(np.eye(3), (n, 1, 1)), cam_to_ego=np.tile(np.eye(4), (n, 1, 1)),
        past_states=rng.normal(size=(16, 4)), intent=i % 4, init_speed=float(i),
        future=rng.normal(size=(20, 2)), risk=rng.random(grid), stamps=1_000 + i,
        route=rng.normal(size=(16, 2)), route_valid=float(i % 2))


def write_shard(index_dir, name, frames, **meta):
    w = ShardWriter(index_dir, name, meta={'source': f'{name}.mcap'})
    for i in frames:
        w.add(**fake_frame(i))
    return w.commit(skipped={'missing:back': 1}, image_hw=[8, 12], **meta)


def test_round_trip_across_shards(tmp_path):
    write_shard(tmp_path, 'b', range(3, 5))
    write_shard(tmp_path, 'a', range(0, 3))
    index = FrameIndex(tmp_path)
    assert len(index) == 5 and index.shard_names == ['a', 'b']
    for i in range(5):
        frame, expected = index[i], fake_frame(i)
        for k in FIELDS:
            np.testing.assert_allclose(frame[k], np.asarray(expected[k], dtype=FIELDS[k]))
    assert index.locate(4) == ('b', 1)
    manifest = read_manifest(tmp_path)
    assert manifest['shards']['a'] == {'frames': 3, 'skipped': {'missing:back': 1},
                                       'source': 'a.mcap'}
    with pytest.raises(IndexError):
        index[5]


def test_failed_commit_leaves_no_shard(tmp_path):
    write_shard(tmp_path, 'good', range(2))
    w = ShardWriter(tmp_path, 'bad')
    w.add(**fake_frame(0))
    bad = fake_frame(1)
    bad['images'] = bad['images'][:, :4]  # ragged: np.stack fails inside commit
    w.add(**bad)
    with pytest.raises(ValueError):
        w.commit()
    assert sorted(p.name for p in (tmp_path / 'shards').iterdir()) == ['good']
    assert list(read_manifest(tmp_path)['shards']) == ['good']


def test_inconsistent_geometry_is_refused(tmp_path):
    write_shard(tmp_path, 'a', range(2), grid={'rows': 4})
    with pytest.raises(ValueError, match='grid'):
        write_shard(tmp_path, 'b', range(2), grid={'rows': 8})
    assert list(read_manifest(tmp_path)['shards']) == ['a']


def test_missing_field_is_named(tmp_path):
    frame = fake_frame(0)
    del frame['risk']
    with pytest.raises(KeyError, match='risk'):
        ShardWriter(tmp_path, 'x').add(**frame)


def _worker(args):
    index_dir, k = args
    write_shard(index_dir, f'shard{k}', range(k * 3, k * 3 + 3))
    return k


def test_concurrent_writers_all_land(tmp_path):
    with mp.get_context('spawn').Pool(2) as pool:
        done = pool.map(_worker, [(str(tmp_path), k) for k in range(6)])
    assert sorted(done) == list(range(6))
    index = FrameIndex(tmp_path)
    assert len(index) == 18
    assert sorted(int(index[i]['stamps']) for i in range(18)) == [1000 + i for i in range(18)]


def test_not_an_index(tmp_path):
    with pytest.raises(FileNotFoundError, match='manifest'):
        FrameIndex(tmp_path)


def _fsync_recorder(monkeypatch):
    """Record the path of every fsync'ed file descriptor, in order (the real fsync still runs)."""
    import os
    real, seen = os.fsync, []

    def fsync(fd):
        seen.append(os.readlink(f'/proc/self/fd/{fd}'))
        return real(fd)
    monkeypatch.setattr(os, 'fsync', fsync)
    return seen


def test_shard_files_are_fsynced_before_the_manifest_names_them(tmp_path, monkeypatch):
    seen = _fsync_recorder(monkeypatch)
    write_shard(tmp_path, 'a', range(3))
    manifest_at = next(i for i, p in enumerate(seen) if '.manifest.json.' in p)
    arrays = [i for i, p in enumerate(seen) if p.endswith('.npy')]
    assert sorted(p.rsplit('/', 1)[1] for p in (seen[i] for i in arrays)) == \
        sorted(f'{k}.npy' for k in FIELDS)
    assert max(arrays) < manifest_at
    # The shards directory (holding the renamed shard) is synced before the manifest too.
    assert any(p == str(tmp_path / 'shards') for p in seen[:manifest_at])


@pytest.mark.parametrize('exchange', [True, False], ids=['renameat2', 'rename-aside'])
def test_recommit_replaces_the_shard_without_a_gap(tmp_path, monkeypatch, exchange):
    import threading

    import rsd_drive.data.index as index_module
    if not exchange:
        monkeypatch.setattr(index_module, '_exchange', lambda a, b: False)
    write_shard(tmp_path, 'a', range(3))
    shard = tmp_path / 'shards' / 'a'
    gaps, stop = [], threading.Event()

    def watch():  # a reader that opens the shard while it is being replaced
        while not stop.is_set():
            try:
                np.load(shard / 'stamps.npy')
            except (FileNotFoundError, ValueError) as exc:
                gaps.append(exc)

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        for k in range(20):
            write_shard(tmp_path, 'a', range(10 * k, 10 * k + 3))
    finally:
        stop.set()
        reader.join()
    (tmp_path / 'x').mkdir(), (tmp_path / 'y').mkdir()
    if exchange and not index_module._exchange(tmp_path / 'x', tmp_path / 'y'):
        pytest.skip('this file system has no renameat2(RENAME_EXCHANGE)')
    if exchange:
        assert gaps == []
    assert [int(s) for s in np.load(shard / 'stamps.npy')] == [1190, 1191, 1192]
    assert sorted(p.name for p in (tmp_path / 'shards').iterdir()) == ['a']  # old ones deleted
    assert len(FrameIndex(tmp_path)) == 3


def test_a_commit_killed_midway_leaves_nothing_behind_after_the_next(tmp_path):
    write_shard(tmp_path, 'a', range(2))
    (tmp_path / 'shards' / '.a.deadbeef').mkdir()  # a writer SIGKILLed before its rename
    (tmp_path / 'shards' / '.a.old.cafe').mkdir()  # one killed before deleting the old shard
    (tmp_path / 'shards' / '.b.0123').mkdir()      # another shard's writer: not ours to touch
    write_shard(tmp_path, 'a', range(2))
    assert sorted(p.name for p in (tmp_path / 'shards').iterdir()) == ['.b.0123', 'a']


def test_an_index_written_before_the_route_input_reads_with_the_mask_off(tmp_path):
    """Shards without route/route_valid files (older labelers) still load: route [0, 2], mask 0;
    the training dataset then feeds the model zeros with the mask off."""
    import torch  # noqa: F401  (the dataset needs torch)

    from rsd_drive.train.dataset import FrameDataset

    write_shard(tmp_path, 'a', range(0, 2))
    for name in ('route', 'route_valid'):
        (tmp_path / 'shards' / 'a' / f'{name}.npy').unlink()
    index = FrameIndex(tmp_path)
    frame = index[1]
    assert frame['route'].shape == (0, 2) and float(frame['route_valid']) == 0.0
    np.testing.assert_allclose(frame['future'], fake_frame(1)['future'], rtol=1e-6)
    item = FrameDataset(index, images=True, route_points=16)[1]
    assert tuple(item['route'].shape) == (16, 2) and float(item['route'].abs().sum()) == 0.0
    assert float(item['route_valid']) == 0.0
    fresh = tmp_path / 'fresh'
    write_shard(fresh, 'a', range(0, 2))
    item = FrameDataset(FrameIndex(fresh), images=True, route_points=16)[1]
    assert float(item['route_valid']) == 1.0
    np.testing.assert_allclose(item['route'].numpy(), fake_frame(1)['route'], rtol=1e-6)
