"""ROS message <-> numpy conversion, shared by the planner node (rclpy messages) and the offline
tools (rosbags messages). Both message flavours have the same field names, so these functions are
duck-typed on fields and never import rclpy.

Every validator raises :class:`MessageError` with a short ``reason`` used as a counter key in
diagnostics and manifests.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

_CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}


class MessageError(ValueError):
    """A message that cannot be used; ``reason`` is a stable short key for counting."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp_fields(t_ns: int) -> tuple[int, int]:
    return int(t_ns // 1_000_000_000), int(t_ns % 1_000_000_000)


def is_compressed(msg) -> bool:
    return hasattr(msg, 'format') and not hasattr(msg, 'encoding')


def _uint8_view(data) -> np.ndarray:
    """A uint8 view of a message's ``data`` without copying: rclpy gives array.array, rosbags
    numpy arrays, both expose the buffer protocol (a bytes() copy of a 1080p frame costs ms)."""
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):  # a plain list, or a non-contiguous array
        return np.asarray(data, dtype=np.uint8).ravel()


def check_image(msg) -> None:
    """Cheap structural check of an Image / CompressedImage without decoding it (what a node can
    afford in a subscription callback): encoding, sizes, step*height, JPEG start/end markers."""
    if is_compressed(msg):
        data = msg.data
        n = len(data)
        if n == 0:
            raise MessageError('empty_image', 'CompressedImage with no data')
        fmt = str(msg.format).lower()
        if 'jpeg' in fmt or 'jpg' in fmt:
            head, tail = bytes(data[:2]), bytes(data[-16:]) if n >= 16 else bytes(data)
            if head != b'\xff\xd8':
                raise MessageError('decode_failed', f'{msg.format!r} data does not start with a '
                                                    f'JPEG marker')
            if b'\xff\xd9' not in tail:
                raise MessageError('truncated_jpeg', f'no JPEG end marker in the last bytes '
                                                     f'({n} bytes): truncated')
        return
    enc = str(msg.encoding).lower()
    if enc not in _CHANNELS:
        raise MessageError('bad_encoding', f'unsupported encoding {msg.encoding!r}; '
                                           f'expected one of {sorted(_CHANNELS)}')
    h, w, step, ch = int(msg.height), int(msg.width), int(msg.step), _CHANNELS[enc]
    if h <= 0 or w <= 0 or step < w * ch:
        raise MessageError('bad_size', f'{w}x{h} {enc} with step {step}')
    if len(msg.data) != step * h:
        raise MessageError('bad_size', f'{len(msg.data)} bytes, expected step*height = '
                                       f'{step * h}')


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> HxWx3 uint8 RGB (a copy it owns)."""
    check_image(msg)
    if is_compressed(msg):
        buf = _uint8_view(msg.data)
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if bgr is None:
            raise MessageError('decode_failed', f'cannot decode {msg.format!r} image '
                                                f'({buf.size} bytes)')
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    enc = str(msg.encoding).lower()
    h, w, step, ch = int(msg.height), int(msg.width), int(msg.step), _CHANNELS[enc]
    img = _uint8_view(msg.data).reshape(h, step)[:, :w * ch].reshape(h, w, ch)
    if enc == 'rgb8':
        return img.copy()
    if enc == 'bgr8':
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if enc == 'rgba8':
        return cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)
    if enc == 'bgra8':
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)


def camera_info_to_intrinsics(msg) -> tuple[np.ndarray, tuple[int, int]]:
    """sensor_msgs/CameraInfo -> (K 3x3, (height, width))."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise MessageError('bad_camera_info', f'invalid K {k.ravel().tolist()}')
    if int(msg.width) <= 0 or int(msg.height) <= 0:
        raise MessageError('bad_camera_info', f'invalid size {msg.width}x{msg.height}')
    return k, (int(msg.height), int(msg.width))


def yaw_from_quaternion(q) -> float:
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


@dataclass(frozen=True)
class EgoState:
    """Planar ego state in the odometry frame at one instant."""

    stamp_ns: int
    x: float
    y: float
    yaw: float
    speed: float


def odometry_to_state(msg) -> EgoState:
    """nav_msgs/Odometry -> EgoState (speed = norm of the body-frame linear twist)."""
    p, q, v = msg.pose.pose.position, msg.pose.pose.orientation, msg.twist.twist.linear
    values = (p.x, p.y, q.x, q.y, q.z, q.w, v.x, v.y)
    if not all(math.isfinite(float(a)) for a in values):
        raise MessageError('nan_odometry', 'non-finite pose or twist')
    if abs(q.x) + abs(q.y) + abs(q.z) + abs(q.w) < 1e-9:
        raise MessageError('nan_odometry', 'zero quaternion')
    return EgoState(stamp_to_ns(msg.header.stamp), float(p.x), float(p.y),
                    yaw_from_quaternion(q), float(math.hypot(v.x, v.y)))


def transform_to_matrix(transform) -> np.ndarray:
    """geometry_msgs/Transform -> 4x4."""
    from rsd_drive.geometry import make_transform, quaternion_to_matrix

    r, t = transform.rotation, transform.translation
    return make_transform(quaternion_to_matrix(r.x, r.y, r.z, r.w), (t.x, t.y, t.z))


def risk_to_occupancy(risk: np.ndarray) -> np.ndarray:
    """Risk grid [rows, cols] in [0, 1] -> OccupancyGrid data (int8 0..100, row-major, NaN=-1)."""
    r = np.asarray(risk, dtype=np.float32)
    out = np.clip(np.rint(np.nan_to_num(r, nan=0.0) * 100.0), 0, 100).astype(np.int8)
    out[~np.isfinite(r)] = -1
    return out.ravel()


def occupancy_to_risk(data, rows: int, cols: int) -> np.ndarray:
    """OccupancyGrid data -> risk [rows, cols] in [0, 1]; unknown (-1) cells become 0."""
    d = np.asarray(data, dtype=np.int16).reshape(rows, cols)
    return np.where(d < 0, 0, d).astype(np.float32) / 100.0
