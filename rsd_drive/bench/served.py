"""``rsd-drive bench served``: the served teacher against the stand-in VLM on 127.0.0.1
(rsd_drive.bench.standin_vlm) answering after a fixed latency.

Prints frames/s at each ``--concurrency`` (one labeling worker, the requests of the next frames in
flight at once), the cache hit rate of a relabel with another risk grid that shares the answer
cache (and the requests of a plain rerun), and per fault injected: frames labelled, failed (named
and left for the next run) and recovered by that rerun. Nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

FAULT_ROWS = ('http_429', 'http_503', 'http_500', 'timeout', 'drop', 'truncated', 'non_json',
              'length', 'prose', 'outside', 'refused', 'dies_and_returns')


def add_arguments(parser) -> None:
    parser.add_argument('--drives', type=int, default=2, help='scenario drives to record')
    parser.add_argument('--duration', type=float, default=14.0, help='seconds per drive')
    parser.add_argument('--latency-ms', type=float, default=200.0,
                        help='the stand-in server answers after this long')
    parser.add_argument('--concurrency', type=int, nargs='+', default=[1, 4, 16])
    parser.add_argument('--fault-count', type=int, default=8,
                        help='consecutive requests each fault hits (concurrency 4, max_retries '
                             '1: the first 4 frames fail both tries)')
    parser.add_argument('--work-dir', help='where drives and outputs go (default: a temp dir)')


def _label(bags, out, served: dict, grid_cols=None):
    from rsd_drive.data.bag import DatasetConfig
    from rsd_drive.model.config import ModelConfig
    from rsd_drive.teacher.config import TeacherConfig
    from rsd_drive.teacher.job import make_spec, run_job

    teacher = TeacherConfig(backend='vlm', runtime='served', served=served)
    model = ModelConfig()
    if grid_cols:
        model.grid = model.grid.resized(grid_cols, grid_cols)
    spec = make_spec(out, teacher, DatasetConfig.from_yaml(), model, (64, 64), chunk_frames=16)
    return run_job(bags, spec, workers=1, show_progress=False)


def _counts(summary) -> dict:
    from collections import Counter

    stats = Counter()
    for b in summary.bags:
        stats.update(b.get('teacher_stats') or {})
    failed = sum(len(b.get('failed_frames') or []) for b in summary.bags)
    return {'labelled': summary.frames_labelled, 'failed': failed, 'seconds': summary.seconds,
            'requests': stats['requests'], 'cache_hits': stats['cache_hits'],
            'answers': stats['answers']}


def _revive_when_dead(server, stop: threading.Event, down_s: float = 1.0) -> None:
    """The server that dies mid-run comes back ``down_s`` after it died."""
    while not stop.is_set():
        if not server.running:
            time.sleep(down_s)
            server.start()
            return
        time.sleep(0.02)


def _fault_row(fault, bags, root: Path, base: dict, server, n: int) -> dict:
    out = root / f'fault-{fault}'
    served = {**base, 'cache_dir': str(out / 'answers')}
    stop, watcher = threading.Event(), None
    if fault == 'refused':
        server.stop()
    elif fault == 'dies_and_returns':
        server.die_after(5)
        watcher = threading.Thread(target=_revive_when_dead, args=(server, stop), daemon=True)
        watcher.start()
    else:
        server.inject(fault, n)
    first = _counts(_label(bags, out, served))
    stop.set()
    if watcher:
        watcher.join()
    if not server.running:
        server.start()
    second = _counts(_label(bags, out, served))
    return {'fault': fault, 'labelled': first['labelled'], 'failed': first['failed'],
            'recovered': second['labelled'] - first['labelled'],
            'left': second['failed'], 'requests': first['requests'] + second['requests']}


def run_bench(bags, root: Path, latency_s: float, concurrency, fault_count: int) -> dict:
    from rsd_drive.bench.standin_vlm import StandInVlm

    rows = {'concurrency': [], 'cache': {}, 'faults': []}
    with StandInVlm(latency_s=latency_s) as server:
        base = {'base_url': server.url, 'model': 'stand-in', 'timeout_s': 2.0,
                'backoff_s': 0.05, 'backoff_max_s': 0.5}
        for c in concurrency:
            server.reset_counts()
            out = root / f'c{c}'
            got = _counts(_label(bags, out, {**base, 'max_concurrency': c}))
            rows['concurrency'].append({'concurrency': c, **got,
                                        'frames_per_s': got['labelled'] / got['seconds'],
                                        'max_in_flight': server.max_in_flight})
        last = root / f'c{concurrency[-1]}'
        served = {**base, 'max_concurrency': concurrency[-1], 'cache_dir': str(last / 'answers')}
        rerun = _counts(_label(bags, last, served))
        relabel = _counts(_label(bags, root / 'relabel-grid', served, grid_cols=32))
        asked = relabel['cache_hits'] + relabel['answers']
        rows['cache'] = {'rerun_requests': rerun['requests'],
                         'relabel_requests': relabel['requests'],
                         'relabel_hits': relabel['cache_hits'],
                         'hit_rate': relabel['cache_hits'] / max(1, asked)}
        fault_base = {**base, 'max_concurrency': 4, 'max_retries': 1, 'timeout_s': 0.5}
        for fault in FAULT_ROWS:
            rows['faults'].append(_fault_row(fault, bags, root, fault_base, server, fault_count))
    return rows


def format_rows(rows: dict, latency_ms: float) -> str:
    lines = [f'stand-in VLM on 127.0.0.1, {latency_ms:.0f} ms per answer, one worker',
             '| concurrency | frames | seconds | frames/s | requests | max in flight |',
             '|---|---|---|---|---|---|']
    for r in rows['concurrency']:
        lines.append(f'| {r["concurrency"]} | {r["labelled"]} | {r["seconds"]:.2f} | '
                     f'{r["frames_per_s"]:.2f} | {r["requests"]} | {r["max_in_flight"]} |')
    c = rows['cache']
    lines += ['', f'rerun into the same OUT: {c["rerun_requests"]} requests; relabel with another '
                  f'grid sharing the cache: {c["relabel_requests"]} requests, '
                  f'{c["relabel_hits"]} hits, hit rate {c["hit_rate"]:.2f}', '',
              '| fault (max_retries 1) | labelled | failed | recovered on rerun '
              '| left after rerun | requests |', '|---|---|---|---|---|---|']
    for r in rows['faults']:
        lines.append(f'| {r["fault"]} | {r["labelled"]} | {r["failed"]} | {r["recovered"]} | '
                     f'{r["left"]} | {r["requests"]} |')
    return '\n'.join(lines)


def run(args) -> int:
    from rsd_drive.atomic import write_json_atomic
    from rsd_drive.bench.label import _record_drives

    root = Path(args.work_dir or tempfile.mkdtemp(prefix='rsd-bench-served-'))
    root.mkdir(parents=True, exist_ok=True)
    try:
        bags = [str(b) for b in _record_drives(root, args.drives, args.duration)]
        rows = run_bench(bags, root, args.latency_ms / 1000.0, args.concurrency,
                         args.fault_count)
        print(format_rows(rows, args.latency_ms))
        write_json_atomic(root / 'bench_served.json', rows)
    finally:
        if not args.work_dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0
