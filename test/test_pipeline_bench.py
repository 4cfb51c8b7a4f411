"""``rsd-drive bench node --bag``: the report's structure on a small recorded drive (no timing is
asserted: speed is measured in benchmarks, never in tests)."""
import json
from argparse import Namespace

import pytest
import yaml
from node_helpers import CAMERAS, make_checkpoint, write_drive_bag

pytestmark = pytest.mark.timeout(300)


def test_bench_node_bag_writes_per_path_per_stage_percentiles(tmp_path):
    from rsd_drive.bench.node_bag import STAGES, run_bag

    bag = tmp_path / 'drive'
    write_drive_bag(bag, duration_s=1.0)
    dataset = tmp_path / 'dataset.yaml'
    dataset.write_text(yaml.safe_dump({'dataset': {
        'reference_camera': CAMERAS[0], 'odom_topic': '/odom', 'intent_topic': '',
        'tf_static_topic': '/tf_static',
        'cameras': [{'name': c, 'image_topic': f'/cameras/{c}/image_raw',
                     'info_topic': f'/cameras/{c}/camera_info'} for c in CAMERAS]}}))
    model = make_checkpoint(tmp_path / 'ckpt')
    out = tmp_path / 'report.json'
    args = Namespace(bag=str(bag), dataset=str(dataset), model=str(model), frames=4, threads=1,
                     variants=['raw'], image_size=None, out=str(tmp_path / 'bench'),
                     json=str(out), node=False)
    assert run_bag(args) == 0
    report = json.loads(out.read_text())
    assert set(report['paths']) == {'raw/today', 'raw/fast'}
    for stages in report['paths'].values():
        assert set(stages) == set(STAGES)
        for p in stages.values():
            assert 0 <= p['p50_ms'] <= p['p99_ms']
    assert report['overhead_path'] == 'raw/fast' and report['overhead_over_inference'] > 0
    assert report['clock'].startswith('wall') and report['meta']['sets'] == 4
    assert 'clock: wall' in (tmp_path / 'bench' / 'bench_node_bag.txt').read_text()
