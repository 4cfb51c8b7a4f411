"""The linear probe of issue 22 (item 4): AUROC, which token sees a BEV cell, and a probe that
finds a planted signal in the features and not in the position alone."""
import numpy as np

from rsd_drive.geometry import GridSpec, camera_to_ego, intrinsics
from rsd_drive.train.probe import auroc, cell_tokens, fit_logistic, position_features


def test_auroc_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    score = np.round(rng.normal(size=200), 1)  # ties
    y = rng.random(200) < 0.3
    pos, neg = score[y], score[~y]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert abs(auroc(score, y) - pairs) < 1e-12
    assert np.isnan(auroc(score, np.zeros(200, bool)))


def test_a_cell_ahead_is_seen_by_the_front_camera_at_its_centre_column():
    grid = GridSpec(rows=8, cols=8, resolution=5.0, origin_x=-20.0, origin_y=-20.0)
    h, w = 112, 224
    K = intrinsics(110.0, 110.0, w / 2, h / 2)
    front = camera_to_ego(1.5, 0.0, 1.6, 0.0)
    back = camera_to_ego(-1.0, 0.0, 1.6, np.pi)
    cam, tok, xy = cell_tokens(grid, [K, K], [front, back], (h, w), (8, 16))
    ahead = int(np.argmin(np.hypot(xy[:, 0] - 12.5, xy[:, 1] - 2.5)))
    behind = int(np.argmin(np.hypot(xy[:, 0] + 12.5, xy[:, 1] - 2.5)))
    assert cam[ahead] == 0 and cam[behind] == 1
    assert tok[ahead] % 16 in (6, 7)  # just left of the image centre (y = +2.5 m is left)
    assert tok[ahead] // 16 >= 4      # below the horizon
    assert (cam == -1).sum() > 0      # cells beside the ego lie outside both views


def test_the_probe_finds_a_planted_feature_and_position_alone_does_not():
    rng = np.random.default_rng(1)
    n = 4000
    P = rng.uniform(-30, 30, size=(n, 2)).astype(np.float32)
    y = rng.random(n) < 0.1
    X = rng.normal(size=(n, 16)).astype(np.float32)
    X[:, 3] += 2.5 * y  # the token of a risky cell carries the signal
    tr, va = slice(0, 3000), slice(3000, n)
    full = fit_logistic(np.concatenate([X, position_features(P)], 1)[tr], y[tr])
    pos = fit_logistic(position_features(P)[tr], y[tr])
    a_full = auroc(full(np.concatenate([X, position_features(P)], 1)[va]), y[va])
    a_pos = auroc(pos(position_features(P)[va]), y[va])
    assert a_full > 0.9 and a_pos < 0.65, (a_full, a_pos)
