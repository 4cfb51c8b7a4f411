"""TensorRT 10.x engines built from the exported ONNX graph, cached, rebuilt only when needed.

An engine is only valid for the TensorRT version, GPU model (compute capability), precision and
input shapes it was built for, and for the exact ONNX graph. Like Autoware's
``autoware_tensorrt_common``, every engine file has a JSON sidecar holding that key; a cached
engine is reused only when all of it matches, otherwise it is rebuilt and the log says why (e.g.
``TensorRT version changed: 10.3.0 -> 10.7.0``). ``build_only`` prepares the engine and stops,
for vehicle bring-up and CI:
``python -m rsd_drive.deploy.tensorrt_engine MODEL.onnx --precision fp16``.

``tensorrt`` needs an NVIDIA GPU and is imported lazily: everything above the ``TensorRTEngine``
class (the cache key, the rebuild decision, the file layout) works and is tested without it.
Device buffers come from the CUDA runtime through ctypes (``rsd_drive.deploy.cuda_runtime``): no
torch and no extra CUDA binding package on the vehicle.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rsd_drive.atomic import write_bytes_atomic
from rsd_drive.hashing import file_sha256

PRECISIONS = ('fp32', 'fp16')
KEY_SCHEMA = 1
DEFAULT_WORKSPACE_MB = 2048
_KEY_LABELS = {
    'tensorrt_version': 'TensorRT version',
    'gpu_name': 'GPU',
    'compute_capability': 'GPU compute capability',
    'precision': 'precision',
    'input_shapes': 'input shapes',
    'onnx_sha256': 'ONNX graph (sha256)',
}

log = logging.getLogger(__name__)


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA device is missing; the message says which."""


def tensorrt_availability() -> tuple[bool, str]:
    """(usable, reason): whether ``tensorrt`` imports and the CUDA runtime sees a device."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        return False, f'tensorrt is not installed ({e}); it needs an NVIDIA GPU machine'
    from rsd_drive.deploy import cuda_runtime

    try:
        count = cuda_runtime.device_count()
    except cuda_runtime.CudaError as e:
        return False, f'no usable CUDA runtime ({e})'
    if count == 0:
        return False, 'the CUDA runtime sees no GPU'
    return True, 'ok'


def _import_tensorrt():
    ok, reason = tensorrt_availability()
    if not ok:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    if int(trt.__version__.split('.')[0]) != 10:
        raise TensorRTUnavailable(f'TensorRT {trt.__version__} found; this code uses the 10.x API '
                                  f'(weakly typed networks with BuilderFlag.FP16)')
    return trt


# -- the cache key --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two keys equal <=> the cached engine may be reused."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    input_shapes: dict = field(hash=False)
    onnx_sha256: str

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')
        shapes = {str(k): [int(d) for d in v] for k, v in dict(self.input_shapes).items()}
        object.__setattr__(self, 'input_shapes', shapes)

    def to_dict(self) -> dict:
        return {'schema': KEY_SCHEMA, **asdict(self)}


def onnx_sha256(onnx_path) -> str:
    """Hash of the graph; with an external weight file (``<name>.data``), of both together."""
    onnx_path = Path(onnx_path)
    digest = file_sha256(onnx_path)
    external = onnx_path.with_name(onnx_path.name + '.data')
    if external.is_file():
        digest = hashlib.sha256((digest + file_sha256(external)).encode()).hexdigest()
    return digest


def onnx_input_shapes(onnx_path) -> dict:
    """Static input shapes from the export sidecar (``<name>.json``), else from the graph."""
    onnx_path = Path(onnx_path)
    sidecar = onnx_path.with_suffix('.json')
    if sidecar.is_file():
        spec = json.loads(sidecar.read_text()).get('inputs', {})
        if spec:
            return {k: [int(d) for d in v['shape']] for k, v in spec.items()}
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    shapes = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField('dim_value') else -1
                for d in value.type.tensor_type.shape.dim]
        if any(d <= 0 for d in dims):
            raise ValueError(f'{onnx_path}: input {value.name!r} has a dynamic shape {dims}; '
                             f'give input_shapes explicitly')
        shapes[value.name] = dims
    return shapes


def current_key(onnx_path, precision: str, input_shapes: dict | None = None,
                device_index: int = 0, onnx_digest: str | None = None) -> EngineKey:
    """The key an engine built here, now, for this graph would have (needs TensorRT + CUDA).
    ``onnx_digest``: the graph's sha256 when already known (a deploy artifact records it)."""
    from rsd_drive.deploy import cuda_runtime

    trt = _import_tensorrt()
    major, minor = cuda_runtime.compute_capability(device_index)
    return EngineKey(tensorrt_version=trt.__version__,
                     gpu_name=cuda_runtime.device_name(device_index),
                     compute_capability=f'{major}.{minor}', precision=precision,
                     input_shapes=input_shapes or onnx_input_shapes(onnx_path),
                     onnx_sha256=onnx_digest or onnx_sha256(onnx_path))


