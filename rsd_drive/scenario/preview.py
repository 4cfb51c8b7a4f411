"""Contact sheets: all cameras of one frame in one PNG, for a person to look at."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Reader

from rsd_drive.scenario.record import TYPESTORE

# Tiles as a driver would arrange them: front row left to right, back row below.
LAYOUT = ('front_left', 'front', 'front_right', 'back_left', 'back', 'back_right')
COLUMNS = 3
IMAGE_TOPIC_RE = re.compile(r'^/cameras/([^/]+)/image_raw(/compressed)?$')


def decode_image(msg) -> np.ndarray:
    """RGB uint8 [H,W,3] of a deserialised ``Image`` (rgb8/bgr8) or ``CompressedImage``."""
    if hasattr(msg, 'format'):
        bgr = cv2.imdecode(np.asarray(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f'cannot decode {msg.format!r} image')
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if msg.encoding not in ('rgb8', 'bgr8'):
        raise ValueError(f'unsupported image encoding {msg.encoding!r}')
    rows = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    img = rows[:, :msg.width * 3].reshape(msg.height, msg.width, 3)
    return img[..., ::-1].copy() if msg.encoding == 'bgr8' else img.copy()


def read_frame_images(bag_path, frame: int | None = None) -> dict:
    """{camera name: RGB image} of the ``frame``-th message of every camera topic in a bag
    (default: the middle frame)."""
    images = {}
    with Reader(bag_path) as reader:
        for conn in reader.connections:
            match = IMAGE_TOPIC_RE.match(conn.topic)
            if not match:
                continue
            index = conn.msgcount // 2 if frame is None else frame
            if not 0 <= index < conn.msgcount:
                raise IndexError(f'frame {index} out of range for {conn.topic} '
                                 f'({conn.msgcount} messages)')
            for i, (_, _, raw) in enumerate(reader.messages(connections=[conn])):
                if i == index:
                    images[match.group(1)] = decode_image(
                        TYPESTORE.deserialize_cdr(raw, conn.msgtype))
                    break
    return images


def save_contact_sheet(bag_or_frames, png_path, frame: int | None = None) -> Path:
    """Write a labelled mosaic of one frame's camera images to ``png_path``.

    ``bag_or_frames``: a bag path (``frame`` picks the frame, default the middle one), a dict
    {camera name: RGB image}, or a sequence of RGB images. Known camera names are laid out as
    ``LAYOUT``; other cameras follow in rows of three.
    """
    if isinstance(bag_or_frames, (str, Path)):
        images = read_frame_images(bag_or_frames, frame)
    elif isinstance(bag_or_frames, dict):
        images = dict(bag_or_frames)
    else:
        images = {f'camera {i}': img for i, img in enumerate(bag_or_frames)}
    if not images:
        raise ValueError('no camera images to put on a contact sheet')
    names = [n for n in LAYOUT if n in images] + [n for n in images if n not in LAYOUT]
    h = max(img.shape[0] for img in images.values())
    w = max(img.shape[1] for img in images.values())
    rows = -(-len(names) // COLUMNS)
    sheet = np.zeros((rows * h, COLUMNS * w, 3), dtype=np.uint8)
    for i, name in enumerate(names):
        img = images[name]
        r, c = divmod(i, COLUMNS)
        tile = sheet[r * h:r * h + img.shape[0], c * w:c * w + img.shape[1]]
        tile[:] = img
        cv2.putText(tile, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(png_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f'could not write {png_path}')
    return png_path


def _sheet_times(world) -> list:
    """Four frame times that show a family's hazard: before its onset, at it, the expert's
    slowest moment after it and 2 s later; spread over the drive when nothing fires."""
    duration = world.cfg.duration_s
    h = world.hazard
    onset = h.get('onset_time') if h.get('onset_time') is not None else h.get('trigger_time')
    if onset is None or not onset > 0:
        return [duration * f for f in (0.2, 0.4, 0.6, 0.8)]
    # Before, at the onset, the expert's slowest moment in the 8 s after it, 2 s later.
    t = world.sim_t[(world.sim_t >= onset) & (world.sim_t <= min(onset + 8.0, duration))]
    slowest = float(t[np.argmin(world.speed(t))]) if len(t) else onset + 1.0
    times = [max(onset - 2.0, 0.0), onset, max(slowest, onset + 0.5), max(slowest, onset) + 2.0]
    return [min(t, duration - 0.1) for t in times]


def _draw_bev(ax, world, times) -> None:
    """The expert's drive seen from above: road edges, the ego path coloured by speed, the
    hazard agent's path, ego and hazard boxes at the sheet's frame times."""
    road, half = world.road, world.half
    s = road.s[(road.s > world.ego_s(0.0) - 20) & (road.s < world.ego_s(world.cfg.duration_s)
                                                   + 30)]
    for d in (-half, 0.0, half):
        x, y, _ = road.pose(s, d)
        ax.plot(x, y, color='0.4' if d else '0.7', lw=1.0 if d else 0.6,
                ls='-' if d else '--')
    t = world.sim_t[world.sim_t <= world.cfg.duration_s]
    ego = np.array([[world.ego(ti)['x'], world.ego(ti)['y']] for ti in t[::5]])
    sc = ax.scatter(ego[:, 0], ego[:, 1], c=world.speed(t[::5]), s=4, cmap='viridis',
                    vmin=0.0, vmax=world.cfg.speed_max)
    agent = world.hazard.get('agent_id')
    for k, ti in enumerate(times):
        state = world.state(ti)
        e = state.ego
        ax.plot(e[0], e[1], 'o', color='k', ms=4)
        ax.annotate(str(k + 1), (e[0], e[1]), fontsize=7, xytext=(3, 3),
                    textcoords='offset points')
        if agent is not None:
            c = state.objects.centre[agent]
            ax.plot(c[0], c[1], 's', color='tab:red', ms=5)
            ax.annotate(str(k + 1), (c[0], c[1]), fontsize=7, color='tab:red', xytext=(3, -8),
                        textcoords='offset points')
    if agent is not None:
        path = np.array([world.state(ti).objects.centre[agent, :2] for ti in t[::10]])
        ax.plot(path[:, 0], path[:, 1], color='tab:red', lw=1.0, alpha=0.6, label='hazard')
        ax.legend(loc='best', fontsize=7)
    ax.set_aspect('equal')
    ax.set_title('expert drive (odom, colour = speed m/s)', fontsize=8)
    ax.figure.colorbar(sc, ax=ax, fraction=0.04)


def save_family_sheet(png_path, seed: int, cfg, family: str | None = None, world=None) -> Path:
    """A family's contact sheet: the front camera at four frames around the hazard, the expert's
    drive from above and its speed over time. Renders from the simulation (no bag needed)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from rsd_drive.atomic import write_atomic
    from rsd_drive.scenario.render import Camera, render_camera
    from rsd_drive.scenario.world import World

    world = world or World(seed, cfg, family)
    spec = next(c for c in cfg.cameras if c.name == 'front') if any(
        c.name == 'front' for c in cfg.cameras) else cfg.cameras[0]
    cam = Camera(spec, cfg.image_width, cfg.image_height)
    times = _sheet_times(world)
    fig = plt.figure(figsize=(16, 7.5))
    grid = fig.add_gridspec(2, 4, height_ratios=[1.0, 1.6])
    for k, t in enumerate(times):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(render_camera(world.state(t), cam, draw_distance=cfg.draw_distance))
        ax.set_title(f'{k + 1}: t = {t:.1f} s, v = {float(world.speed(t)):.1f} m/s', fontsize=8)
        ax.axis('off')
    _draw_bev(fig.add_subplot(grid[1, :2]), world, times)
    ax = fig.add_subplot(grid[1, 2:])
    t = world.sim_t[world.sim_t <= cfg.duration_s]
    ax.plot(t, world.speed(t), label='expert speed (m/s)')
    for key, colour in (('trigger_time', 'tab:orange'), ('onset_time', 'tab:red')):
        if world.hazard.get(key) is not None:
            ax.axvline(world.hazard[key], color=colour, ls='--', label=key.replace('_', ' '))
    ax.set_xlabel('t (s)')
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title(f'collisions: {len(world.collisions)}', fontsize=8)
    fig.suptitle(f'family {world.family} (seed {seed}): {_hazard_line(world.hazard)}',
                 fontsize=10)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(png_path, lambda tmp: fig.savefig(tmp, format='png', dpi=70))
    plt.close(fig)
    return png_path


def _hazard_line(hazard: dict) -> str:
    keys = ('trigger_time', 'onset_time', 'ttc_at_onset_s', 'speed_at_onset')
    parts = [f'{k} {hazard[k]:.2f}' for k in keys
             if isinstance(hazard.get(k), (int, float)) and np.isfinite(hazard[k])]
    return ', '.join(parts) or 'no hazard'
