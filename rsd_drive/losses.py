"""Training losses: RFS-shaped planning loss (FROST-Drive) and risk distillation loss (RSD).

The total objective is ``L = L_plan + lambda * L_risk`` (:func:`total_loss`). Trajectories are
in the vehicle frame (x forward, y left, metres); waypoint k lies at (k + 1) / frequency s.
"""
from typing import Dict, Optional, Union

import torch

from rsd_drive.metrics import (RFS_HORIZONS_S, RFS_LAT_THRESHOLDS, RFS_LNG_THRESHOLDS,
                               RFS_SPEED_HIGH, RFS_SPEED_LOW)

# Below 3 s the thresholds shrink in proportion to time, but never under this fraction of the
# 3 s value: the first waypoint (0.25 s) would otherwise be judged against ~8 cm.
MIN_THRESHOLD_FRACTION = 0.1
RISK_LOSS_KINDS = ('l1', 'mse', 'kl')
REDUCTIONS = ('mean', 'none')


def heading_directions(trajs: torch.Tensor) -> torch.Tensor:
    """Return unit longitudinal directions of trajectories [..., T, 2] -> [..., T, 2] (torch).

    Same rule as the official RFS (and :func:`rsd_drive.metrics.heading_directions`): the
    displacement from the previous point with the origin prepended; a zero displacement keeps
    the previous direction; (1, 0) if the trajectory has not moved yet. Vectorised with
    ``cummax`` over the index of the last step that moved, no Python loop.
    """
    prev = torch.cat([torch.zeros_like(trajs[..., :1, :]), trajs[..., :-1, :]], dim=-2)
    disp = trajs - prev
    moved = disp.norm(dim=-1) != 0  # exact zero test, as in the official metric
    steps = torch.arange(trajs.shape[-2], device=trajs.device).expand_as(moved)
    last_moved = torch.where(moved, steps, torch.full_like(steps, -1)).cummax(dim=-1).values
    carried = torch.gather(disp, -2, last_moved.clamp_min(0).unsqueeze(-1).expand_as(disp))
    forward = torch.zeros_like(carried)
    forward[..., 0] = 1.0
    direction = torch.where((last_moved < 0).unsqueeze(-1), forward, carried)
    return direction / direction.norm(dim=-1, keepdim=True)


def rfs_thresholds(steps: int, init_speed: torch.Tensor, frequency: float = 4):
    """Per-waypoint (lateral, longitudinal) thresholds [B, T] for the RFS surrogate.

    Our interpolation of the two official RFS trust-region sizes over the horizon (FROST-Drive
    says "interpolated" without giving the rule):

    * t in (0, 3] s: ``tau_3s * t / 3`` (a trust region growing from zero at the origin),
      clamped below at ``MIN_THRESHOLD_FRACTION * tau_3s`` so early waypoints cannot blow up;
    * t in [3, 5] s: linear from ``tau_3s`` to ``tau_5s``; beyond 5 s the same line continues;
    * everything times the official speed scale ``clip(0.5 + 0.5*(v0-1.4)/9.6, 0.5, 1)``.

    At 3 s and 5 s the thresholds equal the metric's exactly.
    """
    t3, t5 = RFS_HORIZONS_S
    time = torch.arange(1, steps + 1, dtype=init_speed.dtype, device=init_speed.device)
    time = time / frequency  # [T]
    base = torch.tensor([RFS_LAT_THRESHOLDS, RFS_LNG_THRESHOLDS], dtype=init_speed.dtype,
                        device=init_speed.device)  # [2 axes, 2 horizons]
    tau3, tau5 = base[:, :1], base[:, 1:]  # [2, 1]
    early = tau3 * torch.clamp(time / t3, min=MIN_THRESHOLD_FRACTION)
    late = tau3 + (tau5 - tau3) * (time - t3) / (t5 - t3)
    tau = torch.where(time <= t3, early, late)  # [2, T]
    scale = torch.clamp(
        0.5 + 0.5 * (init_speed - RFS_SPEED_LOW) / (RFS_SPEED_HIGH - RFS_SPEED_LOW), 0.5, 1.0)
    return scale[:, None] * tau[0], scale[:, None] * tau[1]


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == 'mean':
        return values.mean()
    if reduction == 'none':
        return values
    raise ValueError(f'unknown reduction {reduction!r}, valid: {REDUCTIONS}')


