"""int8 deploy artifacts (rsd_drive.deploy.quantize): the encoder quantised (QDQ), calibrated on
index frames, checked against fp32 on other frames, loaded by the ONNX Runtime backend."""
import json

import numpy as np
import pytest
from helpers_index import make_index, tiny_model_config

pytest.importorskip('onnxruntime.quantization')


@pytest.fixture(scope='module')
def fp32_and_index(tmp_path_factory):
    from node_helpers import make_checkpoint

    from rsd_drive.deploy.export import export_artifact

    tmp = tmp_path_factory.mktemp('quantize')
    index = make_index(tmp / 'index', frames=24)
    ckpt = make_checkpoint(tmp / 'ckpt', config=tiny_model_config())
    fp32 = export_artifact(ckpt, tmp / 'fp32', cameras=['front', 'back'], logger=lambda *_: None)
    return tmp, fp32, index


def test_int8_artifact_quantises_the_encoder_only_and_matches_fp32(fp32_and_index):
    import onnx

    from rsd_drive.deploy.artifact import DeployArtifact
    from rsd_drive.deploy.backends import OnnxRuntimeBackend
    from rsd_drive.deploy.quantize import (encoder_nodes, frame_feeds, is_encoder_node,
                                           quantize_artifact)
    from rsd_drive.deploy.tensorrt_engine import onnx_sha256
    from rsd_drive.data.index import FrameIndex

    tmp, fp32, index = fp32_and_index
    int8 = quantize_artifact(fp32.path, tmp / 'int8', index, calibrate_frames=8,
                             check_frames=8, logger=lambda *_: None)
    meta = json.loads((tmp / 'int8' / 'deploy.json').read_text())
    assert meta['precision'] == 'int8' and fp32.meta['precision'] == 'fp32'
    assert meta['onnx']['sha256'] == onnx_sha256(int8.onnx_path) != fp32.onnx_sha256
    cal, check = meta['calibration']['frames'], meta['check_against_fp32']['frames_ids']
    assert len(cal) == 8 and len(check) == 8 and not set(cal) & set(check)

    graph = onnx.load(str(int8.onnx_path))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count('QuantizeLinear') > 0 and ops.count('DequantizeLinear') > 0
    assert all(o.domain in ('', 'ai.onnx') for o in graph.opset_import)
    # every quantised product is the encoder's: the heads' weights stay fp32
    consumers = {i: n for n in graph.graph.node for i in n.input}
    for n in graph.graph.node:
        if n.op_type == 'DequantizeLinear':
            user = consumers.get(n.output[0])
            if user is not None and user.op_type in ('MatMul', 'Gemm', 'Conv'):
                assert is_encoder_node(user.name), user.name
    heads = [n for n in graph.graph.node if n.op_type == 'MatMul'
             and not is_encoder_node(n.name)]
    assert heads and encoder_nodes(graph, weights_only=False)
    # only products with a constant operand: attention's query x key and weights x value stay fp32
    source = onnx.load(str(fp32.onnx_path))
    chosen, every = set(encoder_nodes(source)), set(encoder_nodes(source, weights_only=False))
    activation_products = {n for n in every if n.endswith(('attention/MatMul',
                                                           'attention/MatMul_1'))}
    assert activation_products and chosen == every - activation_products
    assert meta['quantization']['nodes'] == len(chosen)

    check_result = meta['check_against_fp32']
    assert check_result['waypoint_max_diff_m'] < 0.5
    assert check_result['risk_pearson'] > 0.9

    backend = OnnxRuntimeBackend(tmp / 'int8', threads=1)
    assert backend.precision == 'int8'
    frame_index = FrameIndex(index)
    feeds = frame_feeds(frame_index[check[0]], int8.specs)
    got = backend.infer(feeds)
    ref = OnnxRuntimeBackend(fp32.path, threads=1).infer(feeds)
    assert np.isfinite(got['waypoints']).all()
    assert np.abs(got['waypoints'] - ref['waypoints']).max() <= \
        check_result['waypoint_max_diff_m'] + 1e-6
    assert DeployArtifact.load(tmp / 'int8').meta['quantization']['scope'].startswith('frozen')


def test_bad_calibration_and_double_quantisation_are_clear_errors(fp32_and_index, tmp_path):
    from rsd_drive.deploy.quantize import quantize_artifact

    tmp, fp32, index = fp32_and_index
    one = make_index(tmp_path / 'one', frames=1)
    with pytest.raises(ValueError, match='at least 2 frames'):
        quantize_artifact(fp32.path, tmp_path / 'out', one, logger=lambda *_: None)
    assert not (tmp_path / 'out').exists()
    assert not list(tmp_path.glob('.out.*'))  # no half-written artifact beside it
    int8 = quantize_artifact(fp32.path, tmp_path / 'int8', index, calibrate_frames=4,
                             check_frames=2, logger=lambda *_: None)
    with pytest.raises(ValueError, match='quantise an fp32 artifact'):
        quantize_artifact(int8.path, tmp_path / 'again', index, logger=lambda *_: None)


def test_frame_feeds_never_invent_a_route(fp32_and_index):
    """An index frame without a route (or with another length) feeds the mask off."""
    from rsd_drive.data.index import FrameIndex
    from rsd_drive.deploy.quantize import frame_feeds

    _, _, index = fp32_and_index
    specs = {'images': ((1, 2, 3, 32, 32), np.dtype(np.uint8)),
             'intrinsics': ((1, 2, 3, 3), np.dtype(np.float32)),
             'cam_to_ego': ((1, 2, 4, 4), np.dtype(np.float32)),
             'past_states': ((1, 16, 4), np.dtype(np.float32)),
             'intent': ((1,), np.dtype(np.int64)),
             'route': ((1, 8, 2), np.dtype(np.float32)),
             'route_valid': ((1,), np.dtype(np.float32))}
    feeds = frame_feeds(FrameIndex(index)[0], specs)
    assert feeds['route_valid'][0] == 0 and not feeds['route'].any()
    assert feeds['images'].shape == (1, 2, 3, 32, 32)
