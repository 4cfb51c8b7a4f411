"""Tests for rsd_drive.losses: RFS surrogate, risk distillation and the combined objective."""
import math

import numpy as np
import pytest
import torch

from rsd_drive import metrics
from rsd_drive.losses import (heading_directions, loss_components, rfs_surrogate_loss,
                              rfs_thresholds, risk_distillation_loss, total_loss)

T = 20
S10 = 0.5 + 0.5 * 8.6 / 9.6  # speed scale at 10 m/s


def straight(speed=10.0, batch=1):
    out = torch.zeros(batch, T, 2, dtype=torch.float64)
    out[..., 0] = speed * torch.arange(1, T + 1, dtype=torch.float64) / 4.0
    return out


def expected_tau(k, base3, base5, scale):
    """Threshold of waypoint k (time (k+1)/4 s) by the documented rule, written out by hand."""
    t = (k + 1) / 4.0
    if t <= 3.0:
        return scale * base3 * max(t / 3.0, 0.1)
    return scale * (base3 + (base5 - base3) * (t - 3.0) / 2.0)


def test_thresholds_match_metric_at_3s_and_5s():
    tau_lat, tau_lng = rfs_thresholds(T, torch.tensor([10.0, 0.0], dtype=torch.float64))
    assert tau_lat.shape == (2, T)
    assert tau_lat[0, 11].item() == pytest.approx(1.0 * S10)
    assert tau_lat[0, 19].item() == pytest.approx(1.8 * S10)
    assert tau_lng[0, 11].item() == pytest.approx(4.0 * S10)
    assert tau_lng[0, 19].item() == pytest.approx(7.2 * S10)
    assert tau_lat[1, 11].item() == pytest.approx(0.5)  # clipped speed scale at 0 m/s
    for k in range(T):
        assert tau_lat[0, k].item() == pytest.approx(expected_tau(k, 1.0, 1.8, S10))
        assert tau_lng[1, k].item() == pytest.approx(expected_tau(k, 4.0, 7.2, 0.5))
    # The first waypoint (0.25 s) would be 1/12 of tau_3s; the 10 % floor holds it at 0.1.
    assert tau_lat[0, 0].item() == pytest.approx(0.1 * S10)
    assert tau_lat[0, 1].item() == pytest.approx(S10 * 0.5 / 3.0)


def test_heading_matches_numpy_metric_rule():
    rng = np.random.default_rng(0)
    trajs = np.cumsum(rng.normal(size=(4, 3, T, 2)), axis=-2)
    trajs[:, :, 3:7] = trajs[:, :, 2:3]  # stops
    trajs[0, 0] = 0.0  # never moves
    trajs[1, 1, :4] = 0.0  # starts late
    got = heading_directions(torch.from_numpy(trajs)).numpy()
    np.testing.assert_allclose(got, metrics.heading_directions(trajs), atol=1e-12)
    np.testing.assert_allclose(got[0, 0], np.tile([1.0, 0.0], (T, 1)))


def test_zero_for_perfect_prediction_including_zero_motion():
    target = straight(batch=2)
    target[1] = 0.0  # a parked car: no heading from motion, default (1, 0)
    loss = rfs_surrogate_loss(target.clone(), target, torch.tensor([10.0, 0.0]),
                              reduction='none')
    np.testing.assert_array_equal(loss.numpy(), [0.0, 0.0])


def test_constant_lateral_offset_value_and_lateral_costs_more():
    target = straight()
    v0 = torch.tensor([10.0])
    lateral = rfs_surrogate_loss(target + torch.tensor([0.0, 0.5]), target, v0)
    longitudinal = rfs_surrogate_loss(target + torch.tensor([0.5, 0.0]), target, v0)
    expected_lat = np.mean([0.5 / expected_tau(k, 1.0, 1.8, S10) for k in range(T)])
    expected_lng = np.mean([0.5 / expected_tau(k, 4.0, 7.2, S10) for k in range(T)])
    assert lateral.item() == pytest.approx(expected_lat)
    assert longitudinal.item() == pytest.approx(expected_lng)
    # Longitudinal thresholds are 4x the lateral ones at every waypoint.
    assert lateral.item() == pytest.approx(4.0 * longitudinal.item())
    assert lateral.item() > longitudinal.item()


def test_max_over_axes_not_sum():
    # Error (a, b) with a/tau_lng and b/tau_lat: the cost is the larger ratio, not their sum.
    target = straight()
    v0 = torch.tensor([10.0])
    both = rfs_surrogate_loss(target + torch.tensor([0.4, 0.3]), target, v0)
    lat_only = rfs_surrogate_loss(target + torch.tensor([0.0, 0.3]), target, v0)
    assert both.item() == pytest.approx(lat_only.item())  # 0.4 / (4 tau) < 0.3 / tau


