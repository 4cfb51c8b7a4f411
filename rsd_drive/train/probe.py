"""``rsd-drive probe TRAIN_INDEX VAL_INDEX --config train.yaml``: do the frozen features see the
hazards at the input resolution?

A linear probe on cached frozen features against the teacher's risk cells (issue 22, item 4).
Every BEV cell of the risk grid is projected (its centre on the ground, in base_link) into the
camera that sees it most centrally; the patch token there is that cell's feature. A logistic
regression learns "teacher risk >= 0.5" from [token feature, cell position] on the training
index and is scored on the held-out index by AUROC per distance band of the cell (0-10, 10-20,
20-40 m). The same probe on the cell position alone is the baseline: what the features add is
the difference. Cells no camera sees are left out (counted).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

BANDS = ((0.0, 10.0), (10.0, 20.0), (20.0, 40.0))
RISKY = 0.5
NEGATIVES_PER_POSITIVE = 10


def cell_tokens(grid, intrinsics, cam_to_ego, image_hw, token_hw):
    """Per grid cell (row-major): (camera index, token index) of the patch that sees the cell's
    ground centre most centrally, -1 where no camera does."""
    from rsd_drive.geometry import project_points

    xs, ys = grid.cell_centers()
    pts = np.stack([np.ravel(xs), np.ravel(ys), np.zeros(np.size(xs))], axis=1)
    h, w = image_hw
    gh, gw = token_hw
    best = np.full(len(pts), np.inf)
    cam = np.full(len(pts), -1, np.int64)
    tok = np.full(len(pts), -1, np.int64)
    for c, (K, T) in enumerate(zip(intrinsics, cam_to_ego)):
        uv, depth = project_points(pts, K, T)
        inside = (depth > 0.5) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) \
            & (uv[:, 1] < h)
        centrality = np.abs(uv[:, 0] - w / 2) / w
        take = inside & (centrality < best)
        best[take] = centrality[take]
        cam[take] = c
        row = np.clip((uv[take, 1] * gh / h).astype(np.int64), 0, gh - 1)
        col = np.clip((uv[take, 0] * gw / w).astype(np.int64), 0, gw - 1)
        tok[take] = row * gw + col
    return cam, tok, pts[:, :2]


def probe_samples(index, features, grid, token_hw, rng, balance: bool) -> dict:
    """Samples of every frame: X (token feature), P (cell position), y (risky), d (distance)."""
    X, P, y, d = [], [], [], []
    unseen = 0
    for i in range(len(index)):
        frame = index.get(i, ('intrinsics', 'cam_to_ego', 'risk'))
        cam, tok, xy = cell_tokens(grid, frame['intrinsics'], frame['cam_to_ego'],
                                   index.manifest['image_hw'], token_hw)
        risk = np.asarray(frame['risk'], np.float32).ravel()
        seen = cam >= 0
        unseen += int((~seen).sum())
        pos = np.flatnonzero(seen & (risk >= RISKY))
        neg = np.flatnonzero(seen & (risk < RISKY))
        if balance and len(neg) > NEGATIVES_PER_POSITIVE * max(len(pos), 1):
            neg = rng.choice(neg, NEGATIVES_PER_POSITIVE * max(len(pos), 1), replace=False)
        keep = np.concatenate([pos, neg])
        feats = features[i]
        X.append(feats[cam[keep], tok[keep]].astype(np.float32))
        P.append(xy[keep].astype(np.float32))
        y.append(risk[keep] >= RISKY)
        d.append(np.hypot(xy[keep, 0], xy[keep, 1]))
    return {'X': np.concatenate(X), 'P': np.concatenate(P), 'y': np.concatenate(y),
            'd': np.concatenate(d), 'unseen_cells': unseen}


def position_features(P: np.ndarray) -> np.ndarray:
    """A flexible function of the cell position (the corridor is a position prior)."""
    p = P / 40.0
    return np.concatenate([p, p ** 2, p[:, :1] * p[:, 1:], np.abs(p)], axis=1)


def fit_logistic(X: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 0.05,
                 weight_decay: float = 1e-3, seed: int = 0):
    """A logistic regression (full-batch Adam, standardised inputs); returns a scorer."""
    import torch

    torch.manual_seed(seed)
    mean, std = X.mean(0), X.std(0) + 1e-6
    Xt = torch.from_numpy((X - mean) / std)
    yt = torch.from_numpy(y.astype(np.float32))
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    pos = max(float(yt.sum()), 1.0)
    weight = torch.tensor((len(yt) - pos) / pos)
    opt = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Xt @ w + b, yt,
                                                                    pos_weight=weight)
        loss.backward()
        opt.step()
    w_, b_ = w.detach().numpy(), float(b.detach())
    return lambda Z: ((Z - mean) / std) @ w_ + b_


def auroc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half)."""
    y = np.asarray(y, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float('nan')
    order = np.argsort(score, kind='mergesort')
    ranks = np.empty(len(score))
    s = np.asarray(score)[order]
    i = 0
    while i < len(s):  # average ranks of ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def run_probe(train_index, val_index, model_cfg, encoder, cache_dir=None, seed: int = 0) -> dict:
    from rsd_drive.data.index import FrameIndex
    from rsd_drive.train.cache import ensure_cache

    rng = np.random.default_rng(seed)
    out = {'bands_m': [list(b) for b in BANDS]}
    samples = {}
    for split, path in (('train', train_index), ('val', val_index)):
        index = FrameIndex(path)
        feats = ensure_cache(index, encoder, cache_dir)
        token_hw = encoder.token_grid((model_cfg.image_height, model_cfg.image_width))
        samples[split] = probe_samples(index, feats, model_cfg.grid, token_hw, rng,
                                       balance=split == 'train')
    tr, va = samples['train'], samples['val']
    scorers = {
        'features + position': (fit_logistic(np.concatenate([tr['X'], position_features(
            tr['P'])], 1), tr['y'], seed=seed), lambda s: np.concatenate(
                [s['X'], position_features(s['P'])], 1)),
        'position only': (fit_logistic(position_features(tr['P']), tr['y'], seed=seed),
                          lambda s: position_features(s['P'])),
    }
    for name, (scorer, inputs) in scorers.items():
        score = scorer(inputs(va))
        out[name] = {f'{lo:g}-{hi:g} m': _band(score, va, lo, hi) for lo, hi in BANDS}
        out[name]['all'] = {'auroc': auroc(score, va['y']), 'positives': int(va['y'].sum()),
                            'cells': int(len(va['y']))}
    out['unseen_cells'] = {k: v['unseen_cells'] for k, v in samples.items()}
    return out


def _band(score, s, lo, hi) -> dict:
    m = (s['d'] >= lo) & (s['d'] < hi)
    return {'auroc': auroc(score[m], s['y'][m]), 'positives': int(s['y'][m].sum()),
            'cells': int(m.sum())}


def format_probe(result: dict) -> str:
    bands = [f'{lo:g}-{hi:g} m' for lo, hi in BANDS] + ['all']
    rows = ['| probe | ' + ' | '.join(bands) + ' |', '|---|' + '---|' * len(bands)]
    for name in ('features + position', 'position only'):
        cells = []
        for b in bands:
            r = result[name][b]
            value = 'n/a' if math.isnan(r['auroc']) else f"{r['auroc']:.3f}"
            cells.append(f"{value} ({r['positives']}/{r['cells']})")
        rows.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(rows) + '\n\nAUROC on held-out frames (risky cells / cells in the band).'


def add_arguments(parser) -> None:
    parser.add_argument('train_index')
    parser.add_argument('val_index')
    parser.add_argument('--config', default='config/train.yaml',
                        help='YAML with the model section (encoder, image size, grid)')
    parser.add_argument('--cache-dir')
    parser.add_argument('--json', help='write the result here')
    parser.add_argument('--seed', type=int, default=0)


def run(args) -> int:
    from rsd_drive.train.cache import training_encoder
    from rsd_drive.train.config import load_config

    model_cfg, train_cfg = load_config(args.config)
    encoder = training_encoder(model_cfg, train_cfg.encoder_seed)
    result = run_probe(args.train_index, args.val_index, model_cfg, encoder, args.cache_dir,
                       args.seed)
    print(format_probe(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0
