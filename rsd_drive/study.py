"""``rsd-drive study --config config/study.yaml --out DIR``: the experiment of issue 22.

Does the learned planner drive, and do the cameras, the pretrained encoder and the risk
distillation make it safer? One command runs it all, on the sizes of ``config/study.yaml``:

1. ``drives``: scenario drives of every family; the training drives with noise injection
   (recovery data, ``scenario.noise``), the held-out ones without. Every bag records ``/route``.
2. ``labels``: the scene-oracle teacher, label bags and the training index (frames whose target
   window holds injected noise are skipped; each frame carries its route input).
3. ``features``: the frozen encoder once per frame; ``probe``: a linear probe on those features
   against the teacher's risk cells, AUROC by distance band (``rsd_drive.train.probe``).
4. ``train``: every arm x training seed (lambda = 0, lambda > 0, ego-status-only, frozen random
   encoder), resumable per run, with the open-loop scores and paired tests of the ablation;
   with DAgger rounds, only the lambda > 0 arm of the first seed until the last round. DAgger
   rounds (``dagger.rounds``; Ross et al. 2011): round r drives the previous round's
   lambda > 0 checkpoint of the first training seed in the world (``rsd-drive dagger``, beta-mixed
   with the expert) on new training seeds of every family (``dagger_r{r}``), labels those bags into
   the same training index (``dagger_labels_r{r}``: every frame's target is the expert's rollout
   from the visited state), caches their features (``dagger_features_r{r}``; the frames already
   cached are reused) and trains again on the aggregate (``train_r{r}``: every arm x seed in the
   last round, the next collector before it).
5. ``closedloop``: expert, constant velocity and every trained checkpoint of the last round on
   held-out seeds of every family (resumable per route; the lambda > 0 arm first), the
   lambda > 0 arm also intent-only; the papers' claims as paired tests, by training seed and by
   route.
6. ``report``: ``report.md`` (+ the closed loop's PNGs and rollout GIFs) and ``study.json``.

Each stage is skipped when done (``state.json``), so an interrupted study continues where it
stopped; the stage-time table is in the report. ``--quick`` runs the same code on the ``quick:``
overrides in minutes (a test runs it).
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from rsd_drive import config_file
from rsd_drive.cli import main as cli_main
from rsd_drive.demo import Stages, _check, generate_family_drives, write_train_config
from rsd_drive.side_by_side import run_side_by_side

LAMBDA_ARM = 'lambda>0'
# (arm a, arm b, what the comparison tests) for the papers' claims, closed loop
CLAIMS = (('lambda>0', 'lambda=0', 'RSD: risk distillation (lambda > 0 vs lambda = 0)'),
          ('lambda>0', 'random encoder', 'FROST-Drive: pretrained vs frozen random encoder'),
          ('lambda>0', 'ego-status-only', 'cameras vs ego status only (both with the route)'))
CAMERA_FAMILIES = ('ped_crossing', 'ped_occluded', 'stopped_vehicle')
SEED_BLOCK = 100     # each family's seeds: seed0 + SEED_BLOCK * (its index in study.families) + i
# round r's DAgger drives: train_seed + SEED_BLOCK * k + offset * r + i, offset = dagger.seed_offset
DAGGER_OFFSET = 10   # the default offset (and the most training drives per family with it)


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in, nested dicts key by key."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and \
            isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def load_study_config(path=None, quick: bool = False) -> dict:
    data = yaml.safe_load(Path(path or config_file('study.yaml')).read_text())
    if not isinstance(data, dict) or 'study' not in data:
        raise ValueError(f'{path}: expected a mapping with a "study" key')
    study = data['study']
    quick_over = study.pop('quick', {}) or {}
    return merge(study, quick_over) if quick else study


# -- stages ---------------------------------------------------------------------------------------
def study_scenario(study: dict):
    """The scenario config of the study's drives (its duration and camera rate), no noise."""
    from rsd_drive.scenario import ScenarioConfig
    from rsd_drive.scenario.config import NoiseConfig

    scen = ScenarioConfig.from_yaml(config_file('scenario.yaml'))
    return replace(scen, duration_s=float(study['duration_s']),
                   image_hz=float(study['image_hz']), noise=NoiseConfig())


def dagger_offset(study: dict) -> int:
    """Seeds between DAgger rounds in a family's block (and the most training drives)."""
    return int((study.get('dagger') or {}).get('seed_offset', DAGGER_OFFSET))


