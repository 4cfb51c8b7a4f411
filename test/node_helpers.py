"""Shared pieces of the deployment tests: a tiny checkpoint and its deploy artifact, a small
generated drive bag, planner parameters derived from config/planner.yaml, and the planner node in
its own process.

The node runs as ``sys.executable -m rsd_drive.ros.planner_node`` with the inherited environment
(the ROS wheels need it; conftest has already confined DDS to this host and a per-run domain).
This module imports no torch: the vehicle profile (no torch) uses it with an artifact exported by
the main profile (``RSD_DRIVE_TEST_ARTIFACT``, see :func:`test_artifact`).
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from rsd_drive.geometry import GridSpec, intrinsics
from rsd_drive.model.config import EncoderConfig, ModelConfig

REPO = Path(__file__).resolve().parents[1]
CAMERAS = ('front', 'front_left', 'front_right')
YAWS = {'front': 0.0, 'front_left': math.radians(55), 'front_right': math.radians(-55)}
IMAGE_HW = (64, 96)
GRID = GridSpec(rows=24, cols=32, resolution=1.5, origin_x=-12.0, origin_y=-18.0)
START_NS = 1_700_000_000 * 10**9
IMAGE_HZ, ODOM_HZ = 10.0, 50.0
SPEED = 5.0
YAW_RATE = 0.05


def tiny_config(num_cameras: int = len(CAMERAS), image_hw=IMAGE_HW) -> ModelConfig:
    return ModelConfig(num_cameras=num_cameras, image_height=image_hw[0],
                       image_width=image_hw[1], d_model=32, num_heads=4, bev_size=8,
                       planner_layers=1, num_ego_queries=2, grid=GRID,
                       encoder=EncoderConfig(hidden_size=32, num_layers=1, num_heads=2,
                                             patch_size=16))


ARTIFACT_ENV = 'RSD_DRIVE_TEST_ARTIFACT'
# torch and transformers made unimportable in a child process: what the vehicle (no torch) has.
NO_TORCH = ("import sys\n"
            "class _NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'transformers'):\n"
            "            raise ImportError(f'{name} is blocked: the vehicle has no torch')\n"
            "sys.meta_path.insert(0, _NoTorch())\n")


def make_checkpoint(path, seed: int = 0, config: ModelConfig | None = None) -> Path:
    """A RiskPlanner checkpoint whose trainable weights are perturbed (non-trivial outputs)."""
    import torch

    from rsd_drive.model.planner import RiskPlanner

    torch.manual_seed(seed)
    model = RiskPlanner(config or tiny_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith('encoder.'):
                p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path)
    return Path(path)


def make_artifact(path, seed: int = 0, cameras=CAMERAS, config: ModelConfig | None = None) -> Path:
    """A tiny checkpoint (``path/ckpt``) exported to a deploy artifact ``path/deploy``."""
    from rsd_drive.deploy.export import export_artifact

    path = Path(path)
    ckpt = make_checkpoint(path / 'ckpt', seed, config)
    export_artifact(ckpt, path / 'deploy', cameras=cameras, logger=lambda *_: None)
    return path / 'deploy'


def test_artifact(tmp_path_factory) -> Path:
    """The deploy artifact the node tests run on: ``$RSD_DRIVE_TEST_ARTIFACT`` when set (the
    vehicle profile: exported by the main profile with ``make test``), else exported here (needs
    torch; skipped with the reason without it)."""
    import pytest

    if os.environ.get(ARTIFACT_ENV):
        path = Path(os.environ[ARTIFACT_ENV])
        if not (path / 'deploy.json').is_file():
            pytest.fail(f'{ARTIFACT_ENV}={path} is not a deploy artifact (make test exports it)')
        return path
    try:
        import torch  # noqa: F401
    except ImportError as e:
        pytest.skip(f'no deploy artifact: set {ARTIFACT_ENV} (make test does) or install torch '
                    f'to export one ({e})')
    return make_artifact(tmp_path_factory.mktemp('artifact'))


test_artifact.__test__ = False  # a helper, not a test


def camera_K(camera: str, hw=IMAGE_HW) -> np.ndarray:
    h, w = hw
    fx = 0.5 * w / math.tan(math.radians(35))
    return intrinsics(fx, fx, (w - 1) / 2, (h - 1) / 2)


def camera_extrinsics(camera: str) -> list:
    return [1.5, 0.0, 1.6, YAWS.get(camera, 0.0), math.radians(5)]


def ego_pose(t_s: float):
    """Ego (x, y, yaw, speed) in odom at t seconds after START: a gentle left curve."""
    yaw = YAW_RATE * t_s
    if abs(YAW_RATE) < 1e-9:
        return SPEED * t_s, 0.0, 0.0, SPEED
    r = SPEED / YAW_RATE
    return r * math.sin(yaw), r * (1 - math.cos(yaw)), yaw, SPEED


def planner_params(tmp_path, model_dir, cameras=CAMERAS, use_info_topics=True, compressed=(),
                   **overrides) -> Path:
    """config/planner.yaml narrowed to ``cameras`` and pointed at ``model_dir`` (so every test
    also checks that the shipped file is complete)."""
    from rsd_drive.ros.planner_node import write_parameters

    specs = {}
    for cam in cameras:
        K = camera_K(cam)
        specs[cam] = dict(
            compressed=cam in compressed,
            image_topic=f'/cameras/{cam}/image_raw' + ('/compressed' if cam in compressed else ''),
            info_topic=f'/cameras/{cam}/camera_info' if use_info_topics else '',
            intrinsics=[float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])],
            image_size=[IMAGE_HW[1], IMAGE_HW[0]], extrinsics=camera_extrinsics(cam))
    settings = dict(model_dir=str(model_dir), backend='onnxruntime', threads=1,
                    diagnostics_period_s=0.25)
    settings.update(overrides)
    return write_parameters(Path(tmp_path) / 'planner_test.yaml', specs, **settings)


# -- a small drive as a rosbag2 (MCAP) ------------------------------------------------------------
def frame_image(camera_index: int, frame: int, hw=IMAGE_HW) -> np.ndarray:
    """Deterministic RGB content that changes per camera and frame."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 3 + frame * 7) % 256, (yy * 5 + camera_index * 40) % 256,
                    ((xx + yy + frame) * 2) % 256], axis=-1)
    return img.astype(np.uint8)


