"""Inference backends: on-demand ONNX export into a checkpoint, torch vs ONNX Runtime agreement,
input checking, the factory and build_only preparation."""
import json

import numpy as np
import pytest
from node_helpers import make_checkpoint

from rsd_drive.deploy import backends as B
from rsd_drive.model import INPUT_NAMES, OUTPUT_NAMES


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp('backends') / 'ckpt', seed=1)


def test_onnx_is_exported_on_demand_reused_and_refreshed(tmp_path):
    ckpt = make_checkpoint(tmp_path / 'ckpt', seed=2)
    logs = []
    onnx_path = B.ensure_onnx(ckpt, logger=logs.append)
    assert onnx_path == ckpt / 'model.onnx' and onnx_path.is_file()
    assert any('model.onnx missing' in line for line in logs), logs
    meta = json.loads((ckpt / 'model.json').read_text())
    assert meta[B.FINGERPRINT_KEY] == B.checkpoint_fingerprint(ckpt)
    assert not [p for p in ckpt.iterdir() if p.name.startswith('.export-') or
                p.suffix == '.tmp'], list(ckpt.iterdir())

    logs.clear()
    assert B.ensure_onnx(ckpt, logger=logs.append) == onnx_path
    assert logs == []  # current: nothing exported

    make_checkpoint(ckpt, seed=3)  # retrained in place: same config, new weights
    assert B.onnx_staleness(ckpt) == ['checkpoint files changed since the export']
    before = onnx_path.read_bytes()
    B.ensure_onnx(ckpt, logger=logs.append)
    assert 'checkpoint files changed' in logs[0]
    assert onnx_path.read_bytes() != before


def test_onnx_exported_by_the_cli_is_checked_by_modification_time(tmp_path):
    """`rsd-drive export` writes no fingerprint: a newer weights file still marks it stale."""
    import os

    from rsd_drive.cli import main as cli_main

    ckpt = make_checkpoint(tmp_path / 'ckpt', seed=4)
    assert cli_main(['export', str(ckpt), '--no-check']) == 0
    assert B.onnx_staleness(ckpt) == []
    weights = ckpt / 'model.safetensors'
    later = (ckpt / 'model.onnx').stat().st_mtime + 10
    os.utime(weights, (later, later))
    assert B.onnx_staleness(ckpt) == ['model.safetensors is newer than model.onnx']


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='not a RiskPlanner checkpoint'):
        B.create_backend('onnxruntime', tmp_path)


def test_onnxruntime_matches_torch(checkpoint):
    torch_backend = B.create_backend('torch', checkpoint)
    ort_backend = B.create_backend('onnxruntime', checkpoint, threads=1)
    assert (torch_backend.name, ort_backend.name) == ('torch', 'onnxruntime')
    assert torch_backend.precision == ort_backend.precision == 'fp32'
    assert ort_backend.device == 'CPUExecutionProvider'
    cfg = torch_backend.config
    for seed in (0, 1):
        feeds = B.example_feeds(cfg, seed=seed)
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


def test_inputs_are_checked_by_name_and_shape(checkpoint):
    backend = B.create_backend('onnxruntime', checkpoint, threads=1)
    feeds = B.example_feeds(backend.config)
    with pytest.raises(ValueError, match=r"missing \['intent'\]"):
        backend.infer({k: v for k, v in feeds.items() if k != 'intent'})
    with pytest.raises(ValueError, match="'images': shape"):
        backend.infer(dict(feeds, images=feeds['images'][:, :2]))
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        backend.infer(dict(feeds, extra=np.zeros(1)))
    # dtypes are converted, not rejected: float64 intrinsics and int32 intent work
    out = backend.infer(dict(feeds, intrinsics=feeds['intrinsics'].astype(np.float64),
                             intent=feeds['intent'].astype(np.int32)))
    np.testing.assert_allclose(out['waypoints'], backend.infer(feeds)['waypoints'], atol=1e-6)
    assert list(backend.specs) == list(INPUT_NAMES)


def test_factory_rejects_impossible_combinations(checkpoint):
    with pytest.raises(ValueError, match='backend must be one of'):
        B.create_backend('openvino', checkpoint)
    with pytest.raises(ValueError, match='TensorRT build option'):
        B.create_backend('onnxruntime', checkpoint, precision='fp16')
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='needs a CUDA device'):
            B.create_backend('torch', checkpoint, precision='fp16')
    with pytest.raises(ValueError, match='device=cpu is not possible'):
        B.create_backend('tensorrt', checkpoint, device='cpu')


def test_tensorrt_backend_without_tensorrt_says_why(checkpoint):
    from rsd_drive.deploy.tensorrt_engine import TensorRTUnavailable, tensorrt_availability

    ok, reason = tensorrt_availability()
    if ok:
        pytest.skip('TensorRT is usable here; test_tensorrt.py covers the real engine')
    with pytest.raises(TensorRTUnavailable) as err:
        B.create_backend('tensorrt', checkpoint, precision='fp16')
    assert str(err.value) == reason


def test_build_only_prepares_without_running(tmp_path):
    ckpt = make_checkpoint(tmp_path / 'ckpt', seed=5)
    assert not (ckpt / 'model.onnx').exists()
    summary = B.prepare_backend('onnxruntime', ckpt, 'fp32')
    assert 'graph ready' in summary and (ckpt / 'model.onnx').is_file()
    assert 'checkpoint loads' in B.prepare_backend('torch', ckpt)
