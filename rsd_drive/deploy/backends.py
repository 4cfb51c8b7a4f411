"""Inference backends for the planner: one interface, three runtimes chosen by a parameter.

``tensorrt`` (NVIDIA, fp32/fp16, cached engines), ``onnxruntime`` (CPU, or the CUDA provider when
installed) and ``torch`` (eager, the reference). All take and return the model's named numpy
arrays (``rsd_drive.model.spec.input_names(config)`` -> ``OUTPUT_NAMES``) at the static shapes of the
exported graph (images uint8, see :func:`rsd_drive.deploy.artifact.input_specs`), so the node and
the benchmarks never care which one runs.

``model_dir`` is a deploy artifact (``model.onnx`` + ``deploy.json``, written by ``rsd-drive
export``; read-only) for ``onnxruntime`` and ``tensorrt``, and a training checkpoint
(``config.yaml`` + ``model.safetensors``) for ``torch``. On a training machine a checkpoint also
works for the graph backends: it is exported to ``CHECKPOINT/deploy`` first (needs torch). This
module imports neither torch nor transformers unless the torch backend (or that export) is used.
TensorRT engines go to ``engine_cache_dir`` (default ``$RSD_DRIVE_CACHE/engines``, else
``~/.cache/rsd_drive/engines``), one folder per artifact fingerprint.
"""
from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from rsd_drive.deploy.artifact import (IMAGE_DTYPE, DeployArtifact, default_cache_root,
                                       example_feeds, input_specs, is_artifact, is_checkpoint)
from rsd_drive.model.config import ModelConfig
from rsd_drive.model.spec import CONFIG_NAME, OUTPUT_NAMES, input_names

BACKENDS = ('tensorrt', 'onnxruntime', 'torch')
DEVICES = ('auto', 'cpu', 'cuda')

log = logging.getLogger(__name__)

__all__ = ['BACKENDS', 'DEVICES', 'InferenceBackend', 'TorchBackend', 'OnnxRuntimeBackend',
           'TensorRTBackend', 'create_backend', 'prepare_backend', 'resolve_artifact',
           'load_model_config', 'input_specs', 'example_feeds', 'default_engine_cache']


# -- what model_dir is ----------------------------------------------------------------------------
def _not_a_model(model_dir) -> FileNotFoundError:
    return FileNotFoundError(f'{model_dir}: neither a deploy artifact (deploy.json + model.onnx, '
                             f'from rsd-drive export) nor a RiskPlanner checkpoint (no '
                             f'{CONFIG_NAME}); point model_dir at one')


def load_model_config(model_dir) -> ModelConfig:
    """The model config of a deploy artifact (deploy.json) or a checkpoint (config.yaml)."""
    if is_artifact(model_dir):
        return DeployArtifact.load(model_dir).config
    if is_checkpoint(model_dir):
        return ModelConfig.from_yaml(Path(model_dir) / CONFIG_NAME)
    raise _not_a_model(model_dir)


def resolve_artifact(model_dir, logger=log.info) -> DeployArtifact:
    """The deploy artifact ``model_dir`` is, or (training machine) the one exported from it."""
    if is_artifact(model_dir):
        return DeployArtifact.load(model_dir)
    if not is_checkpoint(model_dir):
        raise _not_a_model(model_dir)
    try:
        from rsd_drive.deploy.export import ensure_checkpoint_artifact
    except ImportError as e:
        raise FileNotFoundError(
            f'{model_dir} is a training checkpoint and this machine cannot export it ({e}); '
            f'export it on the training machine (rsd-drive export {model_dir} --out DEPLOY_DIR) '
            f'and point model_dir at DEPLOY_DIR') from e
    return ensure_checkpoint_artifact(model_dir, logger=logger)


