"""TensorRT engine cache and the plain-operator graph check.

The cache key logic (what decides a rebuild, and the message saying why) and the on-disk layout
are tested everywhere; building and running real engines needs ``tensorrt`` and a CUDA GPU and is
skipped with the reason elsewhere.
"""
import json

import numpy as np
import onnx
import pytest
from node_helpers import make_artifact
from onnx import TensorProto, helper

from rsd_drive.deploy import tensorrt_engine as te
from rsd_drive.deploy.graph_check import NonStandardGraphError, assert_plain_graph, check_graph

TRT_OK, TRT_REASON = te.tensorrt_availability()
needs_tensorrt = pytest.mark.skipif(not TRT_OK, reason=f'TensorRT engine tests: {TRT_REASON}')


def key(**changes) -> te.EngineKey:
    fields = dict(tensorrt_version='10.3.0', gpu_name='NVIDIA A100-SXM4-40GB',
                  compute_capability='8.0', precision='fp16',
                  input_shapes={'images': (1, 6, 3, 224, 224), 'intent': (1,)},
                  onnx_sha256='ab' * 32)
    fields.update(changes)
    return te.EngineKey(**fields)


# -- cache key and rebuild decision (no TensorRT needed) ------------------------------------------
def test_identical_key_reuses_the_engine():
    cached = key().to_dict()
    assert te.rebuild_reasons(json.loads(json.dumps(cached)), key()) == []


@pytest.mark.parametrize('change, expected', [
    (dict(tensorrt_version='10.7.0'), "TensorRT version changed: '10.3.0' -> '10.7.0'"),
    (dict(gpu_name='NVIDIA Orin'), "GPU changed: 'NVIDIA A100-SXM4-40GB' -> 'NVIDIA Orin'"),
    (dict(compute_capability='8.7'), "GPU compute capability changed: '8.0' -> '8.7'"),
    (dict(precision='fp32'), "precision changed: 'fp16' -> 'fp32'"),
    (dict(input_shapes={'images': (1, 8, 3, 224, 224), 'intent': (1,)}), 'input shapes changed'),
    (dict(onnx_sha256='cd' * 32), 'ONNX graph (sha256) changed: abababababab -> cdcdcdcdcdcd'),
])
def test_each_key_field_forces_a_rebuild_and_is_named(change, expected):
    reasons = te.rebuild_reasons(key().to_dict(), key(**change))
    assert len(reasons) == 1 and reasons[0].startswith(expected), reasons


def test_several_changes_are_all_reported():
    reasons = te.rebuild_reasons(key().to_dict(), key(tensorrt_version='10.8.0', precision='fp32'))
    assert len(reasons) == 2
    assert 'TensorRT version' in reasons[0] and 'precision' in reasons[1]


def test_missing_engine_or_key_forces_a_rebuild(tmp_path):
    assert te.rebuild_reasons(key().to_dict(), key(), engine_exists=False) == ['no cached engine']
    sidecar = tmp_path / 'm.fp16.engine.json'
    cached, error = te.read_cached_key(sidecar)
    assert cached is None and 'no cache key sidecar' in error
    assert te.rebuild_reasons(cached, key(), True, error) == [error]
    sidecar.write_text('{not json')
    cached, error = te.read_cached_key(sidecar)
    assert cached is None and 'unreadable' in error
    sidecar.write_text(json.dumps({**key().to_dict(), 'schema': 0}))
    cached, error = te.read_cached_key(sidecar)
    assert cached is None and 'schema' in error


def test_invalid_precision_is_rejected():
    with pytest.raises(ValueError, match='precision must be one of'):
        key(precision='int8')


