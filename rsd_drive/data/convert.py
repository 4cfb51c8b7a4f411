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

from rsd_drive.data.camera_model import reduced_size

try:  # libjpeg-turbo decoding into the caller's buffer (cv2.imdecode always allocates)
    import simplejpeg
except ImportError:  # pragma: no cover - pinned in both profiles; OpenCV decodes the same pixels
    simplejpeg = None

_CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


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


def image_bytes(msg) -> np.ndarray:
    """A message's ``data`` as a flat uint8 array, zero-copy where the buffer allows."""
    return _uint8_view(msg.data)


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


def image_view(msg) -> tuple[np.ndarray, str]:
    """A checked (:func:`check_image`) sensor_msgs/Image -> (a zero-copy view of its pixels,
    HxWxC uint8, HxW for mono8; its lowercase encoding)."""
    enc = str(msg.encoding).lower()
    h, w, step, ch = int(msg.height), int(msg.width), int(msg.step), _CHANNELS[enc]
    view = _uint8_view(msg.data).reshape(h, step)[:, :w * ch]
    return (view.reshape(h, w, ch) if ch > 1 else view.reshape(h, w)), enc


def decode_compressed_bgr(msg, data: np.ndarray | None = None) -> np.ndarray:
    """A CompressedImage -> its whole image as HxWx3 uint8 BGR (``data``: its bytes as a uint8
    array when the caller has them already); MessageError 'decode_failed' when unreadable."""
    buf = image_bytes(msg) if data is None else data
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise MessageError('decode_failed', f'cannot decode {msg.format!r} image '
                                            f'({buf.size} bytes)')
    return bgr


def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> HxWx3 uint8 RGB (a copy it owns)."""
    check_image(msg)
    if is_compressed(msg):
        return cv2.cvtColor(decode_compressed_bgr(msg), cv2.COLOR_BGR2RGB)
    img, enc = image_view(msg)
    if enc == 'rgb8':
        return img.copy()
    if enc == 'bgr8':
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if enc == 'rgba8':
        return cv2.cvtColor(img, cv2.COLOR_RGBA2RGB)
    if enc == 'bgra8':
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)


def is_jpeg(msg) -> bool:
    """A CompressedImage whose ``format`` says JPEG."""
    fmt = str(getattr(msg, 'format', '')).lower()
    return is_compressed(msg) and ('jpeg' in fmt or 'jpg' in fmt)


def decode_jpeg_reduced(data: np.ndarray, image_hw, scale: int,
                        out: np.ndarray | None = None) -> np.ndarray | None:
    """JPEG bytes of an ``image_hw`` image -> BGR at 1/``scale`` by libjpeg's DCT scaling (sizes
    round up), written into ``out`` when given (shape ceil(image_hw / scale) x 3; simplejpeg
    decodes in place, OpenCV allocates). None when the JPEG has another size or simplejpeg cannot
    read it: the caller decodes it whole (:func:`image_to_rgb`), which names what is wrong. The
    planner node's decode stage and the labeler's index both come through here, so they start
    from the same pixels (simplejpeg's are bit-identical to OpenCV's reduced modes)."""
    size = reduced_size(image_hw, scale)
    if simplejpeg is not None:
        buf = out if out is not None else np.empty(size + (3,), np.uint8)
        try:
            if tuple(simplejpeg.decode_jpeg_header(data)[:2]) != tuple(image_hw):
                return None
            simplejpeg.decode_jpeg(data, 'BGR', min_height=size[0], min_width=size[1],
                                   buffer=buf, strict=False)
        except ValueError:
            return None
        return buf
    img = cv2.imdecode(data, _REDUCED[scale])
    if img is None:
        raise MessageError('decode_failed', f'cannot decode a JPEG ({data.size} bytes)')
    return img if img.shape[:2] == size else None


def camera_info_to_intrinsics(msg) -> tuple[np.ndarray, tuple[int, int]]:
    """sensor_msgs/CameraInfo -> (K 3x3, (height, width))."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(k)) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise MessageError('bad_camera_info', f'invalid K {k.ravel().tolist()}')
    if int(msg.width) <= 0 or int(msg.height) <= 0:
        raise MessageError('bad_camera_info', f'invalid size {msg.width}x{msg.height}')
    return k, (int(msg.height), int(msg.width))


