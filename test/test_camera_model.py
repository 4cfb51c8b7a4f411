"""Lens distortion and remap tables (rsd_drive/data/camera_model.py) on synthetic distorted cameras
whose ground truth is known: OpenCV's own projection renders them, our code undoes them."""
import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from rsd_drive.data.camera_model import (Distortion, DistortionError, RemapCache, build_remap,
                                         distort_pixels, project_points_distorted,
                                         reduced_scale, undistort_pixels)
from rsd_drive.geometry import intrinsics, resize_intrinsics

RAW_HW = (480, 640)
K = intrinsics(420.0, 415.0, 322.5, 236.0)
LENSES = {
    'plumb_bob': Distortion('plumb_bob', (-0.28, 0.09, 0.0012, -0.0008, -0.012)),
    'rational_polynomial': Distortion('rational_polynomial',
                                      (0.35, -0.12, 0.0009, 0.0011, 0.01, 0.62, -0.05, 0.02)),
    'equidistant': Distortion('equidistant', (-0.02, 0.01, -0.004, 0.0008)),
}


def cv_project(xy: np.ndarray, lens: Distortion) -> np.ndarray:
    """OpenCV's projection of ideal normalized points: the independent ground truth."""
    pts = np.concatenate([xy, np.ones((len(xy), 1))], axis=1).reshape(-1, 1, 3)
    if lens.model == 'equidistant':
        uv, _ = cv2.fisheye.projectPoints(pts, np.zeros(3), np.zeros(3), K,
                                          np.array(lens.coeffs))
    else:
        uv, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), K, np.array(lens.coeffs))
    return uv.reshape(-1, 2)


def ideal_grid(n=15, extent=0.65):
    g = np.linspace(-extent, extent, n)
    return np.stack(np.meshgrid(g, g * 0.75), axis=-1).reshape(-1, 2)


@pytest.mark.parametrize('name', sorted(LENSES))
def test_distortion_matches_opencv_and_round_trips(name):
    lens = LENSES[name]
    xy = ideal_grid()
    ours = distort_pixels(xy @ K[:2, :2].T + K[:2, 2], K, lens)
    np.testing.assert_allclose(ours, cv_project(xy, lens), atol=1e-6)
    back = undistort_pixels(ours, K, lens)
    np.testing.assert_allclose(back, xy @ K[:2, :2].T + K[:2, 2], atol=1e-6)
    # a pinhole leaves pixels alone, and so does an all-zero D of any model
    np.testing.assert_array_equal(distort_pixels(ours, K, None), ours)
    assert Distortion.from_camera_info(name, [0.0] * len(lens.coeffs)).is_pinhole


def test_camera_info_validation():
    assert Distortion.from_camera_info('plumb_bob', [0.1, 0.0, 0.0, 0.0]).coeffs[4] == 0.0
    for model, d in (('fov', [0.3]), ('plumb_bob', [0.1] * 8), ('', [0.1] * 5),
                     ('equidistant', [math.inf, 0, 0, 0])):
        with pytest.raises(DistortionError):
            Distortion.from_camera_info(model, d)


def render_distorted(lens: Distortion, field, hw=RAW_HW) -> np.ndarray:
    """A raw image of the distorted camera: each pixel shows ``field`` at its true ray, found by
    OpenCV's undistortion (independent of the code under test)."""
    vv, uu = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float64)
    uv = np.stack([uu.ravel(), vv.ravel()], axis=-1).reshape(-1, 1, 2)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12)
    if lens.model == 'equidistant':
        xy = cv2.fisheye.undistortPoints(uv, K, np.array(lens.coeffs), criteria=crit)
    else:
        xy = cv2.undistortPoints(uv, K, np.array(lens.coeffs), None, None, None, crit)
    return field(xy.reshape(-1, 2)).reshape(hw).astype(np.float32)


def smooth_field(xy: np.ndarray) -> np.ndarray:
    return 127.5 + 100 * np.sin(7.0 * xy[:, 0]) * np.cos(5.0 * xy[:, 1])