def test_cache_on_disk_round_trip(tmp_path):
    paths = te.EnginePaths.for_onnx(tmp_path / 'model.onnx', tmp_path / 'engines', 'fp16')
    assert paths.engine.name == 'model.fp16.engine' and paths.key.name == 'model.fp16.engine.json'
    assert te.decide(paths, key()) == ['no cached engine']
    te.store_engine(paths, b'serialized-engine-bytes', key())
    assert paths.engine.read_bytes() == b'serialized-engine-bytes'
    assert te.decide(paths, key()) == []
    assert te.decide(paths, key(gpu_name='NVIDIA Orin'))[0].startswith('GPU changed')
    # fp32 has its own file: switching precision never overwrites the fp16 engine
    other = te.EnginePaths.for_onnx(tmp_path / 'model.onnx', tmp_path / 'engines', 'fp32')
    assert other.engine != paths.engine and te.decide(other, key(precision='fp32'))
    assert not list((tmp_path / 'engines').glob('*.tmp'))


def test_key_inputs_from_an_exported_artifact(tmp_path):
    from rsd_drive.deploy.artifact import DeployArtifact

    artifact = DeployArtifact.load(make_artifact(tmp_path))
    onnx_path = artifact.onnx_path
    shapes = te.onnx_input_shapes(onnx_path)  # read from the graph itself
    assert shapes['images'] == [1, 3, 3, 64, 96] and shapes['intent'] == [1]
    assert shapes == {k: list(shape) for k, (shape, _) in artifact.specs.items()}
    digest = te.onnx_sha256(onnx_path)
    assert digest == artifact.onnx_sha256  # recorded at export: no hashing at every start
    assert len(digest) == 64 and digest == te.onnx_sha256(onnx_path)
    onnx_path.write_bytes(onnx_path.read_bytes() + b'\0')
    assert te.onnx_sha256(onnx_path) != digest


@pytest.mark.skipif(TRT_OK, reason='TensorRT is usable here')
def test_without_tensorrt_building_says_why(tmp_path, capsys):
    onnx_path = tmp_path / 'model.onnx'
    onnx_path.write_bytes(b'')
    with pytest.raises(te.TensorRTUnavailable, match=TRT_REASON.split(' (')[0]):
        te.prepare_engine(onnx_path, tmp_path / 'engines', 'fp16', input_shapes={'x': [1]})
    assert te.main([str(onnx_path)]) == 2
    assert 'cannot build a TensorRT engine here' in capsys.readouterr().out


# -- the plain-operator check ---------------------------------------------------------------------
def _model(nodes, opset=17, extra_opsets=(), functions=()):
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, 'g', [x], [y])
    opsets = [helper.make_opsetid('', opset)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, functions=list(functions))


def test_exported_planner_graph_is_plain(tmp_path):
    report = assert_plain_graph(make_artifact(tmp_path) / 'model.onnx')
    assert report.ok and report.opset == 17
    assert {'MatMul', 'Conv', 'Softmax', 'LayerNormalization'} <= set(report.op_counts)
    assert not {'Loop', 'Scan', 'If'} & set(report.op_counts)  # the GRU is unrolled


def test_custom_domain_and_plugin_ops_are_rejected():
    plugin = helper.make_node('MultiscaleDeformableAttnPlugin_TRT', ['x'], ['y'], domain='trt')
    report = check_graph(_model([plugin], extra_opsets=['trt']))
    assert not report.ok
    assert any("non-standard operator domain 'trt'" in p for p in report.problems)
    assert any('custom operator trt::MultiscaleDeformableAttnPlugin_TRT' in p
               for p in report.problems)
    with pytest.raises(NonStandardGraphError, match='MultiscaleDeformableAttnPlugin_TRT'):
        assert_plain_graph(_model([plugin], extra_opsets=['trt']))


def test_unknown_op_in_default_domain_and_control_flow_are_rejected():
    unknown = helper.make_node('GridSample3D', ['x'], ['y'])
    assert any('not in the ONNX standard' in p for p in check_graph(_model([unknown])).problems)
    later = helper.make_node('Col2Im', ['x'], ['y'])  # exists, but only from opset 18
    assert any('does not exist at opset 17' in p for p in check_graph(_model([later])).problems)

    body = helper.make_graph([helper.make_node('Identity', ['x'], ['y'])], 'body', [],
                             [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4])])
    cond = helper.make_node('If', ['c'], ['y'], then_branch=body, else_branch=body)
    report = check_graph(_model([cond]))
    assert any("control-flow operator 'If'" in p for p in report.problems)
    assert report.op_counts['Identity'] == 2  # subgraphs are inspected too
    assert check_graph(_model([cond]), allow_control_flow=True).ok


