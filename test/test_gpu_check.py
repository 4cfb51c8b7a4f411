"""scripts/gpu_check.sh's Python part (rsd_drive.bench.gpu_check) on this machine: without a CUDA
device it exports, runs the CPU reference and records why the GPU steps did not run; with one
(a lent GPU machine) the same test checks the torch CUDA results against the reference."""
import json

import pytest


def test_gpu_check_writes_one_json_and_names_what_it_skipped(tmp_path, monkeypatch):
    from node_helpers import make_checkpoint

    from rsd_drive.bench import gpu_check

    ckpt = make_checkpoint(tmp_path / 'ckpt')
    monkeypatch.setattr(gpu_check, 'build_model', lambda work, log: (ckpt, 'tiny test encoder'))
    out = tmp_path / 'gpu_check.json'
    assert gpu_check.main(['--json', str(out), '--work', str(tmp_path / 'work'),
                           '--iters', '5']) == 0
    result = json.loads(out.read_text())
    assert result['encoder'] == 'tiny test encoder'
    assert result['ort_cpu_fp32']['p50_ms'] > 0
    assert max(result['artifact']['check_against_torch'].values()) < 1e-3
    if not result['cuda']:
        assert 'no CUDA device' in result['gpu']
        pytest.skip('no CUDA device: the GPU steps are recorded as skipped (run '
                    'scripts/gpu_check.sh on a GPU machine)')
    for step in ('torch_cuda_fp32', 'torch_cuda_fp16', 'torch_cuda_bf16'):
        assert 'error' not in result[step], result[step]
        assert result[step]['waypoint_max_diff_m'] < 0.1
