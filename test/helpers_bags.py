"""Small real rosbag2 drives for the bag, teacher and labeling tests (written with rosbags).

A drive: the ego drives along x at constant speed (optionally turning at ``yaw_rate``), odometry
at 50 Hz from ``t = 0``; cameras at 10 Hz from ``t = 4 s`` (4 s of past for the targets) until 5 s
before the odometry ends (5 s of future); CameraInfo, /tf_static and ground-truth objects in the
``/scenario/objects`` schema. Images are small (64x48) and different per camera and frame.
"""
from __future__ import annotations

import cv2
import json
import math
from pathlib import Path

import numpy as np

from rsd_drive.data.bag import BagWriter, DatasetConfig, build_message, header_msg
from rsd_drive.geometry import camera_to_ego, intrinsics, matrix_to_quaternion

H, W = 48, 64
START_NS = 1_700_000_000 * 10**9
MOUNTS = {'front': (1.5, 0.0, 1.6, 0.0), 'front_left': (1.3, 0.5, 1.6, 0.9),
          'front_right': (1.3, -0.5, 1.6, -0.9), 'back': (-0.5, 0.0, 1.6, math.pi),
          'back_left': (-0.3, 0.5, 1.6, 2.2), 'back_right': (-0.3, -0.5, 1.6, -2.2)}
PITCH = 0.08


def dataset_config(cameras=None, compressed=False, intent_topic='',
                   objects_topic='/scenario/objects', extrinsics=None) -> DatasetConfig:
    """The repo's dataset config, optionally restricted to some cameras."""
    base = DatasetConfig.from_yaml()
    cams = [c for c in base.cameras if cameras is None or c.name in cameras]
    for c in cams:
        c.compressed = compressed
    return DatasetConfig(cameras=cams, reference_camera=base.reference_camera,
                         sync_slop_s=base.sync_slop_s, odom_topic=base.odom_topic,
                         odom_max_gap_s=base.odom_max_gap_s, intent_topic=intent_topic,
                         tf_static_topic=base.tf_static_topic, objects_topic=objects_topic,
                         extrinsics=extrinsics or {})


def camera_K():
    return intrinsics(40.0, 40.0, (W - 1) / 2, (H - 1) / 2)


def camera_mount(name):
    x, y, z, yaw = MOUNTS[name]
    return camera_to_ego(x, y, z, yaw, PITCH)


def default_objects():
    """A pedestrian crossing ahead, a car ahead in the lane, a parked car off to the left."""
    return [
        {'id': 1, 'class': 'pedestrian', 'x': 14.0, 'y': -3.0, 'yaw': math.pi / 2,
         'length': 0.6, 'width': 0.6, 'height': 1.7, 'vx': 0.0, 'vy': 1.2},
        {'id': 2, 'class': 'vehicle', 'x': 30.0, 'y': 0.0, 'yaw': 0.0, 'length': 4.5,
         'width': 1.9, 'height': 1.5, 'vx': 4.0, 'vy': 0.0},
        {'id': 3, 'class': 'vehicle', 'x': 20.0, 'y': 7.0, 'yaw': 0.0, 'length': 4.5,
         'width': 1.9, 'height': 1.5, 'vx': 0.0, 'vy': 0.0},
    ]


def ego_pose(t: float, speed: float, yaw_rate: float):
    """(x, y, yaw) of the ego at t (constant speed and yaw rate, start at the origin)."""
    if abs(yaw_rate) < 1e-9:
        return speed * t, 0.0, 0.0
    yaw = yaw_rate * t
    r = speed / yaw_rate
    return r * math.sin(yaw), r * (1 - math.cos(yaw)), yaw


