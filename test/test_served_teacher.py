"""The served VLM teacher (issue 21) against the stand-in server on 127.0.0.1
(rsd_drive.bench.standin_vlm): the same grids as in process for the same answers, the
concurrency bound, the answer cache (a rerun sends 0 requests; a changed prompt sends new ones),
every fault ending in a labelled frame or a named failure the next run labels, the API key in no
output, the same through Ray with 2 workers, and ``rsd-drive teacher agree``. Every wait is on
a condition the server or the client counts; timeouts name what they waited for."""
import importlib.util
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers_bags import dataset_config, write_drive

from rsd_drive.bench.standin_vlm import StandInVlm, decode_data_url
from rsd_drive.data.bag import BagReader
from rsd_drive.data.index import FrameIndex
from rsd_drive.model.config import ModelConfig
from rsd_drive.teacher.answer_cache import image_digest
from rsd_drive.teacher.config import TeacherConfig
from rsd_drive.teacher.hf import smart_resize
from rsd_drive.teacher.job import make_spec, run_job
from rsd_drive.teacher.projection import teacher_grid
from rsd_drive.teacher.served import ServedChat, image_data_url
from rsd_drive.teacher.vlm import VlmTeacher

pytestmark = pytest.mark.timeout(300)
GRID = ModelConfig().grid
FAST = {'backoff_s': 0.01, 'backoff_max_s': 0.05, 'timeout_s': 5.0, 'model': 'stand-in'}
KEY = 'sk-standin-0123456789-secret'


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    return write_drive(tmp_path_factory.mktemp('drive') / 'drive', cameras=['front'],
                       n_frames=12)


@pytest.fixture
def server():
    with StandInVlm() as s:
        yield s


def teacher_config(served: dict, **kw) -> TeacherConfig:
    return TeacherConfig(backend='vlm', runtime='served', served={**FAST, **served}, **kw)


def label(bags, out, served: dict, grid=None, workers=1, ray_address=None, **kw):
    model = ModelConfig()
    model.num_cameras = 1
    if grid:
        model.grid = model.grid.resized(grid, grid)
    spec = make_spec(out, teacher_config(served, **kw), dataset_config(['front']), model,
                     (32, 32), chunk_frames=4)
    return run_job([str(b) for b in bags], spec, workers=workers, ray_address=ray_address,
                   show_progress=False)


def index_stamps(out) -> list:
    index = FrameIndex(Path(out) / 'index')
    return sorted(int(index[i]['stamps']) for i in range(len(index)))


def failed_frames(summary) -> list:
    return [f for b in summary.bags for f in b.get('failed_frames') or []]


@pytest.fixture(scope='module')
def clean(bag, tmp_path_factory):
    """The drive labelled without faults: the stamps every faulty run must end with."""
    with StandInVlm() as s:
        out = tmp_path_factory.mktemp('clean')
        summary = label([bag], out, {'base_url': s.url})
    assert summary.frames_labelled > 0 and not failed_frames(summary)
    return index_stamps(out)


# -- same answers, same grids --------------------------------------------------------------------

class CannedChat:
    """The in-process backend's chat hook answering from a table (as test_vlm_answers)."""

    model_type, loaded_via, path = 'qwen2_5_vl', 'canned', 'canned'

    def __init__(self, answers):
        self.answers = answers

    def box_coords(self, setting):
        return 'absolute' if setting == 'auto' else setting

    def ask(self, image, prompt, max_new_tokens=256):
        return self.answers[image_digest(image)], smart_resize(*image.shape[:2])


