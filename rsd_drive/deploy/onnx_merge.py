"""Graph surgery for a planner whose frozen encoder is an ONNX graph (``encoder.source: onnx``).

Such an encoder runs in ONNX Runtime and can't be traced from torch, so the deployment graph is
made from two pieces: :func:`export_heads_onnx` exports everything after the encoder (the
``RiskPlanner.plan_from_features`` graph, input ``features``), and :func:`merge_with_planner_onnx`
joins the prepared encoder graph (``rsd_drive.model.onnx_encoder.prepare_encoder_graph``) and the
heads into one graph with the planner's inputs and outputs (``onnx.compose``), so the node and
TensorRT always see a single model. Images enter as uint8 RGB [B,N,3,H,W]; the cast, the /255 and
the encoder's mean/std normalisation are nodes of the graph.

This lives in ``deploy`` (it used to be in ``model.onnx_encoder``): deploy imports model, never
the other way round.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from rsd_drive.atomic import write_atomic
from rsd_drive.deploy.torch_inputs import OPSET, example_inputs
from rsd_drive.model.onnx_encoder import (HEADS_FEATURES, load_onnx, prepare_encoder_graph,
                                          symbolic_shape)
from rsd_drive.model.spec import OUTPUT_NAMES, input_names


def export_heads_onnx(model, out_path, batch_size: int = 1, opset: int | None = None) -> Path:
    """Export ``model.plan_from_features`` (everything after the frozen encoder) with inputs
    ``features [B,N,P,C]`` + the planner's other inputs, outputs as the planner's; static shapes.
    Written atomically; a ``.json`` beside it records the input spec and the model config."""
    import torch
    from torch import nn

    class Heads(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, features, *inputs):
            return self.model.plan_from_features(features, *inputs)

    out_path = Path(out_path)
    inputs = example_inputs(model.eval(), batch_size)
    with torch.no_grad():
        inputs[HEADS_FEATURES] = model.encode(inputs.pop('images'))
    names = [HEADS_FEATURES] + [n for n in input_names(model.config) if n != 'images']

    def write(tmp):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(Heads(model).eval(), tuple(inputs[n] for n in names), tmp,
                              input_names=names, output_names=list(OUTPUT_NAMES),
                              opset_version=opset or OPSET, do_constant_folding=True,
                              dynamo=False)

    write_atomic(out_path, write)
    spec = {k: {'shape': list(v.shape), 'dtype': str(v.dtype).replace('torch.', '')}
            for k, v in inputs.items()}
    out_path.with_suffix('.json').write_text(json.dumps(
        {'inputs': spec, 'outputs': list(OUTPUT_NAMES), 'opset': opset or OPSET,
         'model_config': model.config.to_dict()}, indent=1))
    return out_path


def _opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))


def _pre_graph(B, N, H, W, image_mean, image_std, opsets, ir_version):
    """uint8 images [B,N,3,H,W] -> float pixels [B*N,3,H,W], normalised as the encoder wants."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    return helper.make_model(helper.make_graph(
        [helper.make_node('Reshape', ['images', 'pre/shape'], ['pre/flat']),
         helper.make_node('Cast', ['pre/flat'], ['pre/float'], to=TensorProto.FLOAT),
         helper.make_node('Div', ['pre/float', 'pre/255'], ['pre/unit']),
         helper.make_node('Sub', ['pre/unit', 'pre/mean'], ['pre/centred']),
         helper.make_node('Div', ['pre/centred', 'pre/std'], ['pre/pixels'])],
        'pre', [helper.make_tensor_value_info('images', TensorProto.UINT8, [B, N, 3, H, W])],
        [helper.make_tensor_value_info('pre/pixels', TensorProto.FLOAT, [B * N, 3, H, W])],
        initializer=[const('pre/shape', np.array([B * N, 3, H, W], np.int64)),
                     const('pre/255', np.array(255.0, np.float32)),
                     const('pre/mean', np.array(image_mean, np.float32).reshape(1, 3, 1, 1)),
                     const('pre/std', np.array(image_std, np.float32).reshape(1, 3, 1, 1))]),
        opset_imports=opsets, ir_version=ir_version)


