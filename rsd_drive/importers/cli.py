"""``rsd-drive import FORMAT ...``: convert a public dataset scene into a rosbag2 (MCAP) recording
with the topics of a dataset config, as a vehicle would have recorded it.

Formats: ``dgp`` (TRI-ML DGP scenes, see rsd_drive/importers/dgp.py) and ``pandaset`` (PandaSet
sequences, rsd_drive/importers/pandaset.py). Another format is one more sub-parser here and one
module beside them with the same shape (shared pieces in rsd_drive/importers/common.py).
"""
from __future__ import annotations

import argparse
import logging
import math
import sys


def _camera_map(text: str) -> dict:
    """``CAMERA_01=front,CAMERA_05=front_left`` -> {'CAMERA_01': 'front', ...}."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(','))):
        dgp_name, sep, name = item.partition('=')
        if not sep or not dgp_name or not name:
            raise argparse.ArgumentTypeError(f'entry {item!r} is not DGP_NAME=name')
        out[dgp_name.strip()] = name.strip()
    return out


def add_arguments(parser) -> None:
    formats = parser.add_subparsers(dest='format', metavar='FORMAT', required=True)
    p = formats.add_parser('dgp', help='a TRI-ML DGP scene (JSON + JPEG)',
                           description='Convert a DGP scene into a rosbag2 (MCAP) directory: '
                                       'CompressedImage (original JPEG) + CameraInfo per camera, '
                                       '/tf_static, /tf + odometry from the ego poses, and the '
                                       '3D boxes as JSON on the objects topic.')
    p.add_argument('scene_dir', help='scene directory (holding scene_*.json), or a dataset root '
                                     'together with --scene')
    p.add_argument('--scene', help='scene sub-directory of a dataset root (e.g. scene_02)')
    p.add_argument('--out', required=True, help='bag directory to create (must not exist)')
    p.add_argument('--config', help='dataset config with topics and camera names '
                                    '(default: config/dgp_dataset.yaml)')
    p.add_argument('--camera-map', type=_camera_map, default=None,
                   help='DGP camera -> config camera names, e.g. CAMERA_01=front,CAMERA_09=back '
                        '(default: named by the direction each camera looks)')
    p.add_argument('--time-scale', default='auto',
                   help='factor from DGP stamps to nanoseconds: auto (detects the 100 ns clock '
                        'of some scenes), or a number such as 1 or 0.1')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')

    p = formats.add_parser('pandaset', help='a PandaSet sequence (JSON + JPEG)',
                           description='Convert a PandaSet sequence into a rosbag2 (MCAP) '
                                       'directory: CompressedImage (original JPEG, per-camera '
                                       'stamps) + CameraInfo per camera, /tf_static (mounts '
                                       'derived from the per-frame poses), /tf + odometry '
                                       '(base_link from the LiDAR pose), and the cuboids as '
                                       'JSON on the objects topic.')
    p.add_argument('seq_dir', help='sequence directory (camera/, lidar/, annotations/cuboids/)')
    p.add_argument('--out', required=True, help='bag directory to create (must not exist)')
    p.add_argument('--config', help='dataset config with topics and camera names '
                                    '(default: config/pandaset_dataset.yaml)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')


def run_pandaset(args) -> int:
    from rsd_drive.importers.pandaset import PandasetError, import_pandaset

    try:
        s = import_pandaset(args.seq_dir, args.out, dataset_config=args.config,
                            progress=not args.no_progress)
    except (PandasetError, FileExistsError) as e:
        print(f'import failed: {e}', file=sys.stderr)
        return 1
    cams = ', '.join(f'{name}={ps}' for name, ps in s.cameras.items())
    print(f'wrote {s.path}: sequence {s.sequence}, {s.images} images from {len(s.cameras)} '
          f'cameras ({cams}), {s.odometry} odometry, {s.object_frames} object frames '
          f'({s.objects} boxes), {s.duration_s:.2f} s')
    if s.forward_cosine is not None:
        print(f'base_link x vs direction of travel: cos {s.forward_cosine:.5f} '
              f'({math.degrees(math.acos(min(s.forward_cosine, 1.0))):.2f} deg)')
    print(f'base_link origin: {s.ground_height_m:.3f} m below the LiDAR pose origin (on the road '
          f'under the annotated road users)')
    print(f'sweep model: each frame\'s camera poses imply ego positions within '
          f'{s.sweep_residual_mm:.2f} mm of one velocity per sweep; odometry at the LiDAR stamps '
          f'and each sweep\'s first camera')
    print('camera mounts: deviation of the per-frame mounts from the static one')
    print(s.table())
    if s.skipped_cameras:
        print(f'skipped cameras not in the dataset config: {s.skipped_cameras}')
    return 0


def run(args) -> int:
    from rsd_drive.importers.dgp import DgpError, import_dgp

    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if args.format == 'pandaset':
        return run_pandaset(args)
    if args.format != 'dgp':
        print(f'unknown format {args.format!r}', file=sys.stderr)
        return 2
    scale = args.time_scale
    if scale != 'auto':
        try:
            scale = float(scale)
        except ValueError:
            print(f'--time-scale must be auto or a number, got {scale!r}', file=sys.stderr)
            return 2
    try:
        s = import_dgp(args.scene_dir, args.out, scene=args.scene, dataset_config=args.config,
                       camera_map=args.camera_map, time_scale=scale,
                       progress=not args.no_progress)
    except (DgpError, FileExistsError) as e:
        print(f'import failed: {e}', file=sys.stderr)
        return 1
    cams = ', '.join(f'{name}={dgp}' for name, dgp in s.cameras.items())
    print(f'wrote {s.path}: scene {s.scene}, {s.images} images from {len(s.cameras)} cameras '
          f'({cams}), {s.odometry} odometry, {s.object_frames} object frames, '
          f'{s.duration_s:.2f} s (time scale {s.time_scale:g})')
    if s.skipped_cameras:
        print(f'skipped cameras not in the dataset config: {s.skipped_cameras}')
    return 0
