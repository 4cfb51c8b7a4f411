"""``make test-stress``: the timing-sensitive tests (DDS discovery, subprocesses, signals,
wall-clock deadlines) run N times under three conditions, then a pass table per test and
condition.

Conditions: ``plain`` (as is), ``taskset`` (the whole pytest run pinned to CPU 0 with
``taskset -c 0``; its children inherit it) and ``hog`` (beside one busy-looping process per CPU,
started here before the runs of that condition and killed after them, whatever happens).

    python test/stress.py [-n N] [--conditions plain taskset hog] [--out DIR] [TEST ...]

Each run is one ``pytest`` process over the whole subset (``-p no:cacheprovider``, a JUnit XML per
run under ``--out``); a test's result per run is read from that XML. Exit status 1 when any test
failed (or errored) in any run. Not part of ``make test``: use it before landing a change that
touches these tests or the node's timing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What depends on time, DDS discovery, subprocess start-up or signals (see README, "Tests").
TIMING_TESTS = (
    'test/test_replay_lockstep.py',
    'test/test_replay.py',
    'test/test_planner_node.py',
    'test/test_node_fuzz.py',
    'test/vehicle/test_lifecycle.py',
    'test/test_no_torch.py',
    'test/test_teacher_labeler_node.py',
    'test/test_label_job.py::test_killed_with_sigkill_and_rerun_labels_every_frame_exactly_once',
    'test/test_ray_label.py',
    'test/test_egress.py',
    'test/test_label_soak.py',
    'test/test_closedloop_ros.py',
    'test/test_soak.py',
    'test/test_pandaset_node.py',
    'test/test_planner_node_dgp.py',
)
CONDITIONS = ('plain', 'taskset', 'hog')
HOG = 'while True: pass'


def start_hogs(n: int) -> list:
    """``n`` busy-looping processes (own session each, so a Ctrl-C here does not reach them
    first): together they keep ``n`` CPUs busy."""
    return [subprocess.Popen([sys.executable, '-c', HOG], start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            for _ in range(n)]


def stop_hogs(hogs: list) -> None:
    for proc in hogs:
        if proc.poll() is None:
            proc.kill()
    for proc in hogs:
        proc.wait(timeout=10)


def results(xml_path: Path) -> dict:
    """nodeid-ish name -> 'pass' | 'fail' | 'skip' from one JUnit XML."""
    out = {}
    if not xml_path.is_file():
        return out
    for case in ET.parse(xml_path).getroot().iter('testcase'):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find('failure') is not None or case.find('error') is not None:
            out[name] = 'fail'
        elif case.find('skipped') is not None:
            out.setdefault(name, 'skip')
        else:
            out.setdefault(name, 'pass')
    return out


def run_once(tests, condition: str, xml_path: Path, log_path: Path) -> int:
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
           f'--junitxml={xml_path}', *tests]
    if condition == 'taskset':
        cmd = ['taskset', '-c', '0', *cmd]
    with open(log_path, 'w') as log:
        return subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def table(tally: dict, n: int, conditions) -> str:
    names = sorted({name for per in tally.values() for name in per})
    width = max([len('test')] + [len(name) for name in names])
    lines = [f'{"test":<{width}}  ' + '  '.join(f'{c:>9}' for c in conditions)]
    for name in names:
        cells = []
        for cond in conditions:
            got = tally.get(cond, {}).get(name, {})
            passed, runs = got.get('pass', 0), got.get('pass', 0) + got.get('fail', 0)
            cells.append(f'{passed}/{runs}' if runs else 'skipped')
        lines.append(f'{name:<{width}}  ' + '  '.join(f'{c:>9}' for c in cells))
    lines.append(f'(passes/runs, {n} runs per condition; a run that wrote no report is listed '
                 f'below as crashed)')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-n', type=int, default=int(os.environ.get('STRESS_N', 10)),
                        help='runs per condition (default: $STRESS_N or 10)')
    parser.add_argument('--conditions', nargs='+', choices=CONDITIONS, default=list(CONDITIONS))
    parser.add_argument('--out', default=str(REPO / 'build' / 'stress'),
                        help='JUnit XML and log of every run (default: build/stress)')
    parser.add_argument('tests', nargs='*', help='pytest ids (default: the timing subset)')
    args = parser.parse_args(argv)
    tests = args.tests or [t for t in TIMING_TESTS if (REPO / t.split('::')[0]).is_file()]
    if 'taskset' in args.conditions and shutil.which('taskset') is None:
        parser.error('taskset not found (util-linux)')
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tally = {}          # condition -> test -> {'pass': k, 'fail': k}
    crashed = []
    hogs = []
    # A SIGTERM (e.g. make interrupted) must not leave hogs behind: finally below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        for cond in args.conditions:
            if cond == 'hog':
                hogs = start_hogs(os.cpu_count() or 2)
                print(f'hog: {len(hogs)} busy processes (pids {[h.pid for h in hogs]})',
                      flush=True)
            try:
                for k in range(args.n):
                    xml_path, log_path = out / f'{cond}-{k}.xml', out / f'{cond}-{k}.log'
                    xml_path.unlink(missing_ok=True)
                    t0 = time.monotonic()
                    code = run_once(tests, cond, xml_path, log_path)
                    got = results(xml_path)
                    if not got:
                        crashed.append(f'{cond} run {k}: exit {code}, no report ({log_path})')
                    for name, result in got.items():
                        per = tally.setdefault(cond, {}).setdefault(name, {})
                        per[result] = per.get(result, 0) + 1
                    fails = sorted(n for n, r in got.items() if r == 'fail')
                    print(f'{cond} run {k + 1}/{args.n}: exit {code} in '
                          f'{time.monotonic() - t0:.0f} s'
                          + (f'; failed: {fails}' if fails else ''), flush=True)
            finally:
                if hogs:
                    stop_hogs(hogs)
                    hogs = []
    finally:
        stop_hogs(hogs)
    print()
    print(table(tally, args.n, args.conditions))
    for line in crashed:
        print('crashed:', line)
    failed = any(per.get('fail') for c in tally.values() for per in c.values())
    return 1 if failed or crashed else 0


if __name__ == '__main__':
    sys.exit(main())
