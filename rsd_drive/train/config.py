"""Training configuration: one dataclass validated on construction, YAML round trip.

The YAML file (``config/train.yaml``) has two sections: ``model:`` holds ModelConfig fields (the
architecture), ``train:`` holds TrainConfig fields (the optimisation). Command-line paths
(``--index``, ``--val-index``, ``--out``) override the ``train:`` paths.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from rsd_drive import build_config
from rsd_drive.losses import RISK_LOSS_KINDS
from rsd_drive.model.config import ModelConfig

DEVICES = ('auto', 'cpu', 'cuda')


@dataclass
class TrainConfig:
    """How the adapter, planner, GRU decoder and RiskHead are trained.

    lr, weight_decay, betas: AdamW (weight decay on matrices only, not on biases/norms/queries).
    warmup_steps: linear warm-up from 0 to ``lr``; then cosine decay to ``min_lr_ratio * lr``.
    epochs, max_steps: length of the run; ``max_steps > 0`` wins over ``epochs``.
    batch_size: frames per optimizer step *per process* (DDP multiplies it by the world size).
    grad_clip: max global gradient norm (0 disables clipping).
    risk_loss: one of RISK_LOSS_KINDS (default kl_scale; l1 is RSD's, see README, Training
        notes); risk_weight: lambda in L = L_plan + lambda * L_risk (default 0.2).
    route_dropout: the fraction of training frames whose route mask is switched off (models with
        the route input), so one checkpoint plans with and without a route.
    history_dropout: the fraction of training frames whose past ego states are replaced by a
        steady history at the current speed (ChauffeurNet's past motion dropout), so braking
        must come from the scene, not from an ego that is already slowing (0 disables).
    onset_weight: the plan-loss weight of braking-onset frames (the expert's speed 2 s ahead
        >= 2 m/s below now, not yet slowing: ``rsd_drive.metrics.brake_groups``); 1 disables.
    seed: initialisation of the trainable parts and the data order.
    encoder_seed: initialisation of a randomly initialised encoder (``encoder.source: config``),
        kept apart from ``seed`` so the runs of an ablation share one frozen encoder and one
        feature cache.
    checkpoint_every, eval_every: in optimizer steps (0 disables; a final checkpoint and
        validation always happen at the end). log_every: TensorBoard scalars every N steps (the
        CSV log has every step).
    keep_checkpoints: the newest step checkpoints kept on disk (best/ is kept separately).
    amp: mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); CPU runs
        are always fp32.
    device: 'auto' (CUDA when available), 'cpu' or 'cuda'.
    num_workers: DataLoader worker processes.
    index, val_index: training and validation index directories; out: run directory;
        cache_dir: where frozen features are cached (default: ``<index>/features``).
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    epochs: int = 30
    max_steps: int = 0
    batch_size: int = 16
    grad_clip: float = 1.0
    risk_loss: str = 'kl_scale'
    risk_weight: float = 0.2
    route_dropout: float = 0.25
    history_dropout: float = 0.0
    onset_weight: float = 1.0
    seed: int = 0
    encoder_seed: int = 0
    checkpoint_every: int = 500
    eval_every: int = 250
    log_every: int = 10
    keep_checkpoints: int = 3
    amp: bool = True
    device: str = 'auto'
    num_workers: int = 0
    index: str | None = None
    val_index: str | None = None
    out: str | None = None
    cache_dir: str | None = None

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2:
            raise ValueError(f'train.betas needs two values, got {self.betas}')
        if self.risk_loss not in RISK_LOSS_KINDS:
            raise ValueError(f'train.risk_loss must be one of {RISK_LOSS_KINDS}, '
                             f'got {self.risk_loss!r}')
        if self.device not in DEVICES:
            raise ValueError(f'train.device must be one of {DEVICES}, got {self.device!r}')
        if not 0.0 <= self.route_dropout < 1.0:
            raise ValueError(f'train.route_dropout must be in [0, 1), got {self.route_dropout}')
        if not 0.0 <= self.history_dropout < 1.0:
            raise ValueError(f'train.history_dropout must be in [0, 1), got '
                             f'{self.history_dropout}')
        if self.onset_weight <= 0:
            raise ValueError(f'train.onset_weight must be positive, got {self.onset_weight}')
        for name in ('lr', 'batch_size'):
            if getattr(self, name) <= 0:
                raise ValueError(f'train.{name} must be positive, got {getattr(self, name)}')
        for name in ('weight_decay', 'warmup_steps', 'max_steps', 'grad_clip', 'risk_weight',
                     'checkpoint_every', 'eval_every', 'log_every', 'num_workers', 'epochs'):
            if getattr(self, name) < 0:
                raise ValueError(f'train.{name} must be >= 0, got {getattr(self, name)}')
        if self.max_steps == 0 and self.epochs == 0:
            raise ValueError('train: set epochs or max_steps (both are 0)')
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f'train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}')
        if self.keep_checkpoints < 1:
            raise ValueError(f'train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}')

    def to_dict(self) -> dict:
        d = asdict(self)
        d['betas'] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'TrainConfig':
        return build_config(cls, d, 'train')


def load_config(path) -> tuple[ModelConfig, TrainConfig]:
    """Read a YAML file with ``model:`` and ``train:`` sections."""
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or 'model' not in data or 'train' not in data:
        raise ValueError(f'{path}: expected a mapping with "model:" and "train:" sections')
    unknown = set(data) - {'model', 'train'}
    if unknown:
        raise ValueError(f'{path}: unknown top-level sections {sorted(unknown)}')
    try:
        return (ModelConfig.from_dict(data['model'] or {}),
                TrainConfig.from_dict(data['train'] or {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f'{path}: {e}') from e


def save_config(path, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Write both sections (atomically: temp file + rename)."""
    path = Path(path)
    text = yaml.safe_dump({'model': model_cfg.to_dict(), 'train': train_cfg.to_dict()},
                          sort_keys=False)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    tmp.replace(path)


# The command-line overrides of train: fields, one spelling for every CLI that loads a train
# config (rsd-drive train, ablate, bench train): field -> argparse keywords (--field-name).
OVERRIDE_FLAGS = {
    'index': dict(help='training index (overrides train.index)'),
    'val_index': dict(help='validation index (overrides train.val_index)'),
    'out': dict(help='run directory (overrides train.out)'),
    'cache_dir': dict(help='feature cache root (default: INDEX/features)'),
    'max_steps': dict(type=int, help='override train.max_steps'),
    'epochs': dict(type=int, help='override train.epochs'),
    'seed': dict(type=int, help='override train.seed'),
    'batch_size': dict(type=int, help='override train.batch_size'),
    'device': dict(help='override train.device (auto | cpu | cuda)'),
    'risk_weight': dict(type=float, help='override train.risk_weight (lambda)'),
    'history_dropout': dict(type=float, help='override train.history_dropout'),
    'onset_weight': dict(type=float, help='override train.onset_weight'),
}


def add_override_arguments(parser, fields) -> None:
    """``--<field>`` (underscores as dashes) for each of ``fields``, from OVERRIDE_FLAGS."""
    for name in fields:
        parser.add_argument('--' + name.replace('_', '-'), **OVERRIDE_FLAGS[name])


def apply_overrides(train_cfg: TrainConfig, args, fields) -> TrainConfig:
    """``train_cfg`` with every one of ``fields`` that ``args`` sets (not None) replaced."""
    from dataclasses import replace

    values = {name: getattr(args, name) for name in fields}
    return replace(train_cfg, **{k: v for k, v in values.items() if v is not None})