def _post_graph(B, N, P, C, enc_rank, opsets, ir_version):
    """Tokens [B*N, T, C] keep their last P; a feature map [B*N, C, h, w] is flattened first."""
    from onnx import TensorProto, helper, numpy_helper

    def const(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    nodes, init = [], [const('post/shape', np.array([B, N, P, C], np.int64))]
    src = 'post/in'
    if enc_rank == 4:
        nodes += [helper.make_node('Reshape', [src, 'post/map'], ['post/flat']),
                  helper.make_node('Transpose', ['post/flat'], ['post/tokens'], perm=[0, 2, 1])]
        init.append(const('post/map', np.array([B * N, C, P], np.int64)))
        src = 'post/tokens'
    nodes += [helper.make_node('Slice', [src, 'post/start', 'post/end', 'post/axis'],
                               ['post/patches']),
              helper.make_node('Reshape', ['post/patches', 'post/shape'], [HEADS_FEATURES])]
    init += [const('post/start', np.array([-P], np.int64)),
             const('post/end', np.array([np.iinfo(np.int64).max], np.int64)),
             const('post/axis', np.array([1], np.int64))]
    return helper.make_model(helper.make_graph(
        nodes, 'post', [helper.make_tensor_value_info(
            'post/in', TensorProto.FLOAT, [f'tokens_{k}' for k in range(enc_rank)])],
        [helper.make_tensor_value_info(HEADS_FEATURES, TensorProto.FLOAT, [B, N, P, C])],
        initializer=init), opset_imports=opsets, ir_version=ir_version)


def merge_with_planner_onnx(encoder_onnx, heads_onnx, out, *, image_hw=None,
                            image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225),
                            encoder_output: str | None = None, cache_dir=None) -> Path:
    """One ONNX graph with the planner's inputs (``images`` [B,N,3,H,W] uint8 RGB, ...) and
    outputs: glue (reshape to [B*N,3,H,W], cast, /255, normalise) -> encoder -> glue (keep the
    last P tokens, reshape to [B,N,P,C]) -> heads. ``encoder_onnx`` is cut at ``encoder_output``
    when given; B, N, P and C come from the heads' ``features`` input; H, W from ``image_hw``,
    else the heads export's sidecar (model config), else the encoder's native size. The encoder
    is converted to the heads' opset where they differ. Written atomically."""
    import onnx
    from onnx import compose, helper, version_converter

    graph_path, info = prepare_encoder_graph(encoder_onnx, encoder_output, cache_dir)
    enc = load_onnx(graph_path)
    heads = load_onnx(Path(heads_onnx))
    feat = next((i for i in heads.graph.input if i.name == HEADS_FEATURES), None)
    if feat is None:
        raise ValueError(f'{heads_onnx}: no {HEADS_FEATURES!r} input; export it with '
                         f'export_heads_onnx')
    B, N, P, C = (d.dim_value for d in feat.type.tensor_type.shape.dim)
    if min(B, N, P, C) <= 0:
        raise ValueError(f'{heads_onnx}: features input needs static [B,N,P,C] dimensions')
    H, W = image_hw or _image_hw(heads_onnx, info)
    enc_rank = _output_rank(graph_path, info, (H, W))
    target = _opset(heads)
    if _opset(enc) != target:
        enc = version_converter.convert_version(enc, target)
    enc.ir_version = heads.ir_version = max(enc.ir_version, heads.ir_version)
    enc = compose.add_prefix(enc, prefix='encoder/')
    enc_in, enc_out = 'encoder/' + info['input'], 'encoder/' + info['output']
    opsets = [helper.make_opsetid('', target)]
    pre = _pre_graph(B, N, H, W, image_mean, image_std, opsets, heads.ir_version)
    post = _post_graph(B, N, P, C, enc_rank, opsets, heads.ir_version)

    enc.graph.ClearField('value_info')
    symbolic_shape(enc.graph.output[0], 'tokens', enc_rank)
    merged = compose.merge_models(pre, enc, io_map=[('pre/pixels', enc_in)])
    merged = compose.merge_models(merged, post, io_map=[(enc_out, 'post/in')])
    merged = compose.merge_models(merged, heads, io_map=[(HEADS_FEATURES, HEADS_FEATURES)])
    dedupe_opsets(merged)
    return write_atomic(Path(out), lambda tmp: onnx.save(merged, tmp))


def dedupe_opsets(model) -> None:
    """One ``opset_import`` per domain (``compose.merge_models`` appends each part's: four
    entries for the default domain, which tools such as ONNX Runtime's quantiser refuse)."""
    from onnx import helper

    seen = {}
    for o in model.opset_import:
        domain = '' if o.domain == 'ai.onnx' else o.domain
        seen[domain] = max(seen.get(domain, 0), o.version)
    del model.opset_import[:]
    for domain, version in seen.items():
        model.opset_import.append(helper.make_opsetid(domain, version))


def _output_rank(graph_path, info, hw) -> int:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(graph_path), options, providers=['CPUExecutionProvider'])
    out = sess.run([info['output']], {info['input']: np.zeros((1, 3, *hw), np.float32)})[0]
    if out.ndim not in (3, 4):
        raise ValueError(f'encoder output {info["output"]!r} has rank {out.ndim}; expected '
                         f'tokens [B,T,C] or a feature map [B,C,h,w]')
    return out.ndim


def _image_hw(heads_onnx, info) -> tuple[int, int]:
    """Model input size: the heads sidecar's model config, else the encoder's native size."""
    sidecar = Path(heads_onnx).with_suffix('.json')
    if sidecar.is_file():
        cfg = json.loads(sidecar.read_text()).get('model_config', {})
        if cfg.get('image_height') and cfg.get('image_width'):
            return int(cfg['image_height']), int(cfg['image_width'])
    if info['native_hw']:
        return info['native_hw']
    raise ValueError(f'image size unknown: {heads_onnx} has no sidecar with the model config and '
                     f'the encoder graph has symbolic H, W')
