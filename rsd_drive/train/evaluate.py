"""``rsd-drive eval CHECKPOINT INDEX``: planning and risk metrics, per intent, with plots.

Planning: Rater Feedback Score (official definition, rsd_drive.metrics; the logged future is the
single rated trajectory with label 10), ADE@3s, ADE@5s, FDE; the constant-velocity plan is scored
the same way as the floor to beat. Risk: agreement of the RiskHead with the teacher map (Pearson,
KL, top-k recall), beside the trivial "mean teacher map" prior. Everything overall and per intent.
Calibration of the RiskHead against the teacher: a reliability table and diagram, the expected
calibration error (all cells, and cells where either map says >= 0.05) and the student threshold
that best finds the teacher's risky cells (>= 0.5), which is what the node's
``marker_risk_threshold`` should be.

Writes ``report.json`` and PNGs: one BEV panel per sample (teacher risk, student risk, logged
future, predicted path), a gallery of the worst samples, and the training curves of the run the
checkpoint came from (``train_log.csv``/``val_log.csv`` beside it).
"""
from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from rsd_drive import INTENTS, metrics
from rsd_drive.losses import rfs_surrogate_loss, risk_distillation_loss

RATED_LABEL = 10.0  # log-only data: the logged future is the one rated trajectory
TOPK_FRACTION = 0.05
CALIBRATION_BINS = 10
RISKY_CELL = 0.05  # ECE restricted to cells where the student or the teacher says at least this
MARKER_RISKY = 0.5  # teacher value that makes a cell worth a marker
PER_FRAME_KEYS = ('rfs', 'ade_3s', 'ade_5s', 'risk_pearson', 'risk_topk_recall')


# -- inference ----------------------------------------------------------------------------------
def model_outputs(model, batch, device, autocast_dtype=None):
    """Run the planner on a collated batch: cached 'features' skip the frozen encoder."""
    def get(k):
        return batch[k].to(device, non_blocking=True)

    enabled = autocast_dtype is not None and torch.device(device).type == 'cuda'
    with torch.autocast('cuda', dtype=autocast_dtype or torch.float16, enabled=enabled):
        if 'features' in batch:
            features = get('features').float()
        else:
            with torch.no_grad():
                features = model.encode(get('images'))
        route = (get('route'), get('route_valid')) if 'route' in batch else (None, None)
        return model.plan_from_features(features, get('intrinsics'), get('cam_to_ego'),
                                        get('past_states'), get('intent'), *route)


