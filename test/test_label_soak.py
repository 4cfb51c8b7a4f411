"""``rsd-drive bench label_soak``: one bag labelled by the process pool and as a Ray task, the
memory of the driver and of every process below it sampled from /proc while it runs. Short
(a 6 s drive, the tiny random VLM): the samples are real and of the right processes (the pool
path labels one bag in the driver, which holds torch; Ray's processes run below the driver),
every frame is labelled, the JSON-able summary has its fields. Flatness over minutes is the
benchmark's, not a test's."""
import importlib.util
import json

import pytest
from helpers_bags import dataset_config, write_drive

from rsd_drive.bench.label_soak import format_table, soak_runner
from rsd_drive.model.config import ModelConfig
from rsd_drive.teacher.config import TeacherConfig
from rsd_drive.teacher.job import make_spec

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    from rsd_drive.teacher.tiny import build_tiny_vlm

    root = tmp_path_factory.mktemp('label_soak')
    bag = write_drive(root / 'drive', cameras=['front'], n_frames=60)
    vlm = build_tiny_vlm(root / 'vlm')
    return root, bag, vlm


@pytest.mark.parametrize('runner', [
    'pool', pytest.param('ray', marks=pytest.mark.skipif(
        importlib.util.find_spec('ray') is None, reason='ray is not installed'))])
def test_label_soak_samples_the_labelling_processes(setup, runner):
    root, bag, vlm = setup
    model = ModelConfig()
    model.num_cameras = 1
    teacher = TeacherConfig(backend='vlm', model_dir=str(vlm), unparsable_answer='empty',
                            vlm={'max_new_tokens': 8})
    spec = make_spec(root / f'out_{runner}', teacher, dataset_config(['front']), model,
                     (32, 32), chunk_frames=8)
    result = soak_runner(bag, spec, runner, sample_s=0.2)
    print(format_table([result]))
    json.dumps(result)  # the JSON the bench writes
    assert result['failed_bags'] == 0 and result['frames'] > 0
    mem = result['memory']
    assert len(result['samples']) >= 2
    assert mem['driver_mb']['max'] > 50            # a Python process with torch loaded
    if runner == 'ray':  # GCS, raylet, the worker that labels
        assert mem['processes_below_max'] >= 3 and mem['below_mb']['max'] > 100
    for key in ('driver_mb', 'below_mb'):
        assert set(mem[key]) >= {'start', 'after_1min', 'end', 'max', 'growth_after_1min'}
    assert isinstance(mem['flat'], bool)
