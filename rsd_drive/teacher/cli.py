"""``rsd-drive label BAG... --out DIR``: label drives with the teacher; build the training index.

Writes OUT/index (training index), OUT/labels/<bag> (label bags for RViz), OUT/previews/<bag>.png
and OUT/summary.json; prints a summary with skip counts per reason. Exits non-zero if any bag
failed (the others still finish). Rerunning on the same OUT resumes where a killed run stopped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rsd_drive.teacher.config import BACKENDS, TeacherFile


def _image_size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'--image-size wants HxW (e.g. 224x224), got {text!r}')
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError('--image-size must be positive')
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bags', nargs='+', metavar='BAG',
                        help='rosbag2 drives (directories, .mcap or .db3 files)')
    parser.add_argument('--out', required=True, help='output directory (resumable)')
    parser.add_argument('--backend', choices=BACKENDS,
                        help='teacher backend (default: teacher.backend of --config)')
    parser.add_argument('--model-dir', help='local model directory of the backend (vlm, '
                                            'detector+vlm: the VLM; clipseg: CLIPSeg)')
    parser.add_argument('--served', metavar='BASE_URL',
                        help='vlm, detector+vlm: ask the VLM behind this OpenAI-compatible '
                             'server (e.g. http://127.0.0.1:8000/v1; teacher.runtime served, '
                             'the rest from teacher.served of --config)')
    parser.add_argument('--served-model', help='with --served: the served model name')
    parser.add_argument('--detector-dir', help='detector+vlm: local OWL-ViT/OWLv2 directory')
    parser.add_argument('--workers', type=int, help='bags labelled in parallel '
                                                    '(default: label.workers of --config)')
    parser.add_argument('--ray-address', metavar='local|auto|HOST:PORT',
                        help='run the bags as Ray tasks: local = a private cluster on this '
                             'machine (127.0.0.1 only, --workers CPUs), auto = the cluster '
                             '`ray start` runs here, HOST:PORT = that head node. The bags, OUT '
                             'and the model directories must be shared storage (same paths on '
                             'every node)')
    parser.add_argument('--gpus-per-task', type=float,
                        help='with --ray-address: GPUs each bag task asks Ray for (default: 1 '
                             'when teacher.device is cuda, else 0)')
    parser.add_argument('--max-retries', type=int, default=2,
                        help='with --ray-address: times Ray reruns a bag whose worker died '
                             '(default: %(default)s); the rerun resumes from committed chunks')
    parser.add_argument('--config', help='teacher config (default: config/teacher.yaml)')
    parser.add_argument('--dataset-config', help='dataset config (default: label.dataset_config,'
                                                 ' else config/dataset.yaml)')
    parser.add_argument('--model-config', help='ModelConfig YAML: model input size and risk '
                                               'grid (default: ModelConfig defaults)')
    parser.add_argument('--image-size', type=_image_size, metavar='HxW',
                        help='image size in the index (default: the model input size)')
    parser.add_argument('--chunk-frames', type=int, help='frames per index shard / resume unit')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')


def build_spec(args, config: TeacherFile):
    """JobSpec from the config file with the command line's overrides."""
    from rsd_drive.data.bag import DatasetConfig
    from rsd_drive.model.config import ModelConfig
    from rsd_drive.teacher.job import make_spec

    teacher, label = config.teacher, config.label
    if args.backend:
        teacher.backend = args.backend
    if args.model_dir:
        teacher.model_dir = args.model_dir
    if args.served:
        teacher.runtime, teacher.served.base_url = 'served', args.served
    if args.served_model:
        teacher.served.model = args.served_model
    if args.detector_dir:
        teacher.detector_dir = args.detector_dir
    dataset = DatasetConfig.from_yaml(args.dataset_config or label.dataset_config or None)
    model_path = args.model_config or label.model_config
    model = ModelConfig.from_yaml(model_path) if model_path else None
    image_hw = args.image_size or (tuple(label.image_size) if label.image_size else None)
    chunk = args.chunk_frames or label.chunk_frames
    if chunk <= 0:
        raise ValueError('--chunk-frames must be positive')
    return make_spec(args.out, teacher, dataset, model, image_hw, chunk)


