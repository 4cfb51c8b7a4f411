"""What a person looks at after a closed-loop run: ``report.json``, ``report.md`` (tables per
policy and family), a BEV PNG per route, and animated rollouts (GIF: front camera beside an
ego-centred BEV with the agents, the plan and the risk grid) of each policy's best and worst
route. Every file goes through :mod:`rsd_drive.atomic`."""
from __future__ import annotations

import io
import math
from pathlib import Path

import cv2
import numpy as np

from rsd_drive.atomic import write_atomic, write_bytes_atomic, write_json_atomic, \
    write_text_atomic

BEV_PX, BEV_SCALE = 256, 4.0          # pixels, pixels per metre (64 m across)
EGO_ROW = 0.72                        # the ego sits this far down the BEV panel
CLASS_COLOURS = {'vehicle': (60, 110, 230), 'pedestrian': (255, 150, 0),
                 'scenery': (40, 120, 50), 'static': (120, 120, 120)}
EGO_COLOUR, PLAN_COLOUR, TRACE_COLOUR = (40, 200, 60), (230, 40, 200), (255, 255, 255)


# -- the BEV panel (cv2, per frame) -------------------------------------------------------------
def _to_px(xy: np.ndarray, pose) -> np.ndarray:
    """World points [N,2] -> panel pixels, the ego at ``pose`` facing up."""
    x, y, yaw = pose
    c, s = math.cos(yaw), math.sin(yaw)
    d = np.asarray(xy, dtype=np.float64).reshape(-1, 2) - (x, y)
    fx, fy = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
    return np.stack([BEV_PX / 2 - fy * BEV_SCALE, BEV_PX * EGO_ROW - fx * BEV_SCALE], -1)


def _box_corners(cx, cy, yaw, length, width) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    local = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * (length / 2, width / 2)
    return np.stack([cx + c * local[:, 0] - s * local[:, 1],
                     cy + s * local[:, 0] + c * local[:, 1]], -1)


def _draw_risk(img: np.ndarray, plan, pose) -> None:
    """The plan's risk grid, warped from its base_link (at planning time) into the panel."""
    if plan is None or plan.risk is None or plan.grid is None:
        return
    g = plan.grid
    risk = np.clip(np.asarray(plan.risk, dtype=np.float32), 0, 1)
    px, py, pyaw = plan.pose
    c, s = math.cos(pyaw), math.sin(pyaw)
    # grid (col, row) -> plan base_link -> world: three points define the affine map.
    cells = np.array([[0.0, 0.0], [g.cols, 0.0], [0.0, g.rows]])
    bx, by = g.origin_x + cells[:, 0] * g.resolution, g.origin_y + cells[:, 1] * g.resolution
    world = np.stack([px + c * bx - s * by, py + s * bx + c * by], -1)
    M = cv2.getAffineTransform(cells.astype(np.float32), _to_px(world, pose).astype(np.float32))
    heat = cv2.warpAffine(risk, M, (BEV_PX, BEV_PX), flags=cv2.INTER_NEAREST)
    alpha = np.clip(heat * 1.5, 0, 0.8)[..., None]
    img[:] = (img * (1 - alpha) + np.array([255, 30, 30]) * alpha).astype(np.uint8)


