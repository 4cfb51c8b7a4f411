"""Record synthetic drives as rosbag2 files (MCAP by default) with the ``rosbags`` writer.

Topics (names match ``config/dataset.yaml``; the camera topics exist per rig camera):

    /cameras/<name>/image_raw             sensor_msgs/Image rgb8, frame <name>_optical
    /cameras/<name>/image_raw/compressed  sensor_msgs/CompressedImage jpeg (instead, if compressed)
    /cameras/<name>/camera_info           sensor_msgs/CameraInfo, plumb_bob, zero distortion
    /tf_static                            tf2_msgs/TFMessage base_link -> <name>_optical, once
    /tf                                   tf2_msgs/TFMessage odom -> base_link at odometry rate
    /odom                                 nav_msgs/Odometry, odom -> base_link
    /scenario/objects                     std_msgs/String JSON ground truth (odom frame)
    /scenario/object_markers              visualization_msgs/MarkerArray CUBEs (odom frame)
    /scenario/intent                      std_msgs/String unknown|straight|left|right (route)
    /route                                nav_msgs/Path, the navigation route (the ego lane's
                                          centre line, odom frame), once at the start,
                                          transient local (what planner_node's ~/route takes)
    /scenario/noise                       std_msgs/String JSON {"intervals_ns": [[start, end]]}, once
                                          at the start: where noise was injected on the ego
                                          (bookkeeping for the labeler, never a model input)
    /scenario/info                        std_msgs/String JSON, once at the start: seed, family
                                          (the concrete one), requested_family, hazard (what the
                                          family placed, when it fired), expert collisions
                                          (and ``driver``: who drove, where not the expert)
    /expert/future                        nav_msgs/Path in base_link, one per frame at the frame
                                          time, only in drives of a driver with expert rollouts
                                          (``rsd-drive dagger``): the expert's future from the
                                          visited state, the frame's planning target

``/scenario/objects`` also carries ``route``: the ego lane's centre line ahead of the ego (odom,
80 m every 2 m), the map knowledge a leak-free teacher scores risk against.

Bag time equals header time for every message. A bag is written into a temporary directory next
to its target and renamed into place only when complete, so a failed or interrupted run leaves
nothing behind.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from rsd_drive.data.qos import TF_STATIC_QOS
from rsd_drive.geometry import matrix_to_quaternion
from rsd_drive.scenario.config import ScenarioConfig
from rsd_drive.scenario.render import Camera, render_camera
from rsd_drive.scenario.world import World, WorldState

IMAGE_TOPIC = '/cameras/{}/image_raw'
COMPRESSED_SUFFIX = '/compressed'
INFO_TOPIC = '/cameras/{}/camera_info'
ODOM_TOPIC = '/odom'
TF_TOPIC = '/tf'
TF_STATIC_TOPIC = '/tf_static'
OBJECTS_TOPIC = '/scenario/objects'
MARKERS_TOPIC = '/scenario/object_markers'
INTENT_TOPIC = '/scenario/intent'
INFO_TOPIC_JSON = '/scenario/info'
ROUTE_TOPIC = '/route'
NOISE_TOPIC = '/scenario/noise'
EXPERT_FUTURE_TOPIC = '/expert/future'
ODOM_FRAME, BASE_FRAME = 'odom', 'base_link'

# Drives start at 2023-11-14 plus 1000 s per seed, so bags of different seeds never overlap.
START_TIME_NS = 1_700_000_000 * 10**9
SEED_TIME_STEP_NS = 1000 * 10**9

MARKER_RGBA = {'vehicle': (0.2, 0.4, 0.9, 0.6), 'pedestrian': (1.0, 0.6, 0.0, 0.8)}

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
T = TYPESTORE.types


def drive_name(seed: int) -> str:
    return f'drive_{seed:04d}'


def drive_start_ns(seed: int) -> int:
    return START_TIME_NS + (int(seed) % 1_000_000) * SEED_TIME_STEP_NS


@dataclass
class DriveSummary:
    """What ``generate_drive`` wrote: bag path, frames per camera, seconds, frames per intent,
    number of published objects, bag size in bytes, the concrete family, its hazard record, the
    expert's collisions (none expected) and its minimum speed."""

    path: Path
    seed: int
    frames: int
    duration_s: float
    intents: dict
    n_objects: int
    size_bytes: int
    family: str = ''
    hazard: dict | None = None
    collisions: list | None = None
    min_speed: float = 0.0


