"""Inference backends for the planner: one interface, three runtimes chosen by a parameter.

``tensorrt`` (NVIDIA, fp32/fp16, cached engines), ``onnxruntime`` (CPU, or the CUDA provider when
installed) and ``torch`` (eager, the reference). All take and return the model's named numpy
arrays (``rsd_drive.model.INPUT_NAMES`` -> ``OUTPUT_NAMES``) at the static shapes of the exported
graph, so the node and the benchmarks never care which one runs.

A deployment model directory is a checkpoint directory (``config.yaml`` + ``model.safetensors``
[+ ``encoder/``]) plus ``model.onnx`` (+ its ``model.json`` sidecar) exported from it. The ONNX
graph is exported on demand when it is missing or older than the checkpoint, into a temporary
directory and renamed into place, so a crash never leaves a half-written graph behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from rsd_drive.model.config import ModelConfig
from rsd_drive.model.planner import CONFIG_NAME, INPUT_NAMES, OUTPUT_NAMES, WEIGHTS_NAME

BACKENDS = ('tensorrt', 'onnxruntime', 'torch')
DEVICES = ('auto', 'cpu', 'cuda')
ONNX_NAME = 'model.onnx'
FINGERPRINT_KEY = 'checkpoint_sha256'

log = logging.getLogger(__name__)


# -- the deployment model directory ---------------------------------------------------------------
def load_model_config(model_dir) -> ModelConfig:
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(f'{model_dir}: not a RiskPlanner checkpoint (no {CONFIG_NAME}); '
                                f'train one (rsd-drive train) or point model_dir at one')
    return ModelConfig.from_yaml(model_dir / CONFIG_NAME)


def input_specs(config: ModelConfig, batch_size: int = 1) -> dict:
    """name -> (shape, dtype) of the model's inputs; the same static shapes the exporter writes."""
    n, h, w = config.num_cameras, config.image_height, config.image_width
    f32 = np.dtype(np.float32)
    return {
        'images': ((batch_size, n, 3, h, w), f32),
        'intrinsics': ((batch_size, n, 3, 3), f32),
        'cam_to_ego': ((batch_size, n, 4, 4), f32),
        'past_states': ((batch_size, config.past_steps, 4), f32),
        'intent': ((batch_size,), np.dtype(np.int64)),
    }


def example_feeds(config: ModelConfig, batch_size: int = 1, seed: int = 0) -> dict:
    """Plausible numpy inputs (the exporter's example inputs) for warm-up and benchmarks."""
    from rsd_drive.deploy.export import example_inputs

    # example_inputs only reads .config; a namespace avoids building the model for warm-up.
    tensors = example_inputs(SimpleNamespace(config=config), batch_size, seed)
    return {k: tensors[k].numpy() for k in INPUT_NAMES}


def checkpoint_fingerprint(model_dir) -> str:
    """sha256 over everything the exported graph is made from: config, weights, encoder files."""
    model_dir = Path(model_dir)
    files = [model_dir / CONFIG_NAME, model_dir / WEIGHTS_NAME]
    encoder_dir = model_dir / 'encoder'
    if encoder_dir.is_dir():
        files += sorted(p for p in encoder_dir.rglob('*') if p.is_file())
    h = hashlib.sha256()
    for path in files:
        if path.is_file():
            h.update(str(path.relative_to(model_dir)).encode())
            with open(path, 'rb') as f:
                for block in iter(lambda: f.read(1 << 20), b''):
                    h.update(block)
    return h.hexdigest()


