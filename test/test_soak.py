"""``rsd-drive bench soak``: planner_node on a looped bag in lockstep, its process sampled.

A short soak (well under a minute of wall time, a 2 s bag looped) with the tiny test checkpoint:
the bag is played more than once (``/clock`` jumps back and the node starts over), every set of
every pass is answered, the JSON has the documented fields, and the samples are of the node's
process (its RSS is that of a Python process that loaded rclpy and ONNX Runtime). Nothing here
depends on the machine's speed: the replay waits on the node's answers, the loop on a count of
passes reached by wall time, and the node's start on its 'active:' line."""
import json

import pytest
from node_helpers import CAMERAS, make_checkpoint, planner_params, write_drive_bag

pytestmark = pytest.mark.timeout(400)


def test_soak_loops_the_bag_and_samples_the_node(tmp_path):
    from rsd_drive.bench.soak import format_table, soak

    model = make_checkpoint(tmp_path / 'ckpt')
    bag = tmp_path / 'drive'
    stamps = write_drive_bag(bag, duration_s=2.0)
    base = planner_params(tmp_path, model, max_input_age_s=0.3)
    out = tmp_path / 'soak.json'
    result = soak(bag, model, out, minutes=0.3, work=tmp_path / 'work', sample_s=0.5,
                  window_min=0.1, threads=1, params_base=base)
    print(format_table(result))
    on_disk = json.loads(out.read_text())
    assert on_disk['plans'] == result['plans']
    assert (tmp_path / 'soak.png').stat().st_size > 0
    for key in ('minutes', 'plans', 'rss_mb', 'fds', 'threads', 'latency_ms', 'stages_ms',
                'goals', 'samples'):
        assert key in on_disk, key
    assert set(on_disk['rss_mb']) >= {'start', 'end', 'max'}
    assert set(on_disk['fds']) >= {'start', 'end'}
    assert set(on_disk['threads']) >= {'start', 'end'}
    # played more than once, every camera set of every pass answered or handled by the node
    n_sets = len(stamps['front_stamps'])
    ls = result['lockstep']
    assert result['passes'] >= 2, result
    assert ls['sets'] == n_sets * result['passes'], ls
    assert ls['unanswered'] == 0 and ls['late'] == 0, ls
    assert result['plans'] > n_sets, ls          # later passes plan again after the jump back
    # the samples are the node's: a Python process with rclpy and ONNX Runtime loaded, threads
    assert len(result['samples']) >= 2
    assert result['rss_mb']['max'] > 50 and result['threads']['max'] > 1
    assert result['fds']['start'] > 3
    first = next(v for k, v in result['latency_ms'].items() if k.startswith('first_'))
    assert first['sets'] > 0 and first['p99'] >= first['p50'] > 0
    assert 'inference' in next(v for k, v in result['stages_ms'].items()
                               if k.startswith('last_')), result['stages_ms']
    assert len(CAMERAS) >= 2
