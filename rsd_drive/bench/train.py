"""``rsd-drive bench train``: epoch time on cached frozen features vs the encoder in the loop.

Both modes run the real Trainer on the same index with the same model for the same epochs; the
cache build (the encoder once per frame) is timed separately, giving the break-even point: after
how many epochs caching has paid for itself. Without ``--index`` a throwaway index of random
frames at the model's input size is written (timing does not depend on pixel content).
"""
from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np


def random_index(path: Path, model_cfg, frames: int, seed: int = 0) -> Path:
    """An index of ``frames`` random frames shaped for ``model_cfg`` (for timing only)."""
    from rsd_drive.data.index import ShardWriter
    from rsd_drive.geometry import camera_to_ego, intrinsics

    rng = np.random.default_rng(seed)
    c = model_cfg
    n, h, w = c.num_cameras, c.image_height, c.image_width
    K = intrinsics(w / 2.0, w / 2.0, (w - 1) / 2.0, (h - 1) / 2.0)
    rig = np.stack([camera_to_ego(1.5, 0.0, 1.6, yaw=2 * np.pi * i / n) for i in range(n)])
    writer = ShardWriter(path, 'bench_random')
    for i in range(frames):
        writer.add(images=rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8),
                   intrinsics=np.repeat(K[None], n, 0), cam_to_ego=rig,
                   past_states=rng.normal(size=(c.past_steps, 4)), intent=int(rng.integers(0, 4)),
                   init_speed=float(rng.uniform(0, 15)),
                   future=np.cumsum(rng.uniform(0, 3, (c.future_steps, 2)), axis=0),
                   risk=rng.uniform(0, 1, (c.grid.rows, c.grid.cols)), stamps=i)
    writer.commit(grid=c.grid.to_dict(), image_hw=[h, w])
    return path


def measure(model_cfg, train_cfg, index, epochs: int, work: Path, progress: bool,
            repeats: int = 1) -> dict:
    """Cache build time, then per-epoch times of both modes on the same index.

    The two modes alternate ``repeats`` times and every number is a median, so a machine whose
    load drifts during the benchmark biases neither side.
    """
    import torch

    from rsd_drive.train.cache import FeatureCache, training_encoder
    from rsd_drive.train.trainer import resolve_device, train

    encoder = training_encoder(model_cfg, train_cfg.encoder_seed)
    device = resolve_device(train_cfg.device)
    encoder.to(device)
    with torch.inference_mode():  # warm-up (thread pools, allocator) outside the timing
        encoder(torch.rand(2, 3, model_cfg.image_height, model_cfg.image_width, device=device))
    builds, times = [], {'cached': [], 'in_loop': []}
    for r in range(repeats):
        cache_dir = work / f'features_{r}'
        stats = FeatureCache(index, encoder, cache_dir).build(
            batch_size=train_cfg.batch_size, device=device, progress=progress)
        builds.append(stats['seconds'])
        base = replace(train_cfg, index=str(index), val_index=None, cache_dir=str(cache_dir),
                       max_steps=0, epochs=epochs, eval_every=0, checkpoint_every=0)
        for mode in ('cached', 'in_loop'):
            summary = train(model_cfg, replace(base, out=str(work / f'{mode}_{r}')),
                            encoder_in_loop=mode == 'in_loop', progress=progress)
            epoch_times = summary['epoch_times']
            # The first epoch carries one-off warm-up (allocator, thread pools): drop it.
            times[mode] += epoch_times[1:] if len(epoch_times) > 1 else epoch_times
    e = model_cfg.encoder
    return {'frames': stats['frames'], 'epochs': epochs, 'repeats': repeats,
            'encoder': (f'{e.source} {e.path}' if e.path else
                        f'{e.model_type} hidden {e.hidden_size} x {e.num_layers} layers'),
            'frozen_parameters': sum(p.numel() for p in encoder.parameters()),
            'cache_build_s': statistics.median(builds), 'cache_build_times': builds,
            'cached_epoch_s': statistics.median(times['cached']),
            'in_loop_epoch_s': statistics.median(times['in_loop']),
            'cached_epoch_times': times['cached'], 'in_loop_epoch_times': times['in_loop']}