def check_seed_blocks(study: dict) -> None:
    """Training drives and every DAgger round's drives must fit in a family's seed block
    without overlapping (their bags would share names and seeds)."""
    dagger = study.get('dagger') or {}
    rounds, drives = int(dagger.get('rounds', 0)), int(dagger.get('drives', 0))
    offset = dagger_offset(study)
    problems = []
    if int(study['train_drives']) > offset:
        problems.append(f"train_drives {study['train_drives']} > dagger.seed_offset {offset}")
    if rounds and drives > offset:
        problems.append(f'dagger.drives {drives} > dagger.seed_offset {offset}')
    if offset * (rounds + 1) > SEED_BLOCK:
        problems.append(f'dagger.rounds {rounds} with dagger.seed_offset {offset}: at most '
                        f'{SEED_BLOCK // offset - 1}')
    if rounds and not 0.0 <= float(dagger.get('beta', 0.3)) <= 1.0:
        problems.append(f"dagger.beta {dagger['beta']} is not in [0, 1]")
    if problems:
        raise ValueError('study config: ' + '; '.join(problems))


def dagger_seeds(study: dict, k: int, round_: int) -> list:
    """The training seeds of family k's DAgger drives in round ``round_`` (>= 1)."""
    first = int(study['train_seed']) + SEED_BLOCK * k + dagger_offset(study) * round_
    return list(range(first, first + int(study['dagger']['drives'])))


def make_study_drives(drives: Path, study: dict) -> dict:
    """{'train': [...], 'val': [...], 'family': {bag: family}}: training drives noise-injected,
    held-out drives without noise; each family its own seed block."""
    clean = study_scenario(study)
    noisy = replace(clean, noise=replace(clean.noise, **(study.get('noise') or {})))
    out = {'train': [], 'val': [], 'family': {}}
    for k, family in enumerate(study['families']):
        for split, seed0, count, cfg in (
                ('train', study['train_seed'], study['train_drives'], noisy),
                ('val', study['val_seed'], study['val_drives'], clean)):
            bags = generate_family_drives(drives / split / family, family,
                                          int(seed0) + SEED_BLOCK * k, int(count), cfg)
            out[split] += [str(b) for b in bags]
            out['family'].update({str(b): family for b in bags})
    return out


def skipped_frames(index: Path, prefix: str = '', bag_names=None) -> dict:
    """{prefix + reason: frames} summed over the index's shards (only those of the bags named
    ``bag_names``, when given)."""
    from rsd_drive.data.index import read_manifest

    skipped = {}
    for shard in read_manifest(index)['shards'].values():
        if bag_names is not None and Path(shard.get('bag', '')).name not in bag_names:
            continue
        for reason, n in shard.get('skipped', {}).items():
            skipped[prefix + reason] = skipped.get(prefix + reason, 0) + n
    return skipped


def label_drives(bags: dict, labels: Path, train_yaml: Path, index: dict) -> dict:
    from rsd_drive.data.index import FrameIndex

    for split in ('train', 'val'):
        _check(cli_main(['label', *bags[split], '--out', str(labels / split),
                         '--backend', 'scene-oracle', '--model-config', str(train_yaml),
                         '--workers', '2']), f'labeling {split}')
    skipped = {}
    for split in ('train', 'val'):
        skipped.update(skipped_frames(index[split], f'{split}:'))
    return {'frames': {s: len(FrameIndex(index[s])) for s in ('train', 'val')},
            'skipped': skipped}


def dagger_drives(drives: Path, study: dict, round_: int, checkpoint: str) -> dict:
    """Round ``round_``'s DAgger drives of ``checkpoint`` on new training seeds of every family
    (no noise; beta-mixed with the expert). Returns the bags and, per drive, what the model
    did (expert periods, collisions)."""
    from rsd_drive.closedloop.dagger import run_dagger
    from rsd_drive.scenario.record import read_drive_info

    dagger, scen = study['dagger'], study_scenario(study)
    bags, drives_info = [], []
    for k, family in enumerate(study['families']):
        seeds = dagger_seeds(study, k, round_)
        paths = run_dagger(checkpoint, [family], ','.join(map(str, seeds)), drives,
                           beta=float(dagger.get('beta', 0.3)), scenario_cfg=scen,
                           backend='torch')
        for path in paths:
            info = read_drive_info(path) or {}
            driver = info.get('driver', {})
            drives_info.append({'bag': str(path), 'family': family,
                                'collisions': len(info.get('collisions') or []),
                                'expert_periods': driver.get('expert_periods'),
                                'plan_periods': driver.get('plan_periods')})
        bags += [str(p) for p in paths]
    return {'checkpoint': str(checkpoint), 'bags': bags, 'drives': drives_info}


