"""int8 deploy artifacts: ONNX Runtime static quantisation (QDQ) of the frozen encoder.

``rsd-drive export CKPT --precision int8 --calibration INDEX`` exports the fp32 artifact first,
then :func:`quantize_artifact` rewrites its graph: every ``MatMul``/``Gemm``/``Conv`` of the
encoder with a constant operand (nodes under ``encoder/``: the ViT's patch embedding, query/key/
value/output projections and MLPs; attention's activation x activation products stay fp32) gets
``QuantizeLinear``/``DequantizeLinear`` pairs, weights int8 per output channel, activations uint8
per tensor with ranges calibrated (MinMax) on real frames of a training index (the images, camera
geometry, ego history, intent and route the model sees). The heads (BEV adapter, RiskHead,
planner, GRU decoder) stay fp32: they are a few per cent of the cost and carry the outputs.

QDQ is plain standard-domain ONNX, so ONNX Runtime runs it with its int8 kernels (VNNI where
the CPU has them) and TensorRT builds it as an explicitly quantised network. ``deploy.json``
records ``precision``, the calibration set (index, frame ids, its fingerprint) and the check
against the fp32 graph on frames not used for calibration (waypoint max difference in metres,
risk-grid Pearson). Any of these artifacts loads in planner_node like the fp32 one; engine and
artifact caches key on the graph's hash, so on the precision too.

Needs ``onnxruntime`` (its ``quantization`` package) and ``onnx``; never torch.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from rsd_drive.atomic import replace_dir, write_json_atomic
from rsd_drive.deploy.artifact import DEPLOY_JSON, ONNX_NAME, DeployArtifact

PRECISIONS = ('fp32', 'int8')
QUANTIZED_OPS = ('MatMul', 'Gemm', 'Conv')
ENCODER_PREFIX = 'encoder/'


def is_encoder_node(name: str) -> bool:
    """A node of the frozen encoder: ``/model/encoder/...`` (the torch-traced graph, under the
    uint8 wrapper) or ``encoder/...`` (an ONNX encoder merged with the heads)."""
    parts = [p for p in name.split('/') if p]
    if parts and parts[0] == 'model':
        parts = parts[1:]
    return bool(parts) and parts[0] == ENCODER_PREFIX.rstrip('/')


def encoder_nodes(model, op_types=QUANTIZED_OPS, weights_only: bool = True) -> list[str]:
    """Names of the encoder's matrix products in ``model`` (an onnx ModelProto). weights_only:
    only products with a constant operand (projections, MLPs, patch embedding), not attention's
    activation x activation products (query x key, weights x value), whose int8 error moved
    a trained planner's waypoints by 0.8 m."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == 'Constant' for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in op_types and is_encoder_node(n.name)
            and (not weights_only or any(i in constants for i in n.input))]


def frame_feeds(frame: dict, specs: dict) -> dict:
    """One index frame as the graph's feeds (batch 1), shaped and typed by ``specs``
    (``DeployArtifact.specs``). A route of another length than the graph's is fed as absent
    (zeros, mask off): never resampled from something the frame does not hold."""
    feeds = {'images': np.ascontiguousarray(frame['images'].transpose(0, 3, 1, 2))[None]}
    for name in ('intrinsics', 'cam_to_ego', 'past_states'):
        feeds[name] = np.asarray(frame[name])[None]
    feeds['intent'] = np.asarray(frame['intent']).reshape(1)
    if 'route' in specs:
        route = np.asarray(frame['route'], np.float32)
        shape = specs['route'][0]
        if route.shape != tuple(shape[1:]):
            feeds['route'] = np.zeros(shape, np.float32)
            feeds['route_valid'] = np.zeros(specs['route_valid'][0], np.float32)
        else:
            feeds['route'] = route[None]
            feeds['route_valid'] = np.asarray(frame['route_valid'], np.float32).reshape(1)
    out = {}
    for name, (shape, dtype) in specs.items():
        value = np.asarray(feeds[name]).astype(dtype, copy=False)
        if value.shape != tuple(shape):
            raise ValueError(f'calibration frame: {name} has shape {value.shape}, the graph '
                             f'wants {tuple(shape)}')
        out[name] = value
    return out


