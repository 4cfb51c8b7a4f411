"""``rsd-drive bench soak --minutes M --json OUT``: planner_node for M minutes on a looped drive.

planner_node runs in its own process (``ros.launcher``, as on the vehicle) on a recorded drive
replayed in lockstep over DDS (``ros.replay``, ``loop_for_s``): after each camera set, bag time
stands still until the node's path for it arrives, and at the end of the bag ``/clock`` jumps back
to its start (as ``ros2 bag play --loop``), so the node also goes through its time-jump reset
once per pass. Every ``--sample-s`` seconds (wall) the node's process is sampled from ``/proc``:
resident memory (``VmRSS``), open file descriptors and threads. Latency:

* ``latency_ms``: per camera set, wall time from the replay publishing the set's last image to
  the node's path for it arriving back (the lockstep wait: transport, sync, queue, decode,
  preprocess, inference, postprocess, publish), p50/p99 over the sets answered in the first and
  in the last ``--window-min`` minutes;
* ``stages_ms``: the node's own per-stage p50/p99 from its ``/diagnostics`` (over its latest
  ``latency_window`` plans), the snapshot at the end of the first window and the last one.

Goals (issue "A test suite that never flakes, and a node that holds for hours"): RSS growth after
the first minute <= 5 MB, file descriptors and threads constant, last-window p99 within 10 % of
the first. ``goals`` in the JSON says which hold. Memory and latency are on the wall clock of a
machine whose load (``os.getloadavg`` at start and end) is recorded beside them.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from rsd_drive.atomic import write_bytes_atomic, write_json_atomic

RSS_GROWTH_GOAL_MB = 5.0
P99_GOAL_RATIO = 1.10


def add_arguments(parser) -> None:
    parser.add_argument('--minutes', type=float, default=30.0, help='how long to run (wall)')
    parser.add_argument('--json', metavar='OUT', required=True, help='write the results here')
    parser.add_argument('--bag', help='recorded drive to loop (default: a scenario drive '
                        'recorded under --work)')
    parser.add_argument('--model', help='checkpoint or deploy artifact directory (default: '
                        'the demo\'s frozen encoder with untrained heads, under --work)')
    parser.add_argument('--work', default='work_dirs/soak', help='working directory')
    parser.add_argument('--sample-s', type=float, default=5.0, help='sampling period (wall)')
    parser.add_argument('--window-min', type=float, default=5.0,
                        help='first/last window for the latency comparison (minutes)')
    parser.add_argument('--threads', type=int, default=0, help='ONNX Runtime threads (0: auto)')
    parser.add_argument('--params', help='planner_node parameters file to start from (default: '
                        'config/planner.yaml, whose cameras are the scenario drives\')')


def process_sample(pid: int) -> dict:
    """RSS (MB), open file descriptors and threads of process ``pid`` (Linux /proc)."""
    status = {}
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        key, _, value = line.partition(':')
        status[key] = value.strip()
    return {'rss_mb': int(status['VmRSS'].split()[0]) / 1024.0,
            'threads': int(status['Threads']),
            'fds': len(os.listdir(f'/proc/{pid}/fd'))}


class ProcessSampler:
    """Samples a process every ``period_s`` in a thread: ``samples`` = [(monotonic, sample)];
    ``sample(pid)`` is what is read (default :func:`process_sample`)."""

    def __init__(self, pid: int, period_s: float, sample=process_sample):
        self.pid, self.period_s, self.sample = pid, float(period_s), sample
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='soak_sampler', daemon=True)

    def start(self) -> 'ProcessSampler':
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.samples.append((time.monotonic(), self.sample(self.pid)))
            except (FileNotFoundError, ProcessLookupError):
                return  # the process is gone
            if self._stop.wait(self.period_s):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


class DiagnosticsTap:
    """Keeps the node's latest ``: planning`` diagnostics values, with their arrival time."""

    def __init__(self, node_name: str = 'planner_node'):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.prefix = node_name + ':'
        self.latest = []  # [(monotonic, {key: value})]
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('rsd_soak_tap', context=self.context)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on, QoSProfile(
            depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(self.prefix) and status.name.endswith(': planning'):
                values = {kv.key: kv.value for kv in status.values}
                if any(k.startswith('latency_ms.') for k in values):
                    self.latest.append((time.monotonic(), values))
                    del self.latest[:-2000]

    def at(self, t_mono: float) -> dict:
        """The last snapshot received at or before ``t_mono`` (else the first one)."""
        before = [v for t, v in self.latest if t <= t_mono]
        return before[-1] if before else (self.latest[0][1] if self.latest else {})

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=1.0)
        self.thread.join(timeout=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else \
        float('nan')


def latency_windows(set_waits, t0: float, t_end: float, window_s: float) -> dict:
    """p50/p99 (ms) of the answered sets' waits in [t0, t0+window) and [t_end-window, t_end]."""
    first = [w * 1e3 for t, w, ok in set_waits if ok and t < t0 + window_s]
    last = [w * 1e3 for t, w, ok in set_waits if ok and t >= t_end - window_s]
    return {'first': {'p50': percentile(first, 50), 'p99': percentile(first, 99),
                      'sets': len(first)},
            'last': {'p50': percentile(last, 50), 'p99': percentile(last, 99),
                     'sets': len(last)}}


def stage_values(diag: dict) -> dict:
    """{stage: {'p50', 'p99'}} (ms, wall) from a planning diagnostics snapshot."""
    stages = {}
    for key, value in diag.items():
        parts = key.split('.')
        if len(parts) == 3 and parts[0] == 'latency_ms' and parts[2] in ('p50', 'p99'):
            try:
                stages.setdefault(parts[1], {})[parts[2]] = float(value)
            except ValueError:
                pass
    return stages


def summarise(samples, set_waits, diag_first: dict, diag_last: dict, t0: float, t_end: float,
              window_s: float, minutes: float) -> dict:
    """The soak's JSON (see the module docstring) from its raw samples."""
    if not samples:
        raise RuntimeError('no process samples: the node exited at once')
    after_1min = [s for t, s in samples if t >= t0 + 60.0] or [samples[-1][1]]
    start, end = samples[0][1], samples[-1][1]
    rss = [s['rss_mb'] for _, s in samples]
    lat = latency_windows(set_waits, t0, t_end, window_s)
    name = f'{window_s / 60:g}min'
    result = {
        'minutes': minutes, 'window_min': window_s / 60.0,
        'plans': sum(1 for _, _, ok in set_waits if ok), 'sets': len(set_waits),
        'rss_mb': {'start': start['rss_mb'], 'after_1min': after_1min[0]['rss_mb'],
                   'end': end['rss_mb'], 'max': max(rss)},
        'fds': {'start': start['fds'], 'end': end['fds'],
                'min': min(s['fds'] for _, s in samples),
                'max': max(s['fds'] for _, s in samples)},
        'threads': {'start': start['threads'], 'end': end['threads'],
                    'min': min(s['threads'] for _, s in samples),
                    'max': max(s['threads'] for _, s in samples)},
        'latency_ms': {f'first_{name}': lat['first'], f'last_{name}': lat['last'],
                       'clock': 'wall', 'what': 'set published -> path received (lockstep)'},
        'stages_ms': {f'first_{name}': stage_values(diag_first),
                      f'last_{name}': stage_values(diag_last), 'clock': 'wall'},
        'samples': [{'t_s': round(t - t0, 2), **s} for t, s in samples],
    }
    growth = result['rss_mb']['end'] - result['rss_mb']['after_1min']
    p99_ratio = lat['last']['p99'] / lat['first']['p99'] if lat['first']['p99'] > 0 else \
        float('nan')
    fd_steady = [s['fds'] for t, s in samples if t >= t0 + 60.0] or [end['fds']]
    th_steady = [s['threads'] for t, s in samples if t >= t0 + 60.0] or [end['threads']]
    result['goals'] = {
        'rss_growth_after_1min_mb': growth, 'rss_ok': growth <= RSS_GROWTH_GOAL_MB,
        'fds_constant': min(fd_steady) == max(fd_steady),
        'threads_constant': min(th_steady) == max(th_steady),
        'p99_last_over_first': p99_ratio, 'p99_ok': p99_ratio <= P99_GOAL_RATIO}
    return result


def default_inputs(work: Path, log=print) -> tuple:
    """(bag, model) when not given: one 20 s scenario drive and the bench model (the demo's
    frozen encoder, untrained heads) for the six cameras of config/planner.yaml."""
    from rsd_drive.bench.node_bag import bench_model
    from rsd_drive.scenario import generate_drives
    from rsd_drive.scenario.config import ScenarioConfig

    drives = work / 'drives'
    found = sorted(p for p in drives.glob('drive_*') if (p / 'metadata.yaml').is_file())
    if not found:
        log(f'soak: recording a 20 s scenario drive under {drives}')
        found = generate_drives(drives, 7000, 1, ScenarioConfig(duration_s=20.0))
    return Path(found[0]), bench_model(work, (112, 224), 6, log=log)


def soak(bag: Path, model: Path, out_json: Path, minutes: float, work: Path,
         sample_s: float = 5.0, window_min: float = 5.0, threads: int = 0, params_base=None,
         log=print) -> dict:
    from rsd_drive.ros.launcher import PlannerNodeProcess
    from rsd_drive.ros.planner_params import write_parameters
    from rsd_drive.ros.replay import replay

    work.mkdir(parents=True, exist_ok=True)
    params = write_parameters(work / 'planner_soak.yaml', base=params_base, model_dir=str(model),
                              backend='onnxruntime', threads=int(threads), route_topic='/route',
                              pad_short_history=True, diagnostics_period_s=1.0)
    log_path = work / 'planner_node_soak.log'
    log_path.unlink(missing_ok=True)
    load_start = os.getloadavg()
    tap = DiagnosticsTap()
    try:
        with PlannerNodeProcess(params, log_path=log_path, sim_time=True) as node:
            node.wait_active(timeout=600.0)
            sampler = ProcessSampler(node.proc.pid, sample_s).start()
            t0 = time.monotonic()
            try:
                summary = replay(bag, rate=1.0, wait_s=60.0, tail_s=0.5, lockstep=True,
                                 lockstep_timeout_s=60.0, progress=False, log=log,
                                 loop_for_s=minutes * 60.0)
            finally:
                t_end = time.monotonic()
                sampler.stop()
        window_s = min(window_min * 60.0, (t_end - t0) / 2.0)
        result = summarise(sampler.samples, summary.set_waits, tap.at(t0 + window_s),
                           tap.at(t_end), t0, t_end, window_s, minutes)
    finally:
        tap.close()
    result.update(passes=summary.passes, lockstep=dict(summary.lockstep),
                  bag=str(bag), model=str(model), load_avg={'start': load_start,
                                                            'end': os.getloadavg()},
                  node_log=str(log_path))
    write_json_atomic(out_json, result)
    write_png(result, summary.set_waits, t0, Path(out_json).with_suffix('.png'))
    return result


def write_png(r: dict, set_waits, t0: float, path: Path) -> Path:
    """RSS, file descriptors, threads and the per-set latency against time (minutes)."""
    import io

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    t = [s['t_s'] / 60 for s in r['samples']]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    for ax, key, unit in zip(axes, ('rss_mb', 'fds', 'threads'), ('MB', '', '')):
        ax.plot(t, [s[key] for s in r['samples']], lw=1)
        ax.set_ylabel(f'{key} {unit}'.strip())
        ax.grid(alpha=0.3)
    ok = [(tw, w) for tw, w, answered in set_waits if answered]
    axes[3].plot([(tw - t0) / 60 for tw, _ in ok], [w * 1e3 for _, w in ok], '.', ms=1.5)
    axes[3].set_ylabel('set -> path ms (wall)')
    axes[3].set_xlabel('minutes')
    axes[3].grid(alpha=0.3)
    fig.suptitle(f'planner_node soak: {r["minutes"]:g} min, {r["plans"]} plans')
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=90)
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())


