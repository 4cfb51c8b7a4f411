"""The fast input path of FramePlanner (rsd_drive/deploy/pipeline.py): reduced-scale JPEG decode,
one remap per camera (undistort + resize), preallocated buffers, zero-copy raw Images, and feeds
in the dtype the exported graph takes. Preprocessing only: no inference backend is needed here
(test_planner_node.py runs FramePlanner.plan on a real ONNX Runtime backend)."""
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from rsd_drive.data.bag import build_message, header_msg
from rsd_drive.data.camera_model import Distortion, build_remap
from rsd_drive.deploy.backends import input_specs
from rsd_drive.deploy.pipeline import CameraCalibration, FrameError, FramePlanner
from rsd_drive.geometry import camera_to_ego, intrinsics, resize_intrinsics
from rsd_drive.model import ModelConfig

TS = get_typestore(Stores.ROS2_JAZZY)
PANDASET = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'pandaset_002'
CAMS = ['front', 'left']


def planner(image_dtype=np.float32, hw=(112, 224), cams=CAMS, legacy=False):
    cfg = ModelConfig(num_cameras=len(cams), image_height=hw[0], image_width=hw[1])
    specs = input_specs(cfg)
    specs['images'] = (specs['images'][0], np.dtype(image_dtype))
    return FramePlanner(SimpleNamespace(config=cfg, specs=specs), cams, legacy=legacy)


