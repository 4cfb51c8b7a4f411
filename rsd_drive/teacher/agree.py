"""``rsd-drive teacher agree LABELS_A LABELS_B``: how far two label sets agree, frame by frame
(two prompts, two backends, two models, served against in process): the teacher's prompt
sensitivity, measured.

Per frame labelled in both (matched by bag id and stamp): Pearson of the two risk grids, the
overlap of their top-k cells (k = ``--top-frac`` of the cells), and the Spearman rank correlation
of the risky objects' risks (objects matched by camera and box IoU >= ``--iou``; an object only
one side names counts as risk 0 on the other).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np


def read_labels(out_dir) -> dict:
    """{(bag_id, stamp_ns): (risk grid float32, objects)} of a label directory's chunks."""
    frames = {}
    for info_path in sorted(Path(out_dir).glob('work/*/chunk-*.json')):
        info = json.loads(info_path.read_text())
        arrays = np.load(info_path.with_suffix('.npz'), allow_pickle=False)
        by_stamp = {int(t): j for j, t in enumerate(arrays['stamps'])}
        for rec in info['records']:
            j = by_stamp.get(int(rec['stamp_ns']))
            if rec.get('labelled') and j is not None:
                frames[(info_path.parent.name, int(rec['stamp_ns']))] = (
                    arrays['risk'][j].astype(np.float32), rec.get('objects', []))
    return frames


def pearson(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    if a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def top_overlap(a, b, frac: float) -> float:
    k = max(1, int(round(frac * np.size(a))))
    ta = set(np.argsort(-np.ravel(a), kind='stable')[:k].tolist())
    tb = set(np.argsort(-np.ravel(b), kind='stable')[:k].tolist())
    return len(ta & tb) / k


def _iou(p, q) -> float:
    ix = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    iy = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = ix * iy
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
    return inter / union if union > 0 else 0.0


def _ranks(x) -> np.ndarray:
    order = np.argsort(x, kind='stable')
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    for v in np.unique(x):  # ties: mean rank
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def object_rank_correlation(objs_a, objs_b, iou: float = 0.5) -> float:
    """Spearman of the objects' risks over the union of both sides' objects."""
    pairs, used = [], set()
    for oa in objs_a:
        best, best_j = iou, None
        for j, ob in enumerate(objs_b):
            if j in used or ob.get('camera') != oa.get('camera') or not oa.get('box') \
                    or not ob.get('box'):
                continue
            v = _iou(oa['box'], ob['box'])
            if v >= best:
                best, best_j = v, j
        if best_j is not None:
            used.add(best_j)
        pairs.append((oa['risk'], objs_b[best_j]['risk'] if best_j is not None else 0.0))
    pairs += [(0.0, ob['risk']) for j, ob in enumerate(objs_b) if j not in used]
    if len(pairs) < 2:
        return math.nan
    a, b = (np.array(v, np.float64) for v in zip(*pairs))
    return pearson(_ranks(a), _ranks(b))


def agreement(labels_a, labels_b, top_frac: float = 0.05, iou: float = 0.5) -> dict:
    a, b = read_labels(labels_a), read_labels(labels_b)
    common = sorted(set(a) & set(b))
    frames = []
    for key in common:
        (ga, oa), (gb, ob) = a[key], b[key]
        frames.append({'bag_id': key[0], 'stamp_ns': key[1], 'pearson': pearson(ga, gb),
                       'top_overlap': top_overlap(ga, gb, top_frac),
                       'object_rank_corr': object_rank_correlation(oa, ob, iou)})
    summary = {}
    for metric in ('pearson', 'top_overlap', 'object_rank_corr'):
        vals = np.array([f[metric] for f in frames if not math.isnan(f[metric])])
        summary[metric] = {'n': int(vals.size),
                           'mean': float(vals.mean()) if vals.size else math.nan,
                           'median': float(np.median(vals)) if vals.size else math.nan}
    return {'frames_a': len(a), 'frames_b': len(b), 'frames_both': len(common),
            'top_frac': top_frac, 'iou': iou, 'summary': summary, 'frames': frames}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest='teacher_command', metavar='WHAT', required=True)
    p = sub.add_parser('agree', help='per-frame agreement of two label sets',
                       description=__doc__.split('\n\n')[0])
    p.add_argument('labels_a', metavar='LABELS_A', help='an `rsd-drive label --out` directory')
    p.add_argument('labels_b', metavar='LABELS_B')
    p.add_argument('--top-frac', type=float, default=0.05,
                   help='top-k cells: this fraction of the grid (default %(default)s)')
    p.add_argument('--iou', type=float, default=0.5, help='object match IoU (default %(default)s)')
    p.add_argument('--json', help='write the per-frame numbers here')


def run(args) -> int:
    from rsd_drive.atomic import write_json_atomic

    result = agreement(args.labels_a, args.labels_b, args.top_frac, args.iou)
    if not result['frames_both']:
        print(f'rsd-drive teacher agree: no frame is labelled in both ({result["frames_a"]} '
              f'and {result["frames_b"]} frames)', file=sys.stderr)
        return 2
    print(f'{result["frames_both"]} frames in both ({result["frames_a"]} in A, '
          f'{result["frames_b"]} in B)')
    print(f'{"metric":<28} {"frames":>6} {"mean":>7} {"median":>7}')
    names = {'pearson': 'grid Pearson', 'object_rank_corr': 'risky-object rank corr.',
             'top_overlap': f'top-{args.top_frac:.0%} cell overlap'}
    for metric, s in result['summary'].items():
        print(f'{names[metric]:<28} {s["n"]:>6} {s["mean"]:>7.3f} {s["median"]:>7.3f}')
    if args.json:
        write_json_atomic(args.json, result)
    return 0