# -- message builders -----------------------------------------------------------------------------

def _header(stamp_ns: int, frame_id: str):
    sec, nsec = divmod(int(stamp_ns), 10**9)
    return T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=sec, nanosec=nsec),
                                    frame_id=frame_id)


def _vector3(x=0.0, y=0.0, z=0.0):
    return T['geometry_msgs/msg/Vector3'](x=float(x), y=float(y), z=float(z))


def _quaternion(qx, qy, qz, qw):
    return T['geometry_msgs/msg/Quaternion'](x=float(qx), y=float(qy), z=float(qz), w=float(qw))


def _yaw_quaternion(yaw: float):
    return _quaternion(0.0, 0.0, np.sin(yaw / 2), np.cos(yaw / 2))


def _pose(x, y, z, yaw):
    point = T['geometry_msgs/msg/Point'](x=float(x), y=float(y), z=float(z))
    return T['geometry_msgs/msg/Pose'](position=point, orientation=_yaw_quaternion(yaw))


def _transform(stamp_ns, parent, child, translation, quaternion):
    return T['geometry_msgs/msg/TransformStamped'](
        header=_header(stamp_ns, parent), child_frame_id=child,
        transform=T['geometry_msgs/msg/Transform'](translation=_vector3(*translation),
                                                   rotation=_quaternion(*quaternion)))


def image_msg(stamp_ns: int, camera: Camera, rgb: np.ndarray):
    h, w = rgb.shape[:2]
    return T['sensor_msgs/msg/Image'](header=_header(stamp_ns, camera.frame_id), height=h, width=w,
                                      encoding='rgb8', is_bigendian=0, step=w * 3,
                                      data=np.ascontiguousarray(rgb).reshape(-1))


def compressed_image_msg(stamp_ns: int, camera: Camera, rgb: np.ndarray, quality: int):
    ok, jpeg = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f'JPEG encoding failed for camera {camera.name}')
    return T['sensor_msgs/msg/CompressedImage'](header=_header(stamp_ns, camera.frame_id),
                                                format='jpeg', data=jpeg.reshape(-1))


def camera_info_msg(stamp_ns: int, camera: Camera):
    K = camera.K
    P = np.concatenate([K, np.zeros((3, 1))], axis=1)
    roi = T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0,
                                                do_rectify=False)
    return T['sensor_msgs/msg/CameraInfo'](
        header=_header(stamp_ns, camera.frame_id), height=camera.height, width=camera.width,
        distortion_model='plumb_bob', d=np.zeros(5), k=K.reshape(-1).astype(np.float64),
        r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0, roi=roi)


def tf_static_msg(stamp_ns: int, cameras) -> object:
    transforms = [_transform(stamp_ns, BASE_FRAME, cam.frame_id, cam.cam_to_ego[:3, 3],
                             matrix_to_quaternion(cam.cam_to_ego[:3, :3])) for cam in cameras]
    return T['tf2_msgs/msg/TFMessage'](transforms=transforms)


def odometry_msgs(stamp_ns: int, ego: dict):
    """(Odometry, TFMessage) of the ego at one instant; twist in the body frame (REP-105)."""
    cov = np.zeros(36)
    odom = T['nav_msgs/msg/Odometry'](
        header=_header(stamp_ns, ODOM_FRAME), child_frame_id=BASE_FRAME,
        pose=T['geometry_msgs/msg/PoseWithCovariance'](
            pose=_pose(ego['x'], ego['y'], 0.0, ego['yaw']), covariance=cov),
        twist=T['geometry_msgs/msg/TwistWithCovariance'](
            twist=T['geometry_msgs/msg/Twist'](linear=_vector3(ego['speed']),
                                               angular=_vector3(z=ego['yaw_rate'])),
            covariance=cov))
    tf = T['tf2_msgs/msg/TFMessage'](transforms=[_transform(
        stamp_ns, ODOM_FRAME, BASE_FRAME, (ego['x'], ego['y'], 0.0),
        (0.0, 0.0, np.sin(ego['yaw'] / 2), np.cos(ego['yaw'] / 2)))])
    return odom, tf