def test_rotated_heading_frame():
    # Target driving along +y: an x error is lateral, a y error is longitudinal.
    target = straight().flip(-1)
    v0 = torch.tensor([10.0])
    x_err = rfs_surrogate_loss(target + torch.tensor([0.5, 0.0]), target, v0)
    y_err = rfs_surrogate_loss(target + torch.tensor([0.0, 0.5]), target, v0)
    assert x_err.item() == pytest.approx(4.0 * y_err.item())


def test_gradient_finite_nonzero_and_batch_independent():
    target = straight(batch=3)
    target[2] = 0.0  # zero-motion target
    pred = (target + torch.randn(3, T, 2, dtype=torch.float64, generator=torch.Generator()
                                 .manual_seed(0))).requires_grad_(True)
    v0 = torch.tensor([10.0, 5.0, 0.0])
    loss = rfs_surrogate_loss(pred, target, v0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad.abs().sum(dim=(1, 2)) > 0).all()
    # Each sample's loss depends only on that sample.
    per = rfs_surrogate_loss(pred.detach(), target, v0, reduction='none')
    single = rfs_surrogate_loss(pred.detach()[1:2], target[1:2], v0[1:2], reduction='none')
    assert per.shape == (3,)
    assert per[1].item() == pytest.approx(single.item())
    assert loss.item() == pytest.approx(per.mean().item())
    # A scalar speed broadcasts over the batch.
    scalar = rfs_surrogate_loss(pred.detach(), target, 10.0, reduction='none')
    assert scalar[0].item() == pytest.approx(per[0].item())


def test_rfs_surrogate_validation():
    target = straight()
    with pytest.raises(ValueError, match=r'\[B, T, 2\]'):
        rfs_surrogate_loss(target[:, :5], target, torch.tensor([1.0]))
    with pytest.raises(ValueError, match='init_speed'):
        rfs_surrogate_loss(target, target, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="valid: \\('mean', 'none'\\)"):
        rfs_surrogate_loss(target, target, torch.tensor([1.0]), reduction='sum')


def test_risk_loss_hand_values():
    pred = torch.tensor([[[0.2, 0.8]]])
    target = torch.tensor([[[0.0, 1.0]]])
    # |0.2| and |-0.2| -> mean 0.2; squares 0.04 each -> 0.04.
    assert risk_distillation_loss(pred, target, 'l1').item() == pytest.approx(0.2)
    assert risk_distillation_loss(pred, target, 'mse').item() == pytest.approx(0.04)
    # KL: t = (e, 1 + e) / (1 + 2e), p = (0.2 + e, 0.8 + e) / (1 + 2e) with e = 1e-6:
    # KL ~= log(1 / 0.8) = 0.2231.
    e = 1e-6
    t = np.array([e, 1 + e]) / (1 + 2 * e)
    p = np.array([0.2 + e, 0.8 + e]) / (1 + 2 * e)
    expected = float(np.sum(t * np.log(t / p)))
    got = risk_distillation_loss(pred.double(), target.double(), 'kl', eps=e).item()
    assert got == pytest.approx(expected)
    assert got == pytest.approx(math.log(1 / 0.8), rel=1e-4)
    # Identical maps: all three are zero.
    for kind in ('l1', 'mse', 'kl'):
        assert risk_distillation_loss(target, target, kind).item() == pytest.approx(0.0, abs=1e-6)


def test_risk_kl_is_scale_invariant_and_differentiable():
    target = torch.zeros(2, 8, 8)
    target[:, 2, 3] = 1.0
    pred = torch.full((2, 8, 8), 0.1)
    pred[:, 2, 3] = 0.9
    kl = risk_distillation_loss(pred, target, 'kl', reduction='none')
    kl_half = risk_distillation_loss(pred * 0.5, target * 0.5, 'kl', reduction='none')
    assert kl.shape == (2,)
    # Only the eps smoothing (63 empty cells x 1e-6) breaks exact invariance.
    np.testing.assert_allclose(kl.numpy(), kl_half.numpy(), rtol=1e-3)
    zero_pred = torch.zeros(2, 8, 8, requires_grad=True)
    loss = risk_distillation_loss(zero_pred, target, 'kl')
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(zero_pred.grad).all() and zero_pred.grad.abs().sum() > 0
    # The numpy metric uses the same normalisation.
    np.testing.assert_allclose(kl.numpy(), metrics.risk_kl(pred.numpy(), target.numpy()),
                               rtol=1e-4)


def test_risk_loss_bad_kind_and_shape():
    maps = torch.zeros(1, 4, 4)
    with pytest.raises(ValueError, match=r"unknown risk loss kind 'huber'.*'l1', 'mse', 'kl'"):
        risk_distillation_loss(maps, maps, kind='huber')
    with pytest.raises(ValueError, match=r'\[B, H, W\]'):
        risk_distillation_loss(maps, maps[:, :2], kind='l1')


