"""The open-loop braking breakdown (rsd_drive.train.evaluate.braking): onset frames (the expert
will brake and has not begun: only the scene can tell) apart from frames where the ego history
already shows it, on trajectories whose speeds are known."""
import numpy as np
import pytest

from rsd_drive.metrics import segment_speeds
from rsd_drive.train.evaluate import braking, format_report

HZ = 4.0


def drive(speeds):
    """Waypoints [20, 2] straight ahead at the given per-segment speeds (m/s)."""
    return np.stack([np.cumsum(np.asarray(speeds) / HZ), np.zeros(len(speeds))], axis=1)


def test_onset_braking_and_no_brake_frames_are_told_apart():
    slowing = np.r_[np.linspace(10, 6, 8), np.full(12, 6.0)]   # 10 -> 6 m/s by 2 s
    cruise = np.full(20, 10.0)
    half = np.r_[np.linspace(10, 8.5, 8), np.full(12, 8.5)]
    future = np.stack([drive(slowing), drive(slowing), drive(cruise)])
    plans = np.stack([drive(cruise), drive(half), drive(half)])
    past = np.stack([np.full(16, 10.0),                        # steady: onset
                     np.linspace(13, 10, 16),                  # already slowing: braking
                     np.full(16, 10.0)])
    pred = {'future': future, 'waypoints': plans, 'init_speed': np.full((3, 1), 10.0),
            'past_speed': past}
    assert segment_speeds(future, HZ)[0, 7] == pytest.approx(6.0)
    out = braking(pred, HZ)
    assert {k: g['frames'] for k, g in out.items()} == {'onset': 1, 'braking': 1, 'no_brake': 1}
    assert out['onset']['expert_dv'] == pytest.approx(-4.0)
    assert out['onset']['planned_dv'] == pytest.approx(0.0, abs=1e-9)
    assert out['onset']['planned_brakes'] == 0.0
    assert out['braking']['planned_dv'] == pytest.approx(-1.5)
    assert out['braking']['planned_brakes'] == 1.0
    assert out['no_brake']['expert_dv'] == pytest.approx(0.0, abs=1e-9)
    table = format_report({'frames': 3, 'overall': {'model': _zeros(), 'cv': _zeros()},
                           'per_intent': {}, 'braking': out})
    assert '| onset | 1 | -4.00 | +0.00 | 0.00 |' in table


def _zeros():
    return {k: 0.0 for k in ('rfs', 'ade_3s', 'ade_5s', 'fde', 'risk_pearson', 'risk_kl',
                             'risk_topk_recall')}
