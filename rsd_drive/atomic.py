"""Writing files so readers see all or nothing: write a temporary file beside the target, fsync,
rename over it. A process killed at any point leaves the old file (or none), never half of one."""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(directory):
    """Exclusive lock on ``directory`` across processes (parallel labelers, cache builders)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / '.lock', 'w') as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_atomic(path, write) -> Path:
    """``write(tmp_path)`` fills a temporary file that then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, 'rb+') as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def remove_stale_temp_files(directory) -> int:
    """Delete what ``write_atomic`` leaves when its process is killed mid-write (``.<name>.*.tmp``
    in ``directory``). Call it only where no other writer can be active (the caller owns the
    directory, e.g. one labeler per bag). Returns how many were removed."""
    stale = list(Path(directory).glob('.*.tmp'))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def write_bytes_atomic(path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text_atomic(path, text: str) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json_atomic(path, data, sort_keys: bool = False) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1, sort_keys=sort_keys))


def replace_dir(new, final) -> Path:
    """Directory ``new`` (complete, beside ``final``) takes the place of ``final``: the old one is
    renamed aside, the new one in, the old one deleted; a reader sees one or the other whole
    (deploy artifacts; the index has its own exchange-based variant)."""
    import shutil

    new, final = Path(new), Path(final)
    old = final.with_name(f'.{final.name}.old')
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(new, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