def camera_info_distortion(msg):
    """sensor_msgs/CameraInfo -> :class:`rsd_drive.data.camera_model.Distortion` from
    ``distortion_model`` and ``d`` (plumb_bob, rational_polynomial, equidistant; all-zero D is a
    pinhole); MessageError 'bad_distortion' for an unsupported model or a wrong length."""
    from rsd_drive.data.camera_model import Distortion, DistortionError

    try:
        return Distortion.from_camera_info(msg.distortion_model, list(msg.d))
    except DistortionError as e:
        raise MessageError('bad_distortion', str(e)) from e


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
    """nav_msgs/Odometry -> EgoState; ``speed`` is the signed body-frame forward velocity
    (``twist.linear.x``, REP-105 twist in ``child_frame_id``): negative when reversing, so a
    reversing ego is never planned forward."""
    p, q, v = msg.pose.pose.position, msg.pose.pose.orientation, msg.twist.twist.linear
    values = (p.x, p.y, q.x, q.y, q.z, q.w, v.x, v.y)
    if not all(math.isfinite(float(a)) for a in values):
        raise MessageError('nan_odometry', 'non-finite pose or twist')
    if abs(q.x) + abs(q.y) + abs(q.z) + abs(q.w) < 1e-9:
        raise MessageError('nan_odometry', 'zero quaternion')
    return EgoState(stamp_to_ns(msg.header.stamp), float(p.x), float(p.y),
                    yaw_from_quaternion(q), float(v.x))


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


# -- paths ----------------------------------------------------------------------------------------
def path_headings(xy: np.ndarray) -> np.ndarray:
    """Heading at each waypoint: direction from the previous point (the origin before the first);
    a zero step keeps the previous heading, as in the RFS definition."""
    steps = np.diff(np.vstack([np.zeros((1, 2)), np.asarray(xy, dtype=np.float64)]), axis=0)
    yaws, prev = np.zeros(len(steps)), 0.0
    for i, (dx, dy) in enumerate(steps):
        if math.hypot(dx, dy) > 1e-6:
            prev = math.atan2(dy, dx)
        yaws[i] = prev
    return yaws


def to_frame(xy: np.ndarray, pose) -> np.ndarray:
    """[M,2] base_link points -> the frame where base_link sits at ``pose`` = (x, y, yaw)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if pose is None:
        return xy
    x, y, yaw = pose
    c, s = math.cos(yaw), math.sin(yaw)
    return np.stack([x + c * xy[:, 0] - s * xy[:, 1], y + s * xy[:, 0] + c * xy[:, 1]], axis=-1)


def path_poses(waypoints: np.ndarray, stamp_ns: int, frequency_hz: float = 4.0, pose=None,
               include_origin: bool = False) -> list:
    """Waypoints [T,2] in base_link at ``stamp_ns`` (waypoint k at t0 + (k+1)/f) -> one
    (stamp_ns, x, y, yaw) per pose: the time it is planned for, its position (in the frame of
    ``pose``, see :func:`to_frame`) and the heading along the path. ``include_origin`` prepends
    the ego itself at t0 (label bags); poses are then at t0 + k/f, k = 0..T."""
    xy = np.asarray(waypoints, dtype=np.float64).reshape(-1, 2)
    yaws = path_headings(xy)
    first = 1
    if include_origin:
        xy = np.vstack([np.zeros((1, 2)), xy])
        yaws = np.concatenate([yaws[:1], yaws])
        first = 0
    pts = to_frame(xy, pose)
    yaw0 = 0.0 if pose is None else float(pose[2])
    period_ns = 1e9 / float(frequency_hz)
    return [(int(stamp_ns) + int(round((first + k) * period_ns)), float(x), float(y),
             float(yaw + yaw0)) for k, ((x, y), yaw) in enumerate(zip(pts, yaws))]


def path_message(types, waypoints: np.ndarray, stamp_ns: int, frame_id: str,
                 frequency_hz: float = 4.0, pose=None, include_origin: bool = False):
    """The one ``nav_msgs/Path`` builder, for rclpy (the node) and rosbags (label bags) alike:
    ``types`` maps a message type name ('nav_msgs/msg/Path', ...) to its class. The Path is
    stamped t0; every pose carries its own stamp and heading (see :func:`path_poses`)."""
    Time, Header = types('builtin_interfaces/msg/Time'), types('std_msgs/msg/Header')
    Point, Quaternion = types('geometry_msgs/msg/Point'), types('geometry_msgs/msg/Quaternion')
    Pose, PoseStamped = types('geometry_msgs/msg/Pose'), types('geometry_msgs/msg/PoseStamped')

    def header(t_ns: int):
        sec, nanosec = ns_to_stamp_fields(t_ns)
        return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)

    poses = [PoseStamped(header=header(t), pose=Pose(
        position=Point(x=x, y=y, z=0.0),
        orientation=Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0))))
        for t, x, y, yaw in path_poses(waypoints, stamp_ns, frequency_hz, pose, include_origin)]
    return types('nav_msgs/msg/Path')(header=header(stamp_ns), poses=poses)


def path_to_xy(msg) -> tuple[str, np.ndarray]:
    """nav_msgs/Path -> (its frame_id, positions [M, 2]); a route with non-finite positions or
    poses in another frame than the Path's is a :class:`MessageError`."""
    frame = str(msg.header.frame_id)
    xy = np.array([(p.pose.position.x, p.pose.position.y) for p in msg.poses],
                  dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(xy).all():
        raise MessageError('nan_route', 'non-finite route position')
    others = {str(p.header.frame_id) for p in msg.poses} - {frame, ''}
    if others:
        raise MessageError('route_frame', f'poses in {sorted(others)}, the Path in {frame!r}')
    return frame, xy