def draw_bev(state, pose, plan=None, past_xy=None) -> np.ndarray:
    """An ego-centred BEV (RGB uint8, BEV_PX square) of ``state`` seen from ``pose``."""
    # lazy: the scenario package pulls rosbags
    from rsd_drive.scenario.constants import EGO_LENGTH, EGO_WIDTH

    img = np.full((BEV_PX, BEV_PX, 3), (70, 110, 60), np.uint8)
    ground = getattr(state, 'ground', None)
    reach = BEV_PX / BEV_SCALE
    if ground is not None:
        for quads, colour, centres, radius in ground.layers:
            near = np.linalg.norm(centres - np.asarray(pose[:2]), axis=1) < reach + radius
            if near.any():
                q = quads[near][:, :, :2]
                polys = np.round(_to_px(q.reshape(-1, 2), pose) * 16).astype(np.int32)
                cv2.fillPoly(img, list(polys.reshape(len(q), -1, 2)), colour,
                             lineType=cv2.LINE_AA, shift=4)
    _draw_risk(img, plan, pose)
    objects = state.objects
    for i in range(len(objects)):
        cx, cy = objects.centre[i, :2]
        if math.hypot(cx - pose[0], cy - pose[1]) > reach:
            continue
        corners = _box_corners(cx, cy, objects.yaw[i], objects.size[i, 0], objects.size[i, 1])
        colour = CLASS_COLOURS.get(objects.classes[i], (200, 200, 200))
        cv2.fillPoly(img, [np.round(_to_px(corners, pose) * 16).astype(np.int32)], colour,
                     lineType=cv2.LINE_AA, shift=4)
    if past_xy is not None and len(past_xy) > 1:
        cv2.polylines(img, [np.round(_to_px(past_xy, pose) * 16).astype(np.int32)], False,
                      TRACE_COLOUR, 1, cv2.LINE_AA, shift=4)
    if plan is not None:
        pts = np.round(_to_px(plan.world_points(), pose) * 16).astype(np.int32)
        cv2.polylines(img, [pts], False, PLAN_COLOUR, 2, cv2.LINE_AA, shift=4)
    ego = _box_corners(pose[0], pose[1], pose[2], EGO_LENGTH, EGO_WIDTH)
    cv2.fillPoly(img, [np.round(_to_px(ego, pose) * 16).astype(np.int32)], EGO_COLOUR,
                 lineType=cv2.LINE_AA, shift=4)
    return img


