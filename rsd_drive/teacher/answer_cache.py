"""The served teacher's answer cache: one JSON file per answer, keyed by everything the answer
depends on (model, prompt, image content, generation settings), written atomically.

A rerun, a resume or a relabel with another risk grid finds its answers here and sends no
request; a changed prompt, model, image budget or generation setting is another key. Several
labeling processes (pool workers, Ray tasks) may share one directory: files are written by
temp + rename (rsd_drive.atomic), and two writers of one key write the same answer.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from rsd_drive.atomic import write_json_atomic

KEY_VERSION = 1


def image_digest(image: np.ndarray) -> str:
    """sha256 of an image's pixels, shape and dtype (not of any encoding of it)."""
    a = np.ascontiguousarray(image)
    h = hashlib.sha256(f'{a.shape}|{a.dtype}|'.encode())
    h.update(a.tobytes())
    return h.hexdigest()


def answer_key(model: str, prompt: str, image_digests, settings: dict) -> str:
    """The cache key of one request."""
    doc = {'v': KEY_VERSION, 'model': model, 'prompt': prompt, 'images': list(image_digests),
           'settings': settings}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class AnswerCache:
    """``get(key) -> dict | None``, ``put(key, record)``; files ``DIR/<k[:2]>/<k>.json``."""

    def __init__(self, directory):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f'{key}.json'

    def get(self, key: str):
        try:
            record = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None  # absent (or hand-damaged: asked again and rewritten)
        return record if isinstance(record, dict) and record.get('key') == key else None

    def put(self, key: str, record: dict) -> None:
        write_json_atomic(self.path(key), {**record, 'key': key})

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob('*/*.json')) if self.directory.is_dir() else 0