@pytest.mark.parametrize('name', sorted(LENSES))
@pytest.mark.parametrize('scale', [1, 2])
def test_remap_undistorts_into_the_ideal_pinhole(name, scale):
    """The remapped model input shows, at every pixel, the scene at that pixel's ray through the
    ideal pinhole K' = K resized to the model input."""
    lens = LENSES[name]
    raw = render_distorted(lens, smooth_field)
    src = raw if scale == 1 else cv2.resize(raw, (RAW_HW[1] // 2, RAW_HW[0] // 2),
                                            interpolation=cv2.INTER_AREA)
    out_hw = (120, 160)
    table = build_remap(K, lens, RAW_HW, out_hw, scale)
    np.testing.assert_allclose(table.K_out, resize_intrinsics(K, RAW_HW, out_hw))
    out = table.apply(src)
    vv, uu = np.mgrid[0:out_hw[0], 0:out_hw[1]].astype(np.float64)
    xy = np.stack([(uu.ravel() - table.K_out[0, 2]) / table.K_out[0, 0],
                   (vv.ravel() - table.K_out[1, 2]) / table.K_out[1, 1]], axis=-1)
    expected = smooth_field(xy).reshape(out_hw)
    inside = out > 0  # corners that fall outside the raw image stay black
    inside[:2], inside[-2:], inside[:, :2], inside[:, -2:] = False, False, False, False
    assert inside.mean() > 0.8
    err = np.abs(out - expected)[inside]
    # Without undistortion the same comparison is off by tens of levels (see the next test).
    assert np.median(err) < 1.0 and np.percentile(err, 99) < 6.0


def test_ignoring_the_lens_is_visibly_wrong():
    lens = LENSES['plumb_bob']
    raw = render_distorted(lens, smooth_field)
    out_hw = (120, 160)
    wrong = build_remap(K, None, RAW_HW, out_hw).apply(raw)
    vv, uu = np.mgrid[0:out_hw[0], 0:out_hw[1]].astype(np.float64)
    K_out = resize_intrinsics(K, RAW_HW, out_hw)
    xy = np.stack([(uu.ravel() - K_out[0, 2]) / K_out[0, 0],
                   (vv.ravel() - K_out[1, 2]) / K_out[1, 1]], axis=-1)
    err = np.abs(wrong - smooth_field(xy).reshape(out_hw))
    assert np.percentile(err, 90) > 20.0


@pytest.mark.parametrize('name', sorted(LENSES))
def test_points_land_where_the_pinhole_k_prime_puts_them(name):
    """Known 3D points, drawn as blobs into the distorted raw image by OpenCV's projection,
    appear in the remapped image where the ideal pinhole K' projects them (sub-pixel)."""
    lens = LENSES[name]
    gx, gy = np.meshgrid(np.linspace(-2.4, 2.4, 4), np.linspace(-1.6, 1.6, 3))
    depth = 6.0 + 0.5 * np.arange(12)  # a known, non-planar point set, blobs well apart
    pts = np.stack([gx.ravel() * depth / 6, gy.ravel() * depth / 6, depth], axis=-1)
    raw_uv = cv_project(pts[:, :2] / pts[:, 2:], lens)
    ours, depth = project_points_distorted(pts, K, lens)
    np.testing.assert_allclose(ours, raw_uv, atol=1e-6)
    vv, uu = np.mgrid[0:RAW_HW[0], 0:RAW_HW[1]].astype(np.float32)
    raw = np.zeros(RAW_HW, np.float32)
    for u, v in raw_uv:
        raw += 200 * np.exp(-((uu - u) ** 2 + (vv - v) ** 2) / (2 * 2.5 ** 2))
    out_hw = (240, 320)
    table = build_remap(K, lens, RAW_HW, out_hw)
    out = table.apply(raw)
    expected = pts[:, :2] / pts[:, 2:] @ table.K_out[:2, :2].T + table.K_out[:2, 2]
    yy, xx = np.mgrid[0:out_hw[0], 0:out_hw[1]]
    for u, v in expected:
        win = (np.abs(xx - u) <= 6) & (np.abs(yy - v) <= 6)
        w = out * win
        centroid = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
        assert np.hypot(*(centroid - [u, v])) < 0.3


def test_ground_from_box_undistorts_the_contact_pixel():
    from rsd_drive.teacher.projection import ground_from_box
    from rsd_drive.geometry import camera_to_ego, project_points

    lens = LENSES['plumb_bob']
    cam_to_ego = camera_to_ego(1.5, 0.0, 1.6, 0.2, 0.1)
    cfg = SimpleNamespace(ground_z=0.0, max_range_m=80.0, default_width_m=1.8, max_width_m=6.0)
    for target in ([5.0, 4.0, 0.0], [6.0, -2.5, 0.0]):  # off-axis, where the lens bends most
        ideal, _ = project_points(np.array([target]), K, cam_to_ego)
        u, v = distort_pixels(ideal, K, lens)[0]  # where the raw image shows it
        box = (u - 20, v - 40, u + 20, v)
        x, y, _ = ground_from_box(box, K, cam_to_ego, cfg, lens)
        assert math.hypot(x - target[0], y - target[1]) < 1e-3
        x_wrong, y_wrong, _ = ground_from_box(box, K, cam_to_ego, cfg)  # lens ignored
        assert math.hypot(x_wrong - target[0], y_wrong - target[1]) > 0.1


def test_reduced_scale_and_cache():
    assert reduced_scale((1080, 1920), (112, 224)) == 8
    assert reduced_scale((1080, 1920), (224, 224)) == 4
    assert reduced_scale((1080, 1920), (540, 960)) == 2
    assert reduced_scale((1080, 1920), (600, 960)) == 1
    cache = RemapCache()
    a = cache.get(K, LENSES['plumb_bob'], RAW_HW, (120, 160))
    assert cache.get(K.copy(), LENSES['plumb_bob'], RAW_HW, (120, 160)) is a
    assert cache.get(K, None, RAW_HW, (120, 160)) is not a
    assert cache.built == 2
    identity = cache.get(K, None, (240, 320), (120, 160), 2)
    assert identity.identity  # decoded at 1/2 is already the model size: no remap at all