def label_dagger(bags: list, labels: Path, train_yaml: Path, index: Path) -> dict:
    """Label DAgger bags into the training index (their shards join the ones there)."""
    from rsd_drive.data.index import FrameIndex

    before = len(FrameIndex(index))
    _check(cli_main(['label', *bags, '--out', str(labels), '--backend', 'scene-oracle',
                     '--model-config', str(train_yaml), '--workers', '2']), 'labeling DAgger')
    after = len(FrameIndex(index))
    return {'frames_added': after - before, 'frames': after,
            'skipped': skipped_frames(index, bag_names={Path(b).name for b in bags})}


def cache_features(index: dict, train_yaml: Path, splits=('train', 'val')) -> bool:
    for split in splits:
        _check(cli_main(['cache', str(index[split]), '--config', str(train_yaml)]),
               f'feature cache {split}')
    return True


def probe_features(index: dict, model_cfg, train_cfg) -> dict:
    from rsd_drive.train.cache import training_encoder
    from rsd_drive.train.probe import format_probe, run_probe

    encoder = training_encoder(model_cfg, train_cfg.encoder_seed)
    result = run_probe(index['train'], index['val'], model_cfg, encoder)
    table = format_probe(result)
    print(table)
    return {'table': table, 'result': result}


def train_arms(out: Path, study: dict, model_cfg, train_cfg, encoder_cfg,
               name: str = 'ablation', collector_only: bool = False) -> dict:
    """Every arm x seed through the ablation into ``out/name`` (resumable per run).
    ``collector_only``: only the lambda > 0 arm of the first training seed (the policy that
    drives the next DAgger round; the other arms are only needed after the last round)."""
    from rsd_drive.train.ablate import run_ablation

    arms = [a for a in study.get('arms', [])
            if a != 'random-encoder' or encoder_cfg.source != 'config']
    weight = float(study['risk_weight'])
    result = run_ablation(model_cfg, train_cfg, out / name,
                          risk_weights=(weight,) if collector_only else (0.0, weight),
                          kinds=(train_cfg.risk_loss,),
                          seeds=study['seeds'][:1] if collector_only else study['seeds'],
                          arms=[] if collector_only else arms, arm_weight=weight,
                          jobs=int(study.get('train_jobs', 1)))
    print(result['table'])
    print(result['paired_table'])
    by_arm = {}
    for r in result['runs']:
        arm = LAMBDA_ARM if r['variant'].startswith('lambda=') and r['risk_weight'] > 0 \
            else r['variant']
        by_arm.setdefault(arm, {})[str(r['seed'])] = r['checkpoint']
    return {'ablation': str(out / name / 'ablation.json'), 'arms': by_arm,
            'table': result['table'], 'paired_table': result['paired_table'],
            'calibration': {f"{r['variant']} s{r['seed']}": r['calibration']
                            for r in result['runs']}}


def dagger_rounds(study: dict) -> int:
    return int((study.get('dagger') or {}).get('rounds', 0))


def run_dagger_rounds(stages, out: Path, study: dict, trained: dict, configs,
                      train_yaml: Path) -> dict:
    """DAgger rounds 1..R: the previous round's lambda > 0 checkpoint (first training seed)
    drives, its bags are labelled into the training index and cached, and training runs again on
    the aggregate (the next collector only; every arm x seed in round R). Returns the last
    round's ``train`` result."""
    model_cfg, train_cfg, encoder_cfg = configs
    index = Path(train_cfg.index)
    for r in range(1, dagger_rounds(study) + 1):
        checkpoint = trained['arms'][LAMBDA_ARM][str(study['seeds'][0])]
        drives = stages.run(f'dagger_r{r}', f'DAgger round {r}: {Path(checkpoint).name} drives',
                            lambda: dagger_drives(out / 'drives' / f'dagger_r{r}', study, r,
                                                  checkpoint))
        stages.run(f'dagger_labels_r{r}', f'DAgger round {r}: labels into the training index',
                   lambda: label_dagger(drives['bags'], index.parent, train_yaml, index))
        stages.run(f'dagger_features_r{r}', f'DAgger round {r}: features of the new frames',
                   lambda: cache_features({'train': index}, train_yaml, ('train',)))
        last = r == dagger_rounds(study)
        trained = stages.run(f'train_r{r}', f'DAgger round {r}: '
                             + ('arms x seeds' if last else 'the collector') + ' on the aggregate',
                             lambda: train_arms(out, study, model_cfg, train_cfg, encoder_cfg,
                                                f'ablation_r{r}', collector_only=not last))
    return trained


