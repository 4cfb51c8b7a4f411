"""Inference backends: deploy artifacts (read-only) vs checkpoints, torch vs ONNX Runtime
agreement on uint8 images, input checking, the factory and build_only preparation."""
import json

import numpy as np
import pytest
from node_helpers import CAMERAS, make_artifact, make_checkpoint

from rsd_drive.deploy import backends as B
from rsd_drive.deploy.artifact import DEPLOY_JSON, ArtifactError, DeployArtifact, input_specs
from rsd_drive.model.spec import INPUT_NAMES, OUTPUT_NAMES


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """(checkpoint, artifact) of one tiny model."""
    root = tmp_path_factory.mktemp('backends')
    deploy = make_artifact(root, seed=1)
    return root / 'ckpt', deploy


def test_artifact_holds_what_the_node_needs(exported):
    ckpt, deploy = exported
    art = DeployArtifact.load(deploy)
    meta = json.loads((deploy / DEPLOY_JSON).read_text())
    assert sorted(p.name for p in deploy.iterdir()) == ['deploy.json', 'model.onnx']
    assert list(meta['inputs']) == list(INPUT_NAMES)
    assert list(meta['outputs']) == list(OUTPUT_NAMES)
    assert meta['inputs']['images'] == {'shape': [1, 3, 3, 64, 96], 'dtype': 'uint8'}
    assert meta['outputs']['risk']['shape'] == [1, art.config.grid.rows, art.config.grid.cols]
    assert meta['cameras']['names'] == list(CAMERAS)
    assert meta['normalisation']['in_graph'] is True
    assert meta['grid'] == art.config.grid.to_dict() and meta['intents'][0] == 'unknown'
    assert len(meta['fingerprint']) == 64 and meta['versions']['torch']
    assert meta['check_against_torch']['waypoints'] < 1e-4
    assert 'plain standard-domain operators only' in meta['onnx']['graph_check']
    assert art.specs == input_specs(art.config)


def test_broken_artifacts_are_named(tmp_path, exported):
    import shutil

    _, deploy = exported
    bad = tmp_path / 'bad'
    shutil.copytree(deploy, bad)
    (bad / 'model.onnx').write_bytes((bad / 'model.onnx').read_bytes()[:1000])
    with pytest.raises(ArtifactError, match='model.onnx: 1000 bytes.*truncated'):
        DeployArtifact.load(bad)
    meta = json.loads((deploy / DEPLOY_JSON).read_text())
    meta['inputs']['images']['dtype'] = 'float32'
    shutil.copy(deploy / 'model.onnx', bad / 'model.onnx')
    (bad / DEPLOY_JSON).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="input 'images'"):
        DeployArtifact.load(bad)
    (bad / DEPLOY_JSON).write_text('{"format": "other/9"}')
    with pytest.raises(ArtifactError, match='format'):
        DeployArtifact.load(bad)
    with pytest.raises(FileNotFoundError, match='neither a deploy artifact'):
        B.create_backend('onnxruntime', tmp_path)


def test_backends_read_the_artifact_without_writing(exported):
    _, deploy = exported
    before = sorted((p.name, p.stat().st_mtime_ns) for p in deploy.iterdir())
    backend = B.create_backend('onnxruntime', deploy, threads=1)
    assert backend.onnx_path == deploy / 'model.onnx' and backend.artifact.camera_names
    backend.infer(B.example_feeds(backend.config))
    assert 'graph ready' in B.prepare_backend('onnxruntime', deploy)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in deploy.iterdir()) == before
    with pytest.raises(ValueError, match='backend torch needs the training checkpoint'):
        B.create_backend('torch', deploy)


def test_checkpoint_is_exported_once_and_refreshed_when_retrained(tmp_path):
    ckpt = make_checkpoint(tmp_path / 'ckpt', seed=2)
    logs = []
    first = B.resolve_artifact(ckpt, logger=logs.append)
    assert first.path == ckpt / 'deploy' and any('exporting' in line for line in logs), logs
    logs.clear()
    assert B.resolve_artifact(ckpt, logger=logs.append).fingerprint == first.fingerprint
    assert logs == []  # current: nothing exported, nothing hashed
    make_checkpoint(ckpt, seed=3)  # retrained in place: same config, new weights
    again = B.resolve_artifact(ckpt, logger=logs.append)
    assert 'checkpoint files changed' in logs[0]
    assert again.fingerprint != first.fingerprint
    assert not [p for p in ckpt.iterdir() if p.name.startswith('.deploy')], list(ckpt.iterdir())


