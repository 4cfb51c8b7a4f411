"""``rsd-drive ablate``: does risk distillation help? lambda = 0 vs lambda > 0 (and loss kinds)
over several seeds, as a table of mean +- spread, with a paired t-test of every arm against
lambda = 0 (same seeds, same data). Optional arms: ``--arms ego-status`` (the same planner with
the camera tokens removed, ``use_cameras: false``: is the result more than ego status?) and
``--arms random-encoder`` (a frozen *random* tower of the same architecture: does the pretrained
encoder matter?).

Every run trains from the same config except (risk_weight, risk_loss, seed) and is scored on the
validation index from its *final* checkpoint (choosing the best-by-validation checkpoint would
select on the data it is scored on). All runs share one frozen encoder (``encoder_seed``) and so
one feature cache. Finished runs are kept under ``OUT/runs/`` with their ``result.json`` and are
not retrained when the ablation is run again; an interrupted run resumes from its last
checkpoint.

Writes ``ablation.json`` (every run with its per-frame numbers, the summary, the paired tests),
``ablation.md`` (the tables) and ``ablation.png``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from rsd_drive.atomic import write_text_atomic
from rsd_drive.losses import RISK_LOSS_KINDS
from rsd_drive.metrics import paired_t_test
from rsd_drive.side_by_side import run_side_by_side

# (key in the evaluation report, column title, higher is better)
METRICS = (('rfs', 'RFS', True), ('ade_3s', 'ADE@3s (m)', False), ('ade_5s', 'ADE@5s (m)', False),
           ('fde', 'FDE (m)', False), ('risk_pearson', 'risk CC', True),
           ('risk_kl', 'risk KL', False), ('risk_topk_recall', 'risk top-k recall', True),
           ('risk_ece', 'risk ECE', False), ('risk_ece_risky', 'risk ECE (cells >= 0.05)', False))
PAIRED_METRICS = ('rfs', 'ade_3s', 'ade_5s', 'risk_pearson')
REFERENCE = 'lambda=0'
ARMS = ('ego-status', 'random-encoder')
EGO_STATUS = 'ego-status-only'
RANDOM_ENCODER = 'random encoder'


def variants(risk_weights, kinds, arms=(), arm_weight: float | None = None,
             encoder_cfg=None) -> list[dict]:
    """Lambda = 0 once (the loss kind is irrelevant there), every kind for each lambda > 0, then
    the optional ``arms`` with ``arm_weight`` (default: the largest lambda) and the first kind.

    A variant is {'name', 'risk_weight', 'risk_loss', 'model'}; 'model' holds ModelConfig
    overrides (the ego-status arm sets ``use_cameras: false``; the random-encoder arm replaces
    the encoder by a random one like ``encoder_cfg``).
    """
    out = []
    for w in risk_weights:
        if w < 0:
            raise ValueError(f'risk weights must be >= 0, got {w}')
        if w == 0:
            out.append({'name': REFERENCE, 'risk_weight': 0.0, 'risk_loss': kinds[0],
                        'model': {}})
        else:
            out += [{'name': f'lambda={w:g} {k}', 'risk_weight': float(w), 'risk_loss': k,
                     'model': {}} for k in kinds]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f'unknown arms {sorted(unknown)}, valid: {ARMS}')
    weight = float(max(risk_weights) if arm_weight is None else arm_weight)
    if 'ego-status' in arms:
        out.append({'name': EGO_STATUS, 'risk_weight': weight, 'risk_loss': kinds[0],
                    'model': {'use_cameras': False}})
    if 'random-encoder' in arms:
        if encoder_cfg is None:
            raise ValueError('the random-encoder arm needs the encoder config it imitates')
        out.append({'name': RANDOM_ENCODER, 'risk_weight': weight, 'risk_loss': kinds[0],
                    'model': {'encoder': random_encoder_like(encoder_cfg)}})
    return out


def random_encoder_like(encoder_cfg):
    """A randomly initialised frozen tower with the architecture fields of ``encoder_cfg``
    (model_type, hidden_size, num_layers, num_heads, patch_size) and its normalisation."""
    from rsd_drive.model.config import EncoderConfig

    return EncoderConfig(source='config', model_type=encoder_cfg.model_type,
                         hidden_size=encoder_cfg.hidden_size, num_layers=encoder_cfg.num_layers,
                         num_heads=encoder_cfg.num_heads, patch_size=encoder_cfg.patch_size,
                         image_mean=encoder_cfg.image_mean, image_std=encoder_cfg.image_std)


def aggregate(values) -> dict:
    """mean, spread (sample standard deviation; 0 for one run), min, max, n."""
    v = np.asarray(values, dtype=np.float64)
    return {'mean': float(v.mean()), 'std': float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            'min': float(v.min()), 'max': float(v.max()), 'n': int(len(v))}


def markdown_table(summary: dict, baseline: dict | None = None) -> str:
    head = '| variant | runs | ' + ' | '.join(title for _, title, _ in METRICS) + ' |'
    lines = [head, '|' + '---|' * (len(METRICS) + 2)]
    for name, stats in summary.items():
        cells = [f'{stats[k]["mean"]:.3f} ± {stats[k]["std"]:.3f}' for k, _, _ in METRICS]
        lines.append(f'| {name} | {stats["rfs"]["n"]} | ' + ' | '.join(cells) + ' |')
    if baseline:
        cells = [f'{baseline[k]:.3f}' if k in baseline else '' for k, _, _ in METRICS]
        lines.append('| constant velocity | - | ' + ' | '.join(cells) + ' |')
    lines.append('')
    lines.append('mean ± sample standard deviation over seeds; validation index, final '
                 'checkpoint.')
    return '\n'.join(lines)


def plot(summary: dict, baseline: dict | None, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    shown = [('rfs', 'RFS (higher is better)'), ('ade_5s', 'ADE@5s m (lower is better)'),
             ('risk_pearson', 'risk CC with teacher (higher is better)')]
    names = list(summary)
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.4))
    for ax, (key, title) in zip(axes, shown):
        means = [summary[n][key]['mean'] for n in names]
        stds = [summary[n][key]['std'] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color='tab:blue')
        for x, n in enumerate(names):  # every seed as a dot
            runs = summary[n][key]['values']
            ax.plot([x] * len(runs), runs, 'k.', ms=4)
        if baseline and key in baseline:
            ax.axhline(baseline[key], color='k', ls='--', lw=1, label='constant velocity')
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=20, fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.png')
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _slug(name: str) -> str:
    return name.replace('=', '').replace(' ', '_')


def _train_and_score(model_cfg, train_cfg, variant: dict, seed: int, run_dir: Path,
                     progress: bool, encoder_in_loop: bool) -> dict:
    from rsd_drive.train.evaluate import evaluate_checkpoint
    from rsd_drive.train.trainer import latest_checkpoint, train

    # An interrupted run continues from its last checkpoint, if it wrote one.
    resume = latest_checkpoint(run_dir / 'train') is not None
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    cfg = replace(train_cfg, risk_weight=variant['risk_weight'], risk_loss=variant['risk_loss'],
                  seed=int(seed), out=str(run_dir / 'train'))
    arm_model = replace(model_cfg, **variant['model']) if variant['model'] else model_cfg
    if progress:
        print(f'ablation: {variant["name"]}, seed {seed}', file=sys.stderr)
    summary = train(arm_model, cfg, encoder_in_loop=encoder_in_loop, resume=resume,
                    progress=progress)
    report = evaluate_checkpoint(summary['checkpoint'], train_cfg.val_index, features='auto',
                                 cache_dir=train_cfg.cache_dir, progress=False)
    return {'variant': variant['name'], 'seed': int(seed),
            'risk_weight': variant['risk_weight'], 'risk_loss': variant['risk_loss'],
            'checkpoint': summary['checkpoint'],
            'metrics': {**{k: report['overall']['model'][k] for k, _, _ in METRICS
                           if k in report['overall']['model']},
                        'risk_ece': report['calibration']['ece'],
                        'risk_ece_risky': report['calibration']['ece_risky_cells']},
            'calibration': {k: report['calibration'][k]
                            for k in ('ece', 'ece_risky_cells', 'marker_threshold')},
            'baseline_cv': report['overall']['cv'], 'per_frame': report['per_frame']}


def paired_tests(runs: list[dict], baseline: dict | None, reference: str = REFERENCE) -> dict:
    """Every arm against ``reference`` (paired by seed) and against constant velocity (one
    sample: the baseline is the same for every seed), per metric of ``PAIRED_METRICS``; plus a
    frame-level paired test of RFS (per-frame values averaged over the seeds both arms share).
    """
    by_arm = {}
    for r in runs:
        by_arm.setdefault(r['variant'], {})[r['seed']] = r
    out = {}
    ref = by_arm.get(reference, {})
    for name, arm in by_arm.items():
        entry = {}
        seeds = sorted(set(arm) & set(ref))
        if name != reference and seeds:
            entry[f'vs {reference}'] = {
                k: paired_t_test([arm[s]['metrics'][k] for s in seeds],
                                 [ref[s]['metrics'][k] for s in seeds]) for k in PAIRED_METRICS}
            if all('per_frame' in arm[s] and 'per_frame' in ref[s] for s in seeds):
                a = np.mean([arm[s]['per_frame']['model.rfs'] for s in seeds], axis=0)
                b = np.mean([ref[s]['per_frame']['model.rfs'] for s in seeds], axis=0)
                entry[f'vs {reference}']['rfs_frames'] = paired_t_test(a, b)
        if baseline:
            mine = sorted(arm)
            entry['vs constant velocity'] = {
                k: paired_t_test([arm[s]['metrics'][k] for s in mine], [baseline[k]] * len(mine))
                for k in PAIRED_METRICS if k in baseline}
        out[name] = entry
    return out


def paired_table(paired: dict) -> str:
    """Markdown: mean difference (arm - other), t, df and the two-sided p-value."""
    lines = ['| arm | against | metric | mean diff | t | df | p |',
             '|---|---|---|---|---|---|---|']
    for name, entry in paired.items():
        for other, tests in entry.items():
            for key, test in tests.items():
                lines.append(f'| {name} | {other.replace("vs ", "")} | {key} | '
                             f'{test["mean_diff"]:+.3f} | {test["t"]:.2f} | {test["df"]} | '
                             f'{test["p"]:.3g} |')
    lines.append('')
    lines.append('Paired t-test (two-sided, Student t CDF via the regularised incomplete beta '
                 'function): arms paired by seed on the same validation frames; `rfs_frames` '
                 'pairs the per-frame RFS (mean over seeds), whose frames are correlated in time, '
                 'so its p-value is optimistic. Against constant velocity (deterministic) it is a '
                 'one-sample test.')
    return '\n'.join(lines)


def _train_score_and_save(model_cfg, train_cfg, variant: dict, seed: int, run_dir: Path,
                          progress: bool, encoder_in_loop: bool) -> dict:
    """One (variant, seed): trained, scored and its result.json written, so a run that finished
    is kept whatever happens to the others."""
    result = _train_and_score(model_cfg, train_cfg, variant, seed, run_dir, progress,
                              encoder_in_loop)
    write_text_atomic(run_dir / 'result.json', json.dumps(result, indent=1))
    return result


def run_ablation(model_cfg, train_cfg, out, risk_weights=(0.0, 1.0), kinds=('l1',),
                 seeds=(0, 1, 2), progress: bool = True, encoder_in_loop: bool = False,
                 arms=(), arm_weight: float | None = None, jobs: int = 1) -> dict:
    """Train and score every (variant, seed); ``train_cfg`` must name index and val_index.
    ``jobs``: runs trained at the same time (each in its own process).

    Returns {'runs': [...], 'summary': {variant: {metric: {mean, std, min, max, n, values}}},
    'baseline': constant-velocity numbers, 'paired': paired tests, 'table': markdown}.
    """
    if not train_cfg.index or not train_cfg.val_index:
        raise ValueError('the ablation needs a training index and a validation index')
    if not seeds or not kinds:
        raise ValueError('the ablation needs at least one seed and one risk loss kind')
    out = Path(out)
    (out / 'runs').mkdir(parents=True, exist_ok=True)
    planned = [(variant, seed, out / 'runs' / f'{_slug(variant["name"])}_seed{seed}')
               for variant in variants(risk_weights, kinds, arms, arm_weight, model_cfg.encoder)
               for seed in seeds]
    pending = [p for p in planned if not (p[2] / 'result.json').is_file()]
    results = run_side_by_side(
        _train_score_and_save,
        [(model_cfg, train_cfg, variant, seed, run_dir, progress and jobs <= 1, encoder_in_loop)
         for variant, seed, run_dir in pending], jobs, 'ablation runs', progress)
    trained = {str(run_dir): r for (_, _, run_dir), r in zip(pending, results)}
    runs = [trained.get(str(run_dir)) or json.loads((run_dir / 'result.json').read_text())
            for _, _, run_dir in planned]
    baseline = runs[-1]['baseline_cv'] if runs else None
    summary = {}
    for name in dict.fromkeys(r['variant'] for r in runs):
        mine = [r for r in runs if r['variant'] == name]
        summary[name] = {k: {**aggregate([r['metrics'][k] for r in mine]),
                             'values': [r['metrics'][k] for r in mine]} for k, _, _ in METRICS}
    paired = paired_tests(runs, baseline)
    table = markdown_table(summary, baseline)
    result = {'runs': runs, 'summary': summary, 'baseline': baseline, 'table': table,
              'paired': paired, 'paired_table': paired_table(paired), 'seeds': list(seeds)}
    write_text_atomic(out / 'ablation.json', json.dumps(result, indent=1))
    write_text_atomic(out / 'ablation.md', '# Risk distillation ablation\n\n' + table
                      + '\n\n## Paired comparisons\n\n' + result['paired_table'] + '\n')
    plot(summary, baseline, out / 'ablation.png')
    return result


OVERRIDES = ('index', 'val_index', 'max_steps', 'epochs', 'device')  # train: fields set by flags


def add_arguments(parser) -> None:
    from rsd_drive.train.config import add_override_arguments

    parser.add_argument('--config', default='config/train.yaml',
                        help='YAML with model: and train: sections (default: %(default)s)')
    add_override_arguments(parser, ('index', 'val_index'))
    parser.add_argument('--out', required=True, help='ablation directory')
    parser.add_argument('--risk-weights', type=float, nargs='+', default=[0.0, 1.0],
                        help='lambda values (default: %(default)s)')
    parser.add_argument('--kinds', nargs='+', default=list(RISK_LOSS_KINDS),
                        choices=RISK_LOSS_KINDS,
                        help='risk loss kinds for lambda > 0 (default: all of them)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--arms', nargs='*', default=[], choices=ARMS,
                        help='extra arms: ego-status (use_cameras: false), random-encoder '
                             '(frozen random tower like the configured one)')
    parser.add_argument('--arm-weight', type=float,
                        help='lambda of the extra arms (default: the largest --risk-weights)')
    add_override_arguments(parser, ('max_steps', 'epochs', 'device'))  # of every run
    parser.add_argument('--jobs', type=int, default=1,
                        help='runs trained at the same time, each in its own process with its '
                             'share of the cores (default: %(default)s)')
    parser.add_argument('--encoder-in-loop', action='store_true')
    parser.add_argument('--no-progress', action='store_true')


def run(args) -> int:
    from rsd_drive.train.config import apply_overrides, load_config

    try:
        model_cfg, train_cfg = load_config(args.config)
        train_cfg = apply_overrides(train_cfg, args, OVERRIDES)
        result = run_ablation(model_cfg, train_cfg, args.out, args.risk_weights, args.kinds,
                              args.seeds, not args.no_progress, args.encoder_in_loop,
                              args.arms, args.arm_weight, args.jobs)
    except (OSError, ValueError) as e:
        print(f'rsd-drive ablate: {e}', file=sys.stderr)
        return 2
    print(result['table'])
    print(result['paired_table'])
    print(f'written: {Path(args.out) / "ablation.md"}, ablation.json, ablation.png')
    return 0
