"""``rsd-drive scenario``: generate synthetic drives as rosbag2 bags."""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from rsd_drive.scenario.config import (FAMILY_CHOICES, STORAGES, ScenarioConfig,
                                       default_config_path)
from rsd_drive.scenario.preview import save_contact_sheet, save_family_sheet
from rsd_drive.scenario.record import drive_name, generate_drive


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', type=Path, required=True,
                        help='output directory; drive i is written to OUT/drive_<seed+i>')
    parser.add_argument('--seed', type=int, default=0, help='seed of the first drive (default 0)')
    parser.add_argument('--count', type=int, default=1, help='number of drives (default 1)')
    parser.add_argument('--config', type=Path, default=None,
                        help='scenario YAML (default: the package config/scenario.yaml)')
    parser.add_argument('--duration', type=float, default=None,
                        help='seconds per drive (overrides the config)')
    parser.add_argument('--compressed', action='store_true',
                        help='record JPEG CompressedImage instead of raw rgb8 Image')
    parser.add_argument('--storage', choices=STORAGES, default=None,
                        help='rosbag2 storage plugin (overrides the config)')
    parser.add_argument('--family', choices=FAMILY_CHOICES, default=None,
                        help='scenario family (default: the config\'s, mixed: one family drawn '
                             'per seed)')
    parser.add_argument('--contact-sheet', action='store_true',
                        help='also write OUT/drive_<seed>.png: all cameras at the middle frame')
    parser.add_argument('--family-sheet', action='store_true',
                        help='also write OUT/drive_<seed>_<family>.png: front camera frames '
                             'around the hazard and a bird\'s-eye view of the expert\'s drive')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')


def load_config(args: argparse.Namespace) -> ScenarioConfig:
    """The YAML config with the command line's overrides applied."""
    path = args.config or default_config_path()
    cfg = ScenarioConfig.from_yaml(path) if path else ScenarioConfig()
    overrides = {'duration_s': args.duration, 'storage': args.storage,
                 'compressed': True if args.compressed else None,
                 'family': getattr(args, 'family', None)}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def run(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise SystemExit('--count must be >= 1')
    cfg = load_config(args)
    for i in range(args.count):
        seed = args.seed + i
        t0 = time.perf_counter()
        s = generate_drive(args.out / drive_name(seed), seed, cfg, progress=not args.no_progress)
        intents = ', '.join(f'{k} {v}' for k, v in sorted(s.intents.items()))
        print(f'wrote {s.path}: family {s.family}, {s.frames} frames x {len(cfg.cameras)} '
              f'cameras, {s.duration_s:g} s, {s.n_objects} objects, intents ({intents}), '
              f'expert min speed {s.min_speed:.1f} m/s, {len(s.collisions)} collisions, '
              f'{s.size_bytes / 1e6:.1f} MB in {time.perf_counter() - t0:.1f} s', flush=True)
        if args.contact_sheet:
            png = save_contact_sheet(s.path, args.out / f'{drive_name(seed)}.png')
            print(f'wrote {png}', flush=True)
        if args.family_sheet:
            png = save_family_sheet(args.out / f'{drive_name(seed)}_{s.family}.png', seed, cfg)
            print(f'wrote {png}', flush=True)
    return 0