def format_table(r: dict) -> str:
    cached, in_loop = r['cached_epoch_s'], r['in_loop_epoch_s']
    saved = in_loop - cached
    break_even = r['cache_build_s'] / saved if saved > 0 else None
    lines = [f'train epoch time, {r["frames"]} frames; medians over {r["repeats"]} alternating '
             f'repeats of {r["epochs"]} epochs (first epoch of each run dropped); frozen encoder '
             f'{r["encoder"]} ({r["frozen_parameters"] / 1e6:.1f} M parameters)',
             '| mode | epoch (s) | frames/s | ratio to cached |', '|---|---|---|---|',
             f'| cached features | {cached:.3f} | {r["frames"] / cached:.1f} | 1.00 |',
             f'| encoder in the loop | {in_loop:.3f} | {r["frames"] / in_loop:.1f} | '
             f'{in_loop / cached:.2f} |',
             f'| cache build (once) | {r["cache_build_s"]:.3f} | '
             f'{r["frames"] / max(r["cache_build_s"], 1e-9):.1f} | '
             f'{r["cache_build_s"] / cached:.2f} |',
             (f'caching pays for itself after {break_even:.2f} epochs' if saved > 0 else
              'the encoder is too cheap here for caching to pay off')]
    return '\n'.join(lines)


def add_arguments(parser) -> None:
    from rsd_drive.train.config import add_override_arguments

    parser.add_argument('--config', default='config/train.yaml',
                        help='model: and train: sections (default: %(default)s)')
    parser.add_argument('--index', help='an existing index (default: random frames)')
    parser.add_argument('--frames', type=int, default=64, help='random frames without --index')
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=2,
                        help='alternate the two modes this many times (medians)')
    add_override_arguments(parser, ('batch_size', 'device'))
    parser.add_argument('--encoder-hidden', type=int,
                        help='random encoder width (e.g. 384 with 12 layers, 6 heads: ViT-S)')
    parser.add_argument('--encoder-layers', type=int, help='random encoder depth')
    parser.add_argument('--encoder-heads', type=int, help='random encoder attention heads')
    parser.add_argument('--out', help='also write bench_train.json and bench_train.png here')
    parser.add_argument('--no-progress', action='store_true')


def _plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    names = ['cached features', 'encoder in loop']
    values = [result['cached_epoch_s'], result['in_loop_epoch_s']]
    ax.bar(names, values, color=['tab:green', 'tab:red'])
    ax.set_ylabel('epoch time (s)')
    ax.set_title(f'{result["frames"]} frames; ratio {values[1] / values[0]:.2f}x', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> int:
    from rsd_drive.data.index import FrameIndex
    from rsd_drive.train.config import apply_overrides, load_config

    model_cfg, train_cfg = load_config(args.config)
    train_cfg = apply_overrides(train_cfg, args, ('batch_size', 'device'))
    sizes = {k: v for k, v in (('hidden_size', args.encoder_hidden),
                               ('num_layers', args.encoder_layers),
                               ('num_heads', args.encoder_heads)) if v is not None}
    if sizes:
        model_cfg = replace(model_cfg, encoder=replace(model_cfg.encoder, **sizes))
    work = Path(tempfile.mkdtemp(prefix='rsd_bench_train_'))
    try:
        if args.index:
            index = Path(args.index)
        else:
            index = random_index(work / 'index', model_cfg, args.frames)
        FrameIndex(index)  # fail early on a bad path
        result = measure(model_cfg, train_cfg, index, args.epochs, work, not args.no_progress,
                         args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(result))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'bench_train.json').write_text(json.dumps(result, indent=1))
        _plot(result, out / 'bench_train.png')
    return 0