def onnx_staleness(model_dir, onnx_path=None) -> list[str]:
    """Why ``model.onnx`` must be (re-)exported from the checkpoint; empty when it is current."""
    model_dir = Path(model_dir)
    onnx_path = Path(onnx_path) if onnx_path else model_dir / ONNX_NAME
    sidecar = onnx_path.with_suffix('.json')
    if not onnx_path.is_file():
        return [f'{onnx_path.name} missing']
    if not sidecar.is_file():
        return [f'{sidecar.name} (export sidecar) missing']
    try:
        meta = json.loads(sidecar.read_text())
        exported_config = ModelConfig.from_dict(meta['model_config'])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f'{sidecar.name} unreadable ({e})']
    if exported_config != load_model_config(model_dir):
        return ['checkpoint config.yaml differs from the exported model config']
    if FINGERPRINT_KEY in meta:
        if meta[FINGERPRINT_KEY] != checkpoint_fingerprint(model_dir):
            return ['checkpoint files changed since the export']
    elif (model_dir / WEIGHTS_NAME).stat().st_mtime > onnx_path.stat().st_mtime:
        # Exported by `rsd-drive export` (no fingerprint): fall back to modification times.
        return [f'{WEIGHTS_NAME} is newer than {onnx_path.name}']
    return []


