"""The privileged expert measured per family, without rendering.

``python -m rsd_drive.scenario.expert --seeds 20`` steps the :class:`Simulation` of every family
and seed with the expert driving and prints, per family: drives, expert collisions, off-road
steps, the expert's minimum speed before the hazard fires and while it lasts (mean over seeds),
the TTC at onset (the ego's time to arrival when the hazard entered its corridor; median) and
the minimum TTC during the hazard (median and lowest). Writes the rows and the table as JSON
with ``--json``.

The hazard window is [trigger_time, trigger_time + window_s]; "before" is [0, trigger_time).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import replace

import numpy as np
from tqdm import tqdm

from rsd_drive.scenario.config import FAMILIES, ScenarioConfig, default_config_path
from rsd_drive.scenario.sim import Simulation

WINDOW_S = 8.0


def run_expert(seed: int, cfg: ScenarioConfig, family: str, window_s: float = WINDOW_S) -> dict:
    """Drive one simulation with the expert for ``cfg.duration_s``; its hazard statistics."""
    sim = Simulation(seed, cfg, family)
    n = int(round(cfg.duration_s / sim.dt))
    t, v, ttc, off = np.zeros(n + 1), np.zeros(n + 1), np.zeros(n + 1), 0
    v[0], ttc[0] = sim.ego.v, sim.ttc()
    for i in range(1, n + 1):
        sim.step()
        t[i], v[i], ttc[i] = sim.t, sim.ego.v, sim.ttc()
        off += int(sim.off_road())
    h = sim.hazard
    trig = h.get('trigger_time')
    out = {'seed': seed, 'family': sim.family, 'collisions': len(sim.collision_log),
           'off_road_steps': off, 'min_speed': float(v.min()), 'trigger_time': trig,
           'onset_time': h.get('onset_time'), 'ttc_at_onset_s': h.get('ttc_at_onset_s'),
           'progress_m': sim.route_progress()}
    if trig is not None:
        before, during = t < trig, (t >= trig) & (t <= trig + window_s)
        out['min_speed_before'] = float(v[before].min()) if before.any() else float(v[0])
        out['min_speed_during'] = float(v[during].min())
        out['min_ttc_during'] = float(ttc[during].min())
    return out


def _mean(rows, key, reduce=np.mean):
    vals = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
    return (float(reduce(vals)), len(vals)) if vals else (float('nan'), 0)


def summarise(rows: list) -> dict:
    """Per-family aggregates of :func:`run_expert` rows."""
    out = {}
    for family in sorted({r['family'] for r in rows}, key=FAMILIES.index):
        fr = [r for r in rows if r['family'] == family]
        out[family] = {
            'drives': len(fr), 'collisions': sum(r['collisions'] for r in fr),
            'off_road_steps': sum(r['off_road_steps'] for r in fr),
            'fired': sum(r['trigger_time'] is not None for r in fr),
            'min_speed_before': _mean(fr, 'min_speed_before')[0],
            'min_speed_during': _mean(fr, 'min_speed_during')[0],
            'ttc_at_onset_s': _mean(fr, 'ttc_at_onset_s', np.median)[0],
            'min_ttc_during': _mean(fr, 'min_ttc_during', np.median)[0],
            'min_ttc_during_lowest': _mean(fr, 'min_ttc_during', np.min)[0],
            'stopped': sum(r.get('min_speed_during', 1.0) < 0.1 for r in fr),
        }
    return out


def format_table(summary: dict) -> str:
    head = ('| family | drives | fired | collisions | off-road steps | min v before (m/s) | '
            'min v during (m/s) | stops | TTC at onset (s, median) | min TTC during (s, median '
            '/ lowest) |')
    lines = [head, '|' + '---|' * 10]
    for family, s in summary.items():
        lines.append(f"| {family} | {s['drives']} | {s['fired']} | {s['collisions']} | "
                     f"{s['off_road_steps']} | {s['min_speed_before']:.2f} | "
                     f"{s['min_speed_during']:.2f} | {s['stopped']} | "
                     f"{s['ttc_at_onset_s']:.2f} | {s['min_ttc_during']:.2f} / "
                     f"{s['min_ttc_during_lowest']:.2f} |")
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seeds', type=int, default=20, help='seeds per family (0..N-1)')
    parser.add_argument('--families', nargs='*', default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument('--duration', type=float, default=None, help='seconds per drive')
    parser.add_argument('--config', default=None, help='scenario YAML (default: the package one)')
    parser.add_argument('--json', default=None, help='also write the rows and summary here')
    args = parser.parse_args(argv)
    path = args.config or default_config_path()
    cfg = ScenarioConfig.from_yaml(path) if path else ScenarioConfig()
    if args.duration:
        cfg = replace(cfg, duration_s=args.duration)
    jobs = [(f, s) for f in args.families for s in range(args.seeds)]
    rows = [run_expert(s, cfg, f) for f, s in tqdm(jobs, desc='expert drives', unit='drive')]
    summary = summarise(rows)
    print(format_table(summary))
    if args.json:
        from rsd_drive.atomic import write_json_atomic
        from rsd_drive.scenario.record import json_safe
        write_json_atomic(args.json, json_safe({'rows': rows, 'summary': summary}))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