@torch.no_grad()
def predict(model, loader, device, autocast_dtype=None, progress: bool = False) -> dict:
    """Predictions and targets for every frame of a loader, as numpy arrays (float32)."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    out = {k: [] for k in ('frame', 'waypoints', 'risk', 'future', 'risk_target', 'init_speed',
                           'intent', 'past_speed')}
    try:
        for batch in tqdm(loader, desc='predict', unit='batch', disable=not progress,
                          dynamic_ncols=True, leave=False):
            waypoints, risk = model_outputs(model, batch, device, autocast_dtype)
            out['waypoints'].append(waypoints.float().cpu().numpy())
            out['risk'].append(risk.float().cpu().numpy())
            out['future'].append(batch['future'].numpy())
            out['risk_target'].append(batch['risk'].numpy())
            out['init_speed'].append(batch['init_speed'].numpy())
            out['intent'].append(batch['intent'].numpy())
            out['frame'].append(batch['frame'].numpy())
            out['past_speed'].append(batch['past_states'][..., 3].numpy())
    finally:
        model.train(was_training)
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}


def per_sample_losses(pred: dict, risk_kind: str, frequency: float) -> dict:
    """Planning and risk loss of every sample (same functions as training), numpy [M]."""
    wp, fut = torch.from_numpy(pred['waypoints']), torch.from_numpy(pred['future'])
    speed = torch.from_numpy(pred['init_speed'])
    plan = rfs_surrogate_loss(wp, fut, speed, frequency, reduction='none')
    risk = risk_distillation_loss(torch.from_numpy(pred['risk']),
                                  torch.from_numpy(pred['risk_target']), risk_kind,
                                  reduction='none')
    return {'plan': plan.numpy(), 'risk': risk.numpy()}


# -- metrics ------------------------------------------------------------------------------------
def rfs_against_log(trajs, future, init_speed, frequency) -> np.ndarray:
    """RFS [M] of one trajectory per sample, rated against the logged future (label 10)."""
    trajs = np.asarray(trajs, dtype=np.float64)
    rated = [[f] for f in np.asarray(future, dtype=np.float64)]
    labels = [[RATED_LABEL]] * len(rated)
    return metrics.rater_feedback_score(trajs[:, None], np.ones((len(trajs), 1)), rated, labels,
                                        init_speed, frequency)


def sample_metrics(pred: dict, frequency: float) -> dict:
    """Per-sample metric arrays [M] for the model, the constant-velocity plan and the mean map."""
    future, speed = pred['future'], pred['init_speed']
    steps = future.shape[1]
    cv = metrics.constant_velocity_baseline(speed, steps, frequency)
    mean_map = np.broadcast_to(pred['risk_target'].mean(axis=0), pred['risk_target'].shape)
    out = {}
    for name, trajs in (('model', pred['waypoints']), ('cv', cv)):
        out[f'{name}.rfs'] = rfs_against_log(trajs, future, speed, frequency)
        out[f'{name}.ade_3s'] = metrics.ade(trajs, future, 3.0, frequency)
        out[f'{name}.ade_5s'] = metrics.ade(trajs, future, 5.0, frequency)
        out[f'{name}.fde'] = metrics.fde(trajs, future)
    for name, maps in (('model', pred['risk']), ('mean_map', mean_map)):
        out[f'{name}.risk_pearson'] = metrics.risk_pearson(maps, pred['risk_target'])
        out[f'{name}.risk_kl'] = metrics.risk_kl(maps, pred['risk_target'])
        out[f'{name}.risk_topk_recall'] = metrics.risk_topk_recall(maps, pred['risk_target'],
                                                                   TOPK_FRACTION)
    return out


def _group_means(per_sample: dict, mask) -> dict:
    grouped = {}
    for key, values in per_sample.items():
        who, name = key.split('.', 1)
        grouped.setdefault(who, {})[name] = float(np.mean(values[mask]))
    return grouped


def summarise(pred: dict, frequency: float) -> dict:
    """Overall and per-intent means of every metric, for the model and both baselines."""
    per_sample = sample_metrics(pred, frequency)
    everything = np.ones(len(pred['frame']), dtype=bool)
    report = {'frames': int(everything.sum()), 'overall': _group_means(per_sample, everything),
              'per_intent': {}}
    for value in np.unique(pred['intent']):
        mask = pred['intent'] == value
        name = INTENTS[int(value)] if 0 <= value < len(INTENTS) else str(int(value))
        report['per_intent'][name] = {'frames': int(mask.sum()),
                                      **_group_means(per_sample, mask)}
    return report


PLANNED_BRAKE = 1.0     # m/s: a plan "brakes" when its speed at the horizon drops this much


def braking(pred: dict, frequency: float) -> dict:
    """Does the plan brake where the expert does, and does it start to? Frames split by
    :func:`rsd_drive.metrics.brake_groups` (``onset``: only the scene can tell; ``braking``: the
    ego history tells; ``no_brake``). Per group: frames, the expert's
    and the plan's mean speed change at 2 s, and the share of plans that drop >= 1 m/s."""
    k = metrics.horizon_index(metrics.BRAKE_HORIZON_S, frequency)
    v0 = np.asarray(pred['init_speed'], dtype=np.float64).reshape(-1)
    expert = metrics.segment_speeds(pred['future'], frequency)[:, k] - v0
    planned = metrics.segment_speeds(pred['waypoints'], frequency)[:, k] - v0
    groups = metrics.brake_groups(pred['future'], v0, pred['past_speed'], frequency)
    out = {}
    for name, mask in groups.items():
        n = int(mask.sum())
        out[name] = {'frames': n,
                     'expert_dv': float(expert[mask].mean()) if n else None,
                     'planned_dv': float(planned[mask].mean()) if n else None,
                     'planned_brakes': float((planned[mask] <= -PLANNED_BRAKE).mean())
                     if n else None}
    return out