def ensure_onnx(model_dir, logger=log.info) -> Path:
    """``model_dir/model.onnx``, exported from the checkpoint first if missing or stale."""
    from rsd_drive.deploy.export import export_onnx
    from rsd_drive.model.planner import RiskPlanner

    model_dir = Path(model_dir)
    load_model_config(model_dir)  # clear error when model_dir is not a checkpoint
    onnx_path = model_dir / ONNX_NAME
    reasons = onnx_staleness(model_dir, onnx_path)
    if not reasons:
        return onnx_path
    logger(f'exporting {onnx_path}: ' + '; '.join(reasons))
    t0 = time.perf_counter()
    model = RiskPlanner.from_pretrained(model_dir)
    tmp_dir = Path(tempfile.mkdtemp(dir=model_dir, prefix='.export-'))
    try:
        tmp_onnx = export_onnx(model, tmp_dir / ONNX_NAME)
        tmp_sidecar = tmp_onnx.with_suffix('.json')
        meta = json.loads(tmp_sidecar.read_text())
        meta[FINGERPRINT_KEY] = checkpoint_fingerprint(model_dir)
        tmp_sidecar.write_text(json.dumps(meta, indent=1))
        # Any external-data file first, the sidecar next, the graph last: once model.onnx is in
        # place, everything it needs is too.
        for extra in tmp_dir.iterdir():
            if extra.name not in (ONNX_NAME, tmp_sidecar.name):
                os.replace(extra, model_dir / extra.name)
        os.replace(tmp_sidecar, onnx_path.with_suffix('.json'))
        os.replace(tmp_onnx, onnx_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    logger(f'exported {onnx_path} in {time.perf_counter() - t0:.1f} s')
    return onnx_path


# -- the interface --------------------------------------------------------------------------------
class InferenceBackend(ABC):
    """Runs the planner on named numpy inputs; subclasses implement :meth:`_run`.

    Attributes: ``name`` (one of BACKENDS), ``precision`` ('fp32' | 'fp16'), ``device`` (where it
    runs, for diagnostics), ``config`` (the model config), ``specs`` (input shapes and dtypes).
    """

    name = 'abstract'

    def __init__(self, config: ModelConfig, precision: str, device: str):
        self.config = config
        self.precision = precision
        self.device = device
        self.specs = input_specs(config)

    def infer(self, inputs: dict) -> dict:
        """The model's named arrays at the static shapes -> {'waypoints', 'risk'} float32."""
        feeds = self.check_inputs(inputs)
        outputs = self._run(feeds)
        return {k: np.asarray(outputs[k], dtype=np.float32) for k in OUTPUT_NAMES}

    def check_inputs(self, inputs: dict) -> dict:
        """Exact names and shapes, dtypes converted; a mismatch names the input."""
        missing = [k for k in INPUT_NAMES if k not in inputs]
        extra = sorted(set(inputs) - set(INPUT_NAMES))
        if missing or extra:
            raise ValueError(f'model inputs: missing {missing}, unexpected {extra}')
        feeds = {}
        for name, (shape, dtype) in self.specs.items():
            arr = np.asarray(inputs[name])
            if arr.shape != shape:
                raise ValueError(f'model input {name!r}: shape {arr.shape}, the model expects '
                                 f'{shape}')
            feeds[name] = np.ascontiguousarray(arr, dtype=dtype)
        return feeds

    def warmup(self, iterations: int = 3) -> float:
        """Run a few frames so the first real one pays no lazy initialisation; returns seconds."""
        feeds = example_feeds(self.config)
        t0 = time.perf_counter()
        for _ in range(iterations):
            self.infer(feeds)
        return time.perf_counter() - t0

    def describe(self) -> str:
        return f'{self.name} {self.precision} on {self.device}'

    def close(self) -> None:
        """Free the runtime's resources (sessions, engines, GPU memory)."""

    @abstractmethod
    def _run(self, feeds: dict) -> dict:
        """Run on validated feeds; return the outputs by name."""


def _want_cuda(device: str) -> bool:
    if device not in DEVICES:
        raise ValueError(f'device must be one of {DEVICES}, got {device!r}')
    if device == 'cpu':
        return False
    import torch

    if device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('device=cuda requested but torch sees no CUDA device')
    return torch.cuda.is_available()


class TorchBackend(InferenceBackend):
    """Eager PyTorch (the reference): RiskPlanner.from_pretrained, run under inference_mode."""

    name = 'torch'

    def __init__(self, model_dir, precision: str = 'fp32', device: str = 'auto'):
        import torch

        from rsd_drive.model.planner import RiskPlanner

        cuda = _want_cuda(device)
        if precision not in ('fp32', 'fp16'):
            raise ValueError(f'precision must be fp32 or fp16, got {precision!r}')
        if precision == 'fp16' and not cuda:
            raise ValueError('precision fp16 with the torch backend needs a CUDA device')
        self._torch = torch
        self._device = torch.device('cuda' if cuda else 'cpu')
        self.model = RiskPlanner.from_pretrained(model_dir).eval().to(self._device)
        super().__init__(self.model.config, precision, str(self._device))

    def _run(self, feeds: dict) -> dict:
        torch = self._torch
        args = [torch.from_numpy(feeds[k]).to(self._device) for k in INPUT_NAMES]
        autocast = (torch.autocast('cuda', dtype=torch.float16) if self.precision == 'fp16'
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            outputs = self.model(*args)
        return {k: v.float().cpu().numpy() for k, v in zip(OUTPUT_NAMES, outputs)}

    def close(self) -> None:
        self.model = None


class OnnxRuntimeBackend(InferenceBackend):
    """ONNX Runtime on the exported graph: the CUDA provider when available, else the CPU."""

    name = 'onnxruntime'

    def __init__(self, model_dir, precision: str = 'fp32', device: str = 'auto',
                 threads: int = 0, logger=log.info):
        import onnxruntime as ort

        from rsd_drive.deploy.graph_check import assert_plain_graph

        if precision != 'fp32':
            raise ValueError(f'ONNX Runtime runs the fp32 graph; precision {precision!r} is a '
                             f'TensorRT build option (backend tensorrt)')
        if device not in DEVICES:
            raise ValueError(f'device must be one of {DEVICES}, got {device!r}')
        config = load_model_config(model_dir)
        self.onnx_path = ensure_onnx(model_dir, logger)
        assert_plain_graph(self.onnx_path)
        available = ort.get_available_providers()
        if device == 'cuda' and 'CUDAExecutionProvider' not in available:
            raise RuntimeError(f'device=cuda but ONNX Runtime has no CUDA provider ({available})')
        use_cuda = device != 'cpu' and 'CUDAExecutionProvider' in available
        providers = (['CUDAExecutionProvider'] if use_cuda else []) + ['CPUExecutionProvider']
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=providers)
        super().__init__(config, precision, self.session.get_providers()[0])

    def _run(self, feeds: dict) -> dict:
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds)))

    def close(self) -> None:
        self.session = None


