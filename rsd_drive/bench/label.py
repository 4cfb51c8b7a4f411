"""``rsd-drive bench label``: frames/s of reading drives and of labelling them (1, 2 workers).

Without BAG arguments it records small scenario drives first (rsd_drive.scenario). Prints a table
with the ratios (2 workers over 1 of the same runner, labelling over reading) and writes it as
JSON and PNG beside the bench's work directory. ``--ray`` adds the same worker counts as Ray tasks
on a local cluster (127.0.0.1 only; started before its clock starts) beside the process pool.
Speed is measured here, never asserted in tests.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument('bags', nargs='*', metavar='BAG', help='drives to use (default: record '
                                                               '--drives scenario drives)')
    parser.add_argument('--drives', type=int, default=4, help='scenario drives to record')
    parser.add_argument('--duration', type=float, default=20.0, help='seconds per drive')
    parser.add_argument('--backend', default='scene-oracle',
                        choices=('scene-oracle', 'vlm', 'detector+vlm', 'clipseg'),
                        help='teacher (model backends use tiny random models built here)')
    parser.add_argument('--max-new-tokens', type=int, default=16,
                        help='answer length of the (tiny) VLM backends')
    parser.add_argument('--image-size', default='224x224', help='index image size HxW')
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2],
                        help='worker counts to compare')
    parser.add_argument('--ray', action='store_true',
                        help='also label as Ray tasks on a local cluster of as many CPUs as '
                             'workers')
    parser.add_argument('--work-dir', help='where drives and outputs go (default: a temp dir)')


def tiny_models(backend: str, root: Path) -> dict:
    from rsd_drive.teacher import tiny

    if backend == 'vlm':
        return {'model_dir': str(tiny.build_tiny_vlm(root / 'vlm'))}
    if backend == 'detector+vlm':
        return {'model_dir': str(tiny.build_tiny_vlm(root / 'vlm')),
                'detector_dir': str(tiny.build_tiny_detector(root / 'detector')),
                'detector': {'min_score': 0.0, 'max_proposals': 4}}
    if backend == 'clipseg':
        return {'model_dir': str(tiny.build_tiny_clipseg(root / 'clipseg'))}
    return {}


def _record_drives(root: Path, count: int, duration: float) -> list:
    from rsd_drive.scenario.config import ScenarioConfig
    from rsd_drive.scenario.record import generate_drives

    cfg = ScenarioConfig(duration_s=duration, image_width=200, image_height=112)
    return generate_drives(root / 'drives', seed=0, count=count, config=cfg, progress=True)


def measure_reading(bags, dataset) -> tuple:
    """(frames, seconds): every bag read and every frame decoded."""
    from rsd_drive.data.bag import BagReader

    frames, t0 = 0, time.perf_counter()
    for bag in bags:
        with BagReader(bag, dataset) as reader:
            frames += sum(1 for _ in reader.frames())
    return frames, time.perf_counter() - t0


def measure_labelling(bags, spec, workers: int, ray_address: str | None = None) -> tuple:
    """(frames labelled, seconds, failed bags) of a fresh labelling run."""
    from rsd_drive.teacher.job import run_job

    out = Path(spec.out_dir)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run_job(bags, spec, workers=workers, show_progress=False, ray_address=ray_address)
    return summary.frames_labelled, time.perf_counter() - t0, len(summary.failed)


def measure_ray(bags, spec, workers: int) -> tuple:
    """:func:`measure_labelling` as Ray tasks on a fresh local cluster of ``workers`` CPUs; the
    cluster starts (and stops) outside the measured time."""
    from rsd_drive.teacher.ray_run import connect, import_ray

    ray = import_ray('local')
    connect('local', num_cpus=workers)
    try:
        return measure_labelling(bags, spec, workers, ray_address='local')
    finally:
        ray.shutdown()


def format_table(rows) -> str:
    read = next((r for r in rows if r['what'] == 'read + decode'), None)
    base = {r.get('runner'): r for r in rows if r.get('workers') == 1}
    lines = [f'{"what":<22} {"frames":>7} {"seconds":>8} {"frames/s":>9} {"vs 1 worker":>12} '
             f'{"vs reading":>11}']
    for r in rows:
        b = base.get(r.get('runner')) if r.get('runner') else None
        vs1 = f'{r["fps"] / b["fps"]:.2f}x' if b and b['fps'] else '-'
        vsr = f'{r["fps"] / read["fps"]:.2f}x' if read and read['fps'] else '-'
        lines.append(f'{r["what"]:<22} {r["frames"]:>7} {r["seconds"]:>8.2f} {r["fps"]:>9.1f} '
                     f'{vs1:>12} {vsr:>11}')
    return '\n'.join(lines)


def _plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh([r['what'] for r in rows], [r['fps'] for r in rows], color='tab:blue')
    for i, r in enumerate(rows):
        ax.text(r['fps'], i, f' {r["fps"]:.1f}', va='center', fontsize=8)
    ax.set_xlabel('frames / s')
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> int:
    import os

    from rsd_drive.data.bag import DatasetConfig
    from rsd_drive.teacher.cli import _image_size
    from rsd_drive.teacher.config import TeacherConfig
    from rsd_drive.teacher.job import make_spec

    root = Path(args.work_dir or tempfile.mkdtemp(prefix='rsd_bench_label_'))
    root.mkdir(parents=True, exist_ok=True)
    bags = [Path(b) for b in args.bags] or _record_drives(root, args.drives, args.duration)
    dataset = DatasetConfig.from_yaml()
    teacher = TeacherConfig(backend=args.backend, unparsable_answer='empty',
                            vlm={'max_new_tokens': args.max_new_tokens},
                            **tiny_models(args.backend, root / 'models'))
    hw = _image_size(args.image_size)
    print(f'{len(bags)} bags, backend {args.backend}, {os.cpu_count()} CPUs, index images '
          f'{hw[0]}x{hw[1]}')
    frames, seconds = measure_reading(bags, dataset)
    rows = [{'what': 'read + decode', 'frames': frames, 'seconds': seconds,
             'fps': frames / seconds if seconds else 0.0}]
    runners = [('pool', 'pool', measure_labelling)]
    if args.ray:
        runners.append(('ray', 'ray', measure_ray))
    for runner, label, measure in runners:
        for w in args.workers:
            spec = make_spec(root / f'out_{runner}_w{w}', teacher, dataset, image_hw=hw)
            n, s, failed = measure(bags, spec, w)
            if failed:
                print(f'{failed} bags failed with {runner}, {w} workers; see '
                      f'{spec.out_dir}/summary.json')
            rows.append({'what': f'{label}, {w} worker{"s" if w > 1 else ""}', 'frames': n,
                         'seconds': s, 'fps': n / s if s else 0.0, 'runner': runner,
                         'workers': w})
    table = format_table(rows)
    print(table)
    (root / 'bench_label.json').write_text(json.dumps(rows, indent=1))
    _plot(rows, root / 'bench_label.png')
    print(f'written: {root / "bench_label.json"}, {root / "bench_label.png"}')
    return 0