def default_engine_cache() -> Path:
    return default_cache_root() / 'engines'


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
        self.input_names = input_names(config)
        self.has_route = bool(config.route_points)

    def infer(self, inputs: dict) -> dict:
        """The model's named arrays at the static shapes -> {'waypoints', 'risk'} float32."""
        feeds = self.check_inputs(inputs)
        outputs = self._run(feeds)
        return {k: np.asarray(outputs[k], dtype=np.float32) for k in OUTPUT_NAMES}

    def check_inputs(self, inputs: dict) -> dict:
        """Exact names and shapes, dtypes converted; a mismatch names the input. Float images in
        [0, 1] (the older float pipeline) are quantised back to uint8, exactly for images that
        came from uint8."""
        missing = [k for k in self.input_names if k not in inputs]
        extra = sorted(set(inputs) - set(self.input_names))
        if missing or extra:
            raise ValueError(f'model inputs: missing {missing}, unexpected {extra}')
        feeds = {}
        for name, (shape, dtype) in self.specs.items():
            arr = np.asarray(inputs[name])
            if arr.shape != shape:
                raise ValueError(f'model input {name!r}: shape {arr.shape}, the model expects '
                                 f'{shape}')
            if dtype == IMAGE_DTYPE and arr.dtype.kind == 'f':
                arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0)
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
    """Eager PyTorch (the reference) on a training checkpoint: RiskPlanner.from_pretrained, run
    under inference_mode; uint8 images are scaled to [0, 1] as the exported graph does."""

    name = 'torch'

    def __init__(self, model_dir, precision: str = 'fp32', device: str = 'auto'):
        if not is_checkpoint(model_dir):
            if is_artifact(model_dir):
                raise ValueError(f'{model_dir} is a deploy artifact (an ONNX graph): backend '
                                 f'torch needs the training checkpoint; use onnxruntime or '
                                 f'tensorrt')
            raise _not_a_model(model_dir)
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
        args = [torch.from_numpy(feeds[k]).to(self._device) for k in self.input_names]
        args[0] = args[0].to(torch.float32) / 255.0
        autocast = (torch.autocast('cuda', dtype=torch.float16) if self.precision == 'fp16'
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            outputs = self.model(*args)
        return {k: v.float().cpu().numpy() for k, v in zip(OUTPUT_NAMES, outputs)}

    def close(self) -> None:
        self.model = None


class OnnxRuntimeBackend(InferenceBackend):
    """ONNX Runtime on the artifact's graph: the CUDA provider when available, else the CPU."""

    name = 'onnxruntime'

    def __init__(self, model_dir, precision: str = 'fp32', device: str = 'auto',
                 threads: int = 0, logger=log.info):
        import onnxruntime as ort

        if precision != 'fp32':
            raise ValueError(f'ONNX Runtime runs the fp32 graph; precision {precision!r} is a '
                             f'TensorRT build option (backend tensorrt)')
        if device not in DEVICES:
            raise ValueError(f'device must be one of {DEVICES}, got {device!r}')
        self.artifact = resolve_artifact(model_dir, logger)
        self.onnx_path = self.artifact.onnx_path
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
        # the graph's own precision: 'int8' for a quantised artifact (rsd_drive.deploy.quantize)
        super().__init__(self.artifact.config, self.artifact.meta.get('precision', precision),
                         self.session.get_providers()[0])
        self._check_session()

    def _check_session(self) -> None:
        """The graph's inputs are the ones deploy.json declares (names and element types)."""
        got = {i.name: i.type for i in self.session.get_inputs()}
        for name, (_, dtype) in self.specs.items():
            want = f'tensor({"float" if dtype == np.float32 else dtype.name})'
            if got.get(name) != want:
                raise ValueError(f'{self.onnx_path}: input {name!r} is {got.get(name)}, '
                                 f'deploy.json declares {want}')

    def _run(self, feeds: dict) -> dict:
        return dict(zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds)))

    def close(self) -> None:
        self.session = None


class TensorRTBackend(InferenceBackend):
    """TensorRT engine from the artifact's graph, cached per TensorRT/GPU/precision/shapes/graph
    under ``cache_dir/<fingerprint>``; no torch (CUDA through the runtime library)."""

    name = 'tensorrt'

    def __init__(self, model_dir, precision: str = 'fp16', cache_dir=None,
                 workspace_mb: int | None = None, logger=log.info):
        from rsd_drive.deploy import tensorrt_engine as te

        self.artifact = resolve_artifact(model_dir, logger)
        self.prepared = prepare_tensorrt(self.artifact, precision, cache_dir, workspace_mb,
                                         logger)
        try:
            self.engine = te.TensorRTEngine(self.prepared.paths.engine)
        except RuntimeError as e:
            # The key matched but the file does not load (truncated copy, driver change): rebuild.
            logger(f'cached engine unusable ({e}); rebuilding')
            self.prepared = prepare_tensorrt(self.artifact, precision, cache_dir, workspace_mb,
                                             logger, force=True)
            self.engine = te.TensorRTEngine(self.prepared.paths.engine)
        super().__init__(self.artifact.config, precision, self.prepared.key.gpu_name)

    def _run(self, feeds: dict) -> dict:
        return self.engine.infer(feeds)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine = None


def prepare_tensorrt(artifact: DeployArtifact, precision: str, cache_dir=None, workspace_mb=None,
                     logger=log.info, force: bool = False):
    """Reuse or build the cached engine of an artifact. The cache key's graph hash and shapes
    come from deploy.json (hashed once at export, not at every start)."""
    from rsd_drive.deploy import tensorrt_engine as te

    cache_dir = Path(cache_dir) if cache_dir else default_engine_cache()
    shapes = {k: list(shape) for k, (shape, _) in artifact.specs.items()}
    return te.prepare_engine(artifact.onnx_path, cache_dir / artifact.fingerprint[:16],
                             precision, input_shapes=shapes,
                             workspace_mb=workspace_mb or te.DEFAULT_WORKSPACE_MB, force=force,
                             logger=logger, onnx_sha256=artifact.onnx_sha256)


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
    """``build_only``: make every artifact the backend needs (TensorRT engine) and check it,
    without starting inference. Returns a one-line summary."""
    if kind == 'tensorrt':
        prepared = prepare_tensorrt(resolve_artifact(model_dir, logger), precision, cache_dir,
                                    logger=logger)
        state = 'built' if prepared.rebuilt else 'reused'
        return f'tensorrt {precision}: engine {state} at {prepared.paths.engine}'
    if kind == 'onnxruntime':
        backend = OnnxRuntimeBackend(model_dir, precision, 'cpu', logger=logger)
        backend.close()
        return f'onnxruntime {precision}: graph ready at {backend.onnx_path}'
    if kind == 'torch':
        backend = TorchBackend(model_dir, precision, 'cpu')
        n = backend.config.num_cameras
        backend.close()
        return f'torch {precision}: checkpoint loads ({n} cameras)'
    raise ValueError(f'backend must be one of {BACKENDS}, got {kind!r}')
