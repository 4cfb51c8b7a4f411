"""The VLM backends on real images with answers in the real formats.

The tiny random VLMs of test_teacher.py answer garbage, so the path from a *real* answer to a
grid cell is tested here: the annotated PandaSet cuboids are projected into the real frames of
the imported drive, written as the answer Qwen2.5-VL gives (``bbox_2d`` in absolute pixels of the
image its processor resized, ``smart_resize`` to multiples of 28), as Qwen2-VL gives (0..1000) and
normalised (0..1), and fed to the ``vlm`` and ``detector+vlm`` backends through their injectable
``chat`` (and ``detector``) hook. The answer's box size comes from the real transformers image
processor, whose size must equal our ``smart_resize``. Every object's risk must land within
``NEAR_M`` of its annotated footprint in base_link. The same answers served by the stand-in
server (``runtime: served``) give bit-identical grids. Skips only when ../shared/data is absent."""
import json

import numpy as np
import pytest
from helpers_bags import read_all

from rsd_drive.data.bag import BagReader, DatasetConfig
from rsd_drive.data.convert import stamp_to_ns
from rsd_drive.model.config import ModelConfig
from rsd_drive.teacher.base import FrameContext
from rsd_drive.teacher.config import TeacherConfig
from rsd_drive.teacher.hf import (QWEN2_5_VL_MAX_PIXELS, QWEN2_5_VL_MIN_PIXELS, VisionChat,
                                  smart_resize)
from rsd_drive.teacher.oracle import box_corners
from rsd_drive.teacher.projection import teacher_grid

from test_pandaset import CAMERAS, Track, odom_matrix, pandaset_bag, seq_dir  # noqa: F401

FRAMES = (4, 12, 28, 45, 60, 72)  # waiting behind the lead car, pulling away, at ~5 m/s
NEAR_M = 1.0                 # stated bound: projected contact point to annotated footprint
MAX_RANGE_M = 25.0
FLAT_TOL_M = 0.15            # "on the ground plane": box bottom within this of base_link z = 0
GRID = ModelConfig().grid
FORMATS = ('absolute', 'norm1000', 'norm1')
# Qwen2.5-VL's released budget, and the 28*28*1280 many deployments set (a 0.69x resize of
# 1920x1080, so a wrong scale would show).
BUDGETS = {'released': QWEN2_5_VL_MAX_PIXELS, '1280_tokens': 28 * 28 * 1280}


def qwen_processor(max_pixels):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import \
        Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil(min_pixels=QWEN2_5_VL_MIN_PIXELS, max_pixels=max_pixels,
                                    patch_size=14, merge_size=2, temporal_patch_size=2)


@pytest.mark.parametrize('hw', [(1080, 1920), (1216, 1936), (480, 640), (20, 3000), (50, 50),
                                (3024, 4032)])
@pytest.mark.parametrize('budget', sorted(BUDGETS))
def test_smart_resize_is_the_processors(hw, budget):
    """Our smart_resize equals the size transformers' Qwen2-VL processor really produces."""
    processor = qwen_processor(BUDGETS[budget])
    grid = processor(images=[np.zeros((*hw, 3), np.uint8)], return_tensors='np')['image_grid_thw']
    assert (int(grid[0][1]) * 14, int(grid[0][2]) * 14) == \
        smart_resize(*hw, max_pixels=BUDGETS[budget])


# -- the drive and its annotated objects in the images -------------------------------------------

@pytest.fixture(scope='module')
def drive(pandaset_bag, repo_root):  # noqa: F811
    cfg = DatasetConfig.from_yaml(repo_root / 'config' / 'pandaset_dataset.yaml')
    with BagReader(pandaset_bag, cfg) as reader:
        frames = [f for f in reader.frames(decode=lambda seq: seq in FRAMES)
                  if f.seq in FRAMES]
        odometry = reader.odometry
    small = read_all(pandaset_bag, ('/odom', '/pandaset/objects'))
    odom = [m for _, m in small['/odom']]
    ego = Track([stamp_to_ns(o.header.stamp) for o in odom],
                [odom_matrix(o.pose.pose) for o in odom])
    objects = [json.loads(m.data) for _, m in small['/pandaset/objects']]
    return frames, odometry, ego, objects


def _at(o, t_ns, stamp_ns):
    dt = (t_ns - stamp_ns) / 1e9
    return {**o, 'x': o['x'] + o['vx'] * dt, 'y': o['y'] + o['vy'] * dt}