def test_local_functions_are_rejected():
    fn = helper.make_function('custom.fn', 'Fused', ['x'], ['y'],
                              [helper.make_node('Relu', ['x'], ['y'])],
                              [helper.make_opsetid('', 17)])
    node = helper.make_node('Fused', ['x'], ['y'], domain='custom.fn')
    report = check_graph(_model([node], extra_opsets=['custom.fn'], functions=[fn]))
    assert any('local function custom.fn::Fused' in p for p in report.problems)


def test_a_plain_toy_graph_passes(tmp_path):
    path = tmp_path / 'toy.onnx'
    onnx.save(_model([helper.make_node('Relu', ['x'], ['y'])]), str(path))
    report = check_graph(path)
    assert report.ok and report.op_counts == {'Relu': 1}
    assert 'plain standard-domain operators only' in report.summary()


# -- real engines (TensorRT + CUDA) ---------------------------------------------------------------
@needs_tensorrt
def test_engine_builds_runs_matches_onnxruntime_and_is_cached(tmp_path):
    from rsd_drive.deploy.backends import create_backend, example_feeds

    deploy = make_artifact(tmp_path)
    cache = tmp_path / 'engines'
    logs = []
    trt32 = create_backend('tensorrt', deploy, precision='fp32', cache_dir=cache,
                           logger=logs.append)
    assert trt32.prepared.rebuilt and 'no cached engine' in trt32.prepared.reasons
    assert trt32.prepared.paths.engine.is_relative_to(cache)  # never into the deploy dir
    ort = create_backend('onnxruntime', deploy, device='cpu')
    feeds = example_feeds(ort.config, seed=3)
    ref, got = ort.infer(feeds), trt32.infer(feeds)
    np.testing.assert_allclose(got['waypoints'], ref['waypoints'], atol=2e-3)
    np.testing.assert_allclose(got['risk'], ref['risk'], atol=2e-3)
    assert trt32.warmup(2) > 0

    again = create_backend('tensorrt', deploy, precision='fp32', cache_dir=cache,
                           logger=logs.append)
    assert not again.prepared.rebuilt and any('cache hit' in line for line in logs)

    trt16 = create_backend('tensorrt', deploy, precision='fp16', cache_dir=cache,
                           logger=logs.append)
    assert trt16.prepared.rebuilt
    np.testing.assert_allclose(trt16.infer(feeds)['waypoints'], ref['waypoints'], atol=0.1)

    trt32.close()
    make_artifact(tmp_path, seed=7)  # retrained and re-exported: the engine must be rebuilt
    logs.clear()
    rebuilt = create_backend('tensorrt', deploy, precision='fp32', cache_dir=cache,
                             logger=logs.append)
    assert rebuilt.prepared.rebuilt
    assert rebuilt.prepared.paths.engine != again.prepared.paths.engine  # one folder per model


@needs_tensorrt
def test_build_only_prepares_the_engine(tmp_path):
    from rsd_drive.deploy.backends import prepare_backend

    deploy = make_artifact(tmp_path)
    summary = prepare_backend('tensorrt', deploy, 'fp16', cache_dir=tmp_path / 'cache')
    assert 'engine built' in summary and list((tmp_path / 'cache').glob('*/model.fp16.engine'))
    assert 'engine reused' in prepare_backend('tensorrt', deploy, 'fp16',
                                              cache_dir=tmp_path / 'cache')
    assert te.main([str(deploy / 'model.onnx'), '--precision', 'fp16', '--cache-dir',
                    str(tmp_path / 'cache')]) == 0