def calibration(pred: dict) -> dict:
    """Student vs teacher calibration: ECE, reliability table, best marker threshold."""
    risk, target = pred['risk'], pred['risk_target']
    table = metrics.risk_reliability(risk, target, CALIBRATION_BINS)
    marker = metrics.best_marker_threshold(risk, target, MARKER_RISKY)
    return {'ece': metrics.expected_calibration_error(risk, target, CALIBRATION_BINS),
            'ece_risky_cells': metrics.expected_calibration_error(risk, target, CALIBRATION_BINS,
                                                                  RISKY_CELL),
            'risky_cell': RISKY_CELL,
            'student_mean': float(np.mean(risk)), 'teacher_mean': float(np.mean(target)),
            'student_max_mean': float(np.mean(risk.reshape(len(risk), -1).max(axis=1)))
            if len(risk) else 0.0,
            'teacher_max_mean': float(np.mean(target.reshape(len(target), -1).max(axis=1)))
            if len(target) else 0.0,
            'reliability': {k: [None if not np.isfinite(v) else float(v) for v in table[k]]
                            for k in ('edges', 'mean_pred', 'mean_target', 'count')},
            'marker_threshold': {k: v for k, v in marker.items() if k != 'curve'},
            'marker_curve': marker['curve']}


def per_frame(pred: dict, per_sample: dict) -> dict:
    """Per-frame numbers (model and constant velocity) for paired comparisons of arms."""
    out = {'frame': [int(f) for f in pred['frame']]}
    for who in ('model', 'cv'):
        for key in PER_FRAME_KEYS:
            name = f'{who}.{key}'
            if name in per_sample:
                out[name] = [float(v) for v in per_sample[name]]
    return out


