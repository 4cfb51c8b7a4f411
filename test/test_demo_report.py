"""The demo's per-family table: per-seed means over each family's frames, mean ± sd over seeds,
constant velocity once; and the frame -> family map read from the index's shard metadata."""
import numpy as np
import pytest
from helpers_index import make_frame

from rsd_drive.data.index import ShardWriter
from rsd_drive.demo import frame_families
from rsd_drive.demo_report import family_stats, family_table


def _run(variant, seed, rng, frames):
    pf = {'frame': list(range(frames))}
    for who in ('model', 'cv'):
        for key in ('rfs', 'ade_3s', 'ade_5s', 'risk_pearson'):
            pf[f'{who}.{key}'] = rng.uniform(0, 10, frames).tolist()
    return {'variant': variant, 'seed': seed, 'per_frame': pf}


def test_family_stats_are_means_over_the_family_frames():
    rng = np.random.default_rng(0)
    families = ['cruise'] * 3 + ['lead_brake'] * 5
    runs = [_run(v, s, rng, 8) for v in ('lambda=0', 'ego-status-only') for s in (0, 1, 2)]
    stats = family_stats(runs, families)
    assert list(stats) == ['overall', 'cruise', 'lead_brake']
    mask = np.array(families) == 'lead_brake'
    got = stats['lead_brake']['ego-status-only']['rfs']
    want = [np.mean(np.array(r['per_frame']['model.rfs'])[mask]) for r in runs[3:]]
    assert got == pytest.approx(want)
    assert stats['lead_brake']['ego-status-only']['frames'] == 5
    cv = stats['cruise']['constant velocity']['ade_5s']
    assert cv == pytest.approx([np.mean(runs[0]['per_frame']['cv.ade_5s'][:3])])
    table = family_table(stats)
    v = np.array(want)
    assert f'| lead_brake | 5 | ego-status-only | 3 | {v.mean():.2f} ± {v.std(ddof=1):.2f} |' \
        in table
    assert '| overall | 8 | constant velocity | - |' in table


def test_frame_families_follow_the_shard_bags(tmp_path):
    rng = np.random.default_rng(1)
    bags = {str(tmp_path / 'a' / 'drive_0000'): 'cruise',
            str(tmp_path / 'b' / 'drive_0100'): 'cut_in'}
    for k, bag in enumerate(bags):
        writer = ShardWriter(tmp_path / 'index', f'bag{k}-00000', meta={'bag': bag})
        for _ in range(2 + k):
            writer.add(**make_frame(rng))
        writer.commit()
    assert frame_families(tmp_path / 'index', bags) == ['cruise'] * 2 + ['cut_in'] * 3
    assert frame_families(tmp_path / 'index', {}) == ['unknown'] * 5
