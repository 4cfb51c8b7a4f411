"""The deploy artifact: what the vehicle runs, without torch.

A deploy directory holds ``model.onnx`` (one static graph: frozen encoder + heads) and
``deploy.json``, which says everything the node needs to feed it and read it:

* ``inputs`` / ``outputs``: names, static shapes and dtypes. ``images`` is uint8 RGB
  [B, N, 3, H, W]; the cast, the /255 and the encoder's mean/std normalisation are inside the
  graph (``normalisation``), so 4x fewer bytes cross into the runtime than float32 images.
* ``cameras``: the camera order the model was trained with (``null`` when unknown), the image
  size; ``grid`` (the risk grid), ``intents``, ``model_config`` (the architecture, readable with
  ``rsd_drive.model.config`` alone), ``fingerprint`` (sha256 of the source checkpoint's files,
  computed once at export), ``onnx`` (file, size, sha256, opset, operator check) and ``versions``
  (rsd_drive, torch, onnx, onnxruntime, numpy at export time).

The node reads a deploy directory and never writes into it (TensorRT engines go to
``engine_cache_dir``). :func:`input_specs` and :func:`example_feeds` give the model's input
shapes and plausible inputs from a model config in numpy only, for every backend.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsd_drive import INTENTS
from rsd_drive.model.config import ModelConfig
from rsd_drive.model.spec import CONFIG_NAME, OUTPUT_NAMES, input_names

DEPLOY_JSON = 'deploy.json'
ONNX_NAME = 'model.onnx'
FORMAT = 'rsd_drive.deploy/1'
IMAGE_DTYPE = np.dtype(np.uint8)
CACHE_ENV = 'RSD_DRIVE_CACHE'


class ArtifactError(ValueError):
    """A deploy directory that can't be used; the message names the file and the field."""


def input_specs(config: ModelConfig, batch_size: int = 1) -> dict:
    """name -> (shape, dtype) of the deployed model's inputs (the exported graph's static shapes).
    ``images`` are uint8 RGB 0..255, normalised inside the graph (every backend takes them so)."""
    n, h, w = config.num_cameras, config.image_height, config.image_width
    f32 = np.dtype(np.float32)
    return {
        'images': ((batch_size, n, 3, h, w), IMAGE_DTYPE),
        'intrinsics': ((batch_size, n, 3, 3), f32),
        'cam_to_ego': ((batch_size, n, 4, 4), f32),
        'past_states': ((batch_size, config.past_steps, 4), f32),
        'intent': ((batch_size,), np.dtype(np.int64)),
        **({'route': ((batch_size, config.route_points, 2), f32),
            'route_valid': ((batch_size,), f32)} if config.route_points else {}),
    }


def output_specs(config: ModelConfig, batch_size: int = 1) -> dict:
    f32 = np.dtype(np.float32)
    return {'waypoints': ((batch_size, config.future_steps, 2), f32),
            'risk': ((batch_size, config.grid.rows, config.grid.cols), f32)}


def example_feeds(config: ModelConfig, batch_size: int = 1, seed: int = 0) -> dict:
    """Plausible inputs at the static shapes (a ring of cameras, straight driving at 10 m/s), in
    numpy: warm-up, benchmarks, and the exporter's example inputs."""
    from rsd_drive.geometry import camera_to_ego, intrinsics

    c = config
    rng = np.random.default_rng(seed)
    n, h, w = c.num_cameras, c.image_height, c.image_width
    K = np.asarray(intrinsics(0.8 * w, 0.8 * w, w / 2, h / 2), np.float32)
    yaws = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    E = np.stack([np.asarray(camera_to_ego(1.0, 0.0, 1.6, y), np.float32) for y in yaws])
    past = np.zeros((batch_size, c.past_steps, 4), np.float32)
    past[..., 0] = np.linspace(-(c.past_steps - 1) * 2.5, 0.0, c.past_steps)
    past[..., 3] = 10.0
    return {
        'images': rng.integers(0, 256, (batch_size, n, 3, h, w), dtype=np.uint8),
        'intrinsics': np.broadcast_to(K, (batch_size, n, 3, 3)).copy(),
        'cam_to_ego': np.broadcast_to(E, (batch_size, n, 4, 4)).copy(),
        'past_states': past,
        'intent': np.ones(batch_size, dtype=np.int64),
        **(example_route(c, batch_size) if c.route_points else {}),
    }


def example_route(config: ModelConfig, batch_size: int = 1) -> dict:
    """A valid route bending gently left (a curve of 60 m radius) from the ego."""
    s = np.arange(config.route_points) * config.route_spacing_m
    route = np.stack([60.0 * np.sin(s / 60.0), 60.0 * (1.0 - np.cos(s / 60.0))], -1)
    return {'route': np.broadcast_to(route.astype(np.float32),
                                     (batch_size, config.route_points, 2)).copy(),
            'route_valid': np.ones(batch_size, np.float32)}