def test_served_and_in_process_give_identical_grids(bag, server):
    """The same Qwen2.5-VL answers (absolute boxes in the smart_resize'd image) through both
    runtimes: identical objects and bit-identical grids."""
    with BagReader(bag, dataset_config(['front'])) as reader:
        frames = list(reader.frames())[:6]
    by_original, by_sent = {}, {}
    for k, f in enumerate(frames):
        img = f.images[0]
        mh, mw = smart_resize(*img.shape[:2])
        text = json.dumps([{'bbox_2d': [5 + k, mh // 2 + k, mw // 2 + 2 * k, mh - 3],
                            'label': 'pedestrian', 'risk': 0.5 + 0.05 * k, 'reason': 'r'}])
        by_original[image_digest(img)] = text
        sent = decode_data_url(image_data_url(img, (mh, mw)))
        assert sent.shape[:2] == (mh, mw)
        by_sent[image_digest(sent)] = text
    server.answer = lambda prompt, image: by_sent[image_digest(image)]
    cfg = teacher_config({'base_url': server.url})
    local = VlmTeacher(cfg, chat=CannedChat(by_original))
    served = VlmTeacher(cfg, chat=ServedChat(cfg.served))
    for f in frames:
        a, b = local.label(f, None), served.label(f, None)
        assert a.answer == b.answer and a.parsed and b.parsed
        assert [o.to_dict() for o in a.objects] == [o.to_dict() for o in b.objects]
        ga, gb = teacher_grid(a, f, GRID, cfg.projection)[0], \
            teacher_grid(b, f, GRID, cfg.projection)[0]
        assert ga.max() > 0 and np.array_equal(ga, gb)
    assert server.image_hw == {smart_resize(*frames[0].images[0].shape[:2])}


# -- concurrency, order, cache -------------------------------------------------------------------

@pytest.mark.parametrize('concurrency', [1, 3])
def test_concurrency_bound_holds_and_frames_stay_in_order(bag, server, clean, tmp_path,
                                                          concurrency):
    server.latency_s = 0.05
    server.gate(concurrency)  # held until `concurrency` are in flight at once
    summary = label([bag], tmp_path, {'base_url': server.url, 'max_concurrency': concurrency})
    assert server.max_in_flight == concurrency and server.gate_timeouts == 0
    assert index_stamps(tmp_path) == clean
    index = FrameIndex(tmp_path / 'index')
    assert [int(index[i]['stamps']) for i in range(len(index))] == clean  # written in order
    assert summary.bags[0]['teacher_stats']['requests'] == len(clean)


def test_rerun_and_relabel_send_no_request_a_new_prompt_does(bag, server, clean, tmp_path):
    served = {'base_url': server.url, 'max_concurrency': 4}
    first = label([bag], tmp_path / 'a', served)
    assert first.bags[0]['teacher_stats']['requests'] == server.requests == len(clean)
    label([bag], tmp_path / 'a', served)                       # rerun: already done
    (tmp_path / 'a' / 'work' / 'drive' / 'done.json').unlink()  # resume: every chunk redone?
    for p in (tmp_path / 'a' / 'work' / 'drive').glob('chunk-*.json'):
        p.unlink()
    resumed = label([bag], tmp_path / 'a', served)
    shared = {**served, 'cache_dir': str(tmp_path / 'a' / 'answers')}
    other_grid = label([bag], tmp_path / 'b', shared, grid=32)
    assert server.requests == len(clean)                       # nothing asked again
    assert resumed.bags[0]['teacher_stats']['cache_hits'] == len(clean)
    assert other_grid.bags[0]['teacher_stats']['cache_hits'] == len(clean)
    cfg = TeacherConfig()
    cfg.vlm.prompt = 'Another prompt for the {camera} camera, boxes in {coords}.'
    label([bag], tmp_path / 'c', shared, vlm=cfg.vlm)
    assert server.requests == 2 * len(clean)
    label([bag], tmp_path / 'd', {**shared, 'model': 'another-model'})
    assert server.requests == 3 * len(clean)


# -- faults --------------------------------------------------------------------------------------

REASONS = {'http_429': 'http_429', 'http_503': 'http_503', 'http_500': 'http_500',
           'http_401': 'http_401', 'timeout': 'timeout', 'drop': 'connection_lost',
           'truncated': 'connection_lost', 'non_json': 'bad_response',
           'length': 'truncated_answer', 'prose': 'answer_no_json'}


@pytest.mark.parametrize('fault', sorted(REASONS) + ['outside'])
def test_every_fault_ends_labelled_or_named_and_the_rerun_labels_it(bag, server, clean,
                                                                    tmp_path, fault):
    server.hold_s = 5.0
    served = {'base_url': server.url, 'max_concurrency': 2, 'max_retries': 1, 'timeout_s': 0.5}
    server.inject(fault, 6)  # more than 2 tries of some request: frames fail
    first = label([bag], tmp_path, served)
    failed = failed_frames(first)
    assert first.frames_labelled + len(failed) == len(clean)
    if fault == 'outside':  # a model answer: labelled, the box rejected by the parser
        assert not failed and first.bags[0]['rejected']['box_outside_image'] == 6
    else:
        assert failed and {f['reason'] for f in failed} == {REASONS[fault]}
    second = label([bag], tmp_path, served)
    assert not failed_frames(second) and index_stamps(tmp_path) == clean


def test_server_down_then_dying_mid_run_and_coming_back(bag, server, clean, tmp_path):
    served = {'base_url': server.url, 'max_concurrency': 2, 'max_retries': 1}
    server.stop()
    down = label([bag], tmp_path / 'down', served)
    assert down.frames_labelled == 0
    assert {f['reason'] for f in failed_frames(down)} == {'connection_refused'}
    server.start()
    assert not failed_frames(label([bag], tmp_path / 'down', served))
    assert index_stamps(tmp_path / 'down') == clean

    # Mid-run: it dies after 3 answers and comes back once the client has met a refusal.
    from rsd_drive.teacher import job
    served = {**served, 'max_retries': 8, 'backoff_s': 0.05, 'backoff_max_s': 0.2}
    server.die_after(3)
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        s=label([bag], tmp_path / 'mid', served)))
    worker.start()
    deadline = time.monotonic() + 60
    while not any(t.chat.stats().get('error:connection_refused') for t in
                  list(job._TEACHERS.values()) if t.config.served.max_retries == 8):
        assert time.monotonic() < deadline, 'waited 60 s for the client to meet a refusal'
        time.sleep(0.01)
    server.start()
    worker.join(60)
    assert not worker.is_alive(), 'waited 60 s for the labeling run to end'
    assert not failed_frames(result['s']) and index_stamps(tmp_path / 'mid') == clean