def _image(camera_index: int, frame: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = (xx * 4 + frame * 7) % 256
    img[..., 1] = (yy * 5 + camera_index * 40) % 256
    img[..., 2] = ((xx + yy) * 3 + frame) % 256
    return img


def write_drive(path, storage='mcap', cameras=None, compressed=False, n_frames=12,
                fps=10.0, odom_hz=50.0, speed=8.0, yaw_rate=0.0, tf_static=True,
                objects=True, intent=None, drop=(), corrupt_images=(), nan_odometry=(),
                jitter_ns=0, bgr=False) -> Path:
    """Write a drive; returns its path.

    drop: (camera, frame) pairs whose image is not recorded. corrupt_images: (camera, frame)
    pairs recorded with garbage data. nan_odometry: odometry message indices with NaN pose.
    intent: None (no intent topic) or the string published on /scenario/intent at every frame.
    """
    cfg = dataset_config(cameras, compressed)
    t_images0 = 4.0
    t_end = t_images0 + n_frames / fps + 5.2
    with BagWriter(path, storage=storage) as writer:
        ts = writer.typestore
        T = ts.types
        K = camera_K()
        if tf_static:
            tfs = []
            for cam in cfg.cameras:
                M = camera_mount(cam.name)
                qx, qy, qz, qw = matrix_to_quaternion(M[:3, :3])
                tfs.append(T['geometry_msgs/msg/TransformStamped'](
                    header=header_msg(ts, START_NS, 'base_link'),
                    child_frame_id=f'{cam.name}_optical',
                    transform=T['geometry_msgs/msg/Transform'](
                        translation=T['geometry_msgs/msg/Vector3'](
                            x=float(M[0, 3]), y=float(M[1, 3]), z=float(M[2, 3])),
                        rotation=T['geometry_msgs/msg/Quaternion'](x=qx, y=qy, z=qz, w=qw))))
            writer.write('/tf_static', START_NS, T['tf2_msgs/msg/TFMessage'](transforms=tfs))
        for cam in cfg.cameras:
            info = build_message(ts, 'sensor_msgs/msg/CameraInfo',
                                 header=header_msg(ts, START_NS, f'{cam.name}_optical'),
                                 height=H, width=W, distortion_model='plumb_bob',
                                 d=np.zeros(5), k=K.reshape(-1).astype(np.float64))
            writer.write(cam.info_topic, START_NS, info)
        events = []
        n_odom = int(t_end * odom_hz) + 1
        for i in range(n_odom):
            events.append((i / odom_hz, 'odom', i))
        for f in range(n_frames):
            t = t_images0 + f / fps
            for ci, cam in enumerate(cfg.cameras):
                events.append((t, 'image', (ci, f)))
            if objects:
                events.append((t, 'objects', f))
            if intent is not None:
                events.append((t, 'intent', f))
        events.sort(key=lambda e: (e[0], e[1]))
        for t, kind, arg in events:
            t_ns = START_NS + int(round(t * 1e9))
            if kind == 'odom':
                x, y, yaw = ego_pose(t, speed, yaw_rate)
                if arg in nan_odometry:
                    x = float('nan')
                odom = build_message(
                    ts, 'nav_msgs/msg/Odometry', header=header_msg(ts, t_ns, 'odom'),
                    child_frame_id='base_link')
                odom.pose.pose.position.x, odom.pose.pose.position.y = x, y
                odom.pose.pose.orientation.z = math.sin(yaw / 2)
                odom.pose.pose.orientation.w = math.cos(yaw / 2)
                odom.twist.twist.linear.x = speed
                odom.twist.twist.angular.z = yaw_rate
                writer.write('/odom', t_ns, odom)
            elif kind == 'image':
                ci, f = arg
                cam = cfg.cameras[ci]
                if (cam.name, f) in drop:
                    continue
                stamp = t_ns + (jitter_ns * ((ci % 3) - 1) if ci else 0)
                rgb = _image(ci, f)
                header = header_msg(ts, stamp, f'{cam.name}_optical')
                bad = (cam.name, f) in corrupt_images
                if compressed:
                    ok, buf = cv2.imencode('.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                    data = np.frombuffer(buf.tobytes()[:20] if bad else buf.tobytes(), np.uint8)
                    msg = T['sensor_msgs/msg/CompressedImage'](header=header, format='jpeg',
                                                               data=data)
                    writer.write(cam.image_topic + '/compressed', stamp, msg)
                else:
                    pix = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if bgr else rgb
                    data = pix.reshape(-1)[: (W * 3 * H) // 2] if bad else pix.reshape(-1)
                    msg = T['sensor_msgs/msg/Image'](
                        header=header, height=H, width=W, encoding='bgr8' if bgr else 'rgb8',
                        is_bigendian=0, step=W * 3, data=np.ascontiguousarray(data))
                    writer.write(cam.image_topic, stamp, msg)
            elif kind == 'objects':
                ex, ey, eyaw = ego_pose(t, speed, yaw_rate)
                world = []
                for o in default_objects():
                    # Objects are defined relative to the ego at the first frame, moving since.
                    dt = t - t_images0
                    world.append({**o, 'x': o['x'] + speed * t_images0 + o['vx'] * dt,
                                  'y': o['y'] + o['vy'] * dt, 'z': o['height'] / 2})
                msg = T['std_msgs/msg/String'](data=json.dumps(
                    {'stamp_ns': t_ns, 'frame': 'odom', 'objects': world}))
                writer.write('/scenario/objects', t_ns, msg)
            elif kind == 'intent':
                writer.write('/scenario/intent', t_ns, T['std_msgs/msg/String'](data=intent))
    return Path(path)


def read_all(path, topics=None) -> dict:
    """{topic: [(bag time ns, message)]} of a bag (only ``topics`` when given), in order, with
    rosbags only (no project code)."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    out = {}
    with AnyReader([Path(path)], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, t, raw in reader.messages(conns):
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return out


def read_topic(path, topic):
    """[(bag time ns, message)] of one topic of a bag, in order."""
    return read_all(path, (topic,)).get(topic, [])
