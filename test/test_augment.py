"""What the trainer does to a batch (rsd_drive.train.augment): past motion dropout keeps the
current state and removes the slowing-down cue; onset weights land on the frames
rsd_drive.metrics.brake_groups calls onset and read only targets; the weighted plan loss is a
weighted mean; a run with both switched off draws the same random numbers as before."""
import numpy as np
import pytest
import torch

from rsd_drive import metrics
from rsd_drive.train import augment
from rsd_drive.train.config import TrainConfig
from rsd_drive.train.trainer import batch_losses

HZ = 4.0
P, T = 16, 20


def trajectory(v0, accel, brake_after_s=0.0, steps=T, start_s=1 / HZ):
    """[steps, 2] positions along x of an ego at v0 that brakes at ``accel`` (< 0) after
    ``brake_after_s``; samples at start_s, start_s + 1/HZ, ..."""
    t = start_s + np.arange(steps) / HZ
    tb = np.clip(t - brake_after_s, 0, None)
    speed_t = np.maximum(v0 + accel * tb, 0)
    stop_t = np.where(accel < 0, -v0 / accel if accel else np.inf, np.inf)
    tb_eff = np.minimum(tb, stop_t)
    x = v0 * np.minimum(t, brake_after_s) + v0 * tb_eff + 0.5 * accel * tb_eff ** 2
    return np.stack([x, np.zeros_like(x)], -1), speed_t


def past_states(v_now, slowing_per_s):
    """[P, 4] history ending at (0, 0, 0, v_now), speed falling by ``slowing_per_s``."""
    ago = np.arange(P - 1, -1, -1) / HZ
    speed = v_now + slowing_per_s * ago
    x = -(v_now * ago + 0.5 * slowing_per_s * ago ** 2)
    return np.stack([x, np.zeros(P), np.zeros(P), speed], -1)


def make_batch():
    """Frame 0: onset (will brake, steady past); 1: braking (will, already slowing);
    2: cruise."""
    fut_onset, _ = trajectory(10.0, -3.0)
    fut_cruise, _ = trajectory(10.0, 0.0)
    future = np.stack([fut_onset, fut_onset, fut_cruise])
    past = np.stack([past_states(10.0, 0.0), past_states(10.0, 1.5), past_states(10.0, 0.0)])
    return {'future': torch.tensor(future, dtype=torch.float32),
            'init_speed': torch.tensor([10.0, 10.0, 10.0]),
            'past_states': torch.tensor(past, dtype=torch.float32),
            'route_valid': torch.ones(3)}


def test_brake_groups_match_the_frames_built():
    b = make_batch()
    groups = metrics.brake_groups(b['future'].numpy(), b['init_speed'].numpy(),
                                  b['past_states'][..., 3].numpy(), HZ)
    assert groups['onset'].tolist() == [True, False, False]
    assert groups['braking'].tolist() == [False, True, False]
    assert groups['no_brake'].tolist() == [False, False, True]


def test_onset_weights_only_on_onset_frames_and_inputs_untouched():
    b = make_batch()
    before = {k: v.clone() for k, v in b.items()}
    w = augment.onset_weights(b, 5.0, HZ)
    assert w.tolist() == [5.0, 1.0, 1.0]
    assert augment.onset_weights(b, 1.0, HZ) is None
    for k in b:
        assert torch.equal(b[k], before[k]), k


def test_steady_history_keeps_now_and_removes_slowing():
    b = make_batch()
    steady = augment.steady_history(b['past_states'], HZ)
    assert torch.equal(steady[:, -1], b['past_states'][:, -1])  # the current state is kept
    assert torch.allclose(steady[..., 3], b['past_states'][:, -1:, 3].expand(-1, P))
    step = torch.diff(steady[..., 0], dim=1)
    assert torch.allclose(step, torch.full_like(step, 10.0 / HZ))
    assert torch.count_nonzero(steady[..., 1:3]) == 0
    # the braking frame's history no longer shows it slowing: it is an onset frame now
    groups = metrics.brake_groups(b['future'].numpy(), b['init_speed'].numpy(),
                                  steady[..., 3].numpy(), HZ)
    assert groups['onset'].tolist() == [True, True, False]


def test_drop_history_share_and_frames():
    b = make_batch()
    assert augment.drop_history(b, 0.0, HZ) is b
    torch.manual_seed(0)
    big = {'past_states': b['past_states'][[1]].repeat(4000, 1, 1)}
    out = augment.drop_history(big, 0.5, HZ)['past_states']
    dropped = (out[:, 0, 3] == out[:, -1, 3])
    assert 0.45 < float(dropped.float().mean()) < 0.55
    assert torch.equal(out[~dropped], big['past_states'][~dropped])
    assert torch.equal(out[dropped], augment.steady_history(big['past_states'][dropped], HZ))


def test_switched_off_draws_nothing():
    b = make_batch()
    torch.manual_seed(3)
    expected = torch.rand(5)
    torch.manual_seed(3)
    augment.onset_weights(b, 1.0, HZ)
    augment.drop_history(b, 0.0, HZ)
    augment.drop_route(b, 0.0)
    assert torch.equal(torch.rand(5), expected)


def test_weighted_plan_loss_is_a_weighted_mean():
    b = make_batch()
    cfg = TrainConfig(max_steps=1)
    torch.manual_seed(0)
    waypoints = b['future'] + 0.5 * torch.randn_like(b['future'])
    risk = torch.zeros(3, 8, 8)
    b['risk'] = torch.zeros(3, 8, 8)
    _, plain, _ = batch_losses(waypoints, risk, b, cfg, HZ)
    _, ones, _ = batch_losses(waypoints, risk, b, cfg, HZ, torch.ones(3))
    assert float(ones) == pytest.approx(float(plain), rel=1e-6)
    per_frame = [float(batch_losses(waypoints[[i]], risk[[i]], {k: v[[i]] for k, v in b.items()},
                                    cfg, HZ)[1]) for i in range(3)]
    _, weighted, _ = batch_losses(waypoints, risk, b, cfg, HZ, torch.tensor([5.0, 1.0, 1.0]))
    expected = (5 * per_frame[0] + per_frame[1] + per_frame[2]) / 7
    assert float(weighted) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('field, value', [('history_dropout', 1.0), ('history_dropout', -0.1),
                                          ('onset_weight', 0.0)])
def test_config_rejects(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(max_steps=1, **{field: value})
