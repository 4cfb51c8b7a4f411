"""``rsd-drive cache``: run the frozen encoder once per frame and keep its features on disk.

FROST-Drive's encoder never trains, so its output for a frame never changes: computing it once
and training every epoch on the stored tokens removes the encoder from the training loop.

Layout (default ``<INDEX>/features``; one directory per cache key)::

    <cache_root>/<key>/identity.json              encoder fingerprint + preprocessing (the key)
    <cache_root>/<key>/<shard>/source.json        which index shard (frames, content digest)
    <cache_root>/<key>/<shard>/features.npy       float16 [F, N, P, C] (np.lib.format.open_memmap)
    <cache_root>/<key>/<shard>/done.npy           bool [F], replaced atomically after every batch
    <cache_root>/<key>/.locks/<shard>/.lock       one builder per shard at a time

The key hashes the encoder's identity (every weight tensor and its architecture config, or the
encoder's own ``fingerprint()``, e.g. an ONNX encoder's file hash) and the preprocessing (image
size, normalisation mean/std, token grid, storage dtype). A changed encoder or preprocessing gives
a new key, so a stale cache is never read; a re-written index shard (different content digest)
is recomputed. A killed run resumes from the done mask: features are flushed before the mask
that declares them done is renamed into place, so a frame marked done is always on disk.

Under torchrun (``torchrun --nproc_per_node N -m rsd_drive.cli cache ...``) every rank encodes
its own whole shards (:func:`rank_shards`) into the same cache, then all ranks meet in one
all-reduce bounded by the process group's explicit timeout (``--dist-timeout``); the cache is
byte for byte the one a single process builds.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from rsd_drive.atomic import locked, write_json_atomic
from rsd_drive.data.index import FrameIndex
from rsd_drive.data.preprocess import model_inputs

CACHE_VERSION = 1
FEATURE_DTYPE = np.float16
FEATURES_FILE, DONE_FILE, SOURCE_FILE, IDENTITY_FILE = (
    'features.npy', 'done.npy', 'source.json', 'identity.json')
LOCKS_DIR = '.locks'  # <key>/.locks/<shard>/.lock: one builder per shard at a time
# Config entries that describe where/when a model was saved, not what it computes.
_VOLATILE_CONFIG_KEYS = {'transformers_version', 'architectures', 'dtype', 'torch_dtype'}


class CacheError(RuntimeError):
    """A feature cache that cannot be used (incomplete, or not matching the index)."""


# -- identity -----------------------------------------------------------------------------------
def _stable_config(value):
    """A transformers config dict without volatile entries (paths, versions, dtype, private)."""
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return {str(k): _stable_config(v) for k, v in items
                if not str(k).startswith('_') and k not in _VOLATILE_CONFIG_KEYS}
    if isinstance(value, (list, tuple)):
        return [_stable_config(v) for v in value]
    return value


def encoder_fingerprint(encoder) -> str:
    """Hex digest identifying what the encoder computes.

    An encoder may provide ``fingerprint() -> str`` itself (an ONNX encoder hashes its file);
    otherwise every tensor of its state dict (name, dtype, shape, bytes) and its transformers
    config are hashed. The digest is memoised on the object: a frozen encoder never changes.
    """
    memo = getattr(encoder, '_rsd_fingerprint', None)
    if memo is not None:
        return memo
    own = getattr(encoder, 'fingerprint', None)
    if callable(own):
        digest = str(own())
    else:
        state = encoder.state_dict() if isinstance(encoder, torch.nn.Module) else {}
        if not state:
            raise CacheError(f'{type(encoder).__name__} has no weights to fingerprint; give it a '
                             f'fingerprint() method (e.g. a hash of its model file)')
        h = hashlib.blake2b(digest_size=20)
        h.update(type(encoder).__name__.encode())
        config = getattr(getattr(encoder, 'vision_model', None), 'config', None)
        if config is not None:
            h.update(json.dumps(_stable_config(config.to_dict()), sort_keys=True,
                                default=str).encode())
        for name in sorted(state):
            tensor = state[name].detach().cpu().contiguous()
            h.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)}'.encode())
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        digest = h.hexdigest()
    try:
        object.__setattr__(encoder, '_rsd_fingerprint', digest)
    except AttributeError:
        pass
    return digest


def _buffer_values(encoder, name):
    value = getattr(encoder, name, None)
    return None if value is None else [float(v) for v in torch.as_tensor(value).flatten()]


def cache_identity(encoder, image_hw) -> dict:
    """Everything that determines the cached features of a frame, as a JSON-able dict."""
    image_hw = [int(image_hw[0]), int(image_hw[1])]
    return {
        'version': CACHE_VERSION,
        'encoder': encoder_fingerprint(encoder),
        'encoder_class': type(encoder).__name__,
        'preprocessing': {
            'image_hw': image_hw,
            'image_mean': _buffer_values(encoder, 'mean'),
            'image_std': _buffer_values(encoder, 'std'),
            'token_grid': list(encoder.token_grid(image_hw)),
            'hidden_size': int(encoder.hidden_size),
            'dtype': np.dtype(FEATURE_DTYPE).name,
        },
    }


def cache_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


# -- index helpers ------------------------------------------------------------------------------
def shard_ranges(index: FrameIndex) -> list[tuple[str, int, int]]:
    """(shard name, first global frame, end) in FrameIndex order (sorted, no empty shards)."""
    ranges, start = [], 0
    for name in index.shard_names:
        frames = int(index.manifest['shards'][name]['frames'])
        ranges.append((name, start, start + frames))
        start += frames
    if start != len(index):
        raise CacheError(f'{index.index_dir}: manifest frame counts ({start}) do not match the '
                         f'index ({len(index)} frames)')
    return ranges


def rank_shards(ranges, world_size: int) -> list[list[int]]:
    """Which shards (positions in ``ranges``) each of ``world_size`` ranks encodes: whole shards,
    the largest first to the rank with the fewest frames so far (ties: the lower rank). The same
    on every rank, so the ranks agree without talking."""
    if world_size < 1:
        raise ValueError(f'world_size must be positive, got {world_size}')
    load, plan = [0] * world_size, [[] for _ in range(world_size)]
    for i in sorted(range(len(ranges)), key=lambda i: (-(ranges[i][2] - ranges[i][1]), i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        plan[r].append(i)
        load[r] += ranges[i][2] - ranges[i][1]
    return [sorted(p) for p in plan]


def index_image_hw(index: FrameIndex) -> tuple[int, int]:
    if len(index) == 0:
        raise CacheError(f'{index.index_dir}: the index has no frames')
    shape = index[0]['images'].shape  # [N, H, W, 3]
    return int(shape[1]), int(shape[2])


def _shard_digest(index: FrameIndex, name: str, start: int, stop: int) -> str:
    """Cheap content digest of a shard: all stamps plus the first and last frame's pixels."""
    h = hashlib.blake2b(digest_size=16)
    first, last = index[start], index[stop - 1]
    # One field file read directly (layout in rsd_drive.data.index), not every frame's pixels.
    stamps = np.load(index.index_dir / 'shards' / name / 'stamps.npy', mmap_mode='r')
    for part in (stamps, first['images'], last['images'], first['cam_to_ego'], last['intrinsics']):
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()