def spec_to_json(specs: dict) -> dict:
    return {k: {'shape': [int(d) for d in shape], 'dtype': np.dtype(dtype).name}
            for k, (shape, dtype) in specs.items()}


def default_cache_root() -> Path:
    """``$RSD_DRIVE_CACHE``, else ``$XDG_CACHE_HOME/rsd_drive`` (``~/.cache/rsd_drive``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'rsd_drive'


def is_artifact(path) -> bool:
    return (Path(path) / DEPLOY_JSON).is_file()


def is_checkpoint(path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


@dataclass
class DeployArtifact:
    """A loaded deploy directory (see the module docstring); read-only."""

    path: Path
    meta: dict
    config: ModelConfig

    @property
    def onnx_path(self) -> Path:
        return self.path / self.meta['onnx']['file']

    @property
    def fingerprint(self) -> str:
        return self.meta['fingerprint']

    @property
    def onnx_sha256(self) -> str:
        return self.meta['onnx']['sha256']

    @property
    def camera_names(self) -> list | None:
        return self.meta['cameras']['names']

    @property
    def specs(self) -> dict:
        return {k: (tuple(v['shape']), np.dtype(v['dtype']))
                for k, v in self.meta['inputs'].items()}

    def describe(self) -> str:
        v = self.meta.get('versions', {})
        return (f'{self.path} (fingerprint {self.fingerprint[:12]}, exported '
                f'{self.meta.get("exported_at", "?")} with rsd_drive {v.get("rsd_drive", "?")}, '
                f'torch {v.get("torch", "?")})')

    @classmethod
    def load(cls, path) -> 'DeployArtifact':
        """Read and check ``path/deploy.json`` (format, names, shapes against the model config,
        the graph file's presence and size); never hashes the graph."""
        path = Path(path)
        meta_file = path / DEPLOY_JSON
        if not meta_file.is_file():
            hint = (' (a training checkpoint: export it with rsd-drive export CHECKPOINT --out '
                    'DEPLOY_DIR)' if is_checkpoint(path) else '')
            raise FileNotFoundError(f'{path}: not a deploy artifact (no {DEPLOY_JSON}){hint}')
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f'{meta_file}: unreadable ({e})') from e
        if not isinstance(meta, dict) or meta.get('format') != FORMAT:
            got = meta.get('format') if isinstance(meta, dict) else type(meta).__name__
            raise ArtifactError(f'{meta_file}: format {got!r}, this rsd_drive reads {FORMAT!r}')
        try:
            config = ModelConfig.from_dict(meta['model_config'])
            artifact = cls(path, meta, config)
            artifact._check()
        except KeyError as e:
            raise ArtifactError(f'{meta_file}: missing field {e}') from e
        except (TypeError, ValueError) as e:
            if isinstance(e, ArtifactError):
                raise
            raise ArtifactError(f'{meta_file}: {e}') from e
        return artifact

    def _check(self) -> None:
        meta, where = self.meta, self.path / DEPLOY_JSON
        names_in, names_out = list(meta['inputs']), list(meta['outputs'])
        wanted = list(input_names(self.config))
        if names_in != wanted or names_out != list(OUTPUT_NAMES):
            raise ArtifactError(f'{where}: inputs {list(meta["inputs"])} / outputs '
                                f'{list(meta["outputs"])}, expected {wanted} / '
                                f'{list(OUTPUT_NAMES)}')
        expected = spec_to_json(input_specs(self.config))
        for name, spec in meta['inputs'].items():
            if spec != expected[name]:
                raise ArtifactError(f'{where}: input {name!r} is {spec}, the model config '
                                    f'implies {expected[name]}')
        names = meta['cameras']['names']
        if names is not None and len(names) != self.config.num_cameras:
            raise ArtifactError(f'{where}: {len(names)} camera names for a '
                                f'{self.config.num_cameras}-camera model')
        onnx_path = self.onnx_path
        if not onnx_path.is_file():
            raise FileNotFoundError(f'{onnx_path} missing (named by {where})')
        size = onnx_path.stat().st_size
        if size != meta['onnx']['bytes']:
            raise ArtifactError(f'{onnx_path}: {size} bytes, {where} says '
                                f'{meta["onnx"]["bytes"]} (truncated or replaced copy?)')
        if tuple(meta.get('intents', INTENTS)) != tuple(INTENTS):
            raise ArtifactError(f'{where}: intents {meta["intents"]}, the node uses {INTENTS}')