def visible_objects(frame, ego, objects_msg):
    """Per camera: [(image box in original pixels, footprint [4, 2] in base_link at t0, label)] of
    the annotated road users fully inside the image, in front, within MAX_RANGE_M, standing on
    the ground plane (bottom within FLAT_TOL_M of z = 0: San Francisco's streets are not flat,
    and the projection of every image teacher assumes a flat road)."""
    out = {}
    base_from_odom = np.linalg.inv(ego.at(frame.stamp_ns))
    for i, cam in enumerate(frame.cameras):
        t_cam = frame.stamps_ns[i]
        cam_from_odom = np.linalg.inv(ego.at(t_cam) @ frame.cam_to_ego[i])
        h, w = frame.image_hw[i]
        found = []
        for o in objects_msg['objects']:
            if o['class'] == 'scenery':
                continue
            p = box_corners(_at(o, t_cam, objects_msg['stamp_ns']))
            c = p @ cam_from_odom[:3, :3].T + cam_from_odom[:3, 3]
            if np.any(c[:, 2] < 1.0):
                continue
            uv = (c @ frame.K[i].T)[:, :2] / c[:, 2:]
            x1, y1 = uv.min(0)
            x2, y2 = uv.max(0)
            if x1 < 0 or y1 < 0 or x2 >= w or y2 >= h or y2 - y1 < 25:
                continue
            b = box_corners(_at(o, frame.stamp_ns, objects_msg['stamp_ns']))
            b = b @ base_from_odom[:3, :3].T + base_from_odom[:3, 3]
            if np.hypot(*b[:, :2].mean(0)) > MAX_RANGE_M or abs(b[:, 2].min()) > FLAT_TOL_M:
                continue  # far, or not standing on the ground plane the projection assumes
            found.append(((float(x1), float(y1), float(x2), float(y2)), b[::2, :2], o['label']))
        out[cam] = found
    return out


def to_answer_coords(box, fmt, image_hw, model_hw):
    """A box in original pixels -> the numbers the model writes in ``fmt``."""
    h, w = image_hw
    if fmt == 'absolute':   # Qwen2.5-VL: integer pixels of the resized image
        mh, mw = model_hw
        return [round(box[0] * mw / w), round(box[1] * mh / h), round(box[2] * mw / w),
                round(box[3] * mh / h)]
    if fmt == 'norm1000':   # Qwen2-VL: integers 0..1000
        return [round(box[0] / w * 1000), round(box[1] / h * 1000), round(box[2] / w * 1000),
                round(box[3] / h * 1000)]
    return [round(box[0] / w, 3), round(box[1] / h, 3), round(box[2] / w, 3),
            round(box[3] / h, 3)]


def footprint_distance(xy, corners) -> float:
    """Distance of a point to a convex quadrilateral (0 inside)."""
    from matplotlib.path import Path as MplPath
    if MplPath(corners).contains_point(xy):
        return 0.0
    d = []
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        s = np.clip(np.dot(xy - a, b - a) / max(np.dot(b - a, b - a), 1e-12), 0.0, 1.0)
        d.append(np.linalg.norm(a + s * (b - a) - xy))
    return float(min(d))


def _order(corners):
    """Bottom corners of box_corners ([-L,-W], [-L,W], [L,-W], [L,W]) in polygon order."""
    return corners[[0, 1, 3, 2]]


class CannedChat:
    """VisionChat's interface with canned answers; the model's input size comes from the real
    transformers image processor through VisionChat's own code (``input_hw``)."""

    model_input_hw = VisionChat.model_input_hw
    box_coords = VisionChat.box_coords
    model_type, path, loaded_via = 'qwen2_5_vl', 'canned', 'canned answers'
    _sizes: dict = {}   # (max_pixels, h, w) -> model input size: the processor runs once per size

    def __init__(self, max_pixels, answers):
        self.max_pixels = max_pixels
        self.image_processor = qwen_processor(max_pixels)
        self.answers, self.prompts = answers, []

    def input_hw(self, image):
        key = (self.max_pixels, *image.shape[:2])
        if key not in self._sizes:
            self._sizes[key] = VisionChat.input_hw(self, image)
        return self._sizes[key]

    def ask(self, image, prompt, max_new_tokens=256):
        self.prompts.append(prompt)
        model_hw = self.input_hw(image)
        return self.answers(image, prompt, model_hw), model_hw


def qwen_text(items) -> str:
    """Qwen2.5-VL's grounding answer layout: a ```json fenced list."""
    return 'Here are the hazards:\n```json\n' + json.dumps(items, indent=2) + '\n```'


def risk_of(k: int) -> float:
    return round(0.35 + 0.15 * (k % 5), 2)


def check_placement(out, frame, expected, fmt):
    """Every answered object lands within NEAR_M of its footprint, with its risk on the grid."""
    grid, kept, rejected = teacher_grid(out, frame, GRID, TeacherConfig().projection)
    assert not rejected and not out.rejected, (rejected, out.rejected)
    assert len(kept) == len(expected)
    distances = []
    for obj, (camera, corners, risk) in zip(kept, expected):
        assert obj.camera == camera and obj.risk == pytest.approx(risk)
        d = footprint_distance(np.array(obj.ground), _order(corners))
        distances.append(d)
        row, col = GRID.cell_of(*obj.ground)
        if row >= 0:  # the risk is on the grid there (cells sample the splat at their centres)
            assert grid[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2].max() >= 0.5 * risk
    return distances