def policy_name(arm: str, seed, mode: str = '') -> str:
    slug = arm.replace(' ', '_').replace('=', '').replace('>', 'gt')
    return f'{slug}-s{seed}' + (f'-{mode}' if mode else '')


def closed_loop_policies(arms: dict, intent_only: bool) -> list:
    """[(policy name, spec, arm, mode)]: the baselines, every checkpoint with its route, and
    the lambda > 0 checkpoints intent-only."""
    out = [('expert', 'expert', 'expert', ''),
           ('constant-velocity', 'constant-velocity', 'constant velocity', '')]
    # the deployed arm first: an interrupted closed loop has its numbers before the others'
    for arm in sorted(arms, key=lambda a: a != LAMBDA_ARM):
        for seed, path in sorted(arms[arm].items()):
            out.append((policy_name(arm, seed), path, arm, ''))
        if arm == LAMBDA_ARM and intent_only:
            for seed, path in sorted(arms[arm].items()):
                out.append((policy_name(arm, seed, 'intent'), path, arm + ' intent', 'intent'))
    return out


def _drive_policy(spec, families, seeds, out, name, scen, cfg, progress) -> str:
    """One policy's routes, route records only (the report is written once, after all)."""
    from rsd_drive.closedloop import run_closed_loop

    run_closed_loop(spec, families, seeds, out, backend='torch', name=name, progress=progress,
                    scenario_cfg=scen, cfg=cfg, write=False)
    return name


def run_study_closed_loop(out: Path, study: dict, arms: dict) -> dict:
    """Every policy on every held-out route (resumable per route). ``closed_loop.jobs`` > 1
    drives that many policies side by side in spawned processes, each with its share of the
    cores; the report is written once, from every route record, at the end."""
    from rsd_drive.closedloop.config import ClosedLoopConfig
    from rsd_drive.closedloop.run import write_outputs
    from rsd_drive.scenario.config import ScenarioConfig, default_config_path

    cl = study['closed_loop']
    scen = ScenarioConfig.from_yaml(default_config_path())
    scen = replace(scen, duration_s=float(cl['duration_s']))
    base = ClosedLoopConfig.from_yaml()
    policies = closed_loop_policies(arms, bool(cl.get('intent_only', True)))
    runs = [(spec, name, replace(base, route=False) if mode == 'intent' else base)
            for name, spec, _, mode in policies]
    jobs = int(cl.get('jobs', 1))
    run_side_by_side(_drive_policy, [(spec, cl['families'], cl['seeds'], out / 'closedloop',
                                      name, scen, cfg, jobs <= 1) for spec, name, cfg in runs],
                     jobs, 'closed-loop policies')
    write_outputs(out / 'closedloop', base)
    return {'policies': [[n, a, m] for n, _, a, m in policies],
            'checkpoints': {n: spec for n, spec, _, _ in policies}}


# -- the analysis ---------------------------------------------------------------------------------
def route_table(routes: list) -> dict:
    """{policy: {(family, seed): record}}."""
    out = {}
    for r in routes:
        out.setdefault(r['policy'], {})[(r['family'], int(r['seed']))] = r
    return out


def arm_policies(policies: list) -> dict:
    """arm -> {training seed: policy name} (the baselines have one 'policy' seed)."""
    out = {}
    for name, arm, _ in policies:
        seed = name.rsplit('-s', 1)[-1].split('-')[0] if '-s' in name else '-'
        out.setdefault(arm, {})[seed] = name
    return out


def _metric(record: dict, metric: str) -> float:
    if metric == 'collision':
        return float(bool(record['collisions']))
    return float(record[metric])


