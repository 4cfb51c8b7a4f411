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
        future=rng.normal(size=(20, 2)), risk=rng.random(grid), stamps=1_000 + i)


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
