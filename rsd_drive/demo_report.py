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


def write_report(path: Path, out: Path, state: dict, demo: dict, encoder_desc: str,
                 outputs: dict) -> Path:
    from rsd_drive.train.evaluate import format_report

    done = state['done']
    evaluation = json.loads(Path(done['evaluate']).read_text())
    ablation = json.loads(Path(done['train']['ablation']).read_text())
    o = evaluation['overall']
    lines = [
        '# rsd_drive demo report', '',
        f'Frozen encoder: {encoder_desc}. Teacher: scene-oracle (privileged, from the drives\' '
        f'ground-truth objects, through the same BEV projection as the VLM backends).', '',
        f'Drives: {demo["train_drives"]} for training (seeds from {demo["train_seed"]}), '
        f'{demo["val_drives"]} held out (seeds from {demo["val_seed"]}), {demo["duration_s"]} s '
        f'each, 6 cameras at {demo["image_hz"]} Hz, model input {demo["image_size"]}. Frames: '
        f'{done["labels"]}.', '',
        '## Planning on held-out drives', '',
        f'Learned planner RFS {o["model"]["rfs"]:.2f} vs constant-velocity baseline '
        f'{o["cv"]["rfs"]:.2f}; ADE@3s {o["model"]["ade_3s"]:.2f} m vs {o["cv"]["ade_3s"]:.2f} m; '
        f'ADE@5s {o["model"]["ade_5s"]:.2f} m vs {o["cv"]["ade_5s"]:.2f} m.', '',
        format_report(evaluation), '',
        'RFS: the official Waymo E2E definition with the logged future as the single rated '
        'trajectory (label 10), so it ranges 4..10. Risk columns compare the RiskHead with the '
        'teacher\'s grid (Pearson CC, KL, recall of the top 5 % cells).', '',
        f'## Risk distillation: lambda = 0 vs lambda = {demo["risk_weight"]}', '',
        f'Both arms train with identical settings ({demo["train"]}) once per seed '
        f'{demo["seeds"]}; the lambda > 0 run of seed {demo["seeds"][0]} is the checkpoint '
        f'evaluated above and deployed below.', '',
        ablation['table'], '',
    ]
    if done.get('encoders'):
        enc = json.loads(Path(done['encoders']).read_text())
        lines += ['## Frozen pretrained vs frozen random encoder (same size, ViT-S/14)', '',
                  f'lambda = {demo["risk_weight"]}, same training settings and seeds; the '
                  f'pretrained arm is the lambda > 0 arm above.', '',
                  '| encoder | runs | RFS | ADE@3s (m) | ADE@5s (m) | risk CC |',
                  '|---|---|---|---|---|---|']
        for name, summary in enc.items():
            s = next(iter(summary.values()))
            lines.append(f'| {name} | {s["rfs"]["n"]} | '
                         + ' | '.join(f'{s[k]["mean"]:.3f} ± {s[k]["std"]:.3f}'
                                      for k in ('rfs', 'ade_3s', 'ade_5s', 'risk_pearson'))
                         + ' |')
        lines.append('')
    lines += ['## planner_node on the replayed held-out drive', '',
              f'{len(outputs["paths"])} paths and {len(outputs["grids"])} risk grids published '
              f'over real DDS (loopback) with ONNX Runtime; latency from the camera stamp:', '',
              _latency_table(outputs['diagnostics']), '',
              '## Stage timings (s)', '',
              '| stage | seconds |', '|---|---|']
    lines += [f'| {k} | {v} |' for k, v in state['timings_s'].items()]
    lines += ['', '## Files', '',
              '- `summary.png`: cameras, teacher vs student risk, logged vs planned path',
              '- `eval/`: report.json, per-sample BEV panels, worst samples, training curves',
              '- `ablation/`: ablation.md/json/png and every run (`runs/*/train`: checkpoints, '
              'CSV/TensorBoard logs); `encoders/`: the random-encoder arm',
              f'- deployed checkpoint with `model.onnx`: `{done["train"]["checkpoint"]}`',
              '- `node_outputs/`: the bag recorded from planner_node; `planner_node.log`',
              '- `drives/`: the scenario bags; `labels/<split>/`: label bags, previews and the '
              'training index (`index/`, with its feature caches)', '']
    tmp = path.with_suffix('.tmp')
    tmp.write_text('\n'.join(lines))
    tmp.replace(path)
    return path