def claim_test(table: dict, arms: dict, a: str, b: str, metric: str, families=None) -> dict:
    """Paired tests of arm a vs arm b on ``metric``: by training seed (each seed's mean over its
    routes; the arms' seeds paired) and by route (each route's value averaged over the seeds)."""
    from rsd_drive.metrics import paired_t_test

    seeds = sorted(set(arms.get(a, {})) & set(arms.get(b, {})))
    if not seeds:
        return {'n_seeds': 0}
    keys = sorted(set.intersection(*[set(table[arms[x][s]]) for x in (a, b) for s in seeds]))
    keys = [k for k in keys if families is None or k[0] in families]
    if not keys:
        return {'n_seeds': len(seeds), 'routes': 0}

    def per_seed(x):
        return [np.mean([_metric(table[arms[x][s]][k], metric) for k in keys]) for s in seeds]

    def per_route(x):
        return [np.mean([_metric(table[arms[x][s]][k], metric) for s in seeds]) for k in keys]

    by_seed, by_route = paired_t_test(per_seed(a), per_seed(b)), \
        paired_t_test(per_route(a), per_route(b))
    return {'metric': metric, 'n_seeds': len(seeds), 'routes': len(keys),
            'a_value': float(np.mean(per_seed(a))), 'b_value': float(np.mean(per_seed(b))),
            'by_seed': by_seed, 'by_route': by_route}


def closed_loop_claims(routes: list, policies: list) -> list:
    table, arms = route_table(routes), arm_policies(policies)
    out = []
    for a, b, what in CLAIMS + ((LAMBDA_ARM, LAMBDA_ARM + ' intent',
                                 'route vs intent-only (same checkpoints)'),):
        for metric in ('driving_score', 'collision'):
            out.append({'claim': what, 'a': a, 'b': b,
                        **claim_test(table, arms, a, b, metric)})
    for a, b in ((LAMBDA_ARM, 'ego-status-only'), ('lambda=0', 'ego-status-only')):
        out.append({'claim': f'{a} vs {b} where only the cameras can tell '
                             f'({", ".join(CAMERA_FAMILIES)})', 'a': a, 'b': b,
                    **claim_test(table, arms, a, b, 'collision', CAMERA_FAMILIES)})
    return out


def arm_family_table(routes: list, policies: list, families: list) -> str:
    """Driving score / success / collision rate / route completion per arm (mean over its
    training seeds' routes) and family."""
    table, arms = route_table(routes), arm_policies(policies)
    rows = ['| arm | family | routes | DS | success | collision rate | RC |',
            '|---|---|---|---|---|---|---|']
    for arm, by_seed in arms.items():
        for fam in list(families) + ['all']:
            recs = [r for name in by_seed.values() for k, r in table.get(name, {}).items()
                    if fam == 'all' or k[0] == fam]
            if not recs:
                continue
            rows.append(f"| {arm} | {fam} | {len(recs)} | "
                        f"{np.mean([r['driving_score'] for r in recs]):.3f} | "
                        f"{np.mean([bool(r['success']) for r in recs]):.2f} | "
                        f"{np.mean([bool(r['collisions']) for r in recs]):.2f} | "
                        f"{np.mean([r['route_completion'] for r in recs]):.3f} |")
    return '\n'.join(rows)


def format_claims(claims: list) -> str:
    rows = ['| claim | metric | a | b | routes | seeds | a - b | p (by seed) | p (by route) |',
            '|---|---|---|---|---|---|---|---|---|']
    for c in claims:
        if not c.get('routes'):
            rows.append(f"| {c['claim']} | {c.get('metric', '-')} | {c['a']} | {c['b']} | 0 |"
                        f" {c.get('n_seeds', 0)} | - | - | - |")
            continue
        rows.append(f"| {c['claim']} | {c['metric']} | {c['a']} {c['a_value']:.3f} | "
                    f"{c['b']} {c['b_value']:.3f} | {c['routes']} | {c['n_seeds']} | "
                    f"{c['a_value'] - c['b_value']:+.3f} | {c['by_seed']['p']:.3f} | "
                    f"{c['by_route']['p']:.3f} |")
    return '\n'.join(rows)


