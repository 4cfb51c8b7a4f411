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
RISK_LOSS_KINDS = ('l1', 'mse', 'kl', 'kl_scale', 'bce', 'focal')
FOCAL_GAMMA = 2.0  # quality focal loss exponent (Li et al., 2020; CenterNet's heatmap loss uses 2)
POSITIVE_RISK = 0.05  # teacher cells at or above this count as risky for the balanced BCE
PROB_EPS = 1e-6  # probabilities are clamped into [eps, 1 - eps] before the logarithms
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


def _soft_bce(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-cell binary cross-entropy with a soft target; its minimum is at pred == target."""
    p = pred.clamp(PROB_EPS, 1.0 - PROB_EPS)
    return -(target * p.log() + (1.0 - target) * (1.0 - p).log())


def _per_sample_risk_loss(pred, target, kind: str, eps: float) -> torch.Tensor:
    flat_p, flat_t = pred.flatten(1), target.detach().flatten(1)
    if kind == 'l1':
        return (flat_p - flat_t).abs().mean(dim=1)
    if kind == 'mse':
        return (flat_p - flat_t).square().mean(dim=1)
    if kind in ('kl', 'kl_scale'):
        if eps <= 0:
            raise ValueError(f'eps must be positive, got {eps}')
        p, t = _as_distribution(pred, eps), _as_distribution(target.detach(), eps)
        kl = (t * (t.log() - p.log())).sum(dim=1)
        if kind == 'kl':
            return kl
        # Scale term: the log-ratio of the total risk mass (+1 cell keeps empty maps finite).
        mass_p = flat_p.clamp_min(0).sum(dim=1) + 1.0
        mass_t = flat_t.clamp_min(0).sum(dim=1) + 1.0
        return kl + (mass_p.log() - mass_t.log()).square()
    bce = _soft_bce(flat_p, flat_t)
    if kind == 'bce':
        # Class-balanced: risky and risk-free cells each carry half the weight of a sample.
        pos = (flat_t >= POSITIVE_RISK).to(bce.dtype)
        n_pos = pos.sum(dim=1, keepdim=True)
        n_neg = pos.shape[1] - n_pos
        w = torch.where(pos > 0, 0.5 / n_pos.clamp_min(1.0), 0.5 / n_neg.clamp_min(1.0))
        w = torch.where(n_pos > 0, w, torch.full_like(w, 1.0 / pos.shape[1]))
        return (w * bce).sum(dim=1)
    # focal: quality focal loss, |t - p|^gamma * BCE, normalised by the teacher's risk mass
    # (CenterNet normalises its heatmap focal loss by the number of objects).
    weight = (flat_t - flat_p).abs().pow(FOCAL_GAMMA)
    return (weight * bce).sum(dim=1) / flat_t.sum(dim=1).clamp_min(1.0)


def risk_distillation_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = 'l1',
                           eps: float = 1e-6, reduction: str = 'mean') -> torch.Tensor:
    """Distillation loss between the RiskHead's map and the teacher's risk map.

    Args:
        pred: [B, H, W] predicted risk *probabilities* in [0, 1] (the RiskHead's sigmoid output,
            not logits). Any [B, ...] shape works; everything after the batch axis is the map.
        target: teacher risk map in [0, 1], same shape.
        kind:
            ``l1`` (RSD's choice) or ``mse``: elementwise means. On sparse maps both are
            minimised well by "no risk anywhere".
            ``kl``: KL(target || pred) between the maps normalised to sum to 1 per sample (eps
            added to every cell): learns *where* the risk is, but has no absolute scale.
            ``kl_scale``: ``kl`` plus the squared log-ratio of the total risk mass (sum + 1).
            ``bce``: per-cell cross-entropy with the soft teacher value, class-balanced (cells
            with teacher risk >= ``POSITIVE_RISK`` and the others each weigh half a sample).
            ``focal``: quality focal loss (Li et al., 2020, generalized focal loss; the soft-
            target form of CenterNet's heatmap loss): ``|t - p|^2 * BCE(p, t)`` summed and
            divided by the teacher's risk mass (at least 1). Per cell it is minimal at p = t,
            so the map keeps its absolute scale, and easy empty cells stop dominating.
        eps: smoothing for ``kl`` / ``kl_scale``.
        reduction: 'mean' -> scalar, 'none' -> [B].
    """
    if kind not in RISK_LOSS_KINDS:
        raise ValueError(f'unknown risk loss kind {kind!r}, valid: {RISK_LOSS_KINDS}')
    if pred.ndim < 2 or pred.shape != target.shape:
        raise ValueError(f'pred and target must both have shape [B, H, W], got '
                         f'{tuple(pred.shape)} and {tuple(target.shape)}')
    return _reduce(_per_sample_risk_loss(pred, target, kind, eps), reduction)


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