# -- atomic files -------------------------------------------------------------------------------
def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix='.tmp')
    with os.fdopen(fd, 'wb') as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _create_memmap_atomic(path: Path, shape) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix='.tmp')
    os.close(fd)
    mm = np.lib.format.open_memmap(tmp, mode='w+', dtype=FEATURE_DTYPE, shape=tuple(shape))
    mm.flush()
    del mm
    os.replace(tmp, path)


# -- the cache ----------------------------------------------------------------------------------
class FeatureCache:
    """The cached features of one index for one encoder + preprocessing (may be incomplete)."""

    def __init__(self, index, encoder, cache_dir=None):
        self.index = index if isinstance(index, FrameIndex) else FrameIndex(index)
        self.encoder = encoder
        self.image_hw = index_image_hw(self.index)
        self.identity = cache_identity(encoder, self.image_hw)
        self.key = cache_key(self.identity)
        self.root = Path(cache_dir) if cache_dir else self.index.index_dir / 'features'
        self.path = self.root / self.key
        self.ranges = shard_ranges(self.index)
        num_cameras = int(self.index[0]['images'].shape[0])
        gh, gw = self.identity['preprocessing']['token_grid']
        self.frame_shape = (num_cameras, gh * gw, self.identity['preprocessing']['hidden_size'])
        self._digests = {}

    # -- state --------------------------------------------------------------------------------
    def _digest(self, name, start, stop) -> str:
        if name not in self._digests:
            self._digests[name] = _shard_digest(self.index, name, start, stop)
        return self._digests[name]

    def _shard_valid(self, name, start, stop) -> bool:
        shard_dir = self.path / name
        try:
            source = json.loads((shard_dir / SOURCE_FILE).read_text())
            header = np.load(shard_dir / FEATURES_FILE, mmap_mode='r')
        except (OSError, ValueError):
            return False
        return (source.get('frames') == stop - start
                and source.get('digest') == self._digest(name, start, stop)
                and header.shape == (stop - start, *self.frame_shape)
                and header.dtype == FEATURE_DTYPE)

    def _done_mask(self, name, start, stop) -> np.ndarray:
        if not self._shard_valid(name, start, stop):
            return np.zeros(stop - start, dtype=bool)
        try:
            done = np.load(self.path / name / DONE_FILE)
        except (OSError, ValueError):
            return np.zeros(stop - start, dtype=bool)
        return done if done.shape == (stop - start,) else np.zeros(stop - start, dtype=bool)

    def missing_frames(self) -> int:
        return sum(int((~self._done_mask(n, a, b)).sum()) for n, a, b in self.ranges)

    def is_complete(self) -> bool:
        return self.missing_frames() == 0

    def other_keys(self) -> list[Path]:
        """Caches under the same root made with another encoder or preprocessing (stale here)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir()
                      if p.is_dir() and p.name != self.key and (p / IDENTITY_FILE).is_file())

    # -- building -----------------------------------------------------------------------------
    def _prepare_shard(self, name, start, stop) -> np.ndarray:
        """Make the shard's files consistent with the index; return its done mask."""
        shard_dir = self.path / name
        if self._shard_valid(name, start, stop):
            return self._done_mask(name, start, stop)
        if shard_dir.exists():
            shutil.rmtree(shard_dir)  # built from other content: recompute all of it
        shard_dir.mkdir(parents=True)
        _create_memmap_atomic(shard_dir / FEATURES_FILE, (stop - start, *self.frame_shape))
        done = np.zeros(stop - start, dtype=bool)
        _save_npy_atomic(shard_dir / DONE_FILE, done)
        write_json_atomic(shard_dir / SOURCE_FILE,
                          {'frames': stop - start, 'digest': self._digest(name, start, stop)})
        return done

    def _encode_shard(self, name, start, stop, batch_size, device, budget, bar) -> int:
        """Compute the shard's missing frames (at most ``budget``) under the shard's lock."""
        with locked(self.path / LOCKS_DIR / name):
            done = self._prepare_shard(name, start, stop)
            pending = np.flatnonzero(~done)[:budget]
            if not len(pending):
                return 0
            shard_dir = self.path / name
            features = np.load(shard_dir / FEATURES_FILE, mmap_mode='r+')
            for b in range(0, len(pending), batch_size):
                rows = pending[b:b + batch_size]
                frames = [self.index[start + int(j)] for j in rows]
                images = model_inputs(np.stack([f['images'] for f in frames]),
                                      np.stack([f['intrinsics'] for f in frames]),
                                      np.stack([f['cam_to_ego'] for f in frames]),
                                      np.stack([f['past_states'] for f in frames]),
                                      np.stack([f['intent'] for f in frames]))['images']
                x = torch.from_numpy(images).to(device)
                tokens = self.encoder(x.flatten(0, 1))
                tokens = tokens.view(len(rows), *self.frame_shape)
                features[rows] = tokens.to('cpu', torch.float32).numpy().astype(FEATURE_DTYPE)
                features.flush()  # on disk before the mask says so
                done[rows] = True
                _save_npy_atomic(shard_dir / DONE_FILE, done)
                bar.update(len(rows))
            del features
            return len(pending)

    @torch.inference_mode()
    def build(self, batch_size: int = 16, device=None, progress: bool = True,
              max_frames: int | None = None, rank: int = 0, world_size: int = 1) -> dict:
        """Compute the missing frames (at most ``max_frames`` by this process this call).
        Returns counts/timing.

        With ``world_size`` > 1 (one process per rank, e.g. under torchrun) this process encodes
        only the shards :func:`rank_shards` gives ``rank``; every rank writes into the same cache,
        each shard under its own lock, so the result is the cache one process would build."""
        device = torch.device(device) if device is not None else _module_device(self.encoder)
        if isinstance(self.encoder, torch.nn.Module):
            self.encoder.to(device).eval()
        self.path.mkdir(parents=True, exist_ok=True)
        with locked(self.path):
            write_json_atomic(self.path / IDENTITY_FILE, self.identity)
        mine = [self.ranges[i] for i in rank_shards(self.ranges, world_size)[rank]]
        todo = sum(int((~self._done_mask(n, a, b)).sum()) for n, a, b in mine)
        budget = todo if max_frames is None else min(todo, int(max_frames))
        desc = f'cache {self.key[:8]}' + (f' rank {rank}/{world_size}' if world_size > 1 else '')
        bar = _progress(budget, desc, progress)
        computed, t0 = 0, time.perf_counter()
        for name, start, stop in mine:
            if computed >= budget:
                break
            computed += self._encode_shard(name, start, stop, batch_size, device,
                                           budget - computed, bar)
        bar.close()
        elapsed = time.perf_counter() - t0
        return {'key': self.key, 'path': str(self.path), 'computed': computed,
                'missing': self.missing_frames(), 'frames': len(self.index),
                'seconds': elapsed, 'frames_per_s': computed / elapsed if elapsed > 0 else 0.0}

    # -- reading ------------------------------------------------------------------------------
    def reader(self) -> 'CachedFeatures':
        missing = self.missing_frames()
        if missing:
            raise CacheError(
                f'feature cache {self.path} for {self.index.index_dir} lacks {missing} of '
                f'{len(self.index)} frames; run `rsd-drive cache {self.index.index_dir}` with '
                f'this encoder')
        return CachedFeatures(self)


