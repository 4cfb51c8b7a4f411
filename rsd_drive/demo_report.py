"""The demo's two results a person looks at: ``summary.png`` and ``report.md``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _pick_frames(index, stamps_with_output, count: int = 2) -> list[int]:
    """Frames the node planned for, preferring a turn and the highest teacher risk."""
    candidates = [i for i in range(len(index))
                  if int(index.get(i, ('stamps',))['stamps']) in stamps_with_output]
    if not candidates:
        raise RuntimeError('no validation frame has a published plan to show')

    def score(i):
        f = index.get(i, ('risk', 'intent'))
        return (float(np.asarray(f['risk'], dtype=np.float32).max())
                + (0.5 if int(f['intent']) in (2, 3) else 0.0))
    ranked = sorted(candidates, key=score, reverse=True)
    picks = [ranked[0]]
    turning = [i for i in ranked if int(index.get(i, ('intent',))['intent']) in (2, 3)]
    for i in turning + ranked:
        if i not in picks and abs(i - picks[0]) > 4:
            picks.append(i)
            break
    return picks[:count]


def write_summary_png(path: Path, val_index_dir, drive_name: str, outputs: dict, grid) -> Path:
    """Camera mosaic + BEV (teacher risk, student risk from the node, logged and planned path)
    for two frames of the replayed held-out drive."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from rsd_drive import INTENTS
    from rsd_drive.data.index import FrameIndex
    from rsd_drive.metrics import constant_velocity_baseline

    index = FrameIndex(val_index_dir)
    cameras = index.manifest.get('cameras') or [f'cam{i}' for i in range(6)]
    picks = _pick_frames(index, set(outputs['paths']))
    t0 = min(int(index.get(i, ('stamps',))['stamps']) for i in range(len(index)))
    extent = (grid.origin_y + grid.rows * grid.resolution, grid.origin_y,
              grid.origin_x, grid.origin_x + grid.cols * grid.resolution)
    fig = plt.figure(figsize=(18, 5.2 * len(picks)))
    outer = fig.add_gridspec(len(picks), 2, width_ratios=[2.2, 1.6], wspace=0.08, hspace=0.25)
    for row, i in enumerate(picks):
        f = index[i]
        stamp = int(f['stamps'])
        cams = outer[row, 0].subgridspec(2, 3, wspace=0.02, hspace=0.08)
        for c in range(f['images'].shape[0]):
            ax = fig.add_subplot(cams[c // 3, c % 3])
            ax.imshow(f['images'][c])
            ax.set_title(str(cameras[c]) if c < len(cameras) else f'cam{c}', fontsize=9)
            ax.axis('off')
        bev = outer[row, 1].subgridspec(1, 2, wspace=0.15)
        student = outputs['grids'].get(stamp)
        for k, (risk, title) in enumerate(((np.asarray(f['risk'], np.float32), 'teacher risk'),
                                           (student, 'student risk (planner_node)'))):
            ax = fig.add_subplot(bev[0, k])
            if risk is not None:
                # Rows are +y (left) and columns +x (forward): show forward up, left on the left.
                ax.imshow(np.asarray(risk).T[::-1, ::-1], extent=extent, vmin=0, vmax=1,
                          cmap='magma')
            future, plan = f['future'], outputs['paths'][stamp]
            cv = constant_velocity_baseline(np.array([float(f['init_speed'])]))[0]
            ax.plot(future[:, 1], future[:, 0], 'c-', lw=2.5, label='logged future')
            ax.plot(plan[:, 1], plan[:, 0], 'lime', ls='--', lw=2.5, label='planned (node)')
            ax.plot(cv[:, 1], cv[:, 0], color='w', ls=':', lw=1.5, label='constant velocity')
            ax.plot([0], [0], 'w^', ms=9)
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            ax.set_xlabel('y (m, left +)')
            ax.set_ylabel('x (m, forward +)')
            ax.set_title(f'{title}\nt=+{(stamp - t0) / 1e9:.1f} s, intent '
                         f'{INTENTS[int(f["intent"])]}, v0={float(f["init_speed"]):.1f} m/s',
                         fontsize=9)
            if k == 0:
                ax.legend(loc='lower right', fontsize=7, facecolor='grey')
    fig.suptitle(f'rsd_drive demo: held-out drive {drive_name} replayed through planner_node',
                 fontsize=14)
    tmp = path.with_suffix('.tmp.png')
    fig.savefig(tmp, dpi=80, bbox_inches='tight')
    plt.close(fig)
    tmp.replace(path)
    return path


def _latency_table(diagnostics: dict) -> str:
    rows = []
    for name, values in diagnostics.items():
        stages = sorted({k.split('.')[1] for k in values if k.startswith('latency_ms.')})
        for stage in stages:
            rows.append(f'| {stage} | {values.get(f"latency_ms.{stage}.p50", "")} | '
                        f'{values.get(f"latency_ms.{stage}.p99", "")} |')
        if stages:
            extra = {k: v for k, v in values.items()
                     if k in ('backend', 'precision', 'node_overhead_to_inference')}
            return ('| stage | p50 (ms) | p99 (ms) |\n|---|---|---|\n' + '\n'.join(rows)
                    + '\n\n' + ', '.join(f'{k}: {v}' for k, v in extra.items())
                    + f' (diagnostics status "{name}")')
    return 'no latency diagnostics were recorded'


FAMILY_METRICS = (('rfs', 'RFS', '{:.2f}'), ('ade_3s', 'ADE@3s (m)', '{:.2f}'),
                  ('ade_5s', 'ADE@5s (m)', '{:.2f}'), ('risk_pearson', 'risk CC', '{:.2f}'))


def family_stats(runs: list, families: list) -> dict:
    """{group: {arm: {metric: [value per seed]}}} with groups 'overall' and every family; the
    constant-velocity plan is the arm 'constant velocity' (one value: it is deterministic)."""
    families = np.asarray(families)
    groups = {'overall': np.ones(len(families), dtype=bool)}
    groups.update({f: families == f for f in dict.fromkeys(families.tolist())})
    out = {}
    for group, mask in groups.items():
        table = out.setdefault(group, {})
        for r in runs:
            frames = np.asarray(r['per_frame']['frame'])
            sel = mask[frames]
            if not sel.any():
                continue
            arm = table.setdefault(r['variant'], {})
            for key, _, _ in FAMILY_METRICS:
                arm.setdefault(key, []).append(
                    float(np.mean(np.asarray(r['per_frame'][f'model.{key}'])[sel])))
            if 'constant velocity' not in table:
                table['constant velocity'] = {
                    key: [float(np.mean(np.asarray(r['per_frame'][f'cv.{key}'])[sel]))]
                    for key, _, _ in FAMILY_METRICS if f'cv.{key}' in r['per_frame']}
        for arm in table.values():
            arm['frames'] = int(mask.sum())
    return out


def _cell(values, fmt: str) -> str:
    if not values:
        return '-'
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 1:
        return fmt.format(v[0])
    return f'{fmt.format(v.mean())} ± {fmt.format(v.std(ddof=1))}'


def family_table(stats: dict) -> str:
    """Markdown: one block of rows per group (overall first), one row per arm."""
    head = ('| group | frames | arm | seeds | ' + ' | '.join(t for _, t, _ in FAMILY_METRICS)
            + ' |')
    lines = [head, '|' + '---|' * (len(FAMILY_METRICS) + 4)]
    for group, arms in stats.items():
        order = ['constant velocity'] + [a for a in arms if a != 'constant velocity']
        for arm in order:
            if arm not in arms:
                continue
            m = arms[arm]
            seeds = len(m.get('rfs', [])) if arm != 'constant velocity' else '-'
            cells = [_cell(m.get(k, []), fmt) for k, _, fmt in FAMILY_METRICS]
            lines.append(f'| {group} | {m["frames"]} | {arm} | {seeds} | ' + ' | '.join(cells)
                         + ' |')
    return '\n'.join(lines)


def _calibration_lines(evaluation: dict) -> list:
    cal = evaluation.get('calibration')
    if not cal:
        return []
    thr = cal['marker_threshold']
    if thr['f1'] > 0:
        marker = (f'The student threshold that best finds the teacher\'s cells >= '
                  f'{thr["risky"]:g} is {thr["threshold"]:.2f} (precision '
                  f'{thr["precision"]:.2f}, recall '
                  f'{thr["recall"]:.2f}, F1 {thr["f1"]:.2f}): the value for the node\'s '
                  f'`marker_risk_threshold`.')
    else:
        marker = (f'No student threshold finds the teacher\'s cells >= {thr["risky"]:g} (F1 0 at '
                  f'every threshold): this RiskHead has not learned where the hazards are, so '
                  f'it cannot set `marker_risk_threshold`.')
    return ['## Risk calibration of the deployed RiskHead', '',
            f'Expected calibration error {cal["ece"]:.4f} over all cells, '
            f'{cal["ece_risky_cells"]:.3f} over cells where the student or the teacher says '
            f'>= {cal["risky_cell"]:g}; mean cell risk student {cal["student_mean"]:.4f} vs '
            f'teacher {cal["teacher_mean"]:.4f}, mean per-frame maximum '
            f'{cal["student_max_mean"]:.2f} vs {cal["teacher_max_mean"]:.2f}. {marker} '
            f'Reliability diagram: `eval/reliability.png`.', '']


def _closed_loop_lines(done: dict) -> list:
    result = done.get('closedloop') or {}
    lines = ['## Closed loop on held-out seeds', '']
    if result.get('table'):
        return lines + [result['table'], '']
    return lines + [f'Not run: {result.get("skipped", "no closed-loop stage")}.', '']


def write_report(path: Path, out: Path, state: dict, demo: dict, encoder_desc: str,
                 outputs: dict, families: list | None = None) -> Path:
    from rsd_drive.train.evaluate import format_report

    done = state['done']
    evaluation = json.loads(Path(done['evaluate']).read_text())
    ablation = json.loads(Path(done['train']['ablation']).read_text())
    o = evaluation['overall']
    fam = sorted(set(families)) if families else []
    lines = [
        '# rsd_drive demo report', '',
        f'Frozen encoder: {encoder_desc}. Teacher: scene-oracle (privileged, from the drives\' '
        f'ground-truth objects, through the same BEV projection as the VLM backends).', '',
        f'Drives per family ({", ".join(fam) if fam else "default world"}): '
        f'{demo["train_drives"]} for training, {demo["val_drives"]} held out (other seeds), '
        f'{demo["duration_s"]} s each, 6 cameras at {demo["image_hz"]} Hz, model input '
        f'{demo["image_size"]}. Frames: {done["labels"]}.', '',
        '## Arms per family and overall (held-out drives)', '',
        f'Every arm trains with identical settings ({demo["train"]}) once per seed '
        f'{demo["seeds"]}, on the same data, scored by its final checkpoint; mean ± sample sd '
        f'over seeds. Constant velocity is deterministic. Not tuned until an arm wins: these are '
        f'the numbers of the first run of this configuration.', '',
        family_table(family_stats(ablation['runs'], families)) if families else
        ablation['table'], '',
        '### Paired comparisons', '', ablation.get('paired_table', ''), '',
        f'## The deployed checkpoint (lambda = {demo["risk_weight"]}, seed {demo["seeds"][0]})',
        '',
        f'RFS {o["model"]["rfs"]:.2f} vs constant velocity {o["cv"]["rfs"]:.2f}; ADE@3s '
        f'{o["model"]["ade_3s"]:.2f} m vs {o["cv"]["ade_3s"]:.2f} m; ADE@5s '
        f'{o["model"]["ade_5s"]:.2f} m vs {o["cv"]["ade_5s"]:.2f} m.', '',
        format_report(evaluation), '',
        'RFS: the official Waymo E2E definition with the logged future as the single rated '
        'trajectory (label 10), so it ranges 4..10. Risk columns compare the RiskHead with the '
        'teacher\'s grid (Pearson CC, KL, recall of the top 5 % cells).', '',
        *_calibration_lines(evaluation),
        *_closed_loop_lines(done),
    ]
    lines += ['## planner_node on the replayed held-out drive', '',
              f'{len(outputs["paths"])} paths and {len(outputs["grids"])} risk grids published '
              f'over real DDS (loopback) with ONNX Runtime, replayed in lockstep. Latency on '
              f'the wall clock (the node\'s `latency_ms.*`); under sim time `total` runs from '
              f'the set\'s last message to the publish:', '',
              _latency_table(outputs['diagnostics']), '',
              '## Stage timings (s)', '',
              '| stage | seconds |', '|---|---|']
    lines += [f'| {k} | {v} |' for k, v in state['timings_s'].items()]
    lines += ['', '## Files', '',
              '- `summary.png`: cameras, teacher vs student risk, logged vs planned path',
              '- `eval/`: report.json, reliability.png, per-sample BEV panels, worst samples, '
              'training curves',
              '- `ablation/`: ablation.md/json/png and every run of every arm (`runs/*/train`: '
              'checkpoints, CSV/TensorBoard logs)',
              f'- deployed checkpoint with `model.onnx`: `{done["train"]["checkpoint"]}`',
              '- `node_outputs/`: the bag recorded from planner_node; `planner_node.log`',
              '- `drives/<split>/<family>/`: the scenario bags; `labels/<split>/`: label bags, '
              'previews and the training index (`index/`, with its feature caches)', '']
    tmp = path.with_suffix('.tmp')
    tmp.write_text('\n'.join(lines))
    tmp.replace(path)
    return path
