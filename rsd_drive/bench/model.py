"""``rsd-drive bench model``: parameters (frozen / trainable), torch eager vs ONNX Runtime latency.

Default model: 6 cameras at 224x224 with the small encoder of ``ModelConfig()`` (a randomly
initialised DINOv2-shaped tower, 96 wide, 2 layers), or any checkpoint (``--checkpoint``). Both
backends run the same inputs in this process, one after the other, so their ratio is fair; the
table and a PNG go to ``--out``.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument('--checkpoint', help='RiskPlanner checkpoint (default: a fresh '
                                             '6-camera 224x224 model with the small encoder)')
    parser.add_argument('--iterations', type=int, default=30, help='timed runs per backend')
    parser.add_argument('--warmup', type=int, default=5, help='untimed runs first')
    parser.add_argument('--threads', type=int, default=0,
                        help='ONNX Runtime intra-op threads (0: runtime default); torch uses '
                             'torch.get_num_threads()')
    parser.add_argument('--out', default='work_dirs/bench', help='table (JSON) and PNG go here')


def time_backend(backend, feeds: dict, iterations: int, warmup: int) -> np.ndarray:
    """Seconds per call, after ``warmup`` untimed calls."""
    from tqdm import tqdm

    for _ in range(warmup):
        backend.infer(feeds)
    times = []
    for _ in tqdm(range(iterations), desc=f'{backend.name}', unit='run', leave=False):
        t0 = time.perf_counter()
        backend.infer(feeds)
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def run_benchmark(checkpoint, iterations: int = 30, warmup: int = 5, threads: int = 0) -> dict:
    import torch

    from rsd_drive.deploy.backends import create_backend, example_feeds

    torch_backend = create_backend('torch', checkpoint)
    ort_backend = create_backend('onnxruntime', checkpoint, threads=threads)
    cfg = torch_backend.config
    feeds = example_feeds(cfg, seed=0)
    counts = torch_backend.model.parameter_counts()
    results = {'config': {'cameras': cfg.num_cameras, 'image': [cfg.image_height, cfg.image_width],
                          'encoder': f'{cfg.encoder.model_type} hidden {cfg.encoder.hidden_size} '
                                     f'x{cfg.encoder.num_layers} ({cfg.encoder.source})',
                          'torch_threads': torch.get_num_threads()},
               'parameters': counts, 'latency_ms': {}}
    outputs = {}
    for backend in (torch_backend, ort_backend):
        t = time_backend(backend, feeds, iterations, warmup) * 1e3
        results['latency_ms'][backend.name] = {'p50': float(np.percentile(t, 50)),
                                               'p99': float(np.percentile(t, 99)),
                                               'mean': float(t.mean())}
        outputs[backend.name] = backend.infer(feeds)
    results['max_abs_diff'] = {k: float(np.abs(outputs['torch'][k]
                                               - outputs['onnxruntime'][k]).max())
                               for k in outputs['torch']}
    lat = results['latency_ms']
    results['torch_over_onnxruntime'] = lat['torch']['p50'] / lat['onnxruntime']['p50']
    return results


def format_table(r: dict) -> str:
    c, p, lat = r['config'], r['parameters'], r['latency_ms']
    total = p['frozen'] + p['trainable']
    lines = [
        f"model: {c['cameras']} cameras at {c['image'][0]}x{c['image'][1]}, encoder "
        f"{c['encoder']}, torch threads {c['torch_threads']}",
        '',
        f'{"parameters":<14}{"count":>12}{"share":>8}',
        f'{"frozen":<14}{p["frozen"]:>12,}{p["frozen"] / total:>8.1%}',
        f'{"trainable":<14}{p["trainable"]:>12,}{p["trainable"] / total:>8.1%}',
        '',
        f'{"backend":<14}{"p50 ms":>9}{"p99 ms":>9}{"mean ms":>9}',
    ]
    for name, v in lat.items():
        lines.append(f'{name:<14}{v["p50"]:>9.2f}{v["p99"]:>9.2f}{v["mean"]:>9.2f}')
    diffs = ', '.join(f'{k} {v:.1e}' for k, v in r['max_abs_diff'].items())
    lines += ['', f'torch eager / ONNX Runtime (p50): {r["torch_over_onnxruntime"]:.2f}x',
              f'max |torch - ONNX Runtime|: {diffs}']
    return '\n'.join(lines)


def write_png(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = list(r['latency_ms'])
    p50 = [r['latency_ms'][n]['p50'] for n in names]
    p99 = [r['latency_ms'][n]['p99'] for n in names]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = np.arange(len(names))
    ax.bar(x - 0.2, p50, 0.4, label='p50')
    ax.bar(x + 0.2, p99, 0.4, label='p99')
    ax.set_xticks(x, names)
    ax.set_ylabel('ms per frame')
    c = r['config']
    ax.set_title(f"{c['cameras']} cameras {c['image'][0]}x{c['image'][1]}: "
                 f"torch/ORT = {r['torch_over_onnxruntime']:.2f}x", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='bench_model_') as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            import torch

            from rsd_drive.model import ModelConfig, RiskPlanner

            torch.manual_seed(0)
            checkpoint = Path(tmp) / 'ckpt'
            RiskPlanner(ModelConfig()).save_pretrained(checkpoint)
        results = run_benchmark(checkpoint, args.iterations, args.warmup, args.threads)
    table = format_table(results)
    print(table)
    (out / 'bench_model.json').write_text(json.dumps(results, indent=1))
    (out / 'bench_model.txt').write_text(table + '\n')
    write_png(results, out / 'bench_model.png')
    print(f'wrote {out / "bench_model.txt"}, .json and .png')
    return 0
