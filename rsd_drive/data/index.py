"""The training index: memory-mappable shards of labelled frames plus a manifest.

Layout::

    INDEX/manifest.json          what is complete: shards, frame counts, skip reasons, geometry
    INDEX/shards/<name>/*.npy    one array per field, first axis = frame

Fields per frame (N cameras at the model's input size H x W):

    images       uint8   [N, H, W, 3]   RGB, resized with rsd_drive.data.preprocess.resize_camera
    intrinsics   float32 [N, 3, 3]      pinhole matrix at H x W
    cam_to_ego   float32 [N, 4, 4]      optical frame -> base_link
    past_states  float32 [16, 4]        x, y, yaw, speed in base_link at t0 (inputs)
    intent       int64   []             rsd_drive.INTENTS index (input)
    init_speed   float32 []             m/s at t0
    future       float32 [20, 2]        logged future waypoints in base_link (planning target)
    risk         float16 [rows, cols]   teacher risk grid in [0, 1] (distillation target)
    stamps       int64   []             reference camera stamp, ns
    route        float32 [R, 2]         the route ahead in base_link (input; zeros without one)
    route_valid  float32 []             1 where the drive recorded a route, else 0 (the mask)

An index written before the route input has no ``route``/``route_valid``: it reads as route [0, 2]
with the mask off.
A shard becomes visible only when it is complete: arrays are written to a temporary directory that
is renamed into place, then the manifest is rewritten atomically under a file lock, so a labeler
killed at any point leaves either a whole shard or none, and concurrent workers never clash.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from rsd_drive.atomic import locked, write_json_atomic

FIELDS = {
    'images': np.uint8, 'intrinsics': np.float32, 'cam_to_ego': np.float32,
    'past_states': np.float32, 'intent': np.int64, 'init_speed': np.float32,
    'future': np.float32, 'risk': np.float16, 'stamps': np.int64,
    'route': np.float32, 'route_valid': np.float32,
}
# Fields an older index may lack, and what they read as there.
OPTIONAL_FIELDS = {'route': np.zeros((0, 2), np.float32), 'route_valid': np.float32(0.0)}
MANIFEST = 'manifest.json'
INDEX_VERSION = 1


def read_manifest(index_dir) -> dict:
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        return {'version': INDEX_VERSION, 'shards': {}}
    return json.loads(path.read_text())


class ShardWriter:
    """Accumulates frames of one shard; ``commit`` publishes them atomically."""

    def __init__(self, index_dir, name: str, meta: dict | None = None):
        self.index_dir, self.name = Path(index_dir), name
        self.meta = dict(meta or {})
        self._frames = {k: [] for k in FIELDS}

    def __len__(self) -> int:
        return len(self._frames['stamps'])

    def add(self, **frame) -> None:
        frame = {**{k: v for k, v in OPTIONAL_FIELDS.items() if k not in frame}, **frame}
        missing = set(FIELDS) - set(frame)
        if missing:
            raise KeyError(f'frame lacks fields {sorted(missing)}')
        for k, dtype in FIELDS.items():
            self._frames[k].append(np.asarray(frame[k], dtype=dtype))

    def commit(self, skipped: dict | None = None, **global_meta) -> Path:
        """Write the shard and register it in the manifest. ``global_meta`` (e.g. grid, cameras,
        image_hw) must agree with what the index already holds.

        Crash order: every array is fsynced (and its directory) before the shard is renamed into
        place, and the shard before the manifest names it. A shard re-committed under an existing
        name (a resumed chunk) replaces the old one without a moment where neither is there: the
        two directories are swapped atomically (``renameat2(RENAME_EXCHANGE)``) where the file
        system can, else the old one is renamed aside, the new one in, and the old one deleted.
        """
        shards = self.index_dir / 'shards'
        shards.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=shards, prefix=f'.{self.name}.'))
        try:
            for k, dtype in FIELDS.items():
                arr = (np.stack(self._frames[k]) if self._frames[k]
                       else np.zeros((0,), dtype=dtype))
                with open(tmp / f'{k}.npy', 'wb') as fh:
                    np.save(fh, arr)
                    fh.flush()
                    os.fsync(fh.fileno())
            _fsync_dir(tmp)
            final = shards / self.name
            with locked(self.index_dir):
                manifest = read_manifest(self.index_dir)
                for key, value in global_meta.items():
                    if key in manifest and manifest[key] != value:
                        raise ValueError(f'{self.index_dir}: shard {self.name} has {key}={value}, '
                                         f'the index has {manifest[key]}')
                    manifest[key] = value
                _remove_stale_temporaries(shards, self.name, keep=tmp)
                old = _replace_dir(tmp, final)
                _fsync_dir(shards)
                manifest['shards'][self.name] = {'frames': len(self), 'skipped': skipped or {},
                                                 **self.meta}
                write_json_atomic(self.index_dir / MANIFEST, manifest)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
            return final
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temporaries(shards: Path, name: str, keep: Path) -> None:
    """Temporary directories of this shard left by a writer killed mid-commit (one writer per
    shard name at a time: the chunk's bag is labelled by one worker)."""
    for p in shards.glob(f'.{name}.*'):
        if p != keep and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _replace_dir(new: Path, final: Path) -> Path | None:
    """Put ``new`` at ``final``. Returns the directory now holding the old shard (to delete once
    the manifest is written), or None if there was none."""
    if not final.exists():
        new.rename(final)
        return None
    if _exchange(new, final):
        return new  # ``new`` now holds the old shard
    aside = Path(tempfile.mkdtemp(dir=final.parent, prefix=f'.{final.name}.old.'))
    aside.rmdir()
    final.rename(aside)
    new.rename(final)
    return aside


class FrameIndex:
    """Read side: all complete shards, memory-mapped; ``index[i]`` is one frame as a dict."""

    def __init__(self, index_dir):
        self.index_dir = Path(index_dir)
        self.manifest = read_manifest(self.index_dir)
        if not (self.index_dir / MANIFEST).is_file():
            raise FileNotFoundError(f'{self.index_dir}: no {MANIFEST}; not a training index')
        self._shards, self._offsets, total = [], [], 0
        for name, info in sorted(self.manifest['shards'].items()):
            if info['frames'] == 0:
                continue
            arrays = {k: np.load(self.index_dir / 'shards' / name / f'{k}.npy', mmap_mode='r')
                      for k in FIELDS
                      if k not in OPTIONAL_FIELDS
                      or (self.index_dir / 'shards' / name / f'{k}.npy').is_file()}
            self._shards.append((name, arrays))
            self._offsets.append(total)
            total += info['frames']
        self._len = total

    def __len__(self) -> int:
        return self._len

    @property
    def shard_names(self) -> list[str]:
        return [n for n, _ in self._shards]

    def locate(self, i: int) -> tuple[str, int]:
        if not 0 <= i < self._len:
            raise IndexError(i)
        s = int(np.searchsorted(self._offsets, i, side='right')) - 1
        return self._shards[s][0], i - self._offsets[s]

    def __getitem__(self, i: int) -> dict:
        return self.get(i)

    def get(self, i: int, fields=None) -> dict:
        """Frame i with only the named fields (all by default): training on cached features
        never needs to read the pixels."""
        if not 0 <= i < self._len:
            raise IndexError(i)
        s = int(np.searchsorted(self._offsets, i, side='right')) - 1
        arrays = self._shards[s][1]
        j = i - self._offsets[s]
        return {k: np.asarray(arrays[k][j]) if k in arrays else OPTIONAL_FIELDS[k].copy()
                for k in (fields or FIELDS)}
