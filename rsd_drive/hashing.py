"""The one way a file is hashed: SHA-256, streamed in blocks (graphs and weights can be
hundreds of MB). Used for the ONNX encoder cache key, the checkpoint fingerprint in deploy.json
and the TensorRT engine key."""
from __future__ import annotations

import hashlib

BLOCK = 1 << 20


def update_from_file(h, path, block: int = BLOCK):
    """Feed the bytes of ``path`` into the hash object ``h`` (any hashlib object); -> ``h``."""
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(block), b''):
            h.update(chunk)
    return h


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return update_from_file(hashlib.sha256(), path).hexdigest()