# -- plots --------------------------------------------------------------------------------------
def plot_reliability(cal: dict, path: Path, title: str = '') -> str:
    """Reliability diagram: mean teacher risk per predicted-risk bin, with the cell counts."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rel = cal['reliability']
    edges = np.asarray(rel['edges'])
    centres = 0.5 * (edges[:-1] + edges[1:])
    mean_p = np.array([np.nan if v is None else v for v in rel['mean_pred']])
    mean_t = np.array([np.nan if v is None else v for v in rel['mean_target']])
    count = np.asarray(rel['count'], dtype=float)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    ax = axes[0]
    ax.plot([0, 1], [0, 1], 'k--', lw=1, label='calibrated')
    ok = count > 0
    ax.bar(centres[ok], mean_t[ok], width=np.diff(edges)[ok] * 0.9, color='tab:orange',
           alpha=0.6, label='mean teacher risk')
    ax.plot(mean_p[ok], mean_t[ok], 'bo-', ms=4, label='(mean student, mean teacher)')
    thr = cal['marker_threshold']
    ax.axvline(thr['threshold'], color='tab:red', lw=1,
               label=f'marker threshold {thr["threshold"]:.2f} (F1 {thr["f1"]:.2f})')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel('student (RiskHead) risk')
    ax.set_ylabel('teacher risk')
    ax.set_title(f'reliability: ECE {cal["ece"]:.4f}, on cells >= {cal["risky_cell"]:g}: '
                 f'{cal["ece_risky_cells"]:.3f}', fontsize=9)
    ax.legend(fontsize=7, loc='upper left')
    axes[1].bar(centres, np.maximum(count, 0.5), width=np.diff(edges) * 0.9, color='grey')
    axes[1].set_yscale('log')
    axes[1].set_xlabel('student risk')
    axes[1].set_ylabel('cells')
    axes[1].set_title('cells per bin', fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return str(path)


def _bev_axes(ax, grid, risk, title, future=None, predicted=None, cv=None, teacher=None):
    """Risk map in BEV, x forward up, y left to the left (REP-103 seen from above)."""
    xe = grid.origin_x + np.arange(grid.cols + 1) * grid.resolution
    ye = grid.origin_y + np.arange(grid.rows + 1) * grid.resolution
    XE, YE = np.meshgrid(xe, ye)  # [rows+1, cols+1]; row index = y, column index = x
    mesh = ax.pcolormesh(YE, XE, risk, cmap='magma', vmin=0.0, vmax=1.0, shading='flat')
    if teacher is not None and np.ptp(teacher) > 0:
        xc, yc = grid.cell_centers()
        ax.contour(yc, xc, teacher, levels=[0.5 * float(teacher.max())], colors='cyan',
                   linewidths=0.8)
    for traj, style, label in ((future, 'g-', 'logged'), (predicted, 'r-', 'predicted'),
                               (cv, 'w--', 'const. velocity')):
        if traj is not None:
            ax.plot(traj[:, 1], traj[:, 0], style, lw=1.5, label=label)
    ax.plot([0], [0], 'w^', ms=6)
    ax.set_xlim(ye[-1], ye[0])  # y left positive on the left
    ax.set_ylim(xe[0], xe[-1])
    ax.set_aspect('equal')
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    return mesh


def _save_figure(fig, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix='.png')
    os.close(fd)
    fig.savefig(tmp, dpi=110, bbox_inches='tight')
    os.replace(tmp, path)


def plot_samples(pred, per_sample, grid, frequency, samples, out_dir: Path) -> list[str]:
    """One PNG per sample: teacher risk | student risk, both with the paths."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    cv = metrics.constant_velocity_baseline(pred['init_speed'], pred['future'].shape[1], frequency)
    files = []
    for i in samples:
        fig, axes = plt.subplots(1, 2, figsize=(7, 4))
        intent = INTENTS[int(pred['intent'][i])]
        paths = dict(future=pred['future'][i], predicted=pred['waypoints'][i], cv=cv[i])
        _bev_axes(axes[0], grid, pred['risk_target'][i], 'teacher risk', **paths)
        mesh = _bev_axes(axes[1], grid, pred['risk'][i], 'student risk (RiskHead)',
                         teacher=pred['risk_target'][i], **paths)
        axes[1].legend(fontsize=6, loc='lower left')
        fig.colorbar(mesh, ax=axes, shrink=0.8, label='risk')
        fig.suptitle(f'frame {int(pred["frame"][i])}, intent {intent}, '
                     f'v0 {pred["init_speed"][i]:.1f} m/s: RFS {per_sample["model.rfs"][i]:.2f} '
                     f'(CV {per_sample["cv.rfs"][i]:.2f}), ADE@5s '
                     f'{per_sample["model.ade_5s"][i]:.2f} m', fontsize=9)
        path = out_dir / f'frame_{int(pred["frame"][i]):06d}.png'
        _save_figure(fig, path)
        plt.close(fig)
        files.append(str(path))
    return files


def plot_worst(pred, per_sample, grid, worst, path: Path) -> str:
    """Gallery of the lowest-RFS samples (ties: largest ADE@5s first)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cols = min(4, len(worst))
    rows = int(np.ceil(len(worst) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis('off')
    for ax, i in zip(axes.flat, worst):
        ax.axis('on')
        _bev_axes(ax, grid, pred['risk'][i],
                  f'frame {int(pred["frame"][i])} {INTENTS[int(pred["intent"][i])]}\n'
                  f'RFS {per_sample["model.rfs"][i]:.2f} ADE5 {per_sample["model.ade_5s"][i]:.1f}',
                  future=pred['future'][i], predicted=pred['waypoints'][i],
                  teacher=pred['risk_target'][i])
    fig.suptitle('worst samples (student risk; green logged, red predicted, cyan teacher)',
                 fontsize=9)
    _save_figure(fig, path)
    plt.close(fig)
    return str(path)


def read_csv(path) -> dict:
    with open(path, newline='') as fh:
        rows = list(csv.DictReader(fh))
    columns = rows[0].keys() if rows else []
    return {c: np.array([float(r[c]) if r[c] not in ('', None) else np.nan for r in rows])
            for c in columns}


def find_run_logs(checkpoint) -> Path | None:
    """The run directory holding train_log.csv: the checkpoint's own, parent or grandparent."""
    path = Path(checkpoint).resolve()
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / 'train_log.csv').is_file():
            return candidate
    return None