def _vlm_answers(visible, fmt, frame):
    expected = []

    def answers(image, prompt, model_hw):
        cam = next(c for c in frame.cameras if f'({c} camera)' in prompt)
        i = frame.cameras.index(cam)
        items = []
        for k, (box, corners, label) in enumerate(visible[cam]):
            items.append({'bbox_2d': to_answer_coords(box, fmt, frame.image_hw[i], model_hw),
                          'label': label.lower(), 'risk': risk_of(k),
                          'reason': 'close to the ego path'})
            expected.append((cam, corners, risk_of(k)))
        return qwen_text(items)
    return answers, expected


@pytest.mark.parametrize('budget', sorted(BUDGETS))
@pytest.mark.parametrize('fmt', FORMATS)
def test_vlm_answers_land_on_the_annotated_objects(drive, fmt, budget):
    from rsd_drive.teacher.vlm import VlmTeacher

    frames, odometry, ego, objects = drive
    config = TeacherConfig(backend='vlm', cameras=CAMERAS, vlm={'box_coords': fmt})
    all_d = []
    for frame in frames:
        visible = visible_objects(frame, ego, objects[frame.seq])
        answers, expected = _vlm_answers(visible, fmt, frame)
        teacher = VlmTeacher(config, chat=CannedChat(BUDGETS[budget], answers))
        assert teacher.coords == fmt
        out = teacher.label(frame, FrameContext(frame.stamp_ns, (0, 0, 0), np.zeros((20, 2)),
                                                0.0))
        assert out.parsed and len(out.objects) == len(expected) >= 1
        all_d += check_placement(out, frame, expected, fmt)
    d = np.array(all_d)
    print(f'\nvlm {fmt:<8} {budget:<11}: {len(d)} objects, contact point to footprint median '
          f'{np.median(d):.2f} m, p90 {np.percentile(d, 90):.2f} m, max {d.max():.2f} m')
    assert len(d) >= 30 and d.max() <= NEAR_M


def test_absolute_answers_read_as_original_pixels_miss(drive):
    """The control: Qwen2.5-VL's absolute coordinates taken as pixels of the original image
    (the resize ignored) put objects metres off."""
    from rsd_drive.teacher.parse import parse_objects

    frames, odometry, ego, objects = drive
    budget = BUDGETS['1280_tokens']
    misses = []
    for frame in frames:
        visible = visible_objects(frame, ego, objects[frame.seq])
        for i, cam in enumerate(frame.cameras):
            model_hw = smart_resize(*frame.image_hw[i], max_pixels=budget)
            items = [{'bbox_2d': to_answer_coords(box, 'absolute', frame.image_hw[i], model_hw),
                      'risk': 0.5} for box, _, _ in visible[cam]]
            wrong, _ = parse_objects(items, cam, frame.image_hw[i], 'absolute', None)
            out = type('Out', (), {'objects': wrong, 'heatmaps': {}})
            _grid, kept, _ = teacher_grid(out, frame, GRID, TeacherConfig().projection)
            for obj in kept:
                k = wrong.index(obj)
                misses.append(footprint_distance(np.array(obj.ground),
                                                 _order(visible[cam][k][1])))
    print(f'\nabsolute answers read as original pixels: {len(misses)} objects, median '
          f'{np.median(misses):.2f} m off their footprint')
    assert np.median(misses) > 2 * NEAR_M


class CannedDetector:
    """OpenVocabularyDetector's interface: the projected annotated boxes as proposals."""

    model_type, path = 'owlv2', 'canned'

    def __init__(self, frame, visible):
        self.frame, self.visible = frame, visible

    def detect(self, image, queries, min_score, max_proposals):
        cam = next(c for i, c in enumerate(self.frame.cameras)
                   if self.frame.images[i] is image)
        return [(label.lower(), 0.9, box) for box, _, label in self.visible[cam]][:max_proposals]


