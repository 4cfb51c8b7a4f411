"""The training loop: AdamW, warm-up + cosine, clipping, AMP on CUDA, DDP, exact resume.

Loss: ``L = rfs_surrogate_loss + lambda * risk_distillation_loss`` (rsd_drive.losses). Only the
adapter, planner, GRU decoder and RiskHead train; the frozen encoder either ran once per frame
into the feature cache (default) or runs inside the loop (``encoder_in_loop``).

Run directory::

    OUT/train.yaml                      the configs of the run (model: + train:)
    OUT/run_info.json                   world size, backend, device, steps per epoch, ...
    OUT/train_log.csv, OUT/val_log.csv  one row per step / per validation
    OUT/tensorboard/                    the same curves for TensorBoard
    OUT/checkpoints/step-00000500/      RiskPlanner.save_pretrained + training_state.*
    OUT/best/                           best validation RFS so far (+ metrics.json)

Checkpoints are written to a temporary directory and renamed into place, so a killed run leaves
only whole checkpoints; ``resume`` continues from the newest one with the same optimizer,
scheduler, loss scaler, step, data position and RNG states, so the next step's loss is the one
an uninterrupted run would have had. Training state is stored as safetensors (tensors) + JSON
(everything else): no pickle anywhere.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from rsd_drive.data.index import FrameIndex
from rsd_drive.losses import (loss_components, rfs_surrogate_loss, risk_distillation_loss,
                              total_loss)
from rsd_drive.model.config import ModelConfig
from rsd_drive.model.planner import RiskPlanner
from rsd_drive.train import augment
from rsd_drive.train.cache import FeatureCache, encoder_fingerprint, training_encoder
from rsd_drive.train.config import TrainConfig, save_config
from rsd_drive.train.dataset import FrameDataset, check_index_fits
from rsd_drive.train.evaluate import model_outputs, per_sample_losses, predict, summarise

STATE_TENSORS, STATE_JSON = 'training_state.safetensors', 'training_state.json'
CHECKPOINT_PREFIX = 'step-'
TRAIN_COLUMNS = ('step', 'epoch', 'lr', 'loss', 'plan_loss', 'risk_loss', 'grad_norm',
                 'samples_per_s', 'elapsed_s')
VAL_COLUMNS = ('step', 'val_loss', 'val_plan_loss', 'val_risk_loss', 'rfs', 'rfs_cv', 'ade_3s',
               'ade_5s', 'fde', 'ade_5s_cv', 'risk_pearson', 'risk_kl', 'risk_topk_recall')
PATH_KEYS = ('index', 'val_index', 'out', 'cache_dir')


# -- state without pickle -----------------------------------------------------------------------
def _flatten_state(obj, tensors: dict, path: str = 's'):
    """A nested state (dicts, lists, tuples, tensors, numpy arrays, scalars) -> JSON-able value,
    with tensors and arrays moved into ``tensors`` under unique names."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {'__tensor__': path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(np.frombuffer(np.ascontiguousarray(obj).tobytes(),
                                                       dtype=np.uint8).copy())
        return {'__ndarray__': path, 'dtype': obj.dtype.str, 'shape': list(obj.shape)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {'__dict__': {k: _flatten_state(v, tensors, f'{path}.{k}')
                                 for k, v in obj.items()}}
        return {'__items__': [[_flatten_state(k, tensors, f'{path}.k{i}'),
                               _flatten_state(v, tensors, f'{path}.v{i}')]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten_state(v, tensors, f'{path}.{i}') for i, v in enumerate(obj)]
        return {'__tuple__': items} if isinstance(obj, tuple) else items
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f'cannot store {type(obj).__name__} at {path} in a training state')


def _unflatten_state(value, tensors: dict):
    if isinstance(value, list):
        return [_unflatten_state(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if '__tensor__' in value:
        return tensors[value['__tensor__']]
    if '__ndarray__' in value:
        raw = tensors[value['__ndarray__']].numpy().tobytes()
        return np.frombuffer(raw, dtype=np.dtype(value['dtype'])).reshape(value['shape']).copy()
    if '__dict__' in value:
        return {k: _unflatten_state(v, tensors) for k, v in value['__dict__'].items()}
    if '__items__' in value:
        return {_unflatten_state(k, tensors): _unflatten_state(v, tensors)
                for k, v in value['__items__']}
    if '__tuple__' in value:
        return tuple(_unflatten_state(v, tensors) for v in value['__tuple__'])
    raise ValueError(f'unrecognised training state entry {sorted(value)}')


def save_training_state(directory: Path, state: dict) -> None:
    from safetensors.torch import save_file

    tensors = {}
    flat = _flatten_state(state, tensors)
    save_file(tensors, str(directory / STATE_TENSORS))
    (directory / STATE_JSON).write_text(json.dumps(flat))


def load_training_state(directory: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(directory / STATE_TENSORS))
        flat = json.loads((directory / STATE_JSON).read_text())
    except (OSError, SafetensorError, ValueError) as e:
        raise ValueError(f'{directory}: cannot read the training state ({e})') from e
    return _unflatten_state(flat, tensors)


def rng_state() -> dict:
    state = {'python': random.getstate(), 'numpy': np.random.get_state(),
             'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state['numpy']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state['cuda']))


# -- small pieces -------------------------------------------------------------------------------
def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Schedule:
    """The schedule as an object, not a lambda: LambdaLR's state_dict then records its
    parameters (plain numbers), so a resumed run checks out the same schedule."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.warmup, self.total, self.min_ratio)


class PlanStep(nn.Module):
    """The trainable forward pass as a module, so DDP sees a ``forward`` (features or images)."""

    def __init__(self, model: RiskPlanner, autocast_dtype):
        super().__init__()
        self.model, self.autocast_dtype = model, autocast_dtype

    def forward(self, batch):
        device = next(p for p in self.model.parameters() if p.requires_grad).device
        return model_outputs(self.model, batch, device, self.autocast_dtype)


def batch_losses(waypoints, risk, batch, cfg: TrainConfig, frequency: float, weights=None):
    """(total, plan, risk) scalars for a batch (computed in fp32 whatever the autocast).
    ``weights`` [B]: per-frame plan-loss weights (a weighted mean), None for a plain mean."""
    device = waypoints.device
    future = batch['future'].to(device)
    plan = rfs_surrogate_loss(waypoints.float(), future, batch['init_speed'].to(device),
                              frequency, reduction='none' if weights is not None else 'mean')
    if weights is not None:
        weights = weights.to(device)
        plan = (plan * weights).sum() / weights.sum()
    risk_loss = risk_distillation_loss(risk.float(), batch['risk'].to(device), cfg.risk_loss)
    return total_loss(plan, risk_loss, cfg.risk_weight), plan, risk_loss


def build_model(model_cfg: ModelConfig, train_cfg: TrainConfig) -> RiskPlanner:
    """Frozen encoder from ``encoder_seed``, trainable parts from ``seed``."""
    encoder = training_encoder(model_cfg, train_cfg.encoder_seed)
    torch.manual_seed(train_cfg.seed)
    return RiskPlanner(model_cfg, encoder=encoder)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError('train.device is cuda but no CUDA device is available')
        return torch.device('cuda', local_rank)
    return torch.device(name)


class CsvLog:
    """Append-only CSV; on resume, rows after the resumed step are dropped (atomically)."""

    def __init__(self, path: Path, columns, keep_until_step: int | None):
        self.path, self.columns = path, list(columns)
        rows = []
        if keep_until_step is not None and path.is_file():
            with open(path, newline='') as fh:
                rows = [r for r in csv.DictReader(fh) if int(float(r['step'])) <= keep_until_step]
        tmp = path.with_name(path.name + '.tmp')
        with open(tmp, 'w', newline='') as fh:
            writer = csv.DictWriter(fh, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)

    def write(self, row: dict) -> None:
        with open(self.path, 'a', newline='') as fh:
            csv.DictWriter(fh, self.columns).writerow(
                {k: (f'{v:.8g}' if isinstance(v, float) else v) for k, v in row.items()})


def latest_checkpoint(out: Path) -> Path | None:
    directory = Path(out) / 'checkpoints'
    if not directory.is_dir():
        return None
    done = sorted(p for p in directory.iterdir()
                  if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
                  and (p / STATE_JSON).is_file())
    return done[-1] if done else None


class Distributed:
    """torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) or a single process."""

    def __init__(self, device_name: str):
        self.world_size = int(os.environ.get('WORLD_SIZE', '1'))
        self.rank = int(os.environ.get('RANK', '0'))
        self.local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        self.device = resolve_device(device_name, self.local_rank)
        self.backend = None
        self.owns_group = False
        if self.world_size > 1:
            self.backend = 'nccl' if self.device.type == 'cuda' else 'gloo'
            if self.device.type == 'cuda':
                torch.cuda.set_device(self.device)
            if not dist.is_initialized():
                dist.init_process_group(self.backend)
                self.owns_group = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def mean(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64,
                         device=self.device if self.backend == 'nccl' else 'cpu')
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


# -- the trainer --------------------------------------------------------------------------------
class Trainer:
    """Train a RiskPlanner on a training index; see the module docstring for the run layout."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 encoder_in_loop: bool = False, resume: bool = False, progress: bool = True):
        if not train_cfg.index or not train_cfg.out:
            raise ValueError('training needs train.index and train.out (or --index/--out)')
        self.out = Path(train_cfg.out)
        self.encoder_in_loop, self.progress = encoder_in_loop, progress
        self.resume_from = latest_checkpoint(self.out) if resume else None
        if resume and self.resume_from is None:
            raise FileNotFoundError(f'{self.out}: no checkpoint to resume from')
        if not resume and latest_checkpoint(self.out) is not None:
            raise FileExistsError(f'{self.out} already holds checkpoints; pass --resume to '
                                  f'continue that run or choose another --out')
        if self.resume_from is not None:
            model_cfg, train_cfg = self._configs_of_checkpoint(model_cfg, train_cfg)
        model_cfg = _absolute_encoder_path(model_cfg)
        self.model_cfg, self.cfg = model_cfg, train_cfg
        self.dist = Distributed(train_cfg.device)
        self.device = self.dist.device

        self.train_index = FrameIndex(train_cfg.index)
        check_index_fits(self.train_index, model_cfg)
        self.val_index = FrameIndex(train_cfg.val_index) if train_cfg.val_index else None
        if self.val_index is not None:
            check_index_fits(self.val_index, model_cfg)

        self.model = build_model(model_cfg, train_cfg).to(self.device)
        self.amp_dtype = None
        if train_cfg.amp and self.device.type == 'cuda':
            self.amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported()
                              else torch.float16)
        self.step_module = PlanStep(self.model, self.amp_dtype)
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == 'cuda' else None
            self.step_module = nn.parallel.DistributedDataParallel(self.step_module,
                                                                   device_ids=ids)
        self.train_set = self._dataset(self.train_index)
        self.val_set = self._dataset(self.val_index) if self.val_index is not None else None
        self.sampler = DistributedSampler(self.train_set, num_replicas=self.dist.world_size,
                                          rank=self.dist.rank, shuffle=True,
                                          seed=train_cfg.seed, drop_last=False)
        self.steps_per_epoch = math.ceil(len(self.sampler) / train_cfg.batch_size)
        self.total_steps = (train_cfg.max_steps if train_cfg.max_steps > 0
                            else train_cfg.epochs * self.steps_per_epoch)

        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{'params': decay, 'weight_decay': train_cfg.weight_decay},
             {'params': no_decay, 'weight_decay': 0.0}], lr=train_cfg.lr, betas=train_cfg.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _Schedule(train_cfg.warmup_steps, self.total_steps,
                                      train_cfg.min_lr_ratio))
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp_dtype == torch.float16)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_rfs = -math.inf
        self.running = {}
        self.epoch_times = []
        if self.resume_from is not None:
            self._load_checkpoint(self.resume_from)
        else:
            torch.manual_seed(train_cfg.seed)
            np.random.seed(train_cfg.seed % 2 ** 32)
            random.seed(train_cfg.seed)
        self._open_logs()

    # -- setup helpers ------------------------------------------------------------------------
    def _configs_of_checkpoint(self, model_cfg, train_cfg):
        """On resume the checkpoint's configs rule (so the run continues exactly); the paths
        given now still apply. Differences are reported."""
        from rsd_drive.train.config import load_config

        saved_model, saved_train = load_config(self.resume_from / 'train.yaml')
        changed = [k for k, v in train_cfg.to_dict().items()
                   if k not in PATH_KEYS and saved_train.to_dict()[k] != v]
        if saved_model.to_dict() != _absolute_encoder_path(model_cfg).to_dict():
            changed.append('model')
        if changed:
            print(f"resume: using the checkpoint's values for {changed} "
                  f'({self.resume_from})', file=sys.stderr)
        paths = {k: getattr(train_cfg, k) for k in PATH_KEYS}
        return saved_model, replace(saved_train, **paths)

    def _dataset(self, index):
        if self.encoder_in_loop:
            return FrameDataset(index, images=True, route_points=self.model_cfg.route_points)
        cache = FeatureCache(index, self.model.encoder, self.cfg.cache_dir)
        if self.dist.is_main and not cache.is_complete():
            cache.build(batch_size=max(1, self.cfg.batch_size), device=self.device,
                        progress=self.progress)
        self.dist.barrier()
        return FrameDataset(index, features=cache.reader(),
                            route_points=self.model_cfg.route_points)

    def _loader(self, dataset, batches):
        return DataLoader(dataset, batch_sampler=batches, num_workers=self.cfg.num_workers,
                          pin_memory=self.device.type == 'cuda',
                          generator=torch.Generator().manual_seed(self.cfg.seed))

    def _open_logs(self):
        self.tb = None
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        keep = self.step if self.resume_from is not None else None
        self.train_log = CsvLog(self.out / 'train_log.csv', TRAIN_COLUMNS, keep)
        self.val_log = CsvLog(self.out / 'val_log.csv', VAL_COLUMNS, keep)
        save_config(self.out / 'train.yaml', self.model_cfg, self.cfg)
        info = {'world_size': self.dist.world_size, 'backend': self.dist.backend,
                'device': str(self.device), 'amp_dtype': str(self.amp_dtype),
                'features': 'encoder in loop' if self.encoder_in_loop else 'cache',
                'train_frames': len(self.train_set),
                'val_frames': len(self.val_set) if self.val_set is not None else 0,
                'steps_per_epoch': self.steps_per_epoch, 'total_steps': self.total_steps,
                'parameters': self.model.parameter_counts(),
                'encoder_fingerprint': encoder_fingerprint(self.model.encoder)}
        _write_json(self.out / 'run_info.json', info)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / 'tensorboard'),
                                    purge_step=self.step if self.resume_from else None)
        except ImportError as e:  # tensorboard is in requirements; keep training without it
            print(f'tensorboard unavailable ({e}); logging CSV only', file=sys.stderr)

    # -- checkpoints --------------------------------------------------------------------------
    def _state(self) -> dict:
        return {'step': self.step, 'epoch': self.epoch, 'batch_in_epoch': self.batch_in_epoch,
                'best_rfs': self.best_rfs, 'running': dict(self.running),
                'world_size': self.dist.world_size,
                'encoder_fingerprint': encoder_fingerprint(self.model.encoder),
                'optimizer': self.optimizer.state_dict(),
                'scheduler': self.scheduler.state_dict(), 'scaler': self.scaler.state_dict(),
                'rng': rng_state()}

    def _write_model_dir(self, final: Path, extra=None) -> Path:
        """save_pretrained + train.yaml (+ extra files) into a temp dir, renamed into place."""
        tmp = final.with_name(f'.{final.name}.tmp')
        if tmp.exists():
            shutil.rmtree(tmp)
        self.model.save_pretrained(tmp)
        save_config(tmp / 'train.yaml', self.model_cfg, self.cfg)
        if extra:
            extra(tmp)
        old = final.with_name(f'.{final.name}.old')
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            shutil.rmtree(old)
        return final

    def save_checkpoint(self) -> Path | None:
        if not self.dist.is_main:
            return None
        directory = self.out / 'checkpoints'
        directory.mkdir(parents=True, exist_ok=True)
        state = self._state()
        path = self._write_model_dir(directory / f'{CHECKPOINT_PREFIX}{self.step:08d}',
                                     lambda tmp: save_training_state(tmp, state))
        kept = sorted(p for p in directory.iterdir()
                      if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))
        for stale in kept[:-self.cfg.keep_checkpoints]:
            shutil.rmtree(stale)
        return path

    def _load_checkpoint(self, path: Path) -> None:
        state = load_training_state(path)
        if state['encoder_fingerprint'] != encoder_fingerprint(self.model.encoder):
            raise ValueError(f'{path}: the frozen encoder differs from the one this run was '
                             f'trained with; cannot resume')
        if int(state['world_size']) != self.dist.world_size and self.dist.is_main:
            print(f'resume: {path} was written by {state["world_size"]} process(es), this run has '
                  f'{self.dist.world_size}: training continues, but the data order differs from '
                  f'an uninterrupted run', file=sys.stderr)
        self.model.load_trainable(path / 'model.safetensors')
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.scaler.load_state_dict(state['scaler'])
        self.step, self.epoch = int(state['step']), int(state['epoch'])
        self.batch_in_epoch, self.best_rfs = int(state['batch_in_epoch']), state['best_rfs']
        self.running = dict(state['running'])
        set_rng_state(state['rng'])

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> dict | None:
        """Validation loss and metrics (rank 0; other ranks wait). Saves best/ on a new best."""
        result = None
        if self.dist.is_main and self.val_set is not None:
            loader = DataLoader(self.val_set, batch_size=self.cfg.batch_size, shuffle=False,
                                num_workers=self.cfg.num_workers)
            pred = predict(self.model, loader, self.device, self.amp_dtype)
            freq = self.model_cfg.frequency_hz
            losses = per_sample_losses(pred, self.cfg.risk_loss, freq)
            report = summarise(pred, freq)
            m, cv = report['overall']['model'], report['overall']['cv']
            plan, risk = float(losses['plan'].mean()), float(losses['risk'].mean())
            result = {'step': self.step,
                      'val_loss': plan + self.cfg.risk_weight * risk,
                      'val_plan_loss': plan, 'val_risk_loss': risk, 'rfs': m['rfs'],
                      'rfs_cv': cv['rfs'], 'ade_3s': m['ade_3s'], 'ade_5s': m['ade_5s'],
                      'fde': m['fde'], 'ade_5s_cv': cv['ade_5s'],
                      'risk_pearson': m['risk_pearson'], 'risk_kl': m['risk_kl'],
                      'risk_topk_recall': m['risk_topk_recall']}
            self.val_log.write(result)
            if self.tb is not None:
                for k, v in result.items():
                    if k != 'step':
                        self.tb.add_scalar(f'val/{k}', v, self.step)
            if self.step > 0 and m['rfs'] > self.best_rfs:
                self.best_rfs = m['rfs']
                self._write_model_dir(self.out / 'best', lambda tmp: _write_json(
                    tmp / 'metrics.json', {**result, 'per_intent': report['per_intent']}))
        self.dist.barrier()
        return result

    # -- the loop -----------------------------------------------------------------------------
    def _epoch_batches(self) -> list[list[int]]:
        self.sampler.set_epoch(self.epoch)
        order = list(self.sampler)
        b = self.cfg.batch_size
        batches = [order[i:i + b] for i in range(0, len(order), b)]
        return batches[self.batch_in_epoch:]

    def _train_step(self, batch) -> dict:
        self.step_module.train()
        hz = self.model_cfg.frequency_hz
        weights = augment.onset_weights(batch, self.cfg.onset_weight, hz)  # the true history
        batch = augment.drop_route(batch, self.cfg.route_dropout)
        batch = augment.drop_history(batch, self.cfg.history_dropout, hz)
        waypoints, risk = self.step_module(batch)
        loss, plan, risk_loss = batch_losses(waypoints, risk, batch, self.cfg, hz, weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))
        else:
            grad_norm = float(torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        parts = loss_components(plan, risk_loss, self.cfg.risk_weight)
        total, plan_v, risk_v = self.dist.mean([parts['total'], parts['plan'], parts['risk']])
        return {'loss': total, 'plan_loss': plan_v, 'risk_loss': risk_v, 'lr': lr,
                'grad_norm': grad_norm}

    def fit(self, stop_after: int | None = None) -> dict:
        """Train to the configured length (or stop early after step ``stop_after``, leaving a
        checkpoint there, as an interrupted run would). Returns a summary dict."""
        from tqdm import tqdm

        cfg, start_step, t0 = self.cfg, self.step, time.perf_counter()
        first_val = self.validate() if self.step == 0 else None
        if self.step >= self.total_steps and self.dist.is_main:
            print(f'{self.out}: the run is already complete ({self.step} steps)', file=sys.stderr)
        bar = tqdm(total=self.total_steps, initial=self.step, desc='train', unit='step',
                   disable=not (self.progress and self.dist.is_main), dynamic_ncols=True)
        last_val, stopped = None, False
        try:
            while self.step < self.total_steps and not stopped:
                epoch_start = time.perf_counter()
                batches = self._epoch_batches()
                full_epoch = self.batch_in_epoch == 0
                for batch in self._loader(self.train_set, batches):
                    t_step = time.perf_counter()
                    row = self._train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    for k in ('loss', 'plan_loss', 'risk_loss'):
                        self.running[k] = (row[k] if k not in self.running
                                           else 0.9 * self.running[k] + 0.1 * row[k])
                    if self.dist.is_main:
                        n = len(batch['frame']) * self.dist.world_size
                        self.train_log.write({
                            'step': self.step, 'epoch': self.epoch, **row,
                            'samples_per_s': n / max(time.perf_counter() - t_step, 1e-9),
                            'elapsed_s': time.perf_counter() - t0})
                        if self.tb is not None and (cfg.log_every == 0
                                                    or self.step % max(cfg.log_every, 1) == 0):
                            for k in ('loss', 'plan_loss', 'risk_loss', 'lr', 'grad_norm'):
                                self.tb.add_scalar(f'train/{k}', row[k], self.step)
                        bar.set_postfix(loss=f'{self.running["loss"]:.3f}',
                                        plan=f'{self.running["plan_loss"]:.3f}',
                                        risk=f'{self.running["risk_loss"]:.4f}', refresh=False)
                    bar.update(1)
                    done = self.step >= self.total_steps
                    stopped = stop_after is not None and self.step >= stop_after
                    if cfg.eval_every and self.step % cfg.eval_every == 0 and not done:
                        last_val = self.validate()
                    if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
                            and not done) or (stopped and not done):
                        self.save_checkpoint()
                        self.dist.barrier()
                    if done or stopped:
                        break
                if self.batch_in_epoch >= self.steps_per_epoch:
                    if full_epoch:
                        self.epoch_times.append(time.perf_counter() - epoch_start)
                    self.epoch += 1
                    self.batch_in_epoch = 0
            if self.step >= self.total_steps and self.step > start_step:
                last_val = self.validate()
                self.save_checkpoint()
                self.dist.barrier()
        finally:
            bar.close()
            if self.tb is not None:
                self.tb.flush()
        summary = {'steps': self.step, 'steps_this_run': self.step - start_step,
                   'seconds': time.perf_counter() - t0, 'epoch_times': self.epoch_times,
                   'first_validation': first_val, 'last_validation': last_val,
                   'best_rfs': self.best_rfs if self.best_rfs > -math.inf else None,
                   'checkpoint': str(latest_checkpoint(self.out)) if self.dist.is_main else None,
                   'replicas_in_sync': self._replicas_in_sync()}
        if self.dist.is_main:
            _write_json(self.out / 'summary.json', summary)
        return summary

    def _replicas_in_sync(self) -> bool:
        """DDP sanity check: every process holds the same trainable weights."""
        if self.dist.world_size == 1:
            return True
        flat = torch.cat([p.detach().float().flatten() for p in self.model.parameters()
                          if p.requires_grad])
        lo, hi = flat.clone(), flat.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        return bool(torch.equal(lo, hi))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        self.dist.close()


def _absolute_encoder_path(model_cfg: ModelConfig) -> ModelConfig:
    """A relative encoder path in a training config means relative to the working directory;
    checkpoints would otherwise resolve it against themselves."""
    enc = model_cfg.encoder
    if enc.path and not enc.in_package and not Path(enc.path).is_absolute():
        cfg = ModelConfig.from_dict(model_cfg.to_dict())
        cfg.encoder.path = str(Path(enc.path).resolve())
        return cfg
    return model_cfg


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, encoder_in_loop: bool = False,
          resume: bool = False, progress: bool = True, stop_after: int | None = None) -> dict:
    """Build a Trainer, run it, release its resources; returns the summary."""
    trainer = Trainer(model_cfg, train_cfg, encoder_in_loop, resume, progress)
    try:
        return trainer.fit(stop_after)
    finally:
        trainer.close()