def markers_msg(stamp_ns: int, state: WorldState, lifetime_s: float):
    """CUBE markers of the objects, expiring after ``lifetime_s`` unless refreshed."""
    marker_t = T['visualization_msgs/msg/Marker']
    lifetime = T['builtin_interfaces/msg/Duration'](sec=int(lifetime_s),
                                                    nanosec=int(lifetime_s % 1 * 1e9))
    no_texture = T['sensor_msgs/msg/CompressedImage'](header=_header(0, ''), format='',
                                                      data=np.zeros(0, np.uint8))
    no_mesh = T['visualization_msgs/msg/MeshFile'](filename='', data=np.zeros(0, np.uint8))
    objects, markers = state.objects, []
    for i in range(len(objects)):
        cls = objects.classes[i]
        markers.append(marker_t(
            header=_header(stamp_ns, ODOM_FRAME), ns=cls, id=int(objects.ids[i]),
            type=marker_t.CUBE, action=marker_t.ADD,
            pose=_pose(*objects.centre[i], objects.yaw[i]), scale=_vector3(*objects.size[i]),
            color=T['std_msgs/msg/ColorRGBA'](*MARKER_RGBA[cls]), lifetime=lifetime,
            frame_locked=False, points=[], colors=[], texture_resource='', texture=no_texture,
            uv_coordinates=[], text='', mesh_resource='', mesh_file=no_mesh,
            mesh_use_embedded_materials=False))
    return T['visualization_msgs/msg/MarkerArray'](markers=markers)


def string_msg(text: str):
    return T['std_msgs/msg/String'](data=text)


# -- recording ------------------------------------------------------------------------------------

class _Bag:
    """Topic registry on an open ``rosbags`` writer: serialise and write with one call."""

    def __init__(self, writer: Writer):
        self.writer, self.connections = writer, {}

    def add(self, topic: str, msgtype: str, qos=()) -> None:
        self.connections[topic] = (self.writer.add_connection(
            topic, msgtype, typestore=TYPESTORE, offered_qos_profiles=qos), msgtype)

    def write(self, topic: str, stamp_ns: int, msg) -> None:
        conn, msgtype = self.connections[topic]
        self.writer.write(conn, int(stamp_ns), TYPESTORE.serialize_cdr(msg, msgtype))


def _schedule(cfg: ScenarioConfig, start_ns: int, offsets: np.ndarray) -> list:
    """All write events, in stamp order: (stamp_ns, order, kind, frame, camera). At equal stamps
    tf_static comes first, then odometry, cameras, and the per-frame ground truth."""
    events = [(start_ns, 0, 'tf_static', 0, 0)]
    odom_ns = start_ns + np.round(np.arange(cfg.n_odom) * 1e9 / cfg.odom_hz).astype(np.int64)
    events += [(int(s), 1, 'odom', j, 0) for j, s in enumerate(odom_ns)]
    frame_ns = start_ns + np.round(np.arange(cfg.n_frames) * 1e9 / cfg.image_hz).astype(np.int64)
    for k, s in enumerate(frame_ns):
        events += [(int(s + offsets[k, c]), 2, 'image', k, c) for c in range(len(cfg.cameras))]
        events.append((int(s), 3, 'frame', k, 0))
    events.sort()
    return events