@pytest.mark.parametrize('fmt', FORMATS)
def test_detector_vlm_ranks_real_proposals(drive, fmt):
    """detector+vlm: the prompt lists the proposals in the answer convention (read back within
    a pixel) and the ranking answer's risks land on the annotated objects."""
    import re

    from rsd_drive.teacher.detector import DetectorVlmTeacher

    frames, odometry, ego, objects = drive
    config = TeacherConfig(backend='detector+vlm', cameras=CAMERAS, vlm={'box_coords': fmt},
                           detector={'max_proposals': 50})
    all_d = []
    for frame in frames:
        visible = visible_objects(frame, ego, objects[frame.seq])
        expected = []

        def answers(image, prompt, model_hw):
            cam = next(c for c in frame.cameras if f'the {c} camera' in prompt)
            i = frame.cameras.index(cam)
            listed = re.findall(r'(\d+): [^\[;]*\[([^\]]*)\]', prompt)
            assert len(listed) == len(visible[cam])
            for (k, numbers), (box, corners, _) in zip(listed, visible[cam]):
                got = [float(v) for v in numbers.split(',')]
                want = to_answer_coords(box, fmt, frame.image_hw[i], model_hw)
                np.testing.assert_allclose(got, want, atol=1.0 if fmt != 'norm1' else 1e-3)
                expected.append((cam, corners, risk_of(int(k))))
            return qwen_text([{'id': int(k), 'risk': risk_of(int(k)), 'reason': 'ahead'}
                              for k, _ in listed])

        teacher = DetectorVlmTeacher(config, chat=CannedChat(BUDGETS['1280_tokens'], answers),
                                     detector=CannedDetector(frame, visible))
        out = teacher.label(frame, FrameContext(frame.stamp_ns, (0, 0, 0), np.zeros((20, 2)),
                                                0.0))
        assert out.parsed and len(out.objects) == len(expected)
        all_d += check_placement(out, frame, expected, fmt)
    d = np.array(all_d)
    print(f'\ndetector+vlm {fmt:<8}: {len(d)} objects, contact point to footprint median '
          f'{np.median(d):.2f} m, max {d.max():.2f} m')
    assert len(d) >= 30 and d.max() <= NEAR_M


def _ranking_answers(frame):
    """detector+vlm: rank every listed proposal (risk by its id), whatever the model size."""
    import re

    def answers(image, prompt, model_hw):
        listed = re.findall(r'(\d+): [^\[;]*\[([^\]]*)\]', prompt)
        return qwen_text([{'id': int(k), 'risk': risk_of(int(k)), 'reason': 'ahead'}
                          for k, _ in listed])
    return answers


@pytest.mark.parametrize('backend', ['vlm', 'detector+vlm'])
def test_served_gives_the_in_process_grids_on_real_frames(drive, backend):
    """Issue 21 on the real PandaSet frames: the same Qwen2.5-VL answers, once through the
    in-process chat (the real transformers processor's size) and once through the stand-in
    server on 127.0.0.1 (the image resized by the client, its size read back by the server), give
    the same parsed objects and bit-identical grids, for ``vlm`` and ``detector+vlm``."""
    from rsd_drive.bench.standin_vlm import StandInVlm
    from rsd_drive.teacher.detector import DetectorVlmTeacher
    from rsd_drive.teacher.served import ServedChat
    from rsd_drive.teacher.vlm import VlmTeacher

    frames, _, ego, objects = drive
    budget = BUDGETS['1280_tokens']
    cls = VlmTeacher if backend == 'vlm' else DetectorVlmTeacher
    n_objects = 0
    with StandInVlm() as server:
        config = TeacherConfig(backend=backend, cameras=CAMERAS, runtime='served',
                               vlm={'box_coords': 'absolute'}, detector={'max_proposals': 50},
                               served={'base_url': server.url, 'model': 'stand-in',
                                       'max_pixels': budget, 'timeout_s': 30.0,
                                       'backoff_s': 0.01, 'backoff_max_s': 0.05})
        for frame in frames:
            visible = visible_objects(frame, ego, objects[frame.seq])
            answers = _vlm_answers(visible, 'absolute', frame)[0] if backend == 'vlm' \
                else _ranking_answers(frame)
            server.answer = lambda prompt, image: answers(None, prompt, image.shape[:2])
            kw = {} if backend == 'vlm' else {'detector': CannedDetector(frame, visible)}
            local = cls(config, chat=CannedChat(budget, answers), **kw)
            served = cls(config, chat=ServedChat(config.served), **kw)
            context = FrameContext(frame.stamp_ns, (0, 0, 0), np.zeros((20, 2)), 0.0)
            a, b = local.label(frame, context), served.label(frame, context)
            assert a.parsed and b.parsed
            assert [o.to_dict() for o in a.objects] == [o.to_dict() for o in b.objects]
            ga = teacher_grid(a, frame, GRID, config.projection)[0]
            gb = teacher_grid(b, frame, GRID, config.projection)[0]
            assert np.array_equal(ga, gb)
            n_objects += len(a.objects)
        sent = server.image_hw
    assert n_objects >= 30 and ga.max() > 0
    # what the server saw is the processor's size of the 1920x1080 frames at this budget
    assert sent == {CannedChat(budget, None).input_hw(frames[0].images[0])}, sent
