"""What every dataset importer shares: the dataset config check, image files read as they are,
the messages of a vehicle-like recording, ego motion helpers, and the one event loop that writes
a drive into a rosbag2 file (through :class:`rsd_drive.data.bag.BagWriter`, atomically).

An importer parses its dataset into cameras (``name``, ``frame_id``, ``K``, ``width``,
``height``, ``distortion``, ``cam_to_ego``), ego poses (:class:`EgoPose`), images
(:class:`ImageItem`) and object frames ((stamp_ns, [dicts in the /scenario/objects schema])) and
hands them to :func:`write_drive`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsd_drive.geometry import matrix_to_quaternion

ODOM_FRAME = 'odom'
TF_TOPIC = '/tf'


class ImporterError(ValueError):
    """A dataset that cannot be converted; the message names the file (and frame) at fault."""


@dataclass
class EgoPose:
    """Ego pose in odom at one stamp with its body-frame twist.

    linear: body frame (base_link), m/s, signed (negative x when reversing); yaw_rate: rad/s;
    angular: the full body-frame angular velocity when known (else (0, 0, yaw_rate))."""

    stamp_ns: int
    odom_from_ego: np.ndarray
    linear: np.ndarray
    yaw_rate: float
    angular: np.ndarray | None = None


@dataclass
class ImageItem:
    """One image to write: stamp, camera (an importer camera object), file, where it comes
    from (named in errors) and, when known, the (width, height) every JPEG must have."""

    stamp_ns: int
    camera: object
    path: Path
    where: str
    size: tuple | None = None


@dataclass
class ImportSummary:
    """What :func:`write_drive` wrote."""

    images: int
    odometry: int
    object_frames: int
    duration_s: float


def yaw_of(R: np.ndarray) -> float:
    return math.atan2(R[1, 0], R[0, 0])


def read_dataset_config(path, error_cls=ImporterError, what: str = 'the dataset'):
    """The dataset config (``rsd_drive.data.bag.DatasetConfig``), checked for what an importer
    needs: an objects topic and compressed cameras (the original JPEGs are written unchanged)."""
    from rsd_drive.data.bag import DatasetConfig

    try:
        ds = DatasetConfig.from_yaml(path)
    except (OSError, ValueError) as e:
        raise error_cls(f'{path}: {e}') from e
    if not ds.objects_topic:
        raise error_cls(f'{path}: objects_topic is empty; the importer writes the 3D boxes there')
    for cam in ds.cameras:
        if not cam.compressed:
            raise error_cls(f'{path}: camera {cam.name}: {what} images are JPEG and are written '
                            f'unchanged as CompressedImage, so set compressed: true')
    return ds


def read_json(path: Path, error_cls=ImporterError):
    """A JSON file's content; a clear error naming it when missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise error_cls(f'{path}: file missing') from e
    except (OSError, ValueError) as e:
        raise error_cls(f'{path}: not readable JSON ({e})') from e