def read_cached_key(sidecar_path) -> tuple[dict | None, str | None]:
    """(key dict, None) or (None, why it can't be used)."""
    sidecar_path = Path(sidecar_path)
    if not sidecar_path.is_file():
        return None, f'no cache key sidecar {sidecar_path.name}'
    try:
        data = json.loads(sidecar_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f'cache key sidecar {sidecar_path.name} unreadable ({e})'
    if not isinstance(data, dict):
        return None, f'cache key sidecar {sidecar_path.name} is not a JSON object'
    if data.get('schema') != KEY_SCHEMA:
        return None, (f'cache key schema {data.get("schema")!r} != {KEY_SCHEMA} '
                      f'(written by another rsd_drive version)')
    return data, None


def rebuild_reasons(cached: dict | None, wanted: EngineKey, engine_exists: bool = True,
                    cached_error: str | None = None) -> list[str]:
    """Why a cached engine can't be reused; an empty list means reuse it.

    ``cached`` is the sidecar's key (``None`` with ``cached_error`` saying why it is missing).
    Every differing field is named with old and new values, so a log line explains the rebuild.
    """
    if not engine_exists:
        return ['no cached engine']
    if cached is None:
        return [cached_error or 'no cache key for the cached engine']
    reasons = []
    for name, new in wanted.to_dict().items():
        if name == 'schema':
            continue
        old = cached.get(name)
        if name == 'input_shapes' and isinstance(old, dict):
            old = {str(k): [int(d) for d in v] for k, v in old.items()}
        if old != new:
            if name == 'onnx_sha256':
                old_s = (old or 'none')[:12]
                reasons.append(f'{_KEY_LABELS[name]} changed: {old_s} -> {new[:12]}')
            else:
                reasons.append(f'{_KEY_LABELS[name]} changed: {old!r} -> {new!r}')
    return reasons


# -- the cache on disk ----------------------------------------------------------------------------
@dataclass
class EnginePaths:
    """``<cache_dir>/<onnx stem>.<precision>.engine`` and its key sidecar ``.engine.json``."""

    engine: Path
    key: Path

    @classmethod
    def for_onnx(cls, onnx_path, cache_dir, precision: str) -> 'EnginePaths':
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
        engine = Path(cache_dir) / f'{Path(onnx_path).stem}.{precision}.engine'
        return cls(engine, engine.with_name(engine.name + '.json'))


def store_engine(paths: EnginePaths, engine_bytes: bytes, key: EngineKey) -> None:
    """Engine first, key last: a key never describes a half-written or older engine."""
    paths.key.unlink(missing_ok=True)
    write_bytes_atomic(paths.engine, bytes(engine_bytes))
    write_bytes_atomic(paths.key, json.dumps(key.to_dict(), indent=1).encode())


def decide(paths: EnginePaths, wanted: EngineKey) -> list[str]:
    """Rebuild reasons for the engine at ``paths`` (empty: reuse it)."""
    cached, error = read_cached_key(paths.key)
    return rebuild_reasons(cached, wanted, paths.engine.is_file(), error)


# -- building -------------------------------------------------------------------------------------
def build_serialized_engine(onnx_path, precision: str, input_shapes: dict,
                            workspace_mb: int = DEFAULT_WORKSPACE_MB) -> bytes:
    """Parse the ONNX graph and build a serialized engine (TensorRT 10 explicit-batch network)."""
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f'TensorRT cannot parse {onnx_path}:\n  ' + '\n  '.join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if precision == 'fp16':
        # builder.platform_has_fast_fp16 is deprecated since 10.5: ask the CUDA runtime instead.
        from rsd_drive.deploy import cuda_runtime

        if cuda_runtime.compute_capability() < (5, 3):
            raise RuntimeError('fp16 requested but this GPU has no native fp16; use fp32')
        config.set_flag(trt.BuilderFlag.FP16)
    dynamic = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(d < 0 for d in tensor.shape):
            dynamic.append(tensor.name)
    if dynamic:
        # The exporter writes static shapes; a hand-made dynamic graph is pinned to input_shapes.
        profile = builder.create_optimization_profile()
        for name in dynamic:
            if name not in input_shapes:
                raise ValueError(f'input {name!r} is dynamic and no shape was given for it')
            shape = tuple(input_shapes[name])
            profile.set_shape(name, shape, shape, shape)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f'TensorRT failed to build an engine from {onnx_path} ({precision}); '
                           f'see the TensorRT log above')
    return bytes(serialized)


@dataclass
class PreparedEngine:
    """Result of :func:`prepare_engine`: where the engine is, and whether/why it was rebuilt."""

    paths: EnginePaths
    key: EngineKey
    rebuilt: bool
    reasons: list
    build_s: float = 0.0