def split_frames(n_frames: int, calibrate: int, check: int, seed: int = 0) -> tuple:
    """(calibration ids, check ids): disjoint, spread over the index (seeded)."""
    if n_frames < 2:
        raise ValueError(f'a calibration index needs at least 2 frames, it has {n_frames}')
    ids = np.random.default_rng(seed).permutation(n_frames)
    calibrate = max(1, min(calibrate, n_frames - 1))
    check = max(1, min(check, n_frames - calibrate))
    return sorted(int(i) for i in ids[:calibrate]), \
        sorted(int(i) for i in ids[calibrate:calibrate + check])


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over index frames."""

    def __init__(self, index, ids, specs):
        self.index, self.ids, self.specs = index, list(ids), specs
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.ids):
            return None
        self.pos += 1
        return frame_feeds(self.index[self.ids[self.pos - 1]], self.specs)

    def rewind(self):
        self.pos = 0


def agreement(pairs) -> dict:
    """How far outputs are from a reference, over (outputs, reference) pairs of
    {'waypoints', 'risk'} arrays: waypoint max abs difference (m, worst and mean of the per-pair
    max) and the risk grids' Pearson correlation over all cells."""
    wp_diff, risk_a, risk_b = [], [], []
    for out, ref in pairs:
        wp_diff.append(float(np.abs(np.asarray(out['waypoints']) - ref['waypoints']).max()))
        risk_a.append(np.asarray(out['risk']).ravel())
        risk_b.append(np.asarray(ref['risk']).ravel())
    ra, rb = np.concatenate(risk_a), np.concatenate(risk_b)
    pearson = float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float('nan')
    return {'frames': len(wp_diff), 'waypoint_max_diff_m': max(wp_diff),
            'waypoint_mean_of_max_diff_m': float(np.mean(wp_diff)),
            'risk_pearson': pearson, 'risk_max_diff': float(np.abs(ra - rb).max())}


def compare_outputs(fp32_onnx, other_onnx, feeds_list, threads: int = 0) -> dict:
    """The other graph against fp32 on the same feeds (:func:`agreement`)."""
    import onnxruntime as ort

    def session(path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])

    a, b = session(fp32_onnx), session(other_onnx)
    names = ['waypoints', 'risk']
    return agreement((dict(zip(names, b.run(names, f))), dict(zip(names, a.run(names, f))))
                     for f in feeds_list)


def _index_fingerprint(index_dir: Path, ids) -> str:
    manifest = (Path(index_dir) / 'manifest.json').read_bytes()
    return hashlib.sha256(manifest + json.dumps(list(ids)).encode()).hexdigest()


def quantize_artifact(src, out_dir, calibration_index, calibrate_frames: int = 32,
                      check_frames: int = 16, seed: int = 0, logger=print) -> DeployArtifact:
    """fp32 deploy dir ``src`` -> int8 deploy dir ``out_dir`` (replaced as a whole)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    from rsd_drive.data.index import FrameIndex
    from rsd_drive.deploy.graph_check import assert_plain_graph
    from rsd_drive.deploy.tensorrt_engine import onnx_sha256

    src = DeployArtifact.load(src)
    if src.meta.get('precision', 'fp32') != 'fp32':
        raise ValueError(f'{src.path}: quantise an fp32 artifact, this one is '
                         f'{src.meta["precision"]}')
    index = FrameIndex(calibration_index)
    cal_ids, check_ids = split_frames(len(index), calibrate_frames, check_frames, seed)
    nodes = encoder_nodes(onnx.load(str(src.onnx_path), load_external_data=False))
    if not nodes:
        raise ValueError(f'{src.onnx_path}: no encoder MatMul/Gemm/Conv nodes (named '
                         f'{ENCODER_PREFIX}...) to quantise')
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f'.{out_dir.name}.'))
    try:
        logger(f'int8: calibrating {len(nodes)} encoder nodes on {len(cal_ids)} frames of '
               f'{calibration_index}')
        quantize_static(str(src.onnx_path), str(tmp / ONNX_NAME),
                        _Reader(index, cal_ids, src.specs), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True, nodes_to_quantize=nodes,
                        op_types_to_quantize=list(QUANTIZED_OPS),
                        calibrate_method=CalibrationMethod.MinMax)
        check = compare_outputs(src.onnx_path, tmp / ONNX_NAME,
                                [frame_feeds(index[i], src.specs) for i in check_ids])
        logger(f'int8 vs fp32 on {check["frames"]} held-out frames: waypoints max '
               f'{check["waypoint_max_diff_m"]:.3f} m, risk Pearson {check["risk_pearson"]:.4f}')
        meta = dict(src.meta)
        path = tmp / ONNX_NAME
        meta['onnx'] = {**src.meta['onnx'], 'bytes': path.stat().st_size,
                        'sha256': onnx_sha256(path),
                        'graph_check': assert_plain_graph(path).summary().split(': ', 1)[-1]}
        meta['precision'] = 'int8'
        meta['quantization'] = {
            'format': 'QDQ (onnxruntime.quantization.quantize_static)',
            'weights': 'int8 symmetric, per output channel', 'activations': 'uint8, per tensor',
            'calibration_method': 'MinMax', 'ops': list(QUANTIZED_OPS),
            'nodes': len(nodes), 'scope': 'frozen encoder; heads fp32',
            'source_artifact': str(src.path.resolve()), 'source_onnx_sha256': src.onnx_sha256}
        meta['calibration'] = {'index': str(Path(calibration_index).resolve()),
                               'frames': cal_ids, 'seed': seed,
                               'fingerprint': _index_fingerprint(calibration_index, cal_ids)}
        meta['check_against_fp32'] = {**check, 'frames_ids': check_ids}
        write_json_atomic(tmp / DEPLOY_JSON, meta)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return DeployArtifact.load(out_dir)