class CachedFeatures:
    """Read side: ``features[i]`` -> float16 [N, P, C] of global frame i (memory-mapped)."""

    def __init__(self, cache: FeatureCache):
        self.key, self.path = cache.key, cache.path
        self.frame_shape = cache.frame_shape
        self._starts = np.array([a for _, a, _ in cache.ranges], dtype=np.int64)
        self._arrays = [np.load(cache.path / name / FEATURES_FILE, mmap_mode='r')
                        for name, _, _ in cache.ranges]
        self._len = cache.ranges[-1][2] if cache.ranges else 0

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self._len:
            raise IndexError(i)
        s = int(np.searchsorted(self._starts, i, side='right')) - 1
        return np.array(self._arrays[s][i - self._starts[s]])  # a writable copy for torch


def _module_device(module) -> torch.device:
    if isinstance(module, torch.nn.Module):
        for p in module.parameters():
            return p.device
    return torch.device('cpu')


def _progress(total, desc, enabled):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit='frame', disable=not enabled, dynamic_ncols=True)


def ensure_cache(index, encoder, cache_dir=None, batch_size: int = 16, device=None,
                 progress: bool = True) -> CachedFeatures:
    """Open the cache of ``index`` for ``encoder``, computing whatever is missing first."""
    cache = FeatureCache(index, encoder, cache_dir)
    if not cache.is_complete():
        cache.build(batch_size=batch_size, device=device, progress=progress)
    return cache.reader()