class TensorRTBackend(InferenceBackend):
    """TensorRT engine from the exported graph, cached per TensorRT/GPU/precision/shapes/graph."""

    name = 'tensorrt'

    def __init__(self, model_dir, precision: str = 'fp16', cache_dir=None,
                 workspace_mb: int | None = None, logger=log.info):
        from rsd_drive.deploy import tensorrt_engine as te

        config = load_model_config(model_dir)
        self.prepared = prepare_tensorrt(model_dir, precision, cache_dir, workspace_mb, logger)
        try:
            self.engine = te.TensorRTEngine(self.prepared.paths.engine)
        except RuntimeError as e:
            # The key matched but the file does not load (truncated copy, driver change): rebuild.
            logger(f'cached engine unusable ({e}); rebuilding')
            self.prepared = prepare_tensorrt(model_dir, precision, cache_dir, workspace_mb,
                                             logger, force=True)
            self.engine = te.TensorRTEngine(self.prepared.paths.engine)
        super().__init__(config, precision, self.prepared.key.gpu_name)

    def _run(self, feeds: dict) -> dict:
        return self.engine.infer(feeds)

    def close(self) -> None:
        self.engine = None


def prepare_tensorrt(model_dir, precision: str, cache_dir=None, workspace_mb=None,
                     logger=log.info, force: bool = False):
    """Export (if needed), check the graph, and reuse or build the cached engine."""
    from rsd_drive.deploy import tensorrt_engine as te
    from rsd_drive.deploy.graph_check import assert_plain_graph

    onnx_path = ensure_onnx(model_dir, logger)
    assert_plain_graph(onnx_path)
    cache_dir = Path(cache_dir) if cache_dir else Path(model_dir) / 'engines'
    return te.prepare_engine(onnx_path, cache_dir, precision,
                             workspace_mb=workspace_mb or te.DEFAULT_WORKSPACE_MB, force=force,
                             logger=logger)


def create_backend(kind: str, model_dir, precision: str = 'fp32', device: str = 'auto',
                   cache_dir=None, threads: int = 0, logger=log.info) -> InferenceBackend:
    """The backend a parameter names: 'tensorrt' | 'onnxruntime' | 'torch'."""
    if kind == 'torch':
        return TorchBackend(model_dir, precision, device)
    if kind == 'onnxruntime':
        return OnnxRuntimeBackend(model_dir, precision, device, threads, logger)
    if kind == 'tensorrt':
        if device == 'cpu':
            raise ValueError('backend tensorrt runs on a CUDA device; device=cpu is not possible')
        return TensorRTBackend(model_dir, precision, cache_dir, logger=logger)
    raise ValueError(f'backend must be one of {BACKENDS}, got {kind!r}')


def prepare_backend(kind: str, model_dir, precision: str = 'fp32', cache_dir=None,
                    logger=log.info) -> str:
    """``build_only``: make every artifact the backend needs (ONNX graph, TensorRT engine) and
    check it, without starting inference. Returns a one-line summary."""
    if kind == 'tensorrt':
        prepared = prepare_tensorrt(model_dir, precision, cache_dir, logger=logger)
        state = 'built' if prepared.rebuilt else 'reused'
        return f'tensorrt {precision}: engine {state} at {prepared.paths.engine}'
    if kind == 'onnxruntime':
        backend = OnnxRuntimeBackend(model_dir, precision, 'cpu', logger=logger)
        backend.close()
        return f'onnxruntime {precision}: graph ready at {backend.onnx_path}'
    if kind == 'torch':
        config = load_model_config(model_dir)
        from rsd_drive.model.planner import RiskPlanner

        RiskPlanner.from_pretrained(model_dir)
        return f'torch {precision}: checkpoint loads ({config.num_cameras} cameras)'
    raise ValueError(f'backend must be one of {BACKENDS}, got {kind!r}')
