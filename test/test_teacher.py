"""The teacher: answer parsing, BEV projection, the scene oracle, and each backend's tiny model
loaded back through from_pretrained from a local directory."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from helpers_bags import START_NS, camera_K, camera_mount, dataset_config, write_drive
from rsd_drive.data.bag import BagReader, SyncedFrame
from rsd_drive.data.targets import TargetConfig, build_targets
from rsd_drive.geometry import GridSpec, project_points
from rsd_drive.model.config import ModelConfig
from rsd_drive.teacher.base import FrameContext, RiskyObject, TeacherOutput
from rsd_drive.teacher.factory import build_teacher
from rsd_drive.teacher.config import ProjectionConfig, TeacherConfig, TeacherFile
from rsd_drive.teacher.oracle import object_risk
from rsd_drive.teacher.parse import (ParseError, extract_json, parse_objects, parse_rankings,
                                     parse_risk)
from rsd_drive.teacher.projection import ground_from_box, project_heatmaps, teacher_grid

GRID = ModelConfig().grid
PROJ = ProjectionConfig()


# -- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize('text', [
    '[{"bbox_2d": [1, 2, 3, 4], "label": "car", "risk": 0.5}]',
    'Sure! Here are the risky objects:\n```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "car", '
    '"risk": 0.5}]\n```\nDrive safely.',
    'The answer is [{"bbox_2d": [1, 2, 3, 4], "label": "car", "risk": 0.5},] as requested',
    "[{'bbox_2d': [1, 2, 3, 4], 'label': 'car', 'risk': 0.5}]",
    '{"objects": [{"bbox_2d": [1, 2, 3, 4], "label": "car", "risk": 0.5}]}',
])
def test_json_is_found_in_free_text(text):
    objects, rejected = parse_objects(extract_json(text), 'front', (48, 64), 'absolute')
    assert len(objects) == 1 and not rejected
    assert objects[0].box == (1.0, 2.0, 3.0, 4.0) and objects[0].risk == 0.5
    assert objects[0].label == 'car' and objects[0].camera == 'front'


@pytest.mark.parametrize('text', ['', '   ', 'no objects here', '{"bbox_2d": [1, 2,',
                                  '\x00\x1d\ufffd'])
def test_no_json_raises_a_counted_reason(text):
    with pytest.raises(ParseError) as e:
        extract_json(text)
    assert e.value.reason in ('no_json', 'empty_answer')


def test_garbage_objects_are_counted_and_dropped():
    data = extract_json(json.dumps([
        {'bbox_2d': [100, 100, 200, 200], 'label': 'far', 'risk': 0.5},   # outside 64x48
        {'bbox_2d': [30, 20, 10, 5], 'label': 'swapped', 'risk': 'high'},  # repaired
        {'bbox_2d': [1, 2, 3], 'risk': 0.5},
        {'bbox_2d': [1, 1, 1.2, 9], 'risk': 0.5},                          # degenerate
        {'bbox_2d': ['a', 2, 3, 4], 'risk': 0.5},
        {'bbox_2d': [1, 2, 30, 40], 'risk': 7},
        {'bbox_2d': [1, 2, 30, 40], 'risk': float('nan')},
        {'label': 'no box', 'risk': 0.3},
        'just a string',
        {'bbox_2d': [-10, -10, 20, 60], 'risk': 0.2},                      # clipped
    ]))
    objects, rejected = parse_objects(data, 'front', (48, 64), 'absolute')
    assert [o.label for o in objects] == ['swapped', 'object']
    assert objects[0].box == (10.0, 5.0, 30.0, 20.0) and objects[0].risk == 0.8
    assert objects[1].box == (0.0, 0.0, 20.0, 48.0)
    assert rejected == {'box_outside_image': 1, 'bad_box': 2, 'degenerate_box': 1,
                        'bad_risk': 2, 'no_box': 1, 'not_an_object': 1}


def test_box_conventions():
    data = [{'bbox_2d': [500, 500, 1000, 1000], 'risk': 1}]
    objs, _ = parse_objects(data, 'front', (48, 64), 'norm1000')
    assert objs[0].box == (32.0, 24.0, 64.0, 48.0)
    objs, _ = parse_objects(data, 'front', (48, 64), 'absolute', model_hw=(1000, 2000))
    assert objs[0].box == (16.0, 24.0, 32.0, 48.0)
    scores, rejected = parse_rankings([{'id': 1, 'risk': 0.4, 'reason': 'close'},
                                       {'id': 5, 'risk': 0.4}, {'id': 0, 'risk': -1}], 3)
    assert scores == {1: (0.4, 'close')} and rejected == {'bad_id': 1, 'bad_risk': 1}
    assert parse_risk('0.3') == 0.3 and parse_risk(True) is None and parse_risk('low') == 0.25


# -- projection ---------------------------------------------------------------------------------
def synthetic_frame(cameras=('front',), hw=(48, 64)):
    return SyncedFrame(0, START_NS, [START_NS] * len(cameras), list(cameras), None,
                       np.stack([camera_K() for _ in cameras]),
                       np.stack([camera_mount(c) for c in cameras]), [hw] * len(cameras))


@pytest.mark.parametrize('ground', [(10.2, 1.3), (6.3, -2.2), (25.0, 4.3)])  # off cell edges
def test_box_of_known_ground_position_lands_in_its_cell(ground):
    frame = synthetic_frame()
    K, T = frame.K[0], frame.cam_to_ego[0]
    # A 1.8 m wide object standing at ``ground``: its box's bottom centre is the contact point.
    (u, v), = project_points(np.array([[ground[0], ground[1], 0.0]]), K, T)[0]
    (ul, _), = project_points(np.array([[ground[0], ground[1] + 0.9, 0.0]]), K, T)[0]
    (ur, _), = project_points(np.array([[ground[0], ground[1] - 0.9, 0.0]]), K, T)[0]
    box = (ul, v - 15.0, ur, v)
    x, y, width = ground_from_box(box, K, T, PROJ)
    assert (x, y) == pytest.approx(ground, abs=1e-6)
    assert width == pytest.approx(1.8, rel=0.05)
    out = TeacherOutput(objects=[RiskyObject('car', 0.9, camera='front', box=box)])
    grid, kept, rejected = teacher_grid(out, frame, GRID, PROJ)
    assert grid.shape == (GRID.rows, GRID.cols) and not rejected and len(kept) == 1
    row, col = np.unravel_index(np.argmax(grid), grid.shape)
    assert (row, col) == tuple(int(c) for c in GRID.cell_of(*ground))
    assert grid.max() == pytest.approx(0.9, abs=0.1)
    # The footprint follows the width: ~1 m beside the centre still carries risk, 4 m does not.
    r, c = GRID.cell_of(ground[0], ground[1] + 1.0)
    assert grid[r, c] > 0.25
    r, c = GRID.cell_of(ground[0], ground[1] + 4.0)
    assert grid[r, c] < 0.05


def test_boxes_above_the_horizon_or_too_wide_are_rejected():
    frame = synthetic_frame()
    out = TeacherOutput(objects=[RiskyObject('sky', 0.9, camera='front', box=(10, 0, 20, 3)),
                                 RiskyObject('wall', 0.9, camera='front', box=(0, 10, 64, 23)),
                                 RiskyObject('ghost', 0.9, camera='rear', box=(0, 20, 5, 30))])
    grid, kept, rejected = teacher_grid(out, frame, GRID, PROJ)
    assert kept == [] and grid.max() == 0.0
    assert rejected == {'above_horizon': 1, 'too_wide': 1, 'no_location': 1}


def test_heatmap_is_warped_onto_the_ground_below_the_horizon():
    frame = synthetic_frame()
    K, T = frame.K[0], frame.cam_to_ego[0]
    heat = np.zeros((96, 128), np.float32)  # twice the image resolution
    (u, v), = project_points(np.array([[12.0, -2.0, 0.0]]), K, T)[0]
    heat[int(round(2 * v + 0.5)) - 3:int(round(2 * v + 0.5)) + 3,
         int(round(2 * u + 0.5)) - 3:int(round(2 * u + 0.5)) + 3] = 1.0
    heat[:5] = 1.0  # sky: above the horizon, must never reach the grid
    grid, rejected = project_heatmaps({'front': heat}, frame, GRID, PROJ)
    assert grid[GRID.cell_of(12.0, -2.0)] > 0.9
    xs, ys = GRID.cell_centers()
    hot = grid > 0.5
    # A few pixels span metres of depth at 12 m: the spot stretches along x, not along y.
    assert abs(xs[hot].mean() - 12.0) < 2.5 and abs(ys[hot].mean() + 2.0) < 0.5
    behind = GRID.cell_of(-5.0, 0.0)
    assert grid[behind] == 0.0
    assert grid.sum() < 20  # only the hot spot, not the sky band
    _, rejected = project_heatmaps({'front': np.full((4, 4), np.nan)}, frame, GRID, PROJ)
    assert rejected == {'nan_heatmap': 1}


# -- scene oracle -------------------------------------------------------------------------------
def test_oracle_risk_from_time_to_collision_and_path_distance():
    cfg = TeacherConfig().oracle
    future = np.stack([np.arange(1, 21) * 2.0, np.zeros(20)], axis=1)  # 8 m/s straight
    base = {'z': 0.85, 'yaw': 0.0, 'length': 0.6, 'width': 0.6, 'height': 1.7}
    crossing = {**base, 'x': 12.0, 'y': -3.0, 'vx': 0.0, 'vy': 2.0}
    risk, ttc, _ = object_risk(crossing, future, 4.0, cfg)
    assert ttc is not None and 1.0 <= ttc <= 2.0 and risk == pytest.approx(1 - ttc / 5.0)
    beside = {**base, 'x': 20.0, 'y': 2.5, 'vx': 0.0, 'vy': 0.0}
    risk_b, ttc_b, clearance = object_risk(beside, future, 4.0, cfg)
    assert ttc_b is None and clearance == pytest.approx(1.2) and 0.3 < risk_b < 0.6
    far = {**base, 'x': 20.0, 'y': 15.0, 'vx': 0.0, 'vy': 0.0}
    assert object_risk(far, future, 4.0, cfg)[0] < 0.01


@pytest.fixture(scope='module')
def drive(tmp_path_factory):
    return write_drive(tmp_path_factory.mktemp('drive') / 'drive', n_frames=3)


def frame_and_context(bag, cameras=None):
    with BagReader(bag, dataset_config(cameras)) as reader:
        frame = next(reader.frames())
        t = build_targets(reader.odometry, frame.stamp_ns, TargetConfig())
        ego = reader.odometry.at(frame.stamp_ns)
        ctx = FrameContext(frame.stamp_ns, (ego.x, ego.y, ego.yaw), t.future, t.init_speed,
                           objects=reader.objects_at(frame.stamp_ns), odometry=reader.odometry)
    return frame, ctx


def test_scene_oracle_on_a_recorded_drive(drive):
    frame, ctx = frame_and_context(drive)
    teacher = build_teacher(TeacherConfig(backend='scene-oracle'))
    out = teacher.label(frame, ctx)
    assert out.parsed and teacher.needs_objects
    by_label = {o.label: o for o in out.objects}
    ped = by_label['pedestrian']  # crossing 14 m ahead: collision course
    assert ped.ground == pytest.approx((14.0, -3.0), abs=1e-6) and ped.risk > 0.5
    assert 'collision' in ped.reason and ped.camera in ('front', 'front_right')
    i = frame.cameras.index(ped.camera)
    (u, v), = project_points(np.array([[14.0, -3.0, 0.85]]), frame.K[i], frame.cam_to_ego[i])[0]
    x1, y1, x2, y2 = ped.box
    assert x1 <= u <= x2 and y1 <= v <= y2
    grid, kept, _ = teacher_grid(out, frame, GRID, PROJ)
    assert len(kept) == len(out.objects) >= 2
    for obj in kept:  # every object's risk is splatted at its own cell
        assert grid[GRID.cell_of(*obj.ground)] >= 0.5 * obj.risk
    assert grid[GRID.cell_of(0.0, 20.0)] < 1e-3  # nothing there
    assert json.loads(out.answer)[0]['label'] in by_label
    ctx.objects = None
    assert not teacher.label(frame, ctx).parsed


# -- model backends (tiny random models, real loading code) --------------------------------------
@pytest.fixture(scope='module')
def models(tmp_path_factory):
    from rsd_drive.teacher.tiny import (build_tiny_clipseg, build_tiny_detector,
                                        build_tiny_vlm)
    root = tmp_path_factory.mktemp('models')
    return {'qwen2_5_vl': build_tiny_vlm(root / 'qwen25'),
            'qwen2_vl': build_tiny_vlm(root / 'qwen2', arch='qwen2_vl'),
            'detector': build_tiny_detector(root / 'owlvit'),
            'clipseg': build_tiny_clipseg(root / 'clipseg')}


@pytest.mark.parametrize('arch', ['qwen2_5_vl', 'qwen2_vl'])
def test_vlm_backend_survives_garbage_answers(models, drive, arch):
    frame, ctx = frame_and_context(drive)
    cfg = TeacherConfig(backend='vlm', model_dir=str(models[arch]), cameras=['front', 'back'],
                        vlm={'max_new_tokens': 12})
    teacher = build_teacher(cfg)
    assert teacher.chat.model_type == arch
    assert teacher.coords == ('absolute' if arch == 'qwen2_5_vl' else 'norm1000')
    out = teacher.label(frame, ctx)
    answers = json.loads(out.answer)
    assert set(answers) == {'front', 'back'} and all(isinstance(a, str) for a in answers.values())
    # Random weights: whatever came out was parsed or counted, never raised; the frame counts
    # as answered only if every camera's answer held JSON.
    unreadable = out.rejected['no_json'] + out.rejected['empty_answer']
    assert out.parsed == (unreadable == 0)
    grid, _, _ = teacher_grid(out, frame, GRID, PROJ)
    assert grid.shape == (GRID.rows, GRID.cols) and np.all((grid >= 0) & (grid <= 1))
    text, model_hw = teacher.chat.ask(frame.images[0], 'hello', max_new_tokens=3)
    assert isinstance(text, str) and model_hw[0] % 28 == 0 and model_hw[1] % 28 == 0


def test_detector_proposes_boxes_inside_the_image(models, drive):
    from rsd_drive.teacher.detector import OpenVocabularyDetector
    frame, ctx = frame_and_context(drive)
    det = OpenVocabularyDetector(models['detector'])
    props = det.detect(frame.images[0], ['car', 'pedestrian'], min_score=0.0, max_proposals=4)
    assert 1 <= len(props) <= 4
    for label, score, (x1, y1, x2, y2) in props:
        assert label in ('car', 'pedestrian') and 0 <= score <= 1
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 48
    cfg = TeacherConfig(backend='detector+vlm', model_dir=str(models['qwen2_5_vl']),
                        detector_dir=str(models['detector']),
                        detector={'min_score': 0.0, 'max_proposals': 2},
                        vlm={'max_new_tokens': 8})
    out = build_teacher(cfg).label(frame, ctx)
    answer = json.loads(out.answer)['front']
    assert 1 <= len(answer['proposals']) <= 2 and isinstance(answer['answer'], str)
    assert out.parsed == (out.rejected['no_json'] + out.rejected['empty_answer'] == 0)


def test_clipseg_heatmaps_become_a_ground_grid(models, drive):
    frame, ctx = frame_and_context(drive)
    cfg = TeacherConfig(backend='clipseg', model_dir=str(models['clipseg']),
                        clipseg={'min_heat': 0.0, 'prompts': [
                            {'text': 'pedestrian crossing the road', 'risk': 1.0},
                            {'text': 'car', 'risk': 0.5}]})
    out = build_teacher(cfg).label(frame, ctx)
    heat = out.heatmaps['front']
    assert heat.shape == (64, 64) and np.all((heat >= 0) & (heat <= 1)) and heat.max() > 0
    grid, _, _ = teacher_grid(out, frame, GRID, PROJ)
    behind = GRID.cell_of(-8.0, 0.0)
    ahead = GRID.cell_of(15.0, 0.0)
    assert grid[behind] == 0.0 and grid[ahead] > 0.0  # front camera only sees ahead


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='no config.json'):
        build_teacher(TeacherConfig(backend='vlm', model_dir=str(tmp_path)))
    with pytest.raises(ValueError, match='no model directory'):
        build_teacher(TeacherConfig(backend='clipseg'))


def test_config_file_loads_and_rejects_typos(tmp_path):
    cfg = TeacherFile.load()
    assert cfg.teacher.backend == 'scene-oracle' and cfg.label.chunk_frames > 0
    assert '{camera}' in cfg.teacher.vlm.prompt and '{{' in cfg.teacher.vlm.prompt
    cfg.teacher.vlm.prompt.format(camera='front', coords='pixels')  # a valid format string
    bad = tmp_path / 'teacher.yaml'
    bad.write_text('teacher:\n  backend: vlm\n  vlm: {max_new_tokns: 3}\n')
    with pytest.raises(ValueError, match='max_new_tokns'):
        TeacherFile.load(bad)
    bad.write_text('teacher:\n  backend: magic\n')
    with pytest.raises(ValueError, match='backend'):
        TeacherFile.load(bad)
    assert isinstance(GridSpec(**ModelConfig().grid.to_dict()), GridSpec)
    assert math.isclose(GRID.resolution * GRID.cols, GRID.x_max - GRID.origin_x)


def test_shipped_teacher_yaml_lists_every_oracle_and_projection_field():
    """config/teacher.yaml is where a user looks: every field of the oracle and the projection
    is written out there, with the value the code would default to."""
    import dataclasses

    import yaml

    from rsd_drive.teacher.config import OracleConfig, ProjectionConfig

    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / 'config' /
                              'teacher.yaml').read_text())['teacher']
    for key, cls in (('oracle', OracleConfig), ('projection', ProjectionConfig)):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        assert shipped[key] == defaults, key
