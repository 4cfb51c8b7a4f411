"""Message <-> numpy conversion (rsd_drive/data/convert.py) on real rosbags and rclpy messages."""
import math

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from rsd_drive.data.bag import build_message, header_msg
from rsd_drive.data.convert import (MessageError, camera_info_distortion,
                                    camera_info_to_intrinsics, image_to_rgb, occupancy_to_risk,
                                    odometry_to_state, path_message, path_poses,
                                    risk_to_occupancy, stamp_to_ns, transform_to_matrix)

TS = get_typestore(Stores.ROS2_JAZZY)
RGB = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def image(encoding, pixels, step=None, height=None, width=None, data=None):
    h, w = pixels.shape[:2]
    step = step or pixels.shape[1] * (pixels.shape[2] if pixels.ndim == 3 else 1)
    rows = pixels.reshape(h, -1)
    if step > rows.shape[1]:
        rows = np.hstack([rows, np.full((h, step - rows.shape[1]), 7, np.uint8)])
    return build_message(TS, 'sensor_msgs/msg/Image', header=header_msg(TS, 1, 'cam'),
                         height=h if height is None else height,
                         width=w if width is None else width, encoding=encoding, step=step,
                         data=rows.reshape(-1) if data is None else data)


def compressed(data: bytes, fmt='jpeg'):
    return TS.types['sensor_msgs/msg/CompressedImage'](
        header=header_msg(TS, 1, 'cam'), format=fmt, data=np.frombuffer(data, np.uint8))


@pytest.mark.parametrize('encoding,convert', [
    ('rgb8', None), ('bgr8', cv2.COLOR_RGB2BGR), ('rgba8', cv2.COLOR_RGB2RGBA),
    ('bgra8', cv2.COLOR_RGB2BGRA)])
def test_color_encodings_come_back_as_rgb(encoding, convert):
    pixels = RGB if convert is None else cv2.cvtColor(RGB, convert)
    out = image_to_rgb(image(encoding, pixels))
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, RGB)


def test_mono8_and_row_padding():
    gray = RGB[..., 0].copy()
    out = image_to_rgb(image('mono8', gray))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    padded = image_to_rgb(image('rgb8', RGB, step=8 * 3 + 5))  # rows padded to 29 bytes
    np.testing.assert_array_equal(padded, RGB)


def test_rclpy_messages_convert_the_same_way():
    from sensor_msgs.msg import Image

    msg = Image(height=6, width=8, encoding='bgr8', step=24)
    msg.data = cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR).tobytes()
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)


@pytest.mark.parametrize('kwargs,reason', [
    ({'encoding': '16UC1'}, 'bad_encoding'),
    ({'step': 10}, 'bad_size'),                        # step < width * 3
    ({'height': 0}, 'bad_size'),
    ({'data': np.zeros(10, np.uint8)}, 'bad_size'),    # too few bytes
    ({'data': np.zeros(6 * 24 + 1, np.uint8)}, 'bad_size'),
])
def test_bad_raw_images_raise_with_a_reason(kwargs, reason):
    enc = kwargs.pop('encoding', 'rgb8')
    with pytest.raises(MessageError) as e:
        image_to_rgb(image(enc, RGB, **kwargs))
    assert e.value.reason == reason