def format_summary(summary) -> str:
    lines = [f'{"bag":<28} {"status":<13} {"labelled":>8} {"seen":>6} {"seconds":>8}  skipped']
    for b in summary.bags:
        skipped = b.get('skipped') or {}
        skip_text = ', '.join(f'{k}={v}' for k, v in sorted(skipped.items())) or '-'
        lines.append(f'{b["bag_id"]:<28} {b["status"]:<13} {b.get("frames_labelled", 0):>8} '
                     f'{b.get("frames_seen", 0):>6} {b.get("seconds", 0):>8.1f}  {skip_text}')
        for key in ('bad_messages', 'rejected'):
            if b.get(key):
                lines.append(f'{"":<28} {key}: ' + ', '.join(
                    f'{k}={v}' for k, v in sorted(b[key].items())))
        if b['status'] == 'failed':
            lines.append(f'{"":<28} error: {b.get("error")}')
        for f in (b.get('failed_frames') or [])[:5]:
            lines.append(f'{"":<28} not labelled (next run retries): frame {f["seq"]} '
                         f'@ {f["stamp_ns"]} ns: {f["reason"]}')
    lines.extend(served_lines(summary))
    lines.append(f'{len(summary.bags)} bags, {summary.frames_labelled} frames labelled, '
                 f'{len(summary.failed)} failed, {summary.seconds:.1f} s')
    return '\n'.join(lines)


def served_lines(summary) -> list:
    """The served teacher's totals: requests sent, cache hits, tokens, seconds per frame."""
    from collections import Counter

    stats = Counter()
    for b in summary.bags:
        stats.update(b.get('teacher_stats') or {})
    if not stats:
        return []
    frames = max(1, summary.frames_labelled)
    failed = sum(len(b.get('failed_frames') or []) for b in summary.bags)
    errors = ', '.join(f'{k[6:]}={v}' for k, v in sorted(stats.items())
                       if k.startswith('error:')) or '-'
    return [f'served teacher: {stats["requests"]} requests sent, {stats["cache_hits"]} cache '
            f'hits, {stats["tokens_in"]} tokens in / {stats["tokens_out"]} out, '
            f'{summary.seconds / frames:.3f} s per frame, {stats["retries"]} retries '
            f'({errors}), {failed} frames left for the next run']


def run(args) -> int:
    from rsd_drive.teacher.job import run_job

    try:
        config = TeacherFile.load(args.config)
        spec = build_spec(args, config)
    except (ValueError, FileNotFoundError) as exc:
        print(f'rsd-drive label: {exc}', file=sys.stderr)
        return 2
    workers = args.workers if args.workers is not None else config.label.workers
    if workers <= 0:
        print('rsd-drive label: --workers must be positive', file=sys.stderr)
        return 2
    gpus = args.gpus_per_task
    if gpus is None:
        gpus = 1.0 if spec.teacher_config.device.startswith('cuda') else 0.0
    if gpus < 0 or args.max_retries < 0:
        print('rsd-drive label: --gpus-per-task and --max-retries must not be negative',
              file=sys.stderr)
        return 2
    try:
        summary = run_job(args.bags, spec, workers=workers, ray_address=args.ray_address,
                          show_progress=not args.no_progress, gpus_per_task=gpus,
                          max_retries=args.max_retries)
    except (RuntimeError, ConnectionError) as exc:  # no ray installed, no cluster there
        print(f'rsd-drive label: {exc}', file=sys.stderr)
        return 2
    print(format_summary(summary))
    print(f'index: {Path(args.out) / "index"}   label bags: {Path(args.out) / "labels"}   '
          f'previews: {Path(args.out) / "previews"}')
    incomplete = any(b.get('failed_frames') for b in summary.bags)
    return 1 if summary.failed or incomplete else 0
