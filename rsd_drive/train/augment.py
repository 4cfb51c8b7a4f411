"""What the trainer does to a batch before the loss: input dropouts and per-frame plan weights.

- ``drop_route``: the route mask switched off on a share of frames, so one checkpoint plans with
  and without a route.
- ``drop_history``: on a share of frames the past ego states are replaced by a steady history
  at the current speed ("past motion dropout", ChauffeurNet, Bansal et al. 2018). The history
  then cannot say that the ego is already slowing down, so braking has to be read from the scene
  (the copycat / inertia problem of behaviour cloning, de Haan et al. 2019, Codevilla et al. 2019).
  The current state (last row) is kept: the planner always knows its speed.
- ``onset_weights``: a per-frame weight on the plan loss for frames where the expert is about to
  brake and has not begun (:func:`rsd_drive.metrics.brake_groups`'s ``onset``). A weight reads
  the target (the logged future), never an input, so nothing leaks into what the model sees.

Each draws from torch's global generator only when it is switched on, so a run without them
draws the same numbers as before they existed.
"""
from __future__ import annotations

import numpy as np
import torch

from rsd_drive import metrics


def drop_route(batch: dict, p: float) -> dict:
    """``route_valid`` switched off on each frame with probability ``p``."""
    if 'route_valid' not in batch or p <= 0:
        return batch
    keep = torch.rand(batch['route_valid'].shape) >= p
    return {**batch, 'route_valid': batch['route_valid'] * keep.float()}


def steady_history(past_states: torch.Tensor, frequency: float) -> torch.Tensor:
    """[B, P, 4] (x, y, yaw, speed in base_link, last row now): the history of an ego that drove
    straight at its current speed, ending at the current state."""
    steps = past_states.shape[1]
    speed = past_states[:, -1, 3]
    ago = torch.arange(steps - 1, -1, -1, dtype=past_states.dtype) / frequency  # [P], s
    out = torch.zeros_like(past_states)
    out[..., 0] = -speed[:, None] * ago[None, :]
    out[..., 3] = speed[:, None]
    return out


def drop_history(batch: dict, p: float, frequency: float) -> dict:
    """``past_states`` replaced by :func:`steady_history` on each frame with probability ``p``."""
    if p <= 0:
        return batch
    past = batch['past_states']
    drop = torch.rand(past.shape[0]) < p
    if not bool(drop.any()):
        return batch
    past = torch.where(drop[:, None, None], steady_history(past, frequency), past)
    return {**batch, 'past_states': past}


def onset_weights(batch: dict, weight: float, frequency: float) -> torch.Tensor | None:
    """[B] plan-loss weights: ``weight`` on braking-onset frames, 1 elsewhere; None at 1.0."""
    if weight == 1.0:
        return None
    groups = metrics.brake_groups(batch['future'].numpy(), batch['init_speed'].numpy(),
                                  batch['past_states'][..., 3].numpy(), frequency)
    return torch.from_numpy(np.where(groups['onset'], weight, 1.0).astype(np.float32))
