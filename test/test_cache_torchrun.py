"""`rsd-drive cache` under torchrun: two gloo processes each encode their own shards into one
cache, byte for byte the cache a single process builds."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_index import make_index, tiny_model_config

from rsd_drive.train.cache import rank_shards
from rsd_drive.train.config import TrainConfig, save_config


def tree(root: Path) -> dict:
    """Relative path -> bytes of every file under ``root`` (lock files hold nothing)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


def cache_cmd(index, cfg, cache_dir, torchrun=False):
    head = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node',
            '2'] if torchrun else [sys.executable]
    return head + ['-m', 'rsd_drive.cli', 'cache', str(index), '--config', str(cfg),
                   '--cache-dir', str(cache_dir), '--batch-size', '4', '--device', 'cpu',
                   '--dist-timeout', '120', '--no-progress']


def test_rank_shards_splits_whole_shards_evenly():
    ranges = [('a', 0, 16), ('b', 16, 32), ('c', 32, 40), ('d', 40, 41)]
    assert rank_shards(ranges, 1) == [[0, 1, 2, 3]]
    assert rank_shards(ranges, 2) == [[0, 2], [1, 3]]  # 24 and 17 frames
    assert rank_shards(ranges, 5) == [[0], [1], [2], [3], []]
    with pytest.raises(ValueError):
        rank_shards(ranges, 0)


def test_two_gloo_ranks_build_the_single_process_cache(tmp_path):
    index = make_index(tmp_path / 'index', 40, seed=5, shard_size=16)  # shards of 16, 16, 8
    cfg = tmp_path / 'train.yaml'
    save_config(cfg, tiny_model_config(), TrainConfig(encoder_seed=3))
    env = dict(os.environ)
    single = subprocess.run(cache_cmd(index, cfg, tmp_path / 'single'), env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-2000:]
    assert 'computed 40 of 40 frames' in single.stdout
    ddp = subprocess.run(cache_cmd(index, cfg, tmp_path / 'ddp', torchrun=True), env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    # Each rank encoded its own whole shards: 16 + 8 frames and 16 frames.
    assert 'computed 40 of 40 frames by 2 ranks (24 + 16)' in ddp.stdout, ddp.stdout
    a, b = tree(tmp_path / 'single'), tree(tmp_path / 'ddp')
    assert sorted(a) == sorted(b)
    assert sum(k.endswith('features.npy') for k in a) == 3
    different = [k for k in a if a[k] != b[k]]
    assert different == [], different
    # A second run under torchrun finds nothing to do.
    again = subprocess.run(cache_cmd(index, cfg, tmp_path / 'ddp', torchrun=True), env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and 'computed 0 of 40 frames by 2 ranks (0 + 0)' in again.stdout