def scene(hw, seed=0) -> np.ndarray:
    """A smooth, textured RGB test image (JPEG-friendly, with detail at every scale)."""
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float32)
    rng = np.random.default_rng(seed)
    img = np.stack([127 + 100 * np.sin(xx / (23 + 7 * c) + rng.uniform(0, 6))
                    * np.cos(yy / (31 + 5 * c)) for c in range(3)], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg_msg(rgb: np.ndarray, quality=92):
    ok, buf = cv2.imencode('.jpg', rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return build_message(TS, 'sensor_msgs/msg/CompressedImage', header=header_msg(TS, 1, 'cam'),
                         format='jpeg', data=buf.reshape(-1))


def raw_msg(rgb: np.ndarray, encoding='rgb8'):
    pixels = rgb[:, :, ::-1] if encoding == 'bgr8' else rgb
    h, w = rgb.shape[:2]
    return build_message(TS, 'sensor_msgs/msg/Image', header=header_msg(TS, 1, 'cam'), height=h,
                         width=w, encoding=encoding, step=w * 3,
                         data=np.ascontiguousarray(pixels).reshape(-1))


def calib(hw, distortion=None, yaw=0.0):
    f = 0.6 * hw[1]
    K = intrinsics(f, f, (hw[1] - 1) / 2 + 3.0, (hw[0] - 1) / 2 - 2.0)
    return CameraCalibration(K, tuple(hw), camera_to_ego(1.0, 0.0, 1.6, yaw, 0.05), distortion)


PAST = np.zeros((16, 4), np.float32)


def test_fast_jpeg_path_matches_todays_path_with_the_same_intrinsics():
    hw = (1080, 1920)
    images = [scene(hw, i) for i in range(2)]
    msgs, calibs = [jpeg_msg(im) for im in images], [calib(hw), calib(hw, yaw=1.0)]
    fast, old = planner(), planner(legacy=True)
    decoded = fast.decode(msgs, calibs)
    assert [d.scale for d in decoded] == [8, 8]  # 1080p -> 112x224 decodes at 1/8
    assert decoded[0].image.shape == (135, 240, 3)
    a = fast.preprocess(decoded, calibs, PAST, 1)
    b = old.preprocess(old.decode(msgs), calibs, PAST, 1)
    assert a['images'].shape == b['images'].shape == (1, 2, 3, 112, 224)
    assert a['images'].dtype == np.float32
    np.testing.assert_allclose(a['intrinsics'], b['intrinsics'], rtol=1e-6)
    np.testing.assert_array_equal(a['cam_to_ego'], b['cam_to_ego'])
    diff = np.abs(a['images'] - b['images']) * 255
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12.0
    assert a['intent'].tolist() == [1] and a['past_states'].shape == (1, 16, 4)


@pytest.mark.parametrize('distorted', [False, True])
def test_the_labeler_and_the_node_see_the_same_model_input(distorted):
    """index_frame (the labeler's training index, from a frame the bag reader decoded) and the
    node's fast path give identical pixels and intrinsics for a JPEG camera: both decode at
    libjpeg's reduced scale and remap with the same table. A frame without its messages (full
    decode + box reduction) is the same up to JPEG's scaled IDCT."""
    from rsd_drive.data.bag import SyncedFrame
    from rsd_drive.data.targets import Targets, index_frame

    hw = (1080, 1920)
    lens = Distortion('plumb_bob', (-0.2, 0.05, 0.001, -0.001, 0.0)) if distorted else None
    msgs = [jpeg_msg(scene(hw, 4)), jpeg_msg(scene(hw, 5))]
    cals = [calib(hw, lens), calib(hw, lens, yaw=1.0)]
    node = planner(np.uint8)
    feeds = node.preprocess(node.decode(msgs, cals), cals, PAST, 0)
    full = [cv2.imdecode(np.frombuffer(bytes(m.data), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            for m in msgs]
    targets = Targets(PAST, np.zeros((20, 2), np.float32), 0.0, 0, 'topic')

    def index(messages):
        frame = SyncedFrame(0, 1, [1, 1], CAMS, full, np.stack([c.K for c in cals]),
                            np.stack([c.cam_to_ego for c in cals]), [hw, hw], [lens, lens],
                            messages)
        return index_frame(frame, targets, np.zeros((4, 4), np.float32), (112, 224))

    exact, approx = index(msgs), index(None)
    np.testing.assert_array_equal(exact['images'], feeds['images'][0].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(exact['intrinsics'], feeds['intrinsics'][0])
    diff = np.abs(approx['images'].astype(int) - exact['images'])
    assert 0 < diff.mean() < 2.0
    np.testing.assert_allclose(approx['intrinsics'], exact['intrinsics'], rtol=1e-6)


def test_uint8_graphs_get_uint8_feeds_in_reused_buffers():
    hw = (540, 960)
    msgs = [jpeg_msg(scene(hw, i)) for i in range(2)]
    calibs = [calib(hw), calib(hw)]
    p = planner(np.uint8)
    first = p.preprocess(p.decode(msgs, calibs), calibs, PAST, 0, copy=False)
    assert first['images'].dtype == np.uint8 and first['images'] is p._u8
    again = p.preprocess(p.decode(msgs, calibs), calibs, PAST, 2, copy=False)
    assert all(again[k] is first[k] for k in first)  # no per-frame arrays
    f = planner(np.float32)
    feeds = f.preprocess(f.decode(msgs, calibs), calibs, PAST, 0)
    np.testing.assert_allclose(feeds['images'] * 255, first['images'], atol=1e-3)


@pytest.mark.parametrize('hw,scale', [((1080, 1920), 8), ((540, 960), 4), ((270, 480), 2)])
def test_jpegs_decode_into_the_cameras_reused_buffer_as_opencv_would(hw, scale):
    """The reduced decode writes into one buffer per camera, frame after frame (no per-frame
    image), and gives exactly OpenCV's reduced-mode pixels (both are libjpeg's scaled IDCT)."""
    from rsd_drive.data import convert

    if convert.simplejpeg is None:
        pytest.skip('simplejpeg is not installed (pinned in requirements*.txt): OpenCV decodes '
                    'into a new array')
    p = planner()
    calibs = [calib(hw), calib(hw)]
    frames = [[jpeg_msg(scene(hw, 2 * k + i)) for i in range(2)] for k in range(2)]
    first = p.decode(frames[0], calibs)
    buffers = [d.image for d in first]
    flags = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}
    for msgs in frames:
        decoded = p.decode(msgs, calibs)
        for d, buf, msg in zip(decoded, buffers, msgs):
            assert d.scale == scale and d.image is buf
            reference = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), flags[scale])
            np.testing.assert_array_equal(d.image, reference)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8'])
def test_raw_images_are_read_through_zero_copy_views(encoding):
    hw = (128, 224)  # already the model size: no reduction, the view itself is remapped
    rgb = scene(hw, 2)
    msg = raw_msg(rgb, encoding)
    p = planner(hw=hw, cams=['front'])
    cal = calib(hw)
    decoded = p.decode([msg], [cal])
    assert np.shares_memory(decoded[0].image, msg.data)
    feeds = p.preprocess(decoded, [cal], PAST, 0)
    np.testing.assert_allclose(feeds['images'][0, 0].transpose(1, 2, 0) * 255, rgb, atol=1e-3)


def test_a_distorted_camera_is_undistorted_by_its_remap_table():
    hw = (540, 960)
    lens = Distortion('plumb_bob', (-0.3, 0.1, 0.0, 0.0, 0.0))
    rgb = scene(hw, 5)
    p = planner(hw=(144, 240), cams=['front'])
    cal = calib(hw, lens)
    feeds = p.preprocess([rgb], [cal], PAST, 0)
    # Ground truth: the remap of the same image at full scale, and K' = K resized.
    table = build_remap(cal.K, lens, hw, (144, 240))
    expected = table.apply(rgb)
    got = feeds['images'][0, 0].transpose(1, 2, 0) * 255
    assert np.abs(got - expected).mean() < 3.0
    np.testing.assert_allclose(feeds['intrinsics'][0, 0], resize_intrinsics(cal.K, hw, (144, 240)),
                               rtol=1e-6)
    plain = planner(hw=(144, 240), cams=['front']).preprocess([rgb], [calib(hw)], PAST, 0)
    assert np.abs(plain['images'] - feeds['images']).mean() * 255 > 5.0  # the lens matters


def test_a_scaled_stream_rescales_k_and_then_decodes_reduced_again():
    info_hw, stream_hw = (1080, 1920), (540, 960)
    msg, cal = jpeg_msg(scene(stream_hw)), calib(info_hw)
    p = planner(cams=['front'])
    first = p.decode([msg], [cal])[0]
    assert first.raw_hw == stream_hw and first.scale == 4
    feeds = p.preprocess([first], [cal], PAST, 0)
    np.testing.assert_allclose(feeds['intrinsics'][0, 0],
                               resize_intrinsics(cal.K, info_hw, (112, 224)), rtol=1e-6)
    assert p._slots[0].jpeg_hw == stream_hw
    again = p.decode([msg], [cal])[0]  # the size is known now: straight to the 1/4 decode
    assert again.raw_hw == stream_hw and again.image.shape == (135, 240, 3)


def test_bad_jpeg_names_the_camera():
    hw = (270, 480)
    good = jpeg_msg(scene(hw))
    bad = jpeg_msg(scene(hw))
    bad.data = bad.data[: len(bad.data) // 2]
    p = planner()
    with pytest.raises(FrameError) as e:
        p.decode([good, bad], [calib(hw), calib(hw)])
    assert e.value.reason == 'truncated_jpeg:left'


@pytest.mark.skipif(not PANDASET.is_dir(), reason=f'real test data not found at {PANDASET}')
def test_real_pandaset_jpegs_through_both_paths():
    import json

    names = ['front_camera', 'back_camera']
    msgs, calibs = [], []
    for name in names:
        data = (PANDASET / 'camera' / name / '00.jpg').read_bytes()
        msgs.append(build_message(TS, 'sensor_msgs/msg/CompressedImage',
                                  header=header_msg(TS, 1, name), format='jpeg',
                                  data=np.frombuffer(data, np.uint8).copy()))
        k = json.loads((PANDASET / 'camera' / name / 'intrinsics.json').read_text())
        calibs.append(CameraCalibration(intrinsics(k['fx'], k['fy'], k['cx'], k['cy']),
                                        (1080, 1920), np.eye(4)))
    fast, old = planner(cams=names), planner(cams=names, legacy=True)
    a = fast.preprocess(fast.decode(msgs, calibs), calibs, PAST, 0)
    b = old.preprocess(old.decode(msgs), calibs, PAST, 0)
    diff = np.abs(a['images'] - b['images']) * 255
    assert diff.mean() < 3.0
    np.testing.assert_allclose(a['intrinsics'], b['intrinsics'], rtol=1e-6)
