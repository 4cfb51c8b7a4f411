"""Closed-loop evaluation over families x seeds, resumable: each route's record is written
atomically to ``OUT/routes/<policy>/<family>-<seed>.json`` (with its BEV PNG and the rollout
frames beside it) and a rerun skips the routes already there. ``report.json`` / ``report.md``
and the best/worst rollout GIFs cover every route in ``OUT`` (so several policies evaluated into
one directory share one report)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from rsd_drive.atomic import write_json_atomic
from rsd_drive.closedloop.config import ClosedLoopConfig
from rsd_drive.closedloop.scoring import summarize
from rsd_drive.closedloop.policies import make_policy


def parse_seeds(text) -> list:
    """'0-4' -> [0..4]; '1,3,7' -> [1, 3, 7]; an int or a list passes through."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, (list, tuple, range)):
        return [int(s) for s in text]
    seeds = []
    for part in str(text).split(','):
        m = re.fullmatch(r'\s*(\d+)\s*-\s*(\d+)\s*', part)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise ValueError(f'seed range {part!r} is empty')
            seeds += list(range(a, b + 1))
        else:
            seeds.append(int(part))
    return seeds


def safe_label(name: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.@+-]+', '_', name)


def route_paths(out: Path, label: str, family: str, seed: int) -> dict:
    base = Path(out) / 'routes' / safe_label(label) / f'{safe_label(family)}-{seed:04d}'
    return {'json': base.with_suffix('.json'), 'png': base.with_suffix('.png'),
            'frames': base.parent / (base.name + '.frames.npz')}


def load_routes(out: Path) -> list:
    routes = []
    for path in sorted((Path(out) / 'routes').glob('*/*.json')):
        try:
            routes.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            raise ValueError(f'{path}: unreadable route record ({e}); delete it to rerun '
                             f'the route') from e
    return sorted(routes, key=lambda r: (r['policy'], r['family'], r['seed']))


def evaluate_route(policy, family: str, seed: int, cfg: ClosedLoopConfig, scenario_cfg,
                   out: Path, on_frame=None) -> dict:
    """Run one route, write its PNG, frames and (last, atomically) its record."""
    from rsd_drive.closedloop.loop import RouteRunner
    from rsd_drive.closedloop.report import route_png, save_frames

    paths = route_paths(out, policy.name, family, seed)
    runner = RouteRunner(policy, family, seed, cfg, scenario_cfg, True, on_frame)
    record, frames = runner.run()
    a = runner.trace.arrays()
    ego = np.stack([a['x'], a['y'], a['t'], a['v']], axis=1)
    route_png(paths['png'], record, ego, frames)
    if frames:
        title = f"{policy.name} {family}/{seed} DS {record['driving_score']:.2f}"
        save_frames(paths['frames'], frames, ego[:, [0, 1, 2]], title, cfg.gif_frames_max)
    write_json_atomic(paths['json'], record)
    return record


GIF_SOURCES = 'sources.json'  # rollouts/: which frames file each GIF was written from


def write_outputs(out: Path, cfg: ClosedLoopConfig) -> dict:
    """report.json, report.md and the best/worst GIF per policy from every route in ``out``.
    A GIF is rewritten only when its route changed (another route became the best or worst, or
    the route was rerun): ``rollouts/sources.json`` records each GIF's frames file and mtime, so
    calling this after every policy does not redo every other policy's GIFs."""
    from rsd_drive.closedloop.report import best_and_worst, write_gif, write_report

    routes = load_routes(out)
    summary = summarize(routes)
    rollouts = Path(out) / 'rollouts'
    try:
        written = json.loads((rollouts / GIF_SOURCES).read_text())
    except (OSError, ValueError):
        written = {}
    gifs, sources = {}, {}
    for policy in sorted({r['policy'] for r in routes}):
        mine = [r for r in routes if r['policy'] == policy]
        best, worst = best_and_worst(mine)
        for tag, r in (('best', best), ('worst', worst)):
            frames = route_paths(out, policy, r['family'], r['seed'])['frames']
            if not frames.is_file():
                continue
            gif = rollouts / f'{safe_label(policy)}-{tag}.gif'
            source = [str(frames.relative_to(out)), frames.stat().st_mtime_ns]
            if written.get(gif.name) != source or not gif.is_file():
                write_gif(frames, gif, fps=cfg.plan_hz * 2)
            sources[gif.name] = source
            gifs[f"{policy} {tag} ({r['family']}/{r['seed']}, DS "
                 f"{r['driving_score']:.2f})"] = str(gif.relative_to(out))
    if sources:
        write_json_atomic(rollouts / GIF_SOURCES, sources)
    write_report(out, routes, summary, cfg.to_dict(), gifs)
    return summary


def run_closed_loop(policy, families, seeds, out, backend: str = 'onnxruntime',
                    ros: bool = False, cfg: ClosedLoopConfig | None = None,
                    scenario_cfg=None, name: str | None = None, device: str = 'cpu',
                    progress: bool = True, on_frame=None, write: bool = True) -> dict | None:
    """Evaluate ``policy`` ('expert', 'constant-velocity', a checkpoint dir or model.onnx, or a
    Policy object) closed loop on every (family, seed); returns the summary of every route in
    ``out`` ({policy: {family: aggregate, 'all': aggregate}}, see ``metrics.aggregate``).
    ``write=False``: only the route records (for policies run side by side into one ``out``;
    the caller runs :func:`write_outputs` once at the end) and None."""
    from tqdm import tqdm

    from rsd_drive.scenario.config import ScenarioConfig, default_config_path

    cfg = cfg or ClosedLoopConfig.from_yaml()
    if scenario_cfg is None:
        path = default_config_path()
        scenario_cfg = ScenarioConfig.from_yaml(path) if path else ScenarioConfig()
    out = Path(out)
    families, seeds = list(families), parse_seeds(seeds)
    pol = policy if not isinstance(policy, (str, Path)) else None
    if pol is None and ros:
        from rsd_drive.closedloop.policies import BASELINES
        from rsd_drive.closedloop.ros_world import RosPlannerPolicy

        if str(policy) in BASELINES + ('cv',):
            raise ValueError(f'--ros runs planner_node: it needs a model policy (a checkpoint '
                             f'or model.onnx), not the built-in baseline {policy!r}')

        pol = RosPlannerPolicy(str(policy), backend, cfg, out, name=name)
    elif pol is None:
        pol = make_policy(str(policy), backend, device, cfg.ros.threads, name)
    todo = [(f, s) for f in families for s in seeds
            if not route_paths(out, pol.name, f, s)['json'].is_file()]
    skipped = len(families) * len(seeds) - len(todo)
    try:
        bar = tqdm(todo, desc=f'closed loop {pol.name}', unit='route', disable=not progress)
        if skipped:
            bar.write(f'{skipped} routes already done in {out}: skipped')
        for family, seed in bar:
            record = evaluate_route(pol, family, seed, cfg, scenario_cfg, out, on_frame)
            bar.set_postfix_str(f"{family}/{seed} DS {record['driving_score']:.2f}"
                                + (' FAILED' if record.get('failure') else ''))
    finally:
        pol.close()
    return write_outputs(out, cfg) if write else None