def rfs_surrogate_loss(pred: torch.Tensor, target: torch.Tensor,
                       init_speed: Union[torch.Tensor, float], frequency: float = 4,
                       reduction: str = 'mean') -> torch.Tensor:
    """FROST-Drive's RFS-shaped planning loss.

    Per waypoint the error ``pred - target`` is rotated into the target's heading frame
    (official RFS direction rule), each axis is divided by its speed-scaled threshold
    (:func:`rfs_thresholds`) and the larger of the two is taken; the cost is averaged over time
    (an L-infinity over axes, L1 over time). Unlike the metric there is no 0.1**(n-1) decay and
    no flat trust region: the loss keeps a gradient everywhere, and 1.0 means "on the trust
    region boundary" at every waypoint.

    Args:
        pred: [B, T, 2] predicted waypoints.
        target: [B, T, 2] reference waypoints (no gradient flows into the heading frame).
        init_speed: [B] (or a scalar) initial ego speed in m/s.
        frequency: waypoint rate in Hz.
        reduction: 'mean' -> scalar, 'none' -> [B].
    """
    if pred.ndim != 3 or pred.shape[-1] != 2 or pred.shape != target.shape or pred.shape[1] < 1:
        raise ValueError(
            f'pred and target must both have shape [B, T, 2], got {tuple(pred.shape)} and '
            f'{tuple(target.shape)}')
    speed = torch.as_tensor(init_speed, dtype=pred.dtype, device=pred.device)
    speed = speed.expand(pred.shape[0]) if speed.ndim == 0 else speed
    if speed.shape != (pred.shape[0],):
        raise ValueError(f'init_speed must have shape [B] = [{pred.shape[0]}], got '
                         f'{tuple(speed.shape)}')
    target = target.detach()  # the reference frame is data, not something to optimise
    lng_dir = heading_directions(target)  # [B, T, 2]
    lat_dir = torch.stack([-lng_dir[..., 1], lng_dir[..., 0]], dim=-1)
    err = pred - target
    lng = (err * lng_dir).sum(-1).abs()
    lat = (err * lat_dir).sum(-1).abs()
    tau_lat, tau_lng = rfs_thresholds(pred.shape[1], speed, frequency)
    cost = torch.maximum(lng / tau_lng, lat / tau_lat).mean(dim=1)  # [B]
    return _reduce(cost, reduction)


def _as_distribution(maps: torch.Tensor, eps: float) -> torch.Tensor:
    # eps keeps an all-zero map defined (uniform) and log() finite.
    flat = maps.flatten(1).clamp_min(0) + eps
    return flat / flat.sum(dim=1, keepdim=True)


def risk_distillation_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = 'l1',
                           eps: float = 1e-6, reduction: str = 'mean') -> torch.Tensor:
    """Distillation loss between the RiskHead's map and the teacher's risk map.

    Args:
        pred: [B, H, W] predicted risk *probabilities* in [0, 1] (the RiskHead's sigmoid output,
            not logits). Any [B, ...] shape works; everything after the batch axis is the map.
        target: teacher risk map in [0, 1], same shape.
        kind: 'l1' (RSD's choice) or 'mse', elementwise means; or 'kl', KL(target || pred)
            between the maps normalised to sum to 1 per sample (eps added to every cell), which
            only cares where the risk is, not how much.
        eps: smoothing for 'kl'.
        reduction: 'mean' -> scalar, 'none' -> [B].
    """
    if kind not in RISK_LOSS_KINDS:
        raise ValueError(f'unknown risk loss kind {kind!r}, valid: {RISK_LOSS_KINDS}')
    if pred.ndim < 2 or pred.shape != target.shape:
        raise ValueError(f'pred and target must both have shape [B, H, W], got '
                         f'{tuple(pred.shape)} and {tuple(target.shape)}')
    if kind == 'l1':
        per_sample = (pred - target).abs().flatten(1).mean(dim=1)
    elif kind == 'mse':
        per_sample = (pred - target).square().flatten(1).mean(dim=1)
    else:
        if eps <= 0:
            raise ValueError(f'eps must be positive, got {eps}')
        p = _as_distribution(pred, eps)
        t = _as_distribution(target.detach(), eps)
        per_sample = (t * (t.log() - p.log())).sum(dim=1)
    return _reduce(per_sample, reduction)


def total_loss(plan_loss: torch.Tensor, risk_loss: Optional[torch.Tensor],
               risk_weight: float) -> torch.Tensor:
    """``L = L_plan + lambda * L_risk``, the single place the two objectives are combined.

    ``risk_loss=None`` (no risk labels in the batch) trains the planner alone.
    """
    if risk_weight < 0:
        raise ValueError(f'risk_weight must be >= 0, got {risk_weight}')
    if risk_loss is None:
        return plan_loss
    return plan_loss + risk_weight * risk_loss


def loss_components(plan_loss: torch.Tensor, risk_loss: Optional[torch.Tensor],
                    risk_weight: float) -> Dict[str, float]:
    """Detached scalar values of the loss terms for logging: plan, risk, weighted risk, total."""
    total = total_loss(plan_loss, risk_loss, risk_weight)
    risk = float(risk_loss.detach()) if risk_loss is not None else 0.0
    return {'plan': float(plan_loss.detach()), 'risk': risk,
            'risk_weighted': risk_weight * risk, 'total': float(total.detach())}