def json_safe(value):
    """``value`` with non-finite floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def read_drive_info(bag_path) -> dict | None:
    """The ``/scenario/info`` record of a scenario bag (seed, family, requested_family, hazard,
    collisions), or None for a bag without one (older drives, other sources)."""
    from rosbags.rosbag2 import Reader

    with Reader(bag_path) as reader:
        conns = [c for c in reader.connections if c.topic == INFO_TOPIC_JSON]
        for conn, _, raw in reader.messages(connections=conns):
            return json.loads(TYPESTORE.deserialize_cdr(raw, conn.msgtype).data)
    return None


def route_msg(stamp_ns: int, route_xy: np.ndarray):
    """The route as a nav_msgs/Path in odom (the package's one Path builder)."""
    from rsd_drive.data.convert import path_message

    return path_message(TYPESTORE.types.__getitem__, route_xy, stamp_ns, ODOM_FRAME)


def expert_future_msg(stamp_ns: int, waypoints: np.ndarray, frequency_hz: float):
    """A frame's expert future [T, 2] as a nav_msgs/Path in base_link stamped at the frame."""
    from rsd_drive.data.convert import path_message

    return path_message(TYPESTORE.types.__getitem__, waypoints, stamp_ns, BASE_FRAME,
                        frequency_hz)


def noise_json(world: World, start_ns: int) -> str:
    intervals = [[start_ns + int(round(a * 1e9)), start_ns + int(round(b * 1e9))]
                 for a, b in world.noise_intervals()]
    return json.dumps({'intervals_ns': intervals}, separators=(',', ':'))


def info_json(world: World) -> str:
    info = {'seed': world.seed, 'family': world.family,
            'requested_family': world.requested_family, 'hazard': world.hazard,
            'collisions': world.collisions}
    if world.driver_info is not None:
        info['driver'] = world.driver_info
    return json.dumps(json_safe(info), separators=(',', ':'))


def _add_topics(bag: _Bag, cameras, cfg: ScenarioConfig, expert_future: bool = False) -> list:
    """Register every topic of a drive; returns the image topic per camera."""
    bag.add(TF_STATIC_TOPIC, 'tf2_msgs/msg/TFMessage', qos=[TF_STATIC_QOS])
    bag.add(TF_TOPIC, 'tf2_msgs/msg/TFMessage')
    bag.add(ODOM_TOPIC, 'nav_msgs/msg/Odometry')
    image_type = 'sensor_msgs/msg/CompressedImage' if cfg.compressed else 'sensor_msgs/msg/Image'
    image_topics = [IMAGE_TOPIC.format(c.name) + (COMPRESSED_SUFFIX if cfg.compressed else '')
                    for c in cameras]
    for cam, topic in zip(cameras, image_topics):
        bag.add(topic, image_type)
        bag.add(INFO_TOPIC.format(cam.name), 'sensor_msgs/msg/CameraInfo')
    bag.add(OBJECTS_TOPIC, 'std_msgs/msg/String')
    bag.add(MARKERS_TOPIC, 'visualization_msgs/msg/MarkerArray')
    bag.add(INTENT_TOPIC, 'std_msgs/msg/String')
    bag.add(INFO_TOPIC_JSON, 'std_msgs/msg/String')
    bag.add(ROUTE_TOPIC, 'nav_msgs/msg/Path', qos=[TF_STATIC_QOS])
    bag.add(NOISE_TOPIC, 'std_msgs/msg/String', qos=[TF_STATIC_QOS])
    if expert_future:
        bag.add(EXPERT_FUTURE_TOPIC, 'nav_msgs/msg/Path')
    return image_topics


def record_world(path: Path, world: World, cfg: ScenarioConfig, progress: bool) -> DriveSummary:
    """Render and write the drive of ``world`` into the bag ``path`` (not atomic by itself:
    :func:`generate_drive` writes it into a temporary directory)."""
    cameras = [Camera(spec, cfg.image_width, cfg.image_height) for spec in cfg.cameras]
    seed = world.seed
    start_ns = drive_start_ns(seed)
    offsets = world.camera_offsets_ns(cfg.n_frames, len(cameras))
    storage = StoragePlugin.MCAP if cfg.storage == 'mcap' else StoragePlugin.SQLITE3
    intents: dict = {}
    writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=storage)
    if cfg.storage == 'mcap' and cfg.chunk_compression:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with writer, tqdm(total=cfg.n_frames, desc=path.name, unit='frame',
                      disable=not progress) as bar:
        bag = _Bag(writer)
        image_topics = _add_topics(bag, cameras, cfg, world.expert_futures is not None)
        for stamp, _, kind, k, c in _schedule(cfg, start_ns, offsets):
            t = (stamp - start_ns) * 1e-9
            if kind == 'tf_static':
                bag.write(TF_STATIC_TOPIC, stamp, tf_static_msg(stamp, cameras))
                bag.write(INFO_TOPIC_JSON, stamp, string_msg(info_json(world)))
                bag.write(ROUTE_TOPIC, stamp, route_msg(stamp, world.route_xy))
                bag.write(NOISE_TOPIC, stamp, string_msg(noise_json(world, start_ns)))
            elif kind == 'odom':
                odom, tf = odometry_msgs(stamp, world.ego(t))
                bag.write(ODOM_TOPIC, stamp, odom)
                bag.write(TF_TOPIC, stamp, tf)
            elif kind == 'image':
                cam = cameras[c]
                rgb = render_camera(world.state(t), cam, draw_distance=cfg.draw_distance)
                msg = (compressed_image_msg(stamp, cam, rgb, cfg.jpeg_quality) if cfg.compressed
                       else image_msg(stamp, cam, rgb))
                bag.write(image_topics[c], stamp, msg)
                bag.write(INFO_TOPIC.format(cam.name), stamp, camera_info_msg(stamp, cam))
            else:
                state = world.state(t, velocities=True)
                intent = world.intent(t)
                intents[intent] = intents.get(intent, 0) + 1
                bag.write(OBJECTS_TOPIC, stamp, string_msg(state.objects_json(stamp)))
                bag.write(MARKERS_TOPIC, stamp, markers_msg(stamp, state, 2.0 / cfg.image_hz))
                bag.write(INTENT_TOPIC, stamp, string_msg(intent))
                if world.expert_futures is not None:
                    bag.write(EXPERT_FUTURE_TOPIC, stamp, expert_future_msg(
                        stamp, world.expert_future(t), world.expert_hz))
                bar.update(1)
    size = sum(f.stat().st_size for f in path.iterdir())
    return DriveSummary(path=path, seed=int(seed), frames=cfg.n_frames, duration_s=cfg.duration_s,
                        intents=intents, n_objects=world.n_objects, size_bytes=size,
                        family=world.family, hazard=json_safe(world.hazard),
                        collisions=list(world.collisions), min_speed=world.min_speed)