def write_drive_bag(path, duration_s: float = 6.0, cameras=CAMERAS, intent: str = 'left',
                    jitter_ns: int = 3_000_000) -> dict:
    """Cameras (rgb8 Image + CameraInfo) at 10 Hz, odometry at 50 Hz, intent at 1 Hz and one
    tf_static (a type the rclpy side does not have: replay must skip it). Returns the stamps."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    Time = T['builtin_interfaces/msg/Time']

    def header(t_ns, frame):
        return T['std_msgs/msg/Header'](stamp=Time(sec=t_ns // 10**9, nanosec=t_ns % 10**9),
                                        frame_id=frame)

    events = []
    n_frames = int(duration_s * IMAGE_HZ)
    for k in range(n_frames):
        t_ref = START_NS + int(k * 1e9 / IMAGE_HZ)
        for ci, cam in enumerate(cameras):
            events.append((t_ref + (0 if ci == 0 else (jitter_ns * ci) % 5_000_000),
                           1, 'image', (ci, cam, k)))
    for k in range(int(duration_s * ODOM_HZ) + 1):
        events.append((START_NS + int(k * 1e9 / ODOM_HZ), 0, 'odom', None))
    for k in range(int(duration_s) + 1):
        events.append((START_NS + k * 10**9, 2, 'intent', None))
    events.append((START_NS, -1, 'tf_static', None))
    events.sort(key=lambda e: (e[0], e[1]))

    stamps = {'front_stamps': [], 'odom_stamps': [], 'start_ns': START_NS}
    path = Path(path)
    writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
    with writer:
        conns = {}
        for cam in cameras:
            conns[f'img:{cam}'] = writer.add_connection(f'/cameras/{cam}/image_raw',
                                                        'sensor_msgs/msg/Image', typestore=ts)
            conns[f'info:{cam}'] = writer.add_connection(f'/cameras/{cam}/camera_info',
                                                         'sensor_msgs/msg/CameraInfo',
                                                         typestore=ts)
        conns['odom'] = writer.add_connection('/odom', 'nav_msgs/msg/Odometry', typestore=ts)
        conns['intent'] = writer.add_connection('/scenario/intent', 'std_msgs/msg/String',
                                                typestore=ts)
        conns['tf_static'] = writer.add_connection('/tf_static', 'tf2_msgs/msg/TFMessage',
                                                   typestore=ts)
        h, w = IMAGE_HW
        for t_ns, _, kind, data in events:
            if kind == 'image':
                ci, cam, k = data
                img = frame_image(ci, k)
                msg = T['sensor_msgs/msg/Image'](
                    header=header(t_ns, f'{cam}_optical'), height=h, width=w, encoding='rgb8',
                    is_bigendian=0, step=w * 3, data=img.reshape(-1))
                writer.write(conns[f'img:{cam}'], t_ns,
                             bytes(ts.serialize_cdr(msg, 'sensor_msgs/msg/Image')))
                K = camera_K(cam)
                info = T['sensor_msgs/msg/CameraInfo'](
                    header=header(t_ns, f'{cam}_optical'), height=h, width=w,
                    distortion_model='plumb_bob', d=np.zeros(5), k=K.reshape(-1),
                    r=np.eye(3).reshape(-1), p=np.hstack([K, np.zeros((3, 1))]).reshape(-1),
                    binning_x=0, binning_y=0,
                    roi=T['sensor_msgs/msg/RegionOfInterest'](
                        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
                writer.write(conns[f'info:{cam}'], t_ns,
                             bytes(ts.serialize_cdr(info, 'sensor_msgs/msg/CameraInfo')))
                if ci == 0:
                    stamps['front_stamps'].append(t_ns)
            elif kind == 'odom':
                writer.write(conns['odom'], t_ns, bytes(ts.serialize_cdr(
                    odometry(ts, header(t_ns, 'odom'), (t_ns - START_NS) / 1e9),
                    'nav_msgs/msg/Odometry')))
                stamps['odom_stamps'].append(t_ns)
            elif kind == 'intent':
                writer.write(conns['intent'], t_ns, bytes(ts.serialize_cdr(
                    T['std_msgs/msg/String'](data=intent), 'std_msgs/msg/String')))
            else:
                tfs = [T['geometry_msgs/msg/TransformStamped'](
                    header=header(t_ns, 'base_link'), child_frame_id=f'{cam}_optical',
                    transform=T['geometry_msgs/msg/Transform'](
                        translation=T['geometry_msgs/msg/Vector3'](x=1.5, y=0.0, z=1.6),
                        rotation=T['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=0.0,
                                                                   w=1.0)))
                       for cam in cameras]
                writer.write(conns['tf_static'], t_ns, bytes(ts.serialize_cdr(
                    T['tf2_msgs/msg/TFMessage'](transforms=tfs), 'tf2_msgs/msg/TFMessage')))
    return stamps


def odometry(ts, hdr, t_s: float):
    T = ts.types
    x, y, yaw, v = ego_pose(t_s)
    cov = np.zeros(36)
    pose = T['geometry_msgs/msg/PoseWithCovariance'](
        pose=T['geometry_msgs/msg/Pose'](
            position=T['geometry_msgs/msg/Point'](x=x, y=y, z=0.0),
            orientation=T['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=math.sin(yaw / 2),
                                                          w=math.cos(yaw / 2))),
        covariance=cov)
    vec = T['geometry_msgs/msg/Vector3']
    twist = T['geometry_msgs/msg/TwistWithCovariance'](
        twist=T['geometry_msgs/msg/Twist'](linear=vec(x=v, y=0.0, z=0.0),
                                           angular=vec(x=0.0, y=0.0, z=YAW_RATE)),
        covariance=cov)
    return T['nav_msgs/msg/Odometry'](header=hdr, child_frame_id='base_link', pose=pose,
                                      twist=twist)


# -- the node in its own process ------------------------------------------------------------------
class NodeProcess:
    """``planner_node`` in a subprocess; its log is collected line by line for waiting on."""

    def __init__(self, params_file, *extra_ros_args, name: str = 'planner_node',
                 no_torch: bool = False):
        env = dict(os.environ, PYTHONUNBUFFERED='1', RCUTILS_LOGGING_BUFFERED_STREAM='0')
        args = ['--ros-args', '--params-file', str(params_file), *extra_ros_args]
        if no_torch:  # as on the vehicle: importing torch/transformers raises
            cmd = [sys.executable, '-c', NO_TORCH + 'import sys, runpy\n'
                   "sys.argv[0] = 'planner_node'\n"
                   "runpy.run_module('rsd_drive.ros.planner_node', run_name='__main__')", *args]
        else:
            cmd = [sys.executable, '-m', 'rsd_drive.ros.planner_node', *args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip('\n'))
                self._cond.notify_all()

    @property
    def log(self) -> str:
        with self._cond:
            return '\n'.join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str:
        """Block until a log line matches ``pattern``; fail with the log if it never does."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                exited = self.proc.poll() is not None and not self._reader.is_alive()
                if remaining <= 0 or exited:
                    raise AssertionError(f'node log never matched {pattern!r} '
                                         f'(exit code {self.proc.poll()}):\n{self.log}')
                self._cond.wait(min(remaining, 0.5))

    def stop(self, timeout: float = 15.0) -> int:
        """SIGINT (clean shutdown path), then SIGKILL of this one process if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(timeout=5)
        return self.proc.returncode


# -- waiting on observable conditions -------------------------------------------------------------
def wait_until(predicate, timeout: float, what: str, poll_s: float = 0.05, detail=None):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds have
    passed: then fail naming ``what`` was waited for (and ``detail()``, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f'\n{detail()}' if detail is not None else ''
            raise AssertionError(f'timed out after {timeout} s waiting for {what}{extra}')
        time.sleep(poll_s)


class DiagnosticsListener:
    """/diagnostics (reliable) collected in the test process by its own rclpy node and context,
    spun in a thread: for waiting until the node has reported something."""

    def __init__(self, name: str = 'test_diagnostics_listener'):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.lock = threading.Lock()
        self.arrays = []
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._keep,
                                      QoSProfile(depth=100,
                                                 reliability=ReliabilityPolicy.RELIABLE))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _keep(self, msg) -> None:
        with self.lock:
            self.arrays.append(msg)

    def statuses(self, suffix: str) -> list:
        """{key: value} of every status received so far whose name ends with ``suffix``."""
        with self.lock:
            arrays = list(self.arrays)
        return [{kv.key: kv.value for kv in s.values} for a in arrays for s in a.status
                if s.name.endswith(suffix)]

    def wait_for_key(self, suffix: str, key: str, timeout: float = 60.0) -> dict:
        """The first status named ``*suffix`` that carries ``key``; fails after ``timeout``."""
        def found():
            return next((v for v in self.statuses(suffix) if key in v), None)
        return wait_until(found, timeout, f'a /diagnostics status "*{suffix}" carrying {key!r}',
                          detail=lambda: f'{len(self.arrays)} diagnostics arrays received; '
                                         f'last {suffix}: {(self.statuses(suffix) or [None])[-1]}')

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.spinner.join(timeout=2.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


# -- a test-side ROS peer: publishes inputs, collects the node's outputs --------------------------
def rgb_image_msg(stamp_ns: int, camera: str, rgb: np.ndarray):
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    msg.header.frame_id = f'{camera}_optical'
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding, msg.step = 'rgb8', rgb.shape[1] * 3
    msg.data = rgb.tobytes()
    return msg


def jpeg_image_msg(stamp_ns: int, camera: str, rgb: np.ndarray):
    import cv2
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    msg.header.frame_id = f'{camera}_optical'
    msg.format = 'jpeg'
    msg.data = cv2.imencode('.jpg', rgb[..., ::-1])[1].tobytes()
    return msg


def odometry_msg(stamp_ns: int, t_s: float):
    from nav_msgs.msg import Odometry

    x, y, yaw, v = ego_pose(t_s)
    msg = Odometry()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    msg.header.frame_id, msg.child_frame_id = 'odom', 'base_link'
    msg.pose.pose.position.x, msg.pose.pose.position.y = x, y
    msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = math.sin(yaw / 2), math.cos(yaw / 2)
    msg.twist.twist.linear.x = v
    return msg


class Peer:
    """An rclpy node in the test process (own context, spun in a thread) that talks to the
    planner node: camera/odometry publishers, and collectors for its path and diagnostics."""

    def __init__(self, cameras=CAMERAS, compressed=()):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Odometry, OccupancyGrid, Path as PathMsg
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image

        self.rclpy = rclpy
        self.cameras, self.compressed = list(cameras), set(compressed)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('test_peer', context=self.context)
        self.image_pubs = {}
        for cam in self.cameras:
            if cam in self.compressed:
                self.image_pubs[cam] = self.node.create_publisher(
                    CompressedImage, f'/cameras/{cam}/image_raw/compressed',
                    qos_profile_sensor_data)
            else:
                self.image_pubs[cam] = self.node.create_publisher(
                    Image, f'/cameras/{cam}/image_raw', qos_profile_sensor_data)
        self.odom_pub = self.node.create_publisher(Odometry, '/odom', qos_profile_sensor_data)
        self.lock = threading.Lock()
        self.paths, self.grids, self.diagnostics = [], [], []
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.path_sub = self.node.create_subscription(PathMsg, '/planner_node/path',
                                                      lambda m: self._keep(self.paths, m),
                                                      reliable)
        self.node.create_subscription(OccupancyGrid, '/planner_node/risk_grid',
                                      lambda m: self._keep(self.grids, m), reliable)
        self.node.create_subscription(DiagnosticArray, '/diagnostics',
                                      lambda m: self._keep(self.diagnostics, m), reliable)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()
        self.frame = 0
        self.t0_ns = time.time_ns()  # odometry trajectory starts here

    def _keep(self, store: list, msg) -> None:
        with self.lock:
            store.append((time.monotonic(), msg))

    def wait_for_node(self, timeout: float = 60.0) -> None:
        """Until DDS has matched our camera and odometry publishers with the planner's
        subscriptions and our path subscription with its publisher (matched endpoints, not only
        discovered ones)."""
        pubs = [*self.image_pubs.values(), self.odom_pub]

        def unmatched():
            return [p.topic_name for p in pubs if p.get_subscription_count() == 0] + \
                (['/planner_node/path'] if self.path_sub.get_publisher_count() == 0 else [])
        wait_until(lambda: not unmatched(), timeout, 'the planner node to match our topics',
                   detail=lambda: f'unmatched: {unmatched()}; graph: '
                                  f'{sorted(self.node.get_topic_names_and_types())}')

    def publish_frame(self, stamp_ns: int, cameras=None) -> None:
        self.frame += 1
        for ci, cam in enumerate(self.cameras):
            if cameras is not None and cam not in cameras:
                continue
            rgb = frame_image(ci, self.frame)
            make = jpeg_image_msg if cam in self.compressed else rgb_image_msg
            self.image_pubs[cam].publish(make(stamp_ns, cam, rgb))

    def publish_odometry(self, stamp_ns: int) -> None:
        self.odom_pub.publish(odometry_msg(stamp_ns, (stamp_ns - self.t0_ns) / 1e9))

    def wait_until(self, predicate, timeout: float, what: str = 'condition'):
        return wait_until(predicate, timeout, what)

    def diagnostics_since(self, t_monotonic: float) -> list:
        with self.lock:
            return [m for t, m in self.diagnostics if t >= t_monotonic]

    def paths_since(self, t_monotonic: float) -> list:
        with self.lock:
            return [m for t, m in self.paths if t >= t_monotonic]

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.spinner.join(timeout=2.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


class Streamer:
    """Publishes live inputs stamped with the wall clock: odometry at 50 Hz and the enabled
    cameras at 10 Hz, until stopped. ``cameras``/``odometry`` can be switched while running."""

    def __init__(self, peer: Peer):
        self.peer = peer
        self.cameras = set(peer.cameras)
        self.odometry = True
        self.frames = 0  # camera sets published so far
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        tick = 0
        next_t = time.monotonic()
        while not self._stop.is_set():
            now_ns = time.time_ns()
            if self.odometry:
                self.peer.publish_odometry(now_ns)
            if tick % 5 == 0 and self.cameras:
                self.peer.publish_frame(now_ns, set(self.cameras))
                self.frames += 1
            tick += 1
            next_t += 1.0 / ODOM_HZ
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2.0)


def diagnostic_status(array, suffix: str):
    """(level int, message, {key: value}) of the status whose name ends with ``suffix``."""
    for status in array.status:
        if status.name.endswith(suffix):
            return (int.from_bytes(status.level, 'little') if isinstance(status.level, bytes)
                    else int(status.level), status.message,
                    {kv.key: kv.value for kv in status.values})
    return None


class LifecycleClient:
    """The standard lifecycle services of a managed node, called over DDS from the test's peer
    node (``~/change_state``, ``~/get_state``; lifecycle_msgs from the ROS wheels)."""

    def __init__(self, peer: Peer, node_name: str = 'planner_node'):
        from lifecycle_msgs.srv import ChangeState, GetState

        self.peer = peer
        self.change = peer.node.create_client(ChangeState, f'/{node_name}/change_state')
        self.get = peer.node.create_client(GetState, f'/{node_name}/get_state')

    def wait(self, timeout: float = 60.0) -> None:
        """Until the services are discovered and ``get_state`` answers. Discovered is not
        matched: a request sent before the server's request reader has matched this client is
        lost for good (volatile), so the idempotent GetState is sent until one is answered."""
        from lifecycle_msgs.srv import GetState

        deadline = time.monotonic() + timeout
        for client in (self.change, self.get):
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f'service {client.srv_name} never appeared')
        while True:
            future = self.get.call_async(GetState.Request())
            probe_end = min(deadline, time.monotonic() + 2.0)
            while not future.done() and time.monotonic() < probe_end:
                time.sleep(0.02)
            if future.done():
                return
            self.get.remove_pending_request(future)
            if time.monotonic() >= deadline:
                raise AssertionError(f'{self.get.srv_name} discovered but never answered within '
                                     f'{timeout} s')

    def _call(self, client, request, timeout: float):
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise AssertionError(f'{client.srv_name}: no answer within {timeout} s')
            time.sleep(0.02)
        return future.result()

    def state(self, timeout: float = 30.0) -> str:
        from lifecycle_msgs.srv import GetState

        return self._call(self.get, GetState.Request(), timeout).current_state.label

    def transition(self, transition_id: int, timeout: float = 120.0) -> bool:
        """ChangeState by id (lifecycle_msgs/Transition); True when the node reports success."""
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.id = int(transition_id)
        return bool(self._call(self.change, request, timeout).success)
