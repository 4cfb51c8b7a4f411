"""``rsd-drive train``: train on cached frozen features (default) or with the encoder in the loop.

Single process: ``rsd-drive train --config config/train.yaml --index DIR --out RUN``.
Several GPUs or nodes: the same arguments under torchrun, e.g.
``torchrun --nproc_per_node 4 -m rsd_drive.cli train ...`` (DDP: NCCL on GPUs, gloo on CPUs).
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace


def add_arguments(parser) -> None:
    parser.add_argument('--config', default='config/train.yaml',
                        help='YAML with model: and train: sections (default: %(default)s)')
    parser.add_argument('--index', help='training index (overrides train.index)')
    parser.add_argument('--val-index', help='validation index (overrides train.val_index)')
    parser.add_argument('--out', help='run directory (overrides train.out)')
    parser.add_argument('--cache-dir', help='feature cache root (default: INDEX/features)')
    parser.add_argument('--resume', action='store_true',
                        help='continue the run in --out from its newest checkpoint')
    parser.add_argument('--encoder-in-loop', action='store_true',
                        help='run the frozen encoder every step instead of reading the cache')
    parser.add_argument('--max-steps', type=int, help='override train.max_steps')
    parser.add_argument('--epochs', type=int, help='override train.epochs')
    parser.add_argument('--seed', type=int, help='override train.seed')
    parser.add_argument('--device', help='override train.device (auto | cpu | cuda)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def run(args) -> int:
    from rsd_drive.train.config import load_config
    from rsd_drive.train.trainer import train

    try:
        model_cfg, train_cfg = load_config(args.config)
        overrides = {k: v for k, v in (('index', args.index), ('val_index', args.val_index),
                                       ('out', args.out), ('cache_dir', args.cache_dir),
                                       ('max_steps', args.max_steps), ('epochs', args.epochs),
                                       ('seed', args.seed), ('device', args.device))
                     if v is not None}
        train_cfg = replace(train_cfg, **overrides)
        summary = train(model_cfg, train_cfg, encoder_in_loop=args.encoder_in_loop,
                        resume=args.resume, progress=not args.no_progress)
    except (OSError, ValueError) as e:  # names the file: missing, existing run, unwritable
        print(f'rsd-drive train: {e}', file=sys.stderr)
        return 2
    if summary.get('checkpoint'):
        last = summary.get('last_validation') or {}
        print(json.dumps({k: summary[k] for k in ('steps', 'seconds', 'best_rfs', 'checkpoint')}
                         | {k: last.get(k) for k in ('val_loss', 'rfs', 'rfs_cv')}))
    return 0