def format_table(r: dict) -> str:
    w = f'{r["window_min"]:g}min'
    first, last = r['latency_ms'][f'first_{w}'], r['latency_ms'][f'last_{w}']
    g = r['goals']
    rows = [
        ('RSS (MB) start / after 1 min / end / max',
         f'{r["rss_mb"]["start"]:.1f} / {r["rss_mb"]["after_1min"]:.1f} / '
         f'{r["rss_mb"]["end"]:.1f} / {r["rss_mb"]["max"]:.1f}',
         f'growth {g["rss_growth_after_1min_mb"]:+.1f} MB '
         f'({"ok" if g["rss_ok"] else "over"} <= {RSS_GROWTH_GOAL_MB:g})'),
        ('open fds start / end (min-max)',
         f'{r["fds"]["start"]} / {r["fds"]["end"]} ({r["fds"]["min"]}-{r["fds"]["max"]})',
         'constant' if g['fds_constant'] else 'NOT constant after 1 min'),
        ('threads start / end (min-max)',
         f'{r["threads"]["start"]} / {r["threads"]["end"]} '
         f'({r["threads"]["min"]}-{r["threads"]["max"]})',
         'constant' if g['threads_constant'] else 'NOT constant after 1 min'),
        (f'set -> path p50 / p99 (ms, wall), first {w}',
         f'{first["p50"]:.0f} / {first["p99"]:.0f} ({first["sets"]} sets)', ''),
        (f'set -> path p50 / p99 (ms, wall), last {w}',
         f'{last["p50"]:.0f} / {last["p99"]:.0f} ({last["sets"]} sets)',
         f'p99 ratio {g["p99_last_over_first"]:.2f} '
         f'({"ok" if g["p99_ok"] else "over"} <= {P99_GOAL_RATIO:g})'),
    ]
    head = (f'planner_node soak: {r["minutes"]:g} min, {r["plans"]} plans of {r["sets"]} sets, '
            f'{r["passes"]} passes of {Path(r["bag"]).name}; load {r["load_avg"]["start"][0]:.2f}'
            f' -> {r["load_avg"]["end"][0]:.2f}')
    return '\n'.join([head] + [f'  {a:<48} {b:<28} {c}' for a, b, c in rows])


def run(args) -> int:
    work = Path(args.work)
    bag, model = (Path(args.bag) if args.bag else None), (Path(args.model) if args.model else None)
    if bag is None or model is None:
        default_bag, default_model = default_inputs(work)
        bag, model = bag or default_bag, model or default_model
    result = soak(bag, model, Path(args.json), args.minutes, work, args.sample_s,
                  args.window_min, args.threads, params_base=args.params)
    print(format_table(result))
    print(f'wrote {args.json}')
    return 0