def plot_training_curves(run_dir: Path, path: Path) -> str | None:
    """Training losses and validation RFS / loss against the step, from the run's CSV logs."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    train = read_csv(run_dir / 'train_log.csv')
    if not len(train.get('step', [])):
        return None
    val = read_csv(run_dir / 'val_log.csv') if (run_dir / 'val_log.csv').is_file() else {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (('loss', 'total'), ('plan_loss', 'plan (RFS surrogate)'),
                       ('risk_loss', 'risk distillation')):
        axes[0].plot(train['step'], train[key], label=label, lw=1)
    if len(val.get('step', [])):
        axes[0].plot(val['step'], val['val_loss'], 'k.-', label='validation total', lw=1)
        axes[1].plot(val['step'], val['rfs'], 'b.-', label='model')
        axes[1].plot(val['step'], val['rfs_cv'], 'k--', label='constant velocity')
        axes[1].legend(fontsize=8)
    axes[0].set_yscale('log')
    axes[0].set_xlabel('step')
    axes[0].set_ylabel('loss')
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel('step')
    axes[1].set_ylabel('validation RFS')
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return str(path)


# -- the entry point ----------------------------------------------------------------------------
def evaluate_checkpoint(checkpoint, index, out=None, batch_size: int = 16, device='auto',
                        features: str = 'auto', cache_dir=None, num_samples: int = 4,
                        worst: int = 8, progress: bool = True) -> dict:
    """Evaluate a RiskPlanner checkpoint on an index; with ``out``, write report.json + PNGs.

    features: 'images' runs the whole model (encoder included) on the index's pixels;
    'cache' reads frozen features from a complete feature cache (error if there is none);
    'auto' uses a complete cache when one exists for this encoder, else the images.
    Returns the report dict (also containing the written file paths under 'files').
    """
    from torch.utils.data import DataLoader

    from rsd_drive.data.index import FrameIndex
    from rsd_drive.model.planner import RiskPlanner
    from rsd_drive.train.cache import FeatureCache
    from rsd_drive.train.dataset import FrameDataset, check_index_fits

    if features not in ('auto', 'cache', 'images'):
        raise ValueError(f"features must be 'auto', 'cache' or 'images', got {features!r}")
    device = torch.device('cuda' if device == 'auto' and torch.cuda.is_available()
                          else 'cpu' if device == 'auto' else device)
    model = RiskPlanner.from_pretrained(checkpoint).to(device).eval()
    cfg = model.config
    index = FrameIndex(index)
    check_index_fits(index, cfg)
    reader = None
    if features != 'images':
        cache = FeatureCache(index, model.encoder, cache_dir)
        if cache.is_complete():
            reader = cache.reader()
        elif features == 'cache':
            reader = cache.reader()  # raises, naming what is missing
    dataset = FrameDataset(index, features=reader, images=reader is None,
                           route_points=model.config.route_points)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    pred = predict(model, loader, device, progress=progress)
    report = {'checkpoint': str(Path(checkpoint).resolve()), 'index': str(index.index_dir),
              'features': 'cache' if reader is not None else 'images',
              **summarise(pred, cfg.frequency_hz)}
    losses = per_sample_losses(pred, 'l1', cfg.frequency_hz)
    report['overall']['model']['plan_loss'] = float(losses['plan'].mean())
    report['overall']['model']['risk_l1'] = float(losses['risk'].mean())
    report['calibration'] = calibration(pred)
    report['braking'] = braking(pred, cfg.frequency_hz)
    per_sample = sample_metrics(pred, cfg.frequency_hz)
    report['per_frame'] = per_frame(pred, per_sample)
    if out is None:
        return report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(pred['frame'])
    samples = np.linspace(0, n - 1, min(num_samples, n)).round().astype(int) if n else []
    order = np.lexsort((-per_sample['model.ade_5s'], per_sample['model.rfs']))
    files = {'samples': plot_samples(pred, per_sample, cfg.grid, cfg.frequency_hz,
                                     sorted(set(int(i) for i in samples)), out / 'samples')}
    if n and worst > 0:
        files['worst'] = plot_worst(pred, per_sample, cfg.grid, order[:worst],
                                    out / 'worst_samples.png')
        report['worst_frames'] = [int(pred['frame'][i]) for i in order[:worst]]
    run_dir = find_run_logs(checkpoint)
    if run_dir is not None:
        curves = plot_training_curves(run_dir, out / 'training_curves.png')
        if curves:
            files['training_curves'] = curves
    files['reliability'] = plot_reliability(report['calibration'], out / 'reliability.png',
                                            f'RiskHead vs teacher on {n} frames')
    report['files'] = files
    fd, tmp = tempfile.mkstemp(dir=out, prefix='report', suffix='.json.tmp')
    with os.fdopen(fd, 'w') as fh:
        json.dump(report, fh, indent=1)
    os.replace(tmp, out / 'report.json')
    return report


def format_report(report: dict) -> str:
    """A short human-readable table of the overall and per-intent numbers."""
    lines = ['| group | frames | RFS | RFS (CV) | ADE@3s | ADE@5s | FDE | risk CC | risk KL '
             '| top-k recall |', '|' + '---|' * 10]
    groups = [('overall', {'frames': report['frames'], **report['overall']})]
    groups += list(report['per_intent'].items())
    for name, g in groups:
        m, cv = g['model'], g['cv']
        lines.append(f'| {name} | {g["frames"]} | {m["rfs"]:.2f} | {cv["rfs"]:.2f} | '
                     f'{m["ade_3s"]:.2f} | {m["ade_5s"]:.2f} | {m["fde"]:.2f} | '
                     f'{m["risk_pearson"]:.3f} | {m["risk_kl"]:.3f} | '
                     f'{m["risk_topk_recall"]:.3f} |')
    cal = report.get('calibration')
    if cal:
        thr = cal['marker_threshold']
        lines += ['', f'risk calibration: ECE {cal["ece"]:.4f} (cells >= {cal["risky_cell"]:g}: '
                      f'{cal["ece_risky_cells"]:.3f}); mean student {cal["student_mean"]:.4f} vs '
                      f'teacher {cal["teacher_mean"]:.4f}; marker threshold '
                      f'{thr["threshold"]:.2f} finds teacher >= {thr["risky"]:g} cells with '
                      f'precision {thr["precision"]:.2f}, recall {thr["recall"]:.2f}, '
                      f'F1 {thr["f1"]:.2f}']
    if report.get('braking'):
        horizon = metrics.BRAKE_HORIZON_S
        lines += ['', f'| braking (speed change at {horizon:g} s) | frames | expert m/s '
                      f'| plan m/s | plans dropping >= {PLANNED_BRAKE:g} m/s |',
                  '|---|---|---|---|---|']
        for name, g in report['braking'].items():
            if g['frames']:
                lines.append(f"| {name} | {g['frames']} | {g['expert_dv']:+.2f} | "
                             f"{g['planned_dv']:+.2f} | {g['planned_brakes']:.2f} |")
    return '\n'.join(lines)


def add_arguments(parser) -> None:
    parser.add_argument('checkpoint', help='RiskPlanner checkpoint directory (e.g. RUN/best)')
    parser.add_argument('index', help='index to evaluate on (rsd-drive label --out)')
    parser.add_argument('--out', required=True, help='report directory (report.json, PNGs)')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
    parser.add_argument('--features', default='auto', choices=('auto', 'cache', 'images'),
                        help='frozen features from the cache or the encoder on the images')
    parser.add_argument('--cache-dir', help='feature cache root (default: INDEX/features)')
    parser.add_argument('--num-samples', type=int, default=4, help='per-sample BEV panels')
    parser.add_argument('--worst', type=int, default=8, help='samples in the worst gallery')
    parser.add_argument('--no-progress', action='store_true')


def run(args) -> int:
    try:
        report = evaluate_checkpoint(args.checkpoint, args.index, args.out, args.batch_size,
                                     args.device, args.features, args.cache_dir,
                                     args.num_samples, args.worst, not args.no_progress)
    except (OSError, ValueError, RuntimeError) as e:
        print(f'rsd-drive eval: {e}', file=sys.stderr)
        return 2
    print(format_report(report))
    print(f'report: {Path(args.out) / "report.json"}')
    return 0