# -- several processes (torchrun) --------------------------------------------------------------
DEFAULT_DIST_TIMEOUT_S = 1800.0


def torchrun_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    return (int(os.environ.get('RANK', '0')), int(os.environ.get('WORLD_SIZE', '1')),
            int(os.environ.get('LOCAL_RANK', '0')))


@contextmanager
def process_group(device, timeout_s: float = DEFAULT_DIST_TIMEOUT_S):
    """torchrun's process group (gloo on CPU, NCCL on CUDA) with an explicit timeout, for the
    duration of the block; nothing outside torchrun or when a group already exists."""
    _, world, _ = torchrun_ranks()
    if world <= 1 or dist.is_initialized():
        yield
        return
    backend = 'nccl' if torch.device(device).type == 'cuda' else 'gloo'
    dist.init_process_group(backend, timeout=timedelta(seconds=float(timeout_s)))
    try:
        yield
    finally:
        dist.destroy_process_group()


def build_on_all_ranks(cache: FeatureCache, batch_size: int = 16, device=None,
                       progress: bool = True, max_frames: int | None = None) -> dict:
    """:meth:`FeatureCache.build` of this rank's share; with a process group, the ranks then meet
    in one all-reduce (bounded by the group's timeout) that tells every rank whether all shares
    were built. Raises CacheError on every rank if any rank failed."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    stats, failure = None, None
    try:
        stats = cache.build(batch_size=batch_size, device=device, progress=progress and rank == 0,
                            max_frames=max_frames, rank=rank, world_size=world)
    except Exception as exc:  # noqa: BLE001 - tell the other ranks before raising
        failure = exc
        if world == 1:
            raise
    if world == 1:
        return stats
    on = torch.device(device) if dist.get_backend() == 'nccl' else torch.device('cpu')
    counts = torch.zeros(world + 1, dtype=torch.float64, device=on)  # [failed ranks, per rank]
    counts[0] = float(failure is not None)
    counts[1 + rank] = float(stats['computed'] if stats else 0)
    dist.all_reduce(counts)  # every rank waits here for all: bounded by the group's timeout
    if failure is not None:
        raise failure
    if counts[0] > 0:
        raise CacheError(f'{int(counts[0])} of {world} ranks failed to encode their shards of '
                         f'{cache.path}; see their output')
    per_rank = [int(c) for c in counts[1:].tolist()]
    stats.update(computed=sum(per_rank), per_rank=per_rank, missing=cache.missing_frames(),
                 world_size=world)
    return stats


# -- encoders for the command line --------------------------------------------------------------
def training_encoder(model_cfg, encoder_seed: int = 0, base_dir=None):
    """The frozen encoder a model config names, built exactly as training builds it: a randomly
    initialised encoder (``source: config``) is drawn from ``encoder_seed`` so every run with the
    same seed gets the same weights, and therefore the same feature cache."""
    from rsd_drive.model.encoder import build_encoder

    hw = (model_cfg.image_height, model_cfg.image_width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(encoder_seed)
        return build_encoder(model_cfg.encoder, hw, base_dir)


def _encoder_from_args(args):
    from rsd_drive.model.config import EncoderConfig
    from rsd_drive.model.encoder import build_encoder

    if args.checkpoint:
        from rsd_drive.model.planner import RiskPlanner

        return RiskPlanner.from_pretrained(args.checkpoint).encoder
    if args.config:
        from rsd_drive.train.config import load_config

        model_cfg, train_cfg = load_config(args.config)
        return training_encoder(model_cfg, train_cfg.encoder_seed)
    path = Path(args.encoder)
    source = 'onnx' if path.suffix == '.onnx' else 'pretrained'
    kwargs = {}
    if args.image_mean:
        kwargs['image_mean'] = args.image_mean
    if args.image_std:
        kwargs['image_std'] = args.image_std
    cfg = EncoderConfig(source=source, path=str(path.resolve()), onnx_output=args.onnx_output,
                        trust_remote_code=args.trust_remote_code, **kwargs)
    return build_encoder(cfg, None)


def add_arguments(parser) -> None:
    parser.add_argument('index', help='training index directory (rsd-drive label --out)')
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument('--encoder', help='frozen encoder: a transformers vision model directory '
                                         'or an ONNX file')
    which.add_argument('--checkpoint', help='use the encoder of this RiskPlanner checkpoint')
    which.add_argument('--config', help='use the encoder a training config builds '
                                        '(config/train.yaml)')
    parser.add_argument('--image-mean', type=float, nargs=3, help='with --encoder: RGB mean')
    parser.add_argument('--image-std', type=float, nargs=3, help='with --encoder: RGB std')
    parser.add_argument('--onnx-output', help='with an ONNX --encoder: the feature tensor name')
    parser.add_argument('--trust-remote-code', action='store_true',
                        help="with --encoder: allow the model directory's own code (InternViT)")
    parser.add_argument('--cache-dir', help='cache root (default: INDEX/features)')
    parser.add_argument('--batch-size', type=int, default=16, help='frames per encoder batch')
    parser.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
    parser.add_argument('--max-frames', type=int,
                        help='compute at most this many frames now (the rest on a later run)')
    parser.add_argument('--prune', action='store_true',
                        help='delete caches of other encoders/preprocessing under the cache root')
    parser.add_argument('--dist-timeout', type=float, default=DEFAULT_DIST_TIMEOUT_S,
                        help='under torchrun: seconds a rank waits for the others before it '
                             'fails (default: %(default)s)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def resolve_cache_device(device: str) -> str:
    """``auto`` -> cuda when available; under torchrun ``cuda`` means this rank's GPU."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    _, world, local_rank = torchrun_ranks()
    if world > 1 and device == 'cuda':
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    return device