def test_total_loss_and_components():
    plan = torch.tensor(1.5, requires_grad=True)
    risk = torch.tensor(2.0, requires_grad=True)
    total = total_loss(plan, risk, 0.25)
    assert total.item() == pytest.approx(2.0)
    total.backward()
    assert risk.grad.item() == pytest.approx(0.25)
    assert total_loss(plan, None, 0.25) is plan
    assert loss_components(plan, risk, 0.25) == pytest.approx(
        {'plan': 1.5, 'risk': 2.0, 'risk_weighted': 0.5, 'total': 2.0})
    with pytest.raises(ValueError, match='risk_weight'):
        total_loss(plan, risk, -1.0)


def test_calibrated_losses_hand_values():
    pred = torch.tensor([[[0.2, 0.8]]], dtype=torch.float64)
    target = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    # Balanced BCE: one risky and one empty cell, each weighs 1/2: -(log 0.8 + log 0.8) / 2.
    assert risk_distillation_loss(pred, target, 'bce').item() == pytest.approx(-math.log(0.8))
    # Focal: |t - p|^2 * BCE summed, divided by the teacher mass (1): 2 * 0.04 * -log 0.8.
    assert risk_distillation_loss(pred, target, 'focal').item() == pytest.approx(
        2 * 0.04 * -math.log(0.8))
    # KL + scale: the masses agree (1.0 + 1 cell each), so only the KL remains.
    assert risk_distillation_loss(pred, target, 'kl_scale').item() == pytest.approx(
        risk_distillation_loss(pred, target, 'kl').item())
    doubled = risk_distillation_loss(pred, target * 0.5, 'kl_scale').item()
    kl = risk_distillation_loss(pred, target * 0.5, 'kl').item()
    assert doubled == pytest.approx(kl + math.log(2.0 / 1.5) ** 2)


@pytest.mark.parametrize('kind', ['bce', 'focal'])
def test_cellwise_losses_are_minimal_at_the_teacher_value(kind):
    """Per cell the gradient vanishes at pred == target and points towards it elsewhere, so
    the student keeps the teacher's absolute scale (KL alone does not: it is scale-free)."""
    target = torch.tensor([[[0.0, 0.3, 0.7, 1.0]]], dtype=torch.float64)
    at = target.clamp(1e-3, 1 - 1e-3).clone().requires_grad_(True)
    risk_distillation_loss(at, target.clamp(1e-3, 1 - 1e-3), kind).backward()
    assert at.grad.abs().max().item() < 1e-9
    for offset in (-0.2, 0.2):
        p = (target + offset).clamp(0.01, 0.99).requires_grad_(True)
        risk_distillation_loss(p, target, kind).backward()
        moved = (p.detach() - target).squeeze()
        grad = p.grad.squeeze()
        sel = moved.abs() > 1e-6
        assert torch.all(torch.sign(grad[sel]) == torch.sign(moved[sel]))
    half = target * 0.5
    for k, invariant in (('kl', True), (kind, False), ('kl_scale', False)):
        a = risk_distillation_loss(half + 1e-3, target, k).item()
        b = risk_distillation_loss(target + 1e-3, target, k).item()
        assert (abs(a - b) < 1e-2) == invariant, (k, a, b)


def test_fitting_a_sparse_map_keeps_its_scale_with_the_calibrated_losses():
    """A free map fitted to a sparse teacher (2 % of the cells at 0.8): focal and bce recover
    the 0.8 from any start; KL's answer depends on where it starts (no absolute scale)."""
    target = torch.zeros(1, 20, 20)
    target[0, 5:7, 8:12] = 0.8
    peak = {}
    for kind, start in (('kl', -3.0), ('kl', 0.0), ('bce', -3.0), ('focal', -3.0),
                        ('focal', 0.0)):
        logits = torch.full((1, 20, 20), start, requires_grad=True)
        opt = torch.optim.Adam([logits], lr=0.1)
        for _ in range(300):
            opt.zero_grad()
            risk_distillation_loss(torch.sigmoid(logits), target, kind).backward()
            opt.step()
        pred = torch.sigmoid(logits).detach()
        peak[kind, start] = float(pred[target > 0].mean())
        background = float(pred[target == 0].mean())
        if kind != 'kl':  # (the RiskHead starts near -3: "no risk"; focal is slow on easy
            # background cells from a start of 0.5, so only the peak is checked there)
            assert abs(peak[kind, start] - 0.8) < 0.05, (kind, start, peak)
            assert background < (0.02 if start < -2 else 0.1), (kind, start, background)
    assert abs(peak['kl', -3.0] - peak['kl', 0.0]) > 0.1, peak
