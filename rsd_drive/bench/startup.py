"""Start-up time and peak memory of planner_node, side by side in one run.

    python -m rsd_drive.bench.startup \
        --case 'artifact, vehicle venv=.venv-vehicle/bin/python:.:deploy.yaml' \
        --case 'checkpoint, main venv=.venv/bin/python:.:ckpt.yaml' --repeat 3

Each case is ``LABEL=PYTHON:CWD:PARAMS_FILE``: the node is started as ``PYTHON -m
rsd_drive.ros.planner_node --ros-args --params-file PARAMS_FILE`` in CWD (so another checkout's
code can be measured with its own venv). Start-up is the time on this process's monotonic clock
from spawning the process to the node's ``active:`` log line (configure + warm-up + activate
done); peak RSS is the process's ``VmHWM`` (/proc, Linux) read at that moment; the node is then
stopped by ``ros.launcher`` (SIGINT, then SIGTERM, then SIGKILL). Prints a table with each
case's median and its ratio to the first case.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path


def peak_rss_mb(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f'no VmHWM for process {pid}')


def start_once(python: str, cwd: str, params: str, timeout: float = 600.0) -> tuple:
    """(seconds to 'active:', peak RSS MB at that point, last log lines)."""
    from rsd_drive.ros.launcher import PlannerNodeProcess, node_environment

    env = node_environment()
    # The ROS wheels' bootstrap put this venv's libraries on LD_LIBRARY_PATH; another venv's
    # python (other ROS release) must find its own.
    env['LD_LIBRARY_PATH'] = ':'.join(p for p in env.get('LD_LIBRARY_PATH', '').split(':')
                                      if p and not p.startswith(sys.prefix))
    env.pop('_ROS_WHEELS_BOOTSTRAP_COMPLETE', None)  # let the child's bootstrap run
    with PlannerNodeProcess(Path(params).resolve(), python=python, cwd=cwd, env=env) as node:
        seconds = node.wait_active(timeout)
        return seconds, peak_rss_mb(node.pid), node.lines()[-3:]


def parse_case(text: str) -> tuple:
    label, _, spec = text.partition('=')
    python, cwd, params = spec.split(':')
    return label, python, cwd, params


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--case', action='append', required=True, metavar='LABEL=PY:CWD:PARAMS')
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args(argv)
    cases = [parse_case(c) for c in args.case]
    results = {label: [] for label, *_ in cases}
    for k in range(args.repeat):  # interleaved, so load on the machine hits every case alike
        for label, python, cwd, params in cases:
            seconds, rss, _ = start_once(python, cwd, params)
            results[label].append((seconds, rss))
            print(f'run {k + 1}: {label}: active after {seconds:.2f} s, peak RSS {rss:.0f} MB',
                  flush=True)
    first = cases[0][0]
    base_t = statistics.median(s for s, _ in results[first])
    base_m = statistics.median(m for _, m in results[first])
    print(f'\n{"case":<48} {"start-up s":>10} {"x":>6} {"peak RSS MB":>12} {"x":>6}')
    for label, *_ in cases:
        t = statistics.median(s for s, _ in results[label])
        m = statistics.median(r for _, r in results[label])
        print(f'{label:<48} {t:>10.2f} {t / base_t:>6.2f} {m:>12.0f} {m / base_m:>6.2f}')
    print(f'(median of {args.repeat}; start-up: spawn -> "active:" log line, monotonic clock; '
          f'peak RSS: VmHWM at that moment)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