def run(args) -> int:
    device = resolve_cache_device(args.device)
    with process_group(device, args.dist_timeout):
        code = _run(args, device)
    return code


def _run(args, device) -> int:
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        index = FrameIndex(args.index)
        encoder = _encoder_from_args(args)
        cache = FeatureCache(index, encoder, args.cache_dir)
        stale = cache.other_keys() if rank == 0 else []
        if stale and args.prune:
            for path in stale:
                shutil.rmtree(path)
            print(f'removed {len(stale)} stale cache(s) under {cache.root}')
        elif stale:
            print(f'note: {len(stale)} cache(s) of another encoder/preprocessing under '
                  f'{cache.root} (not used; --prune deletes them)')
        stats = build_on_all_ranks(cache, batch_size=args.batch_size, device=device,
                                   progress=not args.no_progress, max_frames=args.max_frames)
    except (OSError, ValueError, CacheError) as e:  # OSError: e.g. a read-only index directory
        print(f'rsd-drive cache: {e}', file=sys.stderr)
        return 2
    if rank != 0:
        return 0
    state = 'complete' if stats['missing'] == 0 else f'{stats["missing"]} frames still missing'
    ranks = (f' by {stats["world_size"]} ranks ({" + ".join(map(str, stats["per_rank"]))})'
             if stats.get('world_size', 1) > 1 else '')
    print(f'cache {stats["key"]} at {stats["path"]}: computed {stats["computed"]} of '
          f'{stats["frames"]} frames{ranks} in {stats["seconds"]:.1f} s '
          f'({stats["frames_per_s"]:.1f} frames/s); {state}')
    return 0