def generate_drive(out_path, seed: int, config: ScenarioConfig, progress: bool = True,
                   family: str | None = None, driver=None) -> DriveSummary:
    """Simulate, render and record one drive into the bag directory ``out_path``.

    The bag is written to a temporary directory beside ``out_path`` and renamed into place when
    complete; on any error (or Ctrl-C) the temporary directory is removed and nothing remains.
    Refuses to overwrite an existing ``out_path``. ``family``: the scenario family (None: the
    config's ``family``); ``driver``: who drives the world (None: the expert, with the config's
    noise injection; see :class:`~rsd_drive.scenario.world.World`).
    """
    out_path = Path(out_path)
    if out_path.exists():
        raise FileExistsError(f'{out_path} exists already, not overwriting')
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out_path.name}.', suffix='.partial',
                                dir=out_path.parent))
    try:
        # The bag is built under its final name: the storage file inside is named after it.
        world = World(seed, config, family, driver)
        summary = record_world(tmp / out_path.name, world, config, progress)
        os.rename(tmp / out_path.name, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary.path = out_path
    return summary


def generate_drives(out_dir, seed: int, count: int, config: ScenarioConfig,
                    progress: bool = True, family: str | None = None) -> list:
    """``count`` drives ``out_dir/drive_<seed+i>`` with seeds seed, seed+1, ...; returns paths."""
    out_dir = Path(out_dir)
    return [generate_drive(out_dir / drive_name(seed + i), seed + i, config, progress,
                           family).path for i in range(count)]
