"""``rsd-drive train``: train on cached frozen features (default) or with the encoder in the loop.

Single process: ``rsd-drive train --config config/train.yaml --index DIR --out RUN``.
Several GPUs or nodes: the same arguments under torchrun, e.g.
``torchrun --nproc_per_node 4 -m rsd_drive.cli train ...`` (DDP: NCCL on GPUs, gloo on CPUs).
Under torchrun the process group gets an explicit timeout (``--dist-timeout``) and, before
training, every rank encodes its own share of the missing feature cache (rsd_drive.train.cache),
so no rank waits idle for rank 0 to build it alone.
"""
from __future__ import annotations

import json
import os
import sys

from rsd_drive.train.config import add_override_arguments, apply_overrides

OVERRIDES = ('index', 'val_index', 'out', 'cache_dir', 'max_steps', 'epochs', 'seed', 'device',
             'risk_weight', 'history_dropout', 'onset_weight')


def add_arguments(parser) -> None:
    parser.add_argument('--config', default='config/train.yaml',
                        help='YAML with model: and train: sections (default: %(default)s)')
    add_override_arguments(parser, OVERRIDES)
    parser.add_argument('--resume', action='store_true',
                        help='continue the run in --out from its newest checkpoint')
    parser.add_argument('--encoder-in-loop', action='store_true',
                        help='run the frozen encoder every step instead of reading the cache')
    parser.add_argument('--dist-timeout', type=float, default=1800.0,
                        help='under torchrun: seconds a rank waits for the others (process group '
                             'timeout, default: %(default)s)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def prebuild_cache(model_cfg, train_cfg, progress: bool) -> None:
    """Under torchrun, before the Trainer opens them: the feature caches of the train and
    validation index, each rank encoding its own shards with the encoder training builds."""
    from rsd_drive.train.cache import FeatureCache, build_on_all_ranks, training_encoder
    from rsd_drive.train.trainer import _absolute_encoder_path, resolve_device

    device = resolve_device(train_cfg.device, int(os.environ.get('LOCAL_RANK', '0')))
    encoder = training_encoder(_absolute_encoder_path(model_cfg), train_cfg.encoder_seed)
    for index in (train_cfg.index, train_cfg.val_index):
        if index:
            build_on_all_ranks(FeatureCache(index, encoder, train_cfg.cache_dir),
                               batch_size=max(1, train_cfg.batch_size), device=device,
                               progress=progress)


def run(args) -> int:
    from rsd_drive.train.cache import CacheError, process_group
    from rsd_drive.train.config import load_config
    from rsd_drive.train.trainer import resolve_device, train

    try:
        model_cfg, train_cfg = load_config(args.config)
        train_cfg = apply_overrides(train_cfg, args, OVERRIDES)
        with process_group(resolve_device(train_cfg.device), args.dist_timeout):
            if int(os.environ.get('WORLD_SIZE', '1')) > 1 and not args.encoder_in_loop \
                    and not args.resume and train_cfg.index:
                prebuild_cache(model_cfg, train_cfg, progress=not args.no_progress)
            summary = train(model_cfg, train_cfg, encoder_in_loop=args.encoder_in_loop,
                            resume=args.resume, progress=not args.no_progress)
    except (OSError, ValueError, CacheError) as e:  # names the file: missing, existing, unwritable
        print(f'rsd-drive train: {e}', file=sys.stderr)
        return 2
    if summary.get('checkpoint'):
        last = summary.get('last_validation') or {}
        print(json.dumps({k: summary[k] for k in ('steps', 'seconds', 'best_rfs', 'checkpoint')}
                         | {k: last.get(k) for k in ('val_loss', 'rfs', 'rfs_cv')}))
    return 0