def prepare_engine(onnx_path, cache_dir, precision: str = 'fp16', input_shapes: dict | None = None,
                   workspace_mb: int = DEFAULT_WORKSPACE_MB, force: bool = False,
                   logger=log.info, onnx_sha256: str | None = None) -> PreparedEngine:
    """Reuse the cached engine if its key matches this machine and graph; else build and cache it.

    ``logger`` receives one line: reuse, or rebuild with every reason.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f'ONNX graph {onnx_path} not found (rsd-drive export CHECKPOINT)')
    paths = EnginePaths.for_onnx(onnx_path, cache_dir, precision)
    wanted = current_key(onnx_path, precision, input_shapes, onnx_digest=onnx_sha256)
    reasons = ['forced rebuild'] if force else decide(paths, wanted)
    if not reasons:
        logger(f'TensorRT engine cache hit: reusing {paths.engine} ({precision}, '
               f'TensorRT {wanted.tensorrt_version}, {wanted.gpu_name})')
        return PreparedEngine(paths, wanted, False, [])
    logger(f'building TensorRT engine {paths.engine} ({precision}): ' + '; '.join(reasons))
    t0 = time.perf_counter()
    data = build_serialized_engine(onnx_path, precision, wanted.input_shapes, workspace_mb)
    store_engine(paths, data, wanted)
    build_s = time.perf_counter() - t0
    logger(f'TensorRT engine built in {build_s:.1f} s: {paths.engine}')
    return PreparedEngine(paths, wanted, True, reasons, build_s)


# -- running --------------------------------------------------------------------------------------
class TensorRTEngine:
    """A deserialized engine with preallocated CUDA I/O buffers, run on its own CUDA stream."""

    def __init__(self, engine_path, device_index: int = 0):
        from rsd_drive.deploy import cuda_runtime as cuda

        trt = _import_tensorrt()
        self._cuda = cuda
        cuda.set_device(device_index)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        data = Path(engine_path).read_bytes()
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise RuntimeError(f'{engine_path}: TensorRT could not deserialize the engine '
                               f'(corrupt, or built by another TensorRT/GPU)')
        self.context = self.engine.create_execution_context()
        self.stream = cuda.stream_create()
        self.inputs, self.outputs, self._device_ptrs = {}, {}, []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            np_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = tuple(self.engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f'engine tensor {name!r} has a dynamic shape {shape}; the '
                                   f'exported graph is meant to be static')
            host = np.empty(shape, dtype=np_dtype)
            ptr = cuda.malloc(host.nbytes)
            self._device_ptrs.append(ptr)
            self.context.set_tensor_address(name, ptr)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs[name] = (ptr, host)
            else:
                self.outputs[name] = (ptr, host)

    def infer(self, inputs: dict) -> dict:
        cuda = self._cuda
        for name, (ptr, host) in self.inputs.items():
            src = np.ascontiguousarray(inputs[name], dtype=host.dtype)
            if src.shape != host.shape:
                raise ValueError(f'engine input {name!r}: shape {src.shape}, expected '
                                 f'{host.shape}')
            host[...] = src
            cuda.memcpy_async(ptr, host.ctypes.data, host.nbytes, cuda.MEMCPY_HOST_TO_DEVICE,
                              self.stream)
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError('TensorRT execute_async_v3 failed')
        for ptr, host in self.outputs.values():
            cuda.memcpy_async(host.ctypes.data, ptr, host.nbytes, cuda.MEMCPY_DEVICE_TO_HOST,
                              self.stream)
        cuda.stream_synchronize(self.stream)
        return {name: host.copy() for name, (_, host) in self.outputs.items()}

    def close(self) -> None:
        """Free the device buffers and the stream (the engine objects go with them)."""
        for ptr in self._device_ptrs:
            self._cuda.free(ptr)
        self._device_ptrs = []
        if self.stream:
            self._cuda.stream_destroy(self.stream)
            self.stream = 0
        self.context = self.engine = None


def main(argv=None) -> int:
    """``build_only`` for bring-up and CI: prepare (or verify) the cached engine and exit."""
    parser = argparse.ArgumentParser(description='Build or verify the TensorRT engine cache.')
    parser.add_argument('onnx', help='exported graph (rsd-drive export CHECKPOINT)')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp16')
    parser.add_argument('--cache-dir', help='writable engine cache (default: '
                        '$RSD_DRIVE_CACHE/engines or ~/.cache/rsd_drive/engines)')
    parser.add_argument('--workspace-mb', type=int, default=DEFAULT_WORKSPACE_MB)
    parser.add_argument('--force', action='store_true', help='rebuild even on a cache hit')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    from rsd_drive.deploy.artifact import default_cache_root

    cache_dir = args.cache_dir or default_cache_root() / 'engines'
    try:
        prepare_engine(args.onnx, cache_dir, args.precision, workspace_mb=args.workspace_mb,
                       force=args.force)
    except TensorRTUnavailable as e:
        print(f'cannot build a TensorRT engine here: {e}')
        return 2
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