# -- the key, the command line -------------------------------------------------------------------

def test_the_key_is_in_no_output_file_nor_the_report(bag, tmp_path, monkeypatch, capsys,
                                                     repo_root):
    import yaml

    from rsd_drive.cli import main

    monkeypatch.setenv('RSD_TEST_VLM_KEY', KEY)
    config = yaml.safe_load((repo_root / 'config' / 'teacher.yaml').read_text())
    config['teacher'].update(backend='vlm', runtime='served', cameras=['front'])
    config['teacher']['served'].update(FAST, api_key_env='RSD_TEST_VLM_KEY', max_retries=1)
    (tmp_path / 'teacher.yaml').write_text(yaml.safe_dump(config))
    (tmp_path / 'dataset.yaml').write_text(
        yaml.safe_dump({'dataset': dataset_config(['front']).to_dict()}))
    with StandInVlm(api_key=KEY) as server:
        args = ['label', str(bag), '--out', str(tmp_path / 'out'), '--served', server.url,
                '--config', str(tmp_path / 'teacher.yaml'), '--dataset-config',
                str(tmp_path / 'dataset.yaml'), '--image-size', '32x32', '--no-progress']
        server.inject('http_503', 4)
        assert main(args) == 0
        assert server.answered > 0 and server.faults_sent == {'http_503': 4}
        monkeypatch.setenv('RSD_TEST_VLM_KEY', 'a-wrong-key')  # diagnostics of refusals too
        args[3] = str(tmp_path / 'out2')
        assert main(args) == 1
    report = capsys.readouterr()
    assert 'requests sent' in report.out and 'cache hits' in report.out
    assert 'http_401' in report.out
    files = [p for p in tmp_path.rglob('*') if p.is_file()]
    assert len(files) > 10
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p
    assert KEY not in report.out + report.err


def test_teacher_agree(bag, server, tmp_path, capsys):
    from rsd_drive.cli import main

    label([bag], tmp_path / 'a', {'base_url': server.url})
    server.answer = lambda prompt, image: json.dumps([{'bbox_2d': [5, 30, 30, 52],
                                                       'label': 'car', 'risk': 0.4}])
    label([bag], tmp_path / 'b', {'base_url': server.url, 'model': 'other'})
    assert main(['teacher', 'agree', str(tmp_path / 'a'), str(tmp_path / 'a'),
                 '--json', str(tmp_path / 'aa.json')]) == 0
    same = json.loads((tmp_path / 'aa.json').read_text())['summary']
    assert same['pearson']['mean'] == pytest.approx(1.0)
    assert same['top_overlap']['mean'] == pytest.approx(1.0)
    assert main(['teacher', 'agree', str(tmp_path / 'a'), str(tmp_path / 'b'),
                 '--json', str(tmp_path / 'ab.json')]) == 0
    other = json.loads((tmp_path / 'ab.json').read_text())
    assert other['frames_both'] > 0 and other['summary']['pearson']['mean'] < 0.9
    assert 'grid Pearson' in capsys.readouterr().out


# -- Ray -----------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec('ray') is None, reason='ray is not installed')
def test_two_ray_workers_share_the_server(bag, server, clean, tmp_path):
    from rsd_drive.teacher.ray_run import connect, import_ray

    ray = import_ray('local')
    assert connect('local', num_cpus=2)
    try:
        bags = [bag, write_drive(tmp_path / 'second', cameras=['front'], n_frames=12)]
        served = {'base_url': server.url, 'max_concurrency': 8, 'cluster_concurrency': 2,
                  'max_retries': 0}
        server.latency_s = 0.02
        server.inject('http_500', 3)
        first = label(bags, tmp_path / 'out', served, ray_address='local')
        assert server.max_in_flight <= 2  # 2 workers x (2 // 2)
        failed = failed_frames(first)
        assert failed and {f['reason'] for f in failed} == {'http_500'}
        assert first.frames_labelled + len(failed) == 2 * len(clean)
        second = label(bags, tmp_path / 'out', served, ray_address='local')
        assert not failed_frames(second) and second.frames_labelled == 2 * len(clean)
        asked = server.requests
        label(bags, tmp_path / 'out', served, ray_address='local')
        assert server.requests == asked  # a rerun sends nothing
    finally:
        ray.shutdown()