def dagger_section(done: dict, r: int) -> list:
    drives, labels = done.get(f'dagger_r{r}'), done.get(f'dagger_labels_r{r}')
    if not drives:
        return []
    rows = ['| family | drives | with a collision | expert periods |', '|---|---|---|---|']
    by_family = {}
    for d in drives['drives']:
        by_family.setdefault(d['family'], []).append(d)
    for family, ds in by_family.items():
        expert = sum(d['expert_periods'] or 0 for d in ds)
        periods = sum(d['plan_periods'] or 0 for d in ds)
        rows.append(f'| {family} | {len(ds)} | {sum(bool(d["collisions"]) for d in ds)} | '
                    f'{expert}/{periods} |')
    lines = ['', f'## DAgger round {r}', '',
             f"`{drives['checkpoint']}` drove (beta-mixed with the expert); every frame's target "
             "is the expert's rollout from the visited state.", '', *rows]
    if labels:
        lines += ['', f"Frames added to the training index: {labels['frames_added']} (now "
                      f"{labels['frames']}); skipped: {labels['skipped']}"]
    return lines


def open_loop_sections(done: dict, study: dict) -> list:
    """Round 0's open-loop table, then per DAgger round its drives and its table."""
    lines = []
    for r in range(dagger_rounds(study) + 1):
        trained = done.get('train' if r == 0 else f'train_r{r}')
        lines += dagger_section(done, r) if r else []
        if trained:
            title = 'Open loop (held-out drives)' + (f', after DAgger round {r}' if r else '')
            lines += ['', f'## {title}', '', trained['table'], '', trained['paired_table']]
    return lines


def write_study_report(out: Path, state: dict, study: dict, encoder_desc: str) -> Path:
    from rsd_drive.closedloop.run import load_routes

    done = state.get('done', {})
    policies = done.get('closedloop', {}).get('policies', [])
    routes = load_routes(out / 'closedloop') if (out / 'closedloop').is_dir() else []
    claims = closed_loop_claims(routes, policies) if routes else []
    lines = [f'# rsd-drive study: {out}', '',
             f'Frozen encoder: {encoder_desc}. Families: {", ".join(study["families"])}; '
             f'{study["train_drives"]} noise-injected training drives and '
             f'{study["val_drives"]} held-out drives per family, {study["duration_s"]} s at '
             f'{study["image_hz"]} Hz; training seeds {study["seeds"]}.', '',
             '## Stage times (s, wall clock)', '', '| stage | s |', '|---|---|']
    lines += [f'| {k} | {v} |' for k, v in state.get('timings_s', {}).items()]
    labels = done.get('labels', {})
    if labels:
        lines += ['', f"Frames: {labels['frames']}; skipped: {labels['skipped']}"]
    probe = done.get('probe', {})
    if probe:
        lines += ['', '## Do the frozen features see the hazards? (linear probe)', '',
                  probe['table']]
    lines += open_loop_sections(done, study)
    if routes:
        lines += ['', '## Closed loop', '',
                  arm_family_table(routes, policies, study['closed_loop']['families']), '',
                  '## The claims, closed loop (paired; p two-sided)', '', format_claims(claims),
                  '', 'Per-route records, PNGs and rollout GIFs: `closedloop/` '
                      '(`closedloop/report.md`).']
    path = out / 'report.md'
    path.write_text('\n'.join(lines) + '\n')
    (out / 'study.json').write_text(json.dumps({'claims': claims, 'state': state}, indent=1,
                                               default=str))
    return path


# -- the deployed checkpoint ----------------------------------------------------------------------
def deployed_policy(study: dict, mode: str = '') -> str:
    """The closed-loop policy name of the deployed checkpoint (see ``deployed_checkpoint``)."""
    return policy_name(LAMBDA_ARM, study['seeds'][0], mode)


def deployed_checkpoint(done: dict, study: dict) -> str:
    """The checkpoint the study deploys: lambda > 0, first training seed, last DAgger round."""
    r = dagger_rounds(study)
    trained = done.get(f'train_r{r}' if r else 'train')
    if not trained or LAMBDA_ARM not in trained.get('arms', {}):
        raise ValueError('the study has not trained its last round yet: nothing to ship')
    return trained['arms'][LAMBDA_ARM][str(study['seeds'][0])]