def read_image_file(path: Path, where: str, error_cls=ImporterError) -> tuple[bytes, str]:
    """(bytes, 'jpeg'|'png') of a complete image file; a clear error naming it otherwise."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise error_cls(f'{where}: image file {path} missing') from e
    except OSError as e:
        raise error_cls(f'{where}: cannot read image {path} ({e})') from e
    if data[:3] == b'\xff\xd8\xff' and data[-2:] == b'\xff\xd9':
        return data, 'jpeg'
    if data[:8] == b'\x89PNG\r\n\x1a\n':
        return data, 'png'
    raise error_cls(f'{where}: {path} is not a complete JPEG/PNG file ({len(data)} bytes)')


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame marker (no decoding); None if not found."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], 'big')
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h = int.from_bytes(data[i + 5:i + 7], 'big')
            w = int.from_bytes(data[i + 7:i + 9], 'big')
            return w, h
        i += 2 + length
    return None


def add_velocities(frames: list) -> None:
    """vx, vy (odom) of every object by finite differences of its track (key ``id``) over the
    frames [(stamp_ns, [objects])]; 0 for objects seen once."""
    tracks: dict = {}
    for k, (t, objs) in enumerate(frames):
        for o in objs:
            tracks.setdefault(o['id'], []).append((k, t, o))
    for track in tracks.values():
        for i, (_, _, o) in enumerate(track):
            if len(track) == 1:
                o['vx'] = o['vy'] = 0.0
                continue
            (_, ta, a), (_, tb, b) = track[max(i - 1, 0)], track[min(i + 1, len(track) - 1)]
            dt = (tb - ta) * 1e-9
            o['vx'] = round((b['x'] - a['x']) / dt, 3)
            o['vy'] = round((b['y'] - a['y']) / dt, 3)


class Messages:
    """Builders of the messages an imported drive turns into (rosbags types, zero-filled)."""

    def __init__(self, typestore, base_frame: str = 'base_link'):
        from rsd_drive.data.bag import build_message, header_msg

        self.ts, self._build, self._header = typestore, build_message, header_msg
        self.base_frame = base_frame

    def msg(self, msgtype, **fields):
        return self._build(self.ts, msgtype, **fields)

    def header(self, stamp_ns, frame_id):
        return self._header(self.ts, stamp_ns, frame_id)

    def vector3(self, v):
        return self.msg('geometry_msgs/msg/Vector3', x=float(v[0]), y=float(v[1]), z=float(v[2]))

    def transform(self, stamp_ns, parent, child, T):
        qx, qy, qz, qw = matrix_to_quaternion(T[:3, :3])
        return self.msg('geometry_msgs/msg/TransformStamped', header=self.header(stamp_ns, parent),
                        child_frame_id=child, transform=self.msg(
                            'geometry_msgs/msg/Transform', translation=self.vector3(T[:3, 3]),
                            rotation=self.msg('geometry_msgs/msg/Quaternion',
                                              x=qx, y=qy, z=qz, w=qw)))

    def tf_static(self, stamp_ns, cameras):
        return self.msg('tf2_msgs/msg/TFMessage', transforms=[
            self.transform(stamp_ns, self.base_frame, cam.frame_id, cam.cam_to_ego)
            for cam in cameras])

    def camera_info(self, stamp_ns, cam):
        P = np.concatenate([cam.K, np.zeros((3, 1))], axis=1)
        return self.msg('sensor_msgs/msg/CameraInfo', header=self.header(stamp_ns, cam.frame_id),
                        height=cam.height, width=cam.width, distortion_model='plumb_bob',
                        d=np.asarray(cam.distortion, dtype=np.float64),
                        k=cam.K.reshape(-1).astype(np.float64), r=np.eye(3).reshape(-1),
                        p=P.reshape(-1))

    def compressed_image(self, stamp_ns, cam, data: bytes, fmt: str):
        return self.msg('sensor_msgs/msg/CompressedImage',
                        header=self.header(stamp_ns, cam.frame_id), format=fmt,
                        data=np.frombuffer(data, dtype=np.uint8))

    def odometry(self, stamp_ns, ego: EgoPose):
        """(Odometry, TFMessage) odom -> base_frame: full 3D pose, body-frame twist."""
        T = ego.odom_from_ego
        qx, qy, qz, qw = matrix_to_quaternion(T[:3, :3])
        pose = self.msg('geometry_msgs/msg/Pose', position=self.msg(
            'geometry_msgs/msg/Point', x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
            orientation=self.msg('geometry_msgs/msg/Quaternion', x=qx, y=qy, z=qz, w=qw))
        angular = ego.angular if ego.angular is not None else (0.0, 0.0, ego.yaw_rate)
        twist = self.msg('geometry_msgs/msg/Twist', linear=self.vector3(ego.linear),
                         angular=self.vector3(angular))
        odom = self.msg('nav_msgs/msg/Odometry', header=self.header(stamp_ns, ODOM_FRAME),
                        child_frame_id=self.base_frame,
                        pose=self.msg('geometry_msgs/msg/PoseWithCovariance', pose=pose),
                        twist=self.msg('geometry_msgs/msg/TwistWithCovariance', twist=twist))
        tf = self.msg('tf2_msgs/msg/TFMessage',
                      transforms=[self.transform(stamp_ns, ODOM_FRAME, self.base_frame, T)])
        return odom, tf

    def string(self, text: str):
        return self.msg('std_msgs/msg/String', data=text)


def write_drive(writer, ds, cameras, ego, images, objects, progress: bool, desc: str,
                error_cls=ImporterError) -> ImportSummary:
    """Write one drive in stamp order: /tf_static once (latched), odometry + /tf, every image
    (original bytes) with its CameraInfo, and the object frames as JSON in odom.

    cameras: importer cameras (``name`` must match the dataset config's); ego: [EgoPose];
    images: [ImageItem]; objects: [(stamp_ns, [object dicts in odom])]. At equal stamps the
    order is tf_static, odometry, images, objects."""
    from tqdm import tqdm

    from rsd_drive.data.qos import TF_STATIC_QOS

    m = Messages(writer.typestore, ds.base_frame)
    topics = {c.name: c for c in ds.cameras}
    stamps = [im.stamp_ns for im in images] + [e.stamp_ns for e in ego] + \
        [t for t, _ in objects]
    first, last = min(stamps), max(stamps)
    events = [(first, 0, 'tf_static', None)]
    events += [(e.stamp_ns, 1, 'odom', e) for e in ego]
    events += [(im.stamp_ns, 2, 'image', im) for im in images]
    events += [(t, 3, 'objects', objs) for t, objs in objects]
    events.sort(key=lambda e: (e[0], e[1]))

    writer.add_topic(ds.tf_static_topic, 'tf2_msgs/msg/TFMessage', qos=[TF_STATIC_QOS])
    with tqdm(total=len(images), desc=desc, unit='image', disable=not progress) as bar:
        for stamp, _, kind, item in events:
            if kind == 'tf_static':
                writer.write(ds.tf_static_topic, stamp, m.tf_static(stamp, cameras))
            elif kind == 'odom':
                odom, tf = m.odometry(stamp, item)
                writer.write(ds.odom_topic, stamp, odom)
                writer.write(TF_TOPIC, stamp, tf)
            elif kind == 'image':
                cam = item.camera
                data, fmt = read_image_file(item.path, item.where, error_cls)
                if item.size is not None and fmt == 'jpeg' and jpeg_size(data) != item.size:
                    raise error_cls(f'{item.where}: {item.path} is {jpeg_size(data)}, the '
                                    f'camera\'s CameraInfo says {tuple(item.size)}')
                writer.write(topics[cam.name].image_topic, stamp,
                             m.compressed_image(stamp, cam, data, fmt))
                writer.write(topics[cam.name].info_topic, stamp, m.camera_info(stamp, cam))
                bar.update(1)
            else:
                text = json.dumps({'stamp_ns': int(stamp), 'frame': ODOM_FRAME, 'objects': item},
                                  separators=(',', ':'))
                writer.write(ds.objects_topic, stamp, m.string(text))
    return ImportSummary(images=len(images), odometry=len(ego), object_frames=len(objects),
                         duration_s=(last - first) * 1e-9)
