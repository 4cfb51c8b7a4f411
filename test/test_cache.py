"""Feature cache: the frozen encoder once per frame, keyed by encoder and preprocessing."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers_index import make_index, tiny_model_config

from rsd_drive.cli import main as cli_main
from rsd_drive.data.index import FrameIndex, ShardWriter
from rsd_drive.data.preprocess import model_inputs
from rsd_drive.model import RiskPlanner
from rsd_drive.train.cache import (CacheError, FeatureCache, cache_identity, encoder_fingerprint,
                                   training_encoder)

FRAMES = 40


@pytest.fixture(scope='module')
def index_dir(tmp_path_factory):
    return make_index(tmp_path_factory.mktemp('cache') / 'index', FRAMES, seed=7, shard_size=16)


def direct_features(encoder, index, frames):
    """What the encoder gives for these frames, computed here without the cache (float32)."""
    images = model_inputs(np.stack([index[i]['images'] for i in frames]),
                          np.stack([index[i]['intrinsics'] for i in frames]),
                          np.stack([index[i]['cam_to_ego'] for i in frames]),
                          np.stack([index[i]['past_states'] for i in frames]),
                          np.stack([index[i]['intent'] for i in frames]))['images']
    with torch.no_grad():
        x = torch.from_numpy(images)
        tokens = encoder(x.flatten(0, 1))
    return tokens.view(len(frames), x.shape[1], *tokens.shape[1:]).numpy()


def test_cache_holds_the_encoder_output_of_every_frame(index_dir, tmp_path):
    encoder = training_encoder(tiny_model_config(), encoder_seed=0)
    cache = FeatureCache(index_dir, encoder, tmp_path / 'features')
    assert cache.missing_frames() == FRAMES
    with pytest.raises(CacheError, match=f'lacks {FRAMES} of {FRAMES} frames'):
        cache.reader()
    stats = cache.build(batch_size=6, progress=False)
    assert stats['computed'] == FRAMES and stats['missing'] == 0
    reader = cache.reader()
    index = FrameIndex(index_dir)
    frames = [0, 15, 16, 17, FRAMES - 1]  # across shard boundaries (shards of 16)
    expected = direct_features(encoder, index, frames)
    got = np.stack([reader[i] for i in frames])
    assert got.dtype == np.float16 and got.shape == expected.shape == (5, 2, 16, 32)
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    # The layout is plain .npy files a memory map can open.
    shard = cache.path / index.shard_names[1] / 'features.npy'
    mm = np.load(shard, mmap_mode='r')
    assert isinstance(mm, np.memmap) and mm.shape[0] == 16
    assert json.loads((cache.path / 'identity.json').read_text()) == cache.identity
    # A second build has nothing to do.
    assert cache.build(progress=False)['computed'] == 0


def test_changed_encoder_invalidates_the_cache(index_dir, tmp_path):
    cfg = tiny_model_config()
    first = training_encoder(cfg, encoder_seed=0)
    old = FeatureCache(index_dir, first, tmp_path / 'features')
    old.build(progress=False)
    old_features = old.reader()[3]

    # Same architecture, other weights (another seed): a new key, nothing reusable.
    second = training_encoder(cfg, encoder_seed=1)
    new = FeatureCache(index_dir, second, tmp_path / 'features')
    assert new.key != old.key
    assert new.missing_frames() == FRAMES
    assert new.other_keys() == [old.path]
    assert new.build(progress=False)['computed'] == FRAMES
    assert not np.allclose(new.reader()[3], old_features)
    # One changed weight is enough.
    third = training_encoder(cfg, encoder_seed=0)
    with torch.no_grad():
        next(third.parameters()).view(-1)[0] += 1e-3
    assert FeatureCache(index_dir, third, tmp_path / 'features').key != old.key
    # The old cache is untouched and still valid for the old encoder.
    again = FeatureCache(index_dir, training_encoder(cfg, encoder_seed=0), tmp_path / 'features')
    assert again.key == old.key and again.is_complete()
    np.testing.assert_array_equal(again.reader()[3], old_features)


def test_changed_preprocessing_invalidates_the_cache(index_dir, tmp_path):
    cfg = tiny_model_config()
    encoder = training_encoder(cfg, encoder_seed=0)
    base = cache_identity(encoder, (32, 32))
    other_norm = replace(cfg, encoder=replace(cfg.encoder, image_mean=(0.5, 0.5, 0.5)))
    renormed = training_encoder(other_norm, encoder_seed=0)
    assert encoder_fingerprint(renormed) == encoder_fingerprint(encoder)  # same weights
    assert cache_identity(renormed, (32, 32)) != base
    assert FeatureCache(index_dir, renormed).key != FeatureCache(index_dir, encoder).key
    assert cache_identity(encoder, (64, 64)) != base  # another image size


def test_checkpoint_round_trip_keeps_the_cache_key(index_dir, tmp_path):
    """A saved and reloaded model (encoder under encoder/) must hit the training cache."""
    cfg = tiny_model_config()
    model = RiskPlanner(cfg, encoder=training_encoder(cfg, encoder_seed=0))
    model.save_pretrained(tmp_path / 'ckpt')
    loaded = RiskPlanner.from_pretrained(tmp_path / 'ckpt')
    assert FeatureCache(index_dir, loaded.encoder).key == FeatureCache(index_dir,
                                                                       model.encoder).key


def test_interrupted_build_resumes_where_it_stopped(index_dir, tmp_path):
    encoder = training_encoder(tiny_model_config(), encoder_seed=0)
    cache = FeatureCache(index_dir, encoder, tmp_path / 'resumed')
    first = cache.build(batch_size=4, progress=False, max_frames=13)
    assert first['computed'] == 13 and first['missing'] == FRAMES - 13
    # A crash between writing features and renaming the done mask: the mask rules, so the
    # frames it does not list are computed again (simulated by clearing a few of its entries).
    shard_dir = cache.path / FrameIndex(index_dir).shard_names[0]
    done = np.load(shard_dir / 'done.npy')
    assert done[:13].all() and not done[13:].any()
    done[10:13] = False
    np.save(shard_dir / 'done.npy', done)
    resumed = FeatureCache(index_dir, encoder, tmp_path / 'resumed')
    second = resumed.build(batch_size=4, progress=False)
    assert second['computed'] == FRAMES - 10 and second['missing'] == 0
    oneshot = FeatureCache(index_dir, encoder, tmp_path / 'oneshot')
    oneshot.build(batch_size=8, progress=False)
    a, b = cache.reader(), oneshot.reader()
    for i in range(FRAMES):
        np.testing.assert_allclose(a[i].astype(np.float32), b[i].astype(np.float32), atol=2e-3)


def test_rewritten_shard_is_recomputed_alone(tmp_path):
    index_dir = make_index(tmp_path / 'index', 32, seed=3, shard_size=16)
    encoder = training_encoder(tiny_model_config(), encoder_seed=0)
    FeatureCache(index_dir, encoder).build(progress=False)
    names = FrameIndex(index_dir).shard_names
    # Re-label the second shard with other content under the same name.
    frames = [FrameIndex(index_dir)[i] for i in range(16, 32)]
    writer = ShardWriter(index_dir, names[1])
    for f in frames:
        f['images'] = 255 - f['images']
        writer.add(**f)
    writer.commit()
    cache = FeatureCache(index_dir, encoder)
    assert cache.missing_frames() == 16
    assert cache.build(progress=False)['computed'] == 16


def test_cache_command_line(index_dir, tmp_path, capsys):
    cfg = tiny_model_config()
    RiskPlanner(cfg, encoder=training_encoder(cfg, 0)).save_pretrained(tmp_path / 'ckpt')
    code = cli_main(['cache', str(index_dir), '--checkpoint', str(tmp_path / 'ckpt'),
                     '--cache-dir', str(tmp_path / 'cli'), '--batch-size', '8', '--no-progress'])
    assert code == 0
    out = capsys.readouterr().out
    assert f'computed {FRAMES} of {FRAMES} frames' in out and 'complete' in out
    # --encoder with a transformers directory: the same weights give the same key.
    code = cli_main(['cache', str(index_dir), '--encoder', str(tmp_path / 'ckpt' / 'encoder'),
                     '--cache-dir', str(tmp_path / 'cli'), '--no-progress'])
    assert code == 0
    assert f'computed 0 of {FRAMES} frames' in capsys.readouterr().out
    code = cli_main(['cache', str(tmp_path / 'nowhere'), '--checkpoint', str(tmp_path / 'ckpt'),
                     '--no-progress'])
    assert code == 2
    assert 'nowhere' in capsys.readouterr().err
