"""``rsd-drive bench label_soak --json OUT [--bag BAG] [--runner pool|ray|both]``: the labeler's
memory over one long bag.

One bag is labelled by ``rsd-drive label``'s own path (``pool``: with one bag, ``run_job``
labels it in this process, so the driver is the labeler) and as a Ray task on a local cluster
(``ray``, 127.0.0.1 only: the labeler is a Ray worker below the driver), each into a fresh
output directory. Every ``--sample-s`` seconds
(wall) the resident memory (``VmRSS``) of this process (the driver) and of every process below it
(pool workers; Ray's GCS, raylet and workers) is read from ``/proc``. Memory "stays flat" when
neither grows by more than ``RSS_GROWTH_GOAL_MB`` between the end of the first minute of labelling
and its end (the first minute holds the imports, the model load and the first chunk). Without
``--bag`` it records one scenario drive of ``--duration`` seconds (10 Hz cameras, 6 of them)
under ``--work``. The teacher is ``--backend`` with the tiny random models of ``rsd-drive bench
label`` (their answers are garbage: the labels are not the point, the memory is).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from rsd_drive.atomic import write_json_atomic
from rsd_drive.bench.soak import ProcessSampler

RSS_GROWTH_GOAL_MB = 5.0
WARMUP_S = 60.0


def add_arguments(parser) -> None:
    parser.add_argument('--json', metavar='OUT', required=True, help='write the results here')
    parser.add_argument('--bag', help='the long bag (default: record one under --work)')
    parser.add_argument('--duration', type=float, default=180.0,
                        help='seconds of the drive recorded when there is no --bag')
    parser.add_argument('--runner', choices=('pool', 'ray', 'both'), default='both')
    parser.add_argument('--backend', default='vlm',
                        choices=('scene-oracle', 'vlm', 'detector+vlm', 'clipseg'),
                        help='teacher (model backends use tiny random models built here)')
    parser.add_argument('--sample-s', type=float, default=2.0, help='sampling period (wall)')
    parser.add_argument('--work', default='work_dirs/label_soak', help='working directory')
    parser.add_argument('--warmup-s', type=float, default=WARMUP_S,
                        help='growth is measured from this long after labelling starts')


def descendants(pid: int) -> list:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    children = {}
    for p in Path('/proc').iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / 'stat').read_text().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def tree_sample(root_pid: int) -> dict:
    """RSS (MB) of ``root_pid`` and of every process below it, summed and by process name."""
    below = descendants(root_pid)
    by_name = {}
    for pid in below:
        by_name[process_name(pid)] = by_name.get(process_name(pid), 0.0) + rss_mb(pid)
    return {'driver_mb': rss_mb(root_pid), 'below_mb': sum(by_name.values()),
            'processes_below': len(below), 'below_by_name_mb': by_name}


def process_name(pid: int) -> str:
    try:
        return Path(f'/proc/{pid}/comm').read_text().strip()
    except OSError:
        return '?'


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0  # gone, or a kernel thread


def memory_summary(samples, t0: float, warmup_s: float = WARMUP_S) -> dict:
    """Start / after the first minute / end / max of each series, and the growth after it."""
    if not samples:
        raise RuntimeError('no memory samples')
    steady = [s for t, s in samples if t >= t0 + warmup_s] or [samples[-1][1]]
    out = {}
    for key in ('driver_mb', 'below_mb'):
        series = [s[key] for _, s in samples]
        out[key] = {'start': series[0], 'after_1min': steady[0][key], 'end': series[-1],
                    'max': max(series), 'growth_after_1min': series[-1] - steady[0][key]}
    out['processes_below_max'] = max(s['processes_below'] for _, s in samples)
    first, last = steady[0]['below_by_name_mb'], samples[-1][1]['below_by_name_mb']
    out['below_growth_by_name_mb'] = {k: last.get(k, 0.0) - first.get(k, 0.0)
                                      for k in sorted(set(first) | set(last))}
    out['flat'] = all(out[k]['growth_after_1min'] <= RSS_GROWTH_GOAL_MB
                      for k in ('driver_mb', 'below_mb'))
    return out


def soak_runner(bag: Path, spec, runner: str, sample_s: float,
                warmup_s: float = WARMUP_S) -> dict:
    """Label ``bag`` once with ``runner`` (a fresh output directory), memory sampled. A Ray
    cluster is started before the samples and stopped after them, so they show labelling only."""
    from rsd_drive.teacher.job import run_job

    shutil.rmtree(spec.out_dir, ignore_errors=True)
    ray = None
    if runner == 'ray':
        from rsd_drive.teacher.ray_run import connect, import_ray

        ray = import_ray('local')
        connect('local', num_cpus=1)
    try:
        sampler = ProcessSampler(os.getpid(), sample_s, sample=tree_sample).start()
        try:
            t0 = time.monotonic()
            summary = run_job([str(bag)], spec, workers=1, show_progress=True,
                              ray_address='local' if ray else None)
            seconds = time.monotonic() - t0
        finally:
            sampler.stop()
    finally:
        if ray is not None:
            ray.shutdown()
    return {'runner': runner, 'frames': summary.frames_labelled, 'seconds': seconds,
            'frames_per_s': summary.frames_labelled / seconds if seconds else 0.0,
            'failed_bags': len(summary.failed),
            'memory': memory_summary(sampler.samples, t0, warmup_s),
            'samples': [{'t_s': round(t - t0, 2), **s} for t, s in sampler.samples]}


def format_table(results) -> str:
    lines = [f'{"runner":<6} {"frames":>7} {"min":>6} {"driver MB 1min->end":>22} '
             f'{"below MB 1min->end":>22} {"flat (<= 5 MB)":>15}']
    for r in results:
        m = r['memory']
        d, b = m['driver_mb'], m['below_mb']
        lines.append(f'{r["runner"]:<6} {r["frames"]:>7} {r["seconds"] / 60:>6.1f} '
                     f'{d["after_1min"]:>9.1f} -> {d["end"]:<9.1f} '
                     f'{b["after_1min"]:>9.1f} -> {b["end"]:<9.1f} '
                     f'{"yes" if m["flat"] else "NO":>15}')
    return '\n'.join(lines)


def write_png(results, path: Path) -> None:
    import io

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from rsd_drive.atomic import write_bytes_atomic

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for r in results:
        t = [s['t_s'] / 60 for s in r['samples']]
        ax.plot(t, [s['driver_mb'] for s in r['samples']], label=f'{r["runner"]}: driver')
        ax.plot(t, [s['below_mb'] for s in r['samples']], label=f'{r["runner"]}: below')
    ax.set_xlabel('minutes of labelling')
    ax.set_ylabel('RSS MB')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=90)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def run(args) -> int:
    from rsd_drive.bench.label import tiny_models
    from rsd_drive.data.bag import DatasetConfig
    from rsd_drive.scenario.config import ScenarioConfig
    from rsd_drive.scenario.record import generate_drives
    from rsd_drive.teacher.config import TeacherConfig
    from rsd_drive.teacher.job import make_spec

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    bag = Path(args.bag) if args.bag else None
    if bag is None:
        found = sorted(p for p in (work / 'drives').glob('drive_*')
                       if (p / 'metadata.yaml').is_file())
        bag = found[0] if found else generate_drives(
            work / 'drives', 7200, 1, ScenarioConfig(duration_s=args.duration))[0]
    teacher = TeacherConfig(backend=args.backend, unparsable_answer='empty',
                            vlm={'max_new_tokens': 16},
                            **tiny_models(args.backend, work / 'models'))
    runners = ('pool', 'ray') if args.runner == 'both' else (args.runner,)
    results = []
    for runner in runners:
        spec = make_spec(work / f'out_{runner}', teacher, DatasetConfig.from_yaml(),
                         image_hw=(224, 224))
        results.append(soak_runner(bag, spec, runner, args.sample_s, args.warmup_s))
    out = {'bag': str(bag), 'backend': args.backend, 'goal_mb': RSS_GROWTH_GOAL_MB,
           'load_avg_end': os.getloadavg(), 'runs': results}
    write_json_atomic(Path(args.json), out)
    write_png(results, Path(args.json).with_suffix('.png'))
    print(format_table(results))
    print(f'wrote {args.json}')
    return 0