def compose_frame(frame: dict, title: str, past_xy=None) -> np.ndarray:
    """Front camera (scaled to the panel height) beside the BEV, with a caption."""
    bev = draw_bev(frame['state'], frame['pose'], frame['plan'], past_xy)
    cam = frame['image']
    w = int(round(cam.shape[1] * BEV_PX / cam.shape[0]))
    cam = cv2.resize(cam, (w, BEV_PX), interpolation=cv2.INTER_AREA)
    out = np.concatenate([cam, bev], axis=1)
    lines = (title, f"t {frame['t']:.1f} s   v {frame['speed']:.1f} m/s")
    cv2.rectangle(out, (0, 0), (min(out.shape[1], 8 + 7 * max(map(len, lines))), 36),
                  (20, 20, 20), -1)
    for i, text in enumerate(lines):
        cv2.putText(out, text, (5, 14 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return out


def save_frames(path, frames: list, ego_xy: np.ndarray, title: str, max_frames: int) -> Path:
    """Composed rollout frames as JPEG bytes in an .npz (the GIF is made from the best/worst)."""
    if len(frames) > max_frames:
        keep = np.unique(np.linspace(0, len(frames) - 1, max_frames).round().astype(int))
        frames = [frames[i] for i in keep]
    blobs = []
    times = np.asarray([f['t'] for f in frames])
    for f in frames:
        past = ego_xy[: int(np.searchsorted(ego_xy[:, 2], f['t'], side='right'))][:, :2]
        rgb = compose_frame(f, title, past)
        blobs.append(np.frombuffer(cv2.imencode('.jpg', rgb[..., ::-1],
                                                [cv2.IMWRITE_JPEG_QUALITY, 85])[1], np.uint8))
    arrays = {f'f{i:04d}': b for i, b in enumerate(blobs)}
    arrays['t'] = times

    def write(tmp):
        with open(tmp, 'wb') as fh:
            np.savez(fh, **arrays)
    return write_atomic(path, write)


def write_gif(frames_npz, gif_path, fps: float = 4.0) -> Path:
    from PIL import Image

    with np.load(frames_npz) as data:
        keys = sorted(k for k in data.files if k.startswith('f'))
        images = [Image.fromarray(cv2.imdecode(data[k], cv2.IMREAD_COLOR)[..., ::-1])
                  for k in keys]
    if not images:
        raise ValueError(f'{frames_npz}: no frames')

    def write(tmp):
        images[0].save(tmp, format='GIF', save_all=True, append_images=images[1:],
                       duration=int(1000 / fps), loop=0)
    return write_atomic(gif_path, write)


# -- the per-route PNG (matplotlib) -------------------------------------------------------------
def route_png(path, record: dict, ego: np.ndarray, frames: list) -> Path:
    """The whole route from above: road, agent tracks (at the planning frames), the ego's path
    coloured by speed, every 4th plan, collisions; title with the scores."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    fig, ax = plt.subplots(figsize=(7, 7))
    if not len(ego):   # the route failed before its first step
        ego = np.zeros((1, 4))
    x, y, t, v = ego[:, 0], ego[:, 1], ego[:, 2], ego[:, 3]
    pad = 25.0
    lo, hi = np.array([x.min(), y.min()]) - pad, np.array([x.max(), y.max()]) + pad
    if frames:
        ground = getattr(frames[0]['state'], 'ground', None)
        for quads, colour, centres, _ in (ground.layers if ground is not None else []):
            near = np.all((centres > lo - 20) & (centres < hi + 20), axis=1)
            ax.add_collection(PolyCollection(quads[near][:, :, :2],
                                             facecolors=np.array(colour) / 255.0,
                                             edgecolors='none'))
        tracks = {}
        for f in frames:
            o = f['state'].objects
            for i in range(len(o)):
                tracks.setdefault((int(o.ids[i]), o.classes[i]), []).append(o.centre[i, :2])
        for (_, cls), pts in tracks.items():
            pts = np.asarray(pts)
            colour = np.array(CLASS_COLOURS.get(cls, (200, 200, 200))) / 255.0
            ax.plot(pts[:, 0], pts[:, 1], '-', color=colour, lw=1, alpha=0.8)
            ax.plot(pts[-1, 0], pts[-1, 1], 's' if cls == 'vehicle' else 'o', color=colour,
                    ms=4)
        for f in frames[::4]:
            if f['plan'] is not None:
                p = f['plan'].world_points()
                ax.plot(p[:, 0], p[:, 1], '-', color=np.array(PLAN_COLOUR) / 255.0, lw=0.8,
                        alpha=0.7)
    sc = ax.scatter(x, y, c=v, s=4, cmap='viridis', zorder=3)
    fig.colorbar(sc, ax=ax, shrink=0.7, label='ego speed (m/s)')
    for c in record['collisions']:
        i = min(int(np.searchsorted(t, c['time_s'])), len(t) - 1)
        ax.plot(x[i], y[i], 'x', color='red', ms=14, mew=3, zorder=4)
        ax.annotate(f"{c['class']} {c['speed']:.1f} m/s", (x[i], y[i]), color='red',
                    fontsize=8, xytext=(5, 5), textcoords='offset points')
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect('equal')
    ax.set_xlabel('x (m, odom)')
    ax.set_ylabel('y (m)')
    ax.set_title(f"{record['policy']} | {record['family']} seed {record['seed']}: "
                 f"DS {record['driving_score']:.2f}, RC {record['route_completion']:.2f}, "
                 f"{'success' if record['success'] else 'no success'}"
                 + (f", FAILED: {record['failure']}" if record.get('failure') else ''),
                 fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=90, bbox_inches='tight')
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())


# -- tables and the report ----------------------------------------------------------------------
def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    return f'{value:.{digits}f}'


def format_summary_table(summary: dict, family: str = 'all', policies=None) -> str:
    """Markdown table, one row per policy, of one family's aggregate (``'all'`` = overall)."""
    lines = ['| policy | routes | driving score | success rate | collision rate | '
             'route completion | min TTC (s) | comfort | failed |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for policy in policies or sorted(summary):
        agg = summary.get(policy, {}).get(family)
        if agg is None:
            continue
        lines.append(f"| {policy} | {agg['routes']} | {_fmt(agg['driving_score'])} ± "
                     f"{_fmt(agg['driving_score_sd'])} | {_fmt(agg['success_rate'])} | "
                     f"{_fmt(agg['collision_rate'])} | {_fmt(agg['route_completion'])} | "
                     f"{_fmt(agg['min_ttc_s'])} | {_fmt(agg['comfort'])} | {agg['failed']} |")
    return '\n'.join(lines)


def format_arms_table(summary: dict, arms: dict, family: str = 'all') -> str:
    """Markdown table of arms evaluated once per training seed: ``arms`` maps a label to the
    policy names of its seeds (e.g. ``{'lambda=0': ['lam0-s0', 'lam0-s1', 'lam0-s2']}``); each
    cell is the mean ± sd over those policies of their per-route mean (a baseline is one name)."""
    lines = ['| arm | seeds | driving score | success rate | collision rate | route completion |',
             '| --- | --- | --- | --- | --- | --- |']
    for label, names in arms.items():
        aggs = [summary[n][family] for n in names if n in summary and family in summary[n]]
        if not aggs:
            continue
        cells = []
        for key in ('driving_score', 'success_rate', 'collision_rate', 'route_completion'):
            values = np.array([a[key] for a in aggs], dtype=np.float64)
            sd = values.std(ddof=1) if len(values) > 1 else 0.0
            cells.append(f'{values.mean():.2f} ± {sd:.2f}' if len(values) > 1
                         else f'{values.mean():.2f}')
        lines.append(f'| {label} | {len(aggs)} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def format_family_table(summary: dict, metric: str = 'driving_score', policies=None) -> str:
    """Markdown table of one metric: policies as rows, families (and 'all') as columns."""
    policies = policies or sorted(summary)
    families = sorted({f for p in policies for f in summary.get(p, {}) if f != 'all'}) + ['all']
    lines = [f'| {metric} | ' + ' | '.join(families) + ' |',
             '| --- |' + ' --- |' * len(families)]
    for p in policies:
        cells = [_fmt(summary.get(p, {}).get(f, {}).get(metric)) for f in families]
        lines.append(f'| {p} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def format_routes_table(routes: list) -> str:
    lines = ['| policy | family | seed | DS | RC | success | collisions | min TTC (s) | '
             'late plans | wall (s) | failure |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for r in routes:
        cols = ', '.join(f"{c['class']}@{c['time_s']:.1f}s {c['speed']:.1f}m/s"
                         for c in r['collisions']) or '-'
        lines.append(f"| {r['policy']} | {r['family']} | {r['seed']} | "
                     f"{_fmt(r['driving_score'])} | {_fmt(r['route_completion'])} | "
                     f"{'yes' if r['success'] else 'no'} | {cols} | {_fmt(r['min_ttc_s'])} | "
                     f"{r.get('late_plans', 0)} | {_fmt(r.get('wall_s'), 1)} | "
                     f"{r.get('failure') or '-'} |")
    return '\n'.join(lines)


def best_and_worst(routes: list) -> tuple[dict, dict]:
    """Highest and lowest driving score (ties: larger / smaller min TTC, then seed)."""
    def key(r):
        ttc = r['min_ttc_s'] if r['min_ttc_s'] is not None else 1e9
        return (r['driving_score'], min(ttc, 1e9), -r['seed'])
    ranked = sorted(routes, key=key)
    return ranked[-1], ranked[0]


def write_report(out_dir, routes: list, summary: dict, config: dict, gifs: dict) -> dict:
    """report.json and report.md in ``out_dir``; returns the report dict."""
    out_dir = Path(out_dir)
    keys = ('family', 'seed', 'policy', 'route_completion', 'driving_score', 'success',
            'collisions', 'min_ttc_s')
    report = {'routes': [{**{k: r[k] for k in keys},
                          **{k: v for k, v in r.items() if k not in keys}} for r in routes],
              'summary': summary, 'config': config, 'rollouts': gifs}
    write_json_atomic(out_dir / 'report.json', report)
    md = ['# Closed-loop evaluation', '',
          'CARLA leaderboard / Bench2Drive scoring: driving score = route completion x '
          'infraction penalty (pedestrian 0.50, vehicle 0.60, static 0.65 per collision); '
          'success = route completed without infraction. Collision rate: routes with at least '
          'one collision. NAVSIM-style: min time-to-collision, comfort (fraction of time within '
          'the nuPlan limits).', '', '## Overall', '', format_summary_table(summary), '',
          '## Driving score per family', '', format_family_table(summary), '',
          '## Success rate per family', '', format_family_table(summary, 'success_rate'), '',
          '## Collision rate per family', '', format_family_table(summary, 'collision_rate'), '']
    if gifs:
        md += ['## Rollouts', '']
        for label, rel in sorted(gifs.items()):
            md += [f'{label}: ![{label}]({rel})', '']
    md += ['## Routes', '', format_routes_table(routes), '']
    write_text_atomic(out_dir / 'report.md', '\n'.join(md))
    return report