def test_onnxruntime_on_the_artifact_matches_torch_on_the_checkpoint(exported):
    ckpt, deploy = exported
    torch_backend = B.create_backend('torch', ckpt)
    ort_backend = B.create_backend('onnxruntime', deploy, threads=1)
    assert (torch_backend.name, ort_backend.name) == ('torch', 'onnxruntime')
    assert torch_backend.precision == ort_backend.precision == 'fp32'
    assert ort_backend.device == 'CPUExecutionProvider'
    cfg = torch_backend.config
    assert cfg == ort_backend.config
    for seed in (0, 1):
        feeds = B.example_feeds(cfg, seed=seed)
        assert feeds['images'].dtype == np.uint8
        a, b = torch_backend.infer(feeds), ort_backend.infer(feeds)
        assert set(a) == set(b) == set(OUTPUT_NAMES)
        assert a['waypoints'].shape == (1, cfg.future_steps, 2)
        assert a['risk'].shape == (1, cfg.grid.rows, cfg.grid.cols)
        np.testing.assert_allclose(a['waypoints'], b['waypoints'], atol=1e-4)
        np.testing.assert_allclose(a['risk'], b['risk'], atol=1e-4)
    # The outputs depend on the inputs (not a constant graph): another intent, another plan.
    feeds = B.example_feeds(cfg)
    feeds2 = dict(feeds, intent=np.array([3], dtype=np.int64))
    assert np.abs(ort_backend.infer(feeds)['waypoints']
                  - ort_backend.infer(feeds2)['waypoints']).max() > 1e-4
    assert ort_backend.warmup(2) > 0


def test_inputs_are_checked_by_name_and_shape(exported):
    backend = B.create_backend('onnxruntime', exported[1], threads=1)
    feeds = B.example_feeds(backend.config)
    with pytest.raises(ValueError, match=r"missing \['intent'\]"):
        backend.infer({k: v for k, v in feeds.items() if k != 'intent'})
    with pytest.raises(ValueError, match="'images': shape"):
        backend.infer(dict(feeds, images=feeds['images'][:, :2]))
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        backend.infer(dict(feeds, extra=np.zeros(1)))
    # dtypes are converted, not rejected: float64 intrinsics and int32 intent work, and float
    # images in [0, 1] (the older float pipeline) give exactly the uint8 result
    ref = backend.infer(feeds)['waypoints']
    out = backend.infer(dict(feeds, intrinsics=feeds['intrinsics'].astype(np.float64),
                             intent=feeds['intent'].astype(np.int32),
                             images=feeds['images'].astype(np.float32) / 255.0))
    np.testing.assert_array_equal(out['waypoints'], ref)
    assert list(backend.specs) == list(INPUT_NAMES)


def test_factory_rejects_impossible_combinations(exported):
    ckpt, deploy = exported
    with pytest.raises(ValueError, match='backend must be one of'):
        B.create_backend('openvino', deploy)
    with pytest.raises(ValueError, match='TensorRT build option'):
        B.create_backend('onnxruntime', deploy, precision='fp16')
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='needs a CUDA device'):
            B.create_backend('torch', ckpt, precision='fp16')
    with pytest.raises(ValueError, match='device=cpu is not possible'):
        B.create_backend('tensorrt', deploy, device='cpu')


def test_tensorrt_backend_without_tensorrt_says_why(exported, tmp_path):
    from rsd_drive.deploy.tensorrt_engine import TensorRTUnavailable, tensorrt_availability

    ok, reason = tensorrt_availability()
    if ok:
        pytest.skip('TensorRT is usable here; test_tensorrt.py covers the real engine')
    with pytest.raises(TensorRTUnavailable) as err:
        B.create_backend('tensorrt', exported[1], precision='fp16', cache_dir=tmp_path)
    assert str(err.value) == reason


def test_build_only_on_a_checkpoint(tmp_path):
    ckpt = make_checkpoint(tmp_path / 'ckpt', seed=5)
    assert 'checkpoint loads' in B.prepare_backend('torch', ckpt)
    assert not (ckpt / 'deploy').exists()  # torch runs the checkpoint itself
    summary = B.prepare_backend('onnxruntime', ckpt, 'fp32')
    assert 'graph ready' in summary and (ckpt / 'deploy' / 'model.onnx').is_file()