def source_commit() -> str | None:
    """``git describe --always --dirty`` of the source tree, or None outside a checkout."""
    import subprocess

    try:
        return subprocess.run(['git', 'describe', '--always', '--dirty'], capture_output=True,
                              text=True, check=True, timeout=30,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def ship_deployed(out: Path, state: dict, study: dict, dest: Path, extra=None) -> Path:
    """The deployed checkpoint as a portable heads-only directory ``dest`` (``models/study``),
    with the study's closed-loop summary of it and the claims in its provenance.json."""
    from rsd_drive.deploy.export import training_cameras
    from rsd_drive.model.portable import make_portable

    done = state.get('done', {})
    checkpoint = deployed_checkpoint(done, study)
    report = out / 'closedloop' / 'report.json'
    summary = json.loads(report.read_text())['summary'] if report.is_file() else {}
    study_json = out / 'study.json'
    claims = json.loads(study_json.read_text())['claims'] if study_json.is_file() else []
    provenance = {'study': str(out), 'arm': LAMBDA_ARM, 'seed': study['seeds'][0],
                  'dagger_round': dagger_rounds(study), 'source_commit': source_commit(),
                  'study_config': study,
                  'closed_loop': {p: summary[p] for p in (deployed_policy(study),
                                                          deployed_policy(study, 'intent'),
                                                          'expert', 'constant-velocity')
                                  if p in summary},
                  'claims': claims, **(extra or {})}
    path = make_portable(checkpoint, dest, provenance, cameras=training_cameras(checkpoint))
    print(f'shipped {checkpoint} -> {path}/ (heads only; encoder by package and SHA-256)')
    return path


# -- the command ----------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument('--config', help='study config (default: config/study.yaml)')
    parser.add_argument('--out', required=True, help='output directory (resumable)')
    parser.add_argument('--quick', action='store_true',
                        help="the config's quick: overrides (same stages, minutes)")
    parser.add_argument('--ship', metavar='DIR',
                        help='after the report, copy the deployed checkpoint (lambda > 0, first '
                             'seed, last round) there as a portable heads-only checkpoint '
                             '(the repository keeps it in models/study)')


def run(args) -> int:
    from rsd_drive.model.pretrained import choose_encoder
    from rsd_drive.ros.dds import confine_dds_to_host

    confine_dds_to_host()
    t_start = time.monotonic()
    study = load_study_config(args.config, args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'study_config.yaml').write_text(yaml.safe_dump({'study': study}, sort_keys=False))
    check_seed_blocks(study)
    stages = Stages(out, total=7 + 4 * dagger_rounds(study))
    labels = out / 'labels'
    index = {split: labels / split / 'index' for split in ('train', 'val')}
    encoder_cfg, encoder_desc = choose_encoder(study['encoder'])
    train_yaml = out / 'train.yaml'
    steps = dict(study.get('train', {}), risk_weight=float(study['risk_weight']))
    steps['eval_every'] = int(steps['max_steps'])
    model_cfg, train_cfg = write_train_config(train_yaml, study, encoder_cfg, index, **steps)
    print(f'rsd_drive study -> {out}/  (frozen encoder: {encoder_desc})')
    bags = stages.run('drives', 'scenario drives (training drives noise-injected)',
                      lambda: make_study_drives(out / 'drives', study))
    stages.run('labels', 'scene-oracle labels and the training index',
               lambda: label_drives(bags, labels, train_yaml, index))
    stages.run('features', 'frozen encoder once per frame',
               lambda: cache_features(index, train_yaml))
    stages.run('probe', 'linear probe of the frozen features on the risk cells',
               lambda: probe_features(index, model_cfg, train_cfg))
    collector = dagger_rounds(study) > 0
    trained = stages.run('train', 'the DAgger collector (lambda > 0, first seed)' if collector
                         else f'arms x seeds {study["seeds"]}',
                         lambda: train_arms(out, study, model_cfg, train_cfg, encoder_cfg,
                                            collector_only=collector))
    trained = run_dagger_rounds(stages, out, study, trained, (model_cfg, train_cfg, encoder_cfg),
                                train_yaml)
    stages.run('closedloop', 'closed loop on held-out seeds of every family',
               lambda: run_study_closed_loop(out, study, trained['arms']))
    stages.timings['total_this_run'] = round(time.monotonic() - t_start, 1)
    print(f'\n=== [{stages.total}/{stages.total}] report: report.md and study.json (always '
          'rewritten)', flush=True)
    report = write_study_report(out, stages.state, study, encoder_desc)
    print(report.read_text())
    if args.ship:
        ship_deployed(out, stages.state, study, Path(args.ship))
    return 0