def test_jpeg_and_png_decode():
    smooth = np.zeros((16, 24, 3), np.uint8)  # JPEG is lossy on noise; a smooth image keeps
    smooth[..., 0] = np.arange(24) * 10        # colours, so a channel swap would show
    smooth[..., 1], smooth[..., 2] = 60, 200
    ok, jpg = cv2.imencode('.jpg', cv2.cvtColor(smooth, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = image_to_rgb(compressed(jpg.tobytes()))
    assert out.shape == (16, 24, 3)
    assert np.abs(out.astype(int) - smooth).max() < 12
    ok, png = cv2.imencode('.png', cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(image_to_rgb(compressed(png.tobytes(), 'png')), RGB)


@pytest.mark.parametrize('cut', [0.5, 0.9])
def test_truncated_jpeg_is_rejected_not_returned_half_grey(cut):
    big = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    ok, jpg = cv2.imencode('.jpg', big)
    data = jpg.tobytes()
    with pytest.raises(MessageError) as e:
        image_to_rgb(compressed(data[:int(len(data) * cut)]))
    assert e.value.reason in ('truncated_jpeg', 'decode_failed')


@pytest.mark.parametrize('data,reason', [(b'', 'empty_image'),
                                         (b'this is not an image at all', 'decode_failed')])
def test_empty_and_garbage_compressed(data, reason):
    with pytest.raises(MessageError) as e:
        image_to_rgb(compressed(data, 'png'))
    assert e.value.reason == reason


def odometry(x=1.0, y=2.0, yaw=0.5, vx=3.0, vy=4.0, q=None):
    msg = build_message(TS, 'nav_msgs/msg/Odometry', header=header_msg(TS, 5_000_000_123, 'odom'))
    msg.pose.pose.position.x, msg.pose.pose.position.y = x, y
    qx, qy, qz, qw = q or (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
    o = msg.pose.pose.orientation
    o.x, o.y, o.z, o.w = qx, qy, qz, qw
    msg.twist.twist.linear.x, msg.twist.twist.linear.y = vx, vy
    return msg


def test_odometry_to_state():
    s = odometry_to_state(odometry())
    assert (s.stamp_ns, s.x, s.y) == (5_000_000_123, 1.0, 2.0)
    # speed is the signed body-frame forward velocity, not the norm of the twist
    assert s.yaw == pytest.approx(0.5) and s.speed == pytest.approx(3.0)


def test_reversing_odometry_gives_a_negative_speed_and_backward_extrapolation():
    from rsd_drive.data.sync import OdometryHistory

    s = odometry_to_state(odometry(vx=-2.0, vy=0.1))
    assert s.speed == pytest.approx(-2.0)
    h = OdometryHistory()
    for k in range(5):  # reversing along +x: the ego moves to -x over time, yaw 0
        msg = odometry(x=-0.5 * k, y=0.0, yaw=0.0, vx=-2.0, vy=0.0)
        msg.header.stamp.sec, msg.header.stamp.nanosec = k // 4, (k % 4) * 250_000_000
        h.add(odometry_to_state(msg))
    past = h.past_states(750_000_000, steps=8, frequency_hz=4.0, extrapolate_start=True)
    assert np.all(past[:, 3] < 0)  # the past speeds say "reversing"
    # history extrapolated before the first state lies ahead (+x): it came from there
    assert np.all(np.diff(past[:, 0]) < 0) and past[0, 0] > 0


@pytest.mark.parametrize('kwargs', [{'x': float('nan')}, {'vx': float('inf')},
                                    {'q': (float('nan'), 0, 0, 1)}, {'q': (0, 0, 0, 0)}])
def test_nan_odometry_is_rejected(kwargs):
    with pytest.raises(MessageError) as e:
        odometry_to_state(odometry(**kwargs))
    assert e.value.reason == 'nan_odometry'


def test_camera_info_validation():
    info = build_message(TS, 'sensor_msgs/msg/CameraInfo', height=48, width=64,
                         k=np.array([40.0, 0, 31.5, 0, 40.0, 23.5, 0, 0, 1]))
    K, hw = camera_info_to_intrinsics(info)
    assert hw == (48, 64) and K[0, 0] == 40.0 and K[1, 2] == 23.5
    assert camera_info_distortion(info).is_pinhole  # empty D
    info.distortion_model, info.d = 'plumb_bob', np.array([-0.2, 0.05, 0.001, -0.002, 0.0])
    d = camera_info_distortion(info)
    assert d.model == 'plumb_bob' and d.coeffs[0] == -0.2
    for model, coeffs in (('plumb_bob', [0.1, 0.2, 0.3]), ('kannala', [0.1, 0, 0, 0]),
                          ('equidistant', [np.nan, 0, 0, 0])):
        info.distortion_model, info.d = model, np.array(coeffs)
        with pytest.raises(MessageError) as e:
            camera_info_distortion(info)
        assert e.value.reason == 'bad_distortion'
    for bad in (np.zeros(9), np.array([np.nan, 0, 0, 0, 1, 0, 0, 0, 1.0])):
        info.k = bad
        with pytest.raises(MessageError) as e:
            camera_info_to_intrinsics(info)
        assert e.value.reason == 'bad_camera_info'


def test_transform_and_occupancy_round_trip():
    t = TS.types['geometry_msgs/msg/Transform'](
        translation=TS.types['geometry_msgs/msg/Vector3'](x=1.0, y=2.0, z=3.0),
        rotation=TS.types['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=math.sin(0.5),
                                                          w=math.cos(0.5)))
    T = transform_to_matrix(t)
    np.testing.assert_allclose(T[:3, 3], [1, 2, 3])
    np.testing.assert_allclose(T[:2, :2], [[math.cos(1), -math.sin(1)],
                                           [math.sin(1), math.cos(1)]], atol=1e-12)
    risk = np.array([[0.0, 0.254, 1.0], [np.nan, 2.0, -1.0]])
    occ = risk_to_occupancy(risk)
    assert occ.dtype == np.int8 and occ.tolist() == [0, 25, 100, -1, 100, 0]
    np.testing.assert_allclose(occupancy_to_risk(occ, 2, 3), [[0, 0.25, 1], [0, 1, 0]])


def test_path_poses_have_their_own_stamps_and_headings():
    wp = np.array([[1.0, 0.0], [2.0, 1.0], [2.0, 1.0], [2.0, 3.0]])
    poses = path_poses(wp, 10_000_000_000, 4.0)
    assert [p[0] for p in poses] == [10_000_000_000 + 250_000_000 * (k + 1) for k in range(4)]
    np.testing.assert_allclose([p[3] for p in poses], [0.0, math.pi / 4, math.pi / 4,
                                                       math.pi / 2])
    # In odom, with base_link at (10, 5) heading +y: forward 1 m is (10, 6), heading + pi/2.
    t, x, y, yaw = path_poses(wp, 0, 4.0, pose=(10.0, 5.0, math.pi / 2))[0]
    assert (x, y, yaw) == pytest.approx((10.0, 6.0, math.pi / 2))
    with_origin = path_poses(wp, 0, 4.0, include_origin=True)
    assert len(with_origin) == 5 and with_origin[0][:3] == (0, 0.0, 0.0)
    assert with_origin[-1][0] == 4 * 250_000_000


def test_one_path_builder_for_rosbags_and_rclpy_messages():
    from nav_msgs.msg import Path

    from rsd_drive.ros.messages import path_message as ros_path_message

    wp = np.array([[1.0, 0.0], [2.0, 0.5]])
    bag_msg = path_message(TS.types.__getitem__, wp, 5_000_000_000, 'base_link', 4.0)
    ros_msg = ros_path_message(wp, 5_000_000_000, 'base_link')
    assert isinstance(ros_msg, Path)
    assert bytes(TS.serialize_cdr(bag_msg, 'nav_msgs/msg/Path')) == \
        bytes(TS.serialize_cdr(TS.deserialize_cdr(_cdr(ros_msg), 'nav_msgs/msg/Path'),
                               'nav_msgs/msg/Path'))
    stamps = [stamp_to_ns(p.header.stamp) for p in ros_msg.poses]
    assert stamps == [5_250_000_000, 5_500_000_000]


def _cdr(msg) -> bytes:
    from rclpy.serialization import serialize_message

    return serialize_message(msg)
