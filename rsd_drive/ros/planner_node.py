"""``planner_node``: cameras + odometry (+ intent, route) -> plan, risk grid, markers, diagnostics.

Topics (names are parameters, see config/planner.yaml):

* in, sensor-data QoS: one ``sensor_msgs/Image`` or ``CompressedImage`` per camera, ``CameraInfo``
  per camera (or intrinsics from the parameters), ``nav_msgs/Odometry``; reliable: the intent as
  ``std_msgs/String`` (unknown|straight|left|right); reliable, transient local: the navigation
  route ``~/route`` (``nav_msgs/Path`` in the odometry frame), brought into base_link at each
  plan's own odometry for a model with the route input (``rsd_drive.data.route``; none, stale or
  off the route: the plan is intent-only and ``/diagnostics`` says so); ``tf_static`` for
  extrinsics when chosen and ``tf2_msgs`` is installed (else extrinsics come from parameters).
* out, reliable: ``~/path`` (``nav_msgs/Path``, stamped with the reference camera's stamp, in
  ``output_frame``: ``base_link`` or the odometry frame), ``~/risk_grid`` (``OccupancyGrid``
  0..100, the model's GridSpec), ``~/markers`` (``MarkerArray``), ``/diagnostics``.

Life cycle: a managed node (``rclpy.lifecycle.LifecycleNode``, as in ros2/demos and nav2), driven
through the standard ``~/change_state`` / ``~/get_state`` services (``ros2 lifecycle set``, a
lifecycle manager, launch_ros). ``__init__`` only declares and reads parameters and starts
``/diagnostics``; ``on_configure`` loads the deploy artifact and builds or loads the engine
(seconds to minutes) and creates the output publishers; ``on_activate`` creates the subscriptions
and the inference worker and enables the publishers; ``on_deactivate`` stops both (no output while
inactive); ``on_cleanup`` frees the backend; ``on_shutdown`` frees everything from any state. A
transition that cannot be made (bad artifact, missing tf2_msgs, camera order differing from the
model's) returns FAILURE with the reason logged; an unexpected exception is an ERROR, after which
``on_error`` frees what was made and the node is unconfigured again. Diagnostics carry the state.
They are published every ``diagnostics_period_s`` and also right after the first plan since
activation and on deactivate / shutdown, so a run shorter than a period still reports its latencies
and its final counters.
``autostart: true`` configures and activates at start, so ``ros2 run`` needs no manager;
``build_only:=true`` prepares the backend and exits.

Threads: subscription callbacks run on the executor, do only cheap validation and
synchronisation, and hand complete camera sets to one inference worker through a latest-only
queue (a newer set replaces a waiting one; replacements are counted as ``queue_drop``), so the
planner always works on the newest frame instead of a backlog.

Safety: a set is planned only when every camera and the odometry are younger than
``max_input_age_s`` (ROS time, so bag replay with ``use_sim_time`` works); otherwise no path is
published and diagnostics report ERROR until fresh data returns. Malformed messages (unknown
encoding, size not matching step*height, truncated JPEG, NaN odometry, stamps from the future) are
dropped and counted per reason and input; the node keeps running.
"""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial

import numpy as np
import rclpy
from nav_msgs.msg import OccupancyGrid, Odometry, Path as PathMsg
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String
from diagnostic_msgs.msg import DiagnosticArray
from visualization_msgs.msg import MarkerArray

from rsd_drive import INTENTS
from rsd_drive.data.convert import (MessageError, camera_info_distortion,
                                    camera_info_to_intrinsics, check_image, odometry_to_state,
                                    path_to_xy, stamp_to_ns, transform_to_matrix)
from rsd_drive.data.route import route_for_plan
from rsd_drive.data.sync import FrameSynchronizer, OdometryHistory, SyncError
from rsd_drive.deploy.pipeline import CameraCalibration, FrameError, FramePlanner, LatencyStats
from rsd_drive.geometry import extrinsics_to_matrix, intrinsics
from rsd_drive.ros import messages
from rsd_drive.ros.planner_diagnostics import DiagnosticsSnapshot, diagnostic_array
# The parameter schema lives in planner_params; its names stay importable from here (callers of
# planner_node.write_parameters, ConfigError, PARAMETERS, ...).
from rsd_drive.ros.planner_params import (CAMERA_PARAMETERS, EXTRINSICS_PARAMETERS,  # noqa: F401
                                          EXTRINSICS_SOURCES, INTRINSICS_PARAMETERS, PARAMETERS,
                                          ConfigError, Settings, declare_parameter,
                                          default_parameters_path, read_settings,
                                          write_parameters)


class LatestOnlyQueue:
    """A one-slot hand-over between threads: ``put`` replaces what is waiting (and returns it)."""

    def __init__(self):
        self._item = None
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item):
        with self._cond:
            dropped, self._item = self._item, item
            self._cond.notify()
            return dropped

    def get(self, timeout: float):
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class Received:
    """A validated camera message and what the node knew when it arrived."""

    msg: object
    recv_ns: int          # ROS time at arrival
    callback_s: float     # time spent in its callback (validation + synchroniser)
    recv_perf: float = 0.0  # wall clock (perf_counter) at arrival


@dataclass
class PendingSet:
    stamp_ns: int
    items: list
    complete_perf: float


class PlannerNode(LifecycleNode):
    """See the module docstring."""

    def __init__(self, **kwargs):
        super().__init__('planner_node', **kwargs)
        self.settings = read_settings(partial(declare_parameter, self))
        self.sim_time = bool(self.get_parameter('use_sim_time').value)
        s = self.settings
        self.max_age_ns = int(s.max_input_age_s * 1e9)
        self.lock = threading.Lock()
        self.counters = Counter()           # dropped / skipped inputs, '<reason>:<input>'
        self.received = Counter()           # valid messages per input
        self.last_stamp_ns = {}             # input -> newest valid stamp (ROS time)
        self.intrinsics_by_camera = {}      # camera -> (K, (h, w)[, Distortion])
        self.extrinsics_by_camera = {}      # camera -> cam_to_ego 4x4
        self.camera_frames = {}             # camera -> optical frame id (from image headers)
        self.static_transforms = {}         # child frame -> (parent frame, 4x4)
        self.route = None                   # (stamp_ns, frame_id, [M, 2]) from route_topic
        self.route_status = 'none'          # of the last plan (data.route.route_for_plan)
        try:
            self.intent = self._intent_index(s.default_intent, 'default_intent')
        except MessageError as e:
            raise ConfigError(str(e)) from e
        self.latency = LatencyStats(s.latency_window)
        self.plans_published = 0
        self.announce_plan = False          # publish diagnostics right after the next plan
        self.last_plan_ns = None
        self.last_skip = 'no frame yet'
        self.last_now_ns = 0
        self.odom_cond = threading.Condition(self.lock)
        self.info_cond = threading.Condition()  # a first CameraInfo arrived
        self.backend = None
        self.odometry = self._new_odometry_history()
        self.sync = self._new_synchronizer()
        self.pipeline = None
        self.worker = None
        self.queue = LatestOnlyQueue()
        self.stopping = threading.Event()
        self.outputs = []                   # lifecycle publishers (path, grid, markers)
        self.inputs = []                    # subscriptions, only while active
        self.last_transition_error = ''
        # Diagnostics in every state, on the steady clock: they must keep reporting (stale!) even
        # when the ROS clock stops, e.g. a replay that ended.
        self.diag_pub = self.create_publisher(
            DiagnosticArray, '/diagnostics', QoSProfile(depth=10,
                                                        reliability=ReliabilityPolicy.RELIABLE))
        self.create_timer(s.diagnostics_period_s, self._publish_diagnostics,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))

    @staticmethod
    def _intent_index(text: str, source: str) -> int:
        key = str(text).strip().lower()
        if key not in INTENTS:
            raise MessageError('bad_intent', f'{source}: {text!r} is not one of {INTENTS}')
        return INTENTS.index(key)

    def _new_odometry_history(self) -> OdometryHistory:
        # Enough history for the model's past states plus the age window on either side.
        past_s = 16 / 4.0
        if self.backend is not None:
            past_s = self.backend.config.past_steps / self.backend.config.frequency_hz
        horizon_s = past_s + 2 * self.settings.max_input_age_s + 1.0
        return OdometryHistory(int(self.settings.odom_max_gap_s * 1e9), int(horizon_s * 1e9))

    def _new_synchronizer(self) -> FrameSynchronizer:
        s = self.settings
        return FrameSynchronizer(s.camera_names, s.reference_camera, int(s.sync_slop_s * 1e9),
                                 s.sync_queue_size)

    # -- life cycle -----------------------------------------------------------------------------
    @property
    def lifecycle_state(self) -> str:
        """'unconfigured' | 'inactive' | 'active' | 'finalized' (or a transition state)."""
        return self._state_machine.current_state[1]

    def _transition(self, name: str, work, undo=None) -> TransitionCallbackReturn:
        """Run one transition's work: FAILURE with the reason logged for what a user can fix
        (``undo`` returns the node to the state it came from), ERROR (then on_error) for
        anything unexpected."""
        try:
            work()
        except (ConfigError, FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
            self.last_transition_error = f'{name} failed: {type(e).__name__}: {e}'
            self.get_logger().error(self.last_transition_error)
            if undo is not None:
                undo()
            return TransitionCallbackReturn.FAILURE
        except Exception as e:  # noqa: BLE001 - any other error: the lifecycle's ERROR path
            self.last_transition_error = f'{name} raised {type(e).__name__}: {e}'
            self.get_logger().error(self.last_transition_error)
            return TransitionCallbackReturn.ERROR
        self.last_transition_error = ''
        return TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition('configure', self._configure, undo=self._release)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition('activate', self._activate, undo=self._stop_inputs)
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        return super().on_activate(state)  # enables the lifecycle publishers

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition('deactivate', self._deactivate)
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        result = super().on_deactivate(state)
        if result == TransitionCallbackReturn.SUCCESS:
            self._publish_snapshot('inactive')
        return result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._transition('cleanup', self._release)
        self.get_logger().info('cleaned up: backend freed, unconfigured')
        return result

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._publish_snapshot('finalized')
        self.get_logger().info(f'shut down from {state.label}')
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().error(f'error while leaving {state.label}; resources freed, back to '
                                f'unconfigured ({self.last_transition_error})')
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        """Load the backend (heavy: artifact, TensorRT engine build or cache load) and create the
        output publishers (inactive until activate)."""
        from rsd_drive.deploy.backends import create_backend

        s = self.settings
        log = self.get_logger()
        if s.extrinsics_source == 'tf_static':
            self._tf_message_type()  # fail now, not at activation
        t0 = time.perf_counter()
        self.backend = create_backend(s.backend, s.model_dir, s.precision, s.device,
                                      s.engine_cache_dir or None, s.threads, logger=log.info)
        artifact = getattr(self.backend, 'artifact', None)
        model_cameras = artifact.camera_names if artifact is not None else None
        if model_cameras is not None and list(model_cameras) != list(s.camera_names):
            raise ConfigError(f'camera_names {s.camera_names} differ from the camera order the '
                              f'model was trained with, {model_cameras} (deploy.json)')
        self.pipeline = FramePlanner(self.backend, s.camera_names)  # decode -> feeds -> infer
        self.odometry = self._new_odometry_history()
        warm = self.backend.warmup()
        for cam, cfg in s.cameras.items():
            if not cfg['info_topic']:
                fx, fy, cx, cy = cfg['intrinsics']
                width, height = cfg['image_size']
                self.intrinsics_by_camera[cam] = (intrinsics(fx, fy, cx, cy), (height, width))
            if s.extrinsics_source == 'file':
                self.extrinsics_by_camera[cam] = extrinsics_to_matrix(cfg['extrinsics'])
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.path_pub = self.create_lifecycle_publisher(PathMsg, '~/path', reliable)
        self.grid_pub = self.create_lifecycle_publisher(OccupancyGrid, '~/risk_grid', reliable)
        self.marker_pub = self.create_lifecycle_publisher(MarkerArray, '~/markers', reliable)
        self.outputs = [self.path_pub, self.grid_pub, self.marker_pub]
        source = artifact.describe() if artifact is not None else s.model_dir
        log.info(f'configured {self.backend.describe()} in {time.perf_counter() - t0:.1f} s '
                 f'(warm-up {warm * 1e3:.0f} ms) from {source}; cameras {s.camera_names}')

    def _tf_message_type(self):
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError as e:
            raise ConfigError(f'extrinsics_source tf_static needs tf2_msgs ({e}); install it '
                              f'or use extrinsics_source file') from e
        return TFMessage

    def _activate(self) -> None:
        """Subscriptions and the inference worker."""
        s = self.settings
        tf_message = self._tf_message_type() if s.extrinsics_source == 'tf_static' else None
        sub = self.create_subscription
        for cam, cfg in s.cameras.items():
            msg_type = CompressedImage if cfg['compressed'] else Image
            self.inputs.append(sub(msg_type, cfg['image_topic'], partial(self._on_image, cam),
                                   qos_profile_sensor_data))
            if cfg['info_topic']:
                self.inputs.append(sub(CameraInfo, cfg['info_topic'],
                                       partial(self._on_camera_info, cam),
                                       qos_profile_sensor_data))
        self.inputs.append(sub(Odometry, s.odom_topic, self._on_odometry,
                               qos_profile_sensor_data))
        if s.intent_topic:
            self.inputs.append(sub(String, s.intent_topic, self._on_intent,
                                   QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)))
        if s.route_topic:
            self.inputs.append(sub(PathMsg, s.route_topic, self._on_route,
                                   QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                              durability=DurabilityPolicy.TRANSIENT_LOCAL)))
        if tf_message is not None:
            latched = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.inputs.append(sub(tf_message, s.tf_static_topic, self._on_tf_static, latched))
        self.queue = LatestOnlyQueue()
        self.stopping = threading.Event()
        self.worker = threading.Thread(target=self._work, args=(self.queue, self.stopping),
                                       name='planner_inference', daemon=True)
        self.announce_plan = True
        self.worker.start()
        self.get_logger().info(f'active: {len(s.cameras)} cameras, odometry {s.odom_topic}, '
                               f'output frame {s.output_frame}, max input age '
                               f'{s.max_input_age_s} s')

    def _deactivate(self) -> None:
        """No more inputs, no more plans: subscriptions destroyed, worker stopped."""
        self._stop_inputs()
        self.get_logger().info('inactive: subscriptions and inference stopped, no output')

    def _stop_inputs(self) -> None:
        for sub in self.inputs:
            self.destroy_subscription(sub)
        self.inputs = []
        self.stopping.set()
        self.queue.close()
        if self.worker is not None:
            self.worker.join(timeout=10.0)
        self.worker = None
        with self.lock:
            self.sync = self._new_synchronizer()
            self.last_stamp_ns.clear()

    def _release(self) -> None:
        """Back to unconfigured: inputs, worker, output publishers and the backend freed."""
        self._stop_inputs()
        for pub in self.outputs:
            self.destroy_lifecycle_publisher(pub)
        self.outputs = []
        if self.pipeline is not None:
            self.pipeline.close()  # its decode threads
        if self.backend is not None:
            self.backend.close()
        self.backend = self.pipeline = None
        self.intrinsics_by_camera.clear()
        self.extrinsics_by_camera.clear()

    def shut_down(self) -> None:
        """The shutdown transition from whatever state the node is in (Ctrl-C, end of main);
        resources are freed even when the context is already gone."""
        if self.lifecycle_state in ('unconfigured', 'inactive', 'active'):
            try:
                self.trigger_shutdown()
            except Exception as e:  # noqa: BLE001 - context shut down by the signal handler
                self.get_logger().debug(f'shutdown transition not possible ({e})')
        self._release()

    def autostart_transitions(self) -> bool:
        """``autostart``: configure then activate; False (reason logged) when either fails."""
        for name, trigger in (('configure', self.trigger_configure),
                              ('activate', self.trigger_activate)):
            if trigger() != TransitionCallbackReturn.SUCCESS:
                reason = self.last_transition_error or f'{name} failed'
                self.get_logger().fatal(f'planner_node cannot start: {reason}')
                return False
        return True

    # -- time -----------------------------------------------------------------------------------
    def _now_ns(self) -> int:
        now = self.get_clock().now().nanoseconds
        if now + 1_000_000_000 < self.last_now_ns:
            # Time went backwards (a replay restarted): history and queues belong to another
            # timeline; start over instead of rejecting every new message as out of order.
            self.get_logger().warning(f'time jumped back {(self.last_now_ns - now) / 1e9:.1f} s;'
                                      f' resetting synchronisation and odometry history')
            with self.lock:
                self.sync = self._new_synchronizer()
                self.odometry.clear()
                self.last_stamp_ns.clear()
                self.counters['time_jump_back'] += 1
        self.last_now_ns = now
        return now

    def _check_stamp(self, source: str, stamp_ns: int, now_ns: int) -> bool:
        """Reject messages from the future (unsynchronised clocks) or already too old."""
        if stamp_ns - now_ns > self.max_age_ns:
            self._count(f'future_stamp:{source}')
            return False
        if now_ns - stamp_ns > self.max_age_ns:
            self._count(f'too_old:{source}')
            return False
        return True

    def _count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counters[key] += n

    # -- callbacks (executor thread: cheap work only) -------------------------------------------
    def _on_image(self, camera: str, msg) -> None:
        t0 = time.perf_counter()
        now = self._now_ns()
        try:
            check_image(msg)
            stamp = stamp_to_ns(msg.header.stamp)
        except MessageError as e:
            self._count(f'{e.reason}:{camera}')
            return
        if not self._check_stamp(camera, stamp, now):
            return
        with self.lock:
            self.received[camera] += 1
            self.last_stamp_ns[camera] = max(stamp, self.last_stamp_ns.get(camera, 0))
            self.camera_frames[camera] = msg.header.frame_id
            item = Received(msg, now, 0.0, t0)
            sets = self.sync.add(camera, stamp, item)
            item.callback_s = time.perf_counter() - t0
        for synced in sets:
            pending = PendingSet(synced.stamp_ns, synced.payloads, time.perf_counter())
            if self.queue.put(pending) is not None:
                self._count('queue_drop')

    def _on_camera_info(self, camera: str, msg: CameraInfo) -> None:
        try:
            K, hw = camera_info_to_intrinsics(msg)
            lens = camera_info_distortion(msg)  # D: the fast path undistorts by its remap
        except MessageError as e:
            self._count(f'{e.reason}:{camera}')
            return
        with self.info_cond:
            self.intrinsics_by_camera[camera] = (K, hw, lens)
            self.info_cond.notify_all()

    def _on_odometry(self, msg: Odometry) -> None:
        now = self._now_ns()
        try:
            state = odometry_to_state(msg)
        except MessageError as e:
            self._count(f'{e.reason}:odometry')
            return
        if not self._check_stamp('odometry', state.stamp_ns, now):
            return
        with self.odom_cond:
            self.odometry.add(state)
            self.received['odometry'] += 1
            self.last_stamp_ns['odometry'] = max(state.stamp_ns,
                                                 self.last_stamp_ns.get('odometry', 0))
            self.odom_cond.notify_all()

    def _on_intent(self, msg: String) -> None:
        try:
            self.intent = self._intent_index(msg.data, self.settings.intent_topic)
        except MessageError as e:
            self._count(f'{e.reason}:intent')

    def _on_route(self, msg: PathMsg) -> None:
        try:
            frame, xy = path_to_xy(msg)
        except MessageError as e:
            self._count(f'{e.reason}:route')
            return
        with self.lock:
            self.route = (stamp_to_ns(msg.header.stamp), frame, xy)
            self.received['route'] += 1

    def _route_input(self, t0_ns: int, pose):
        """The route input of the plan at t0 (None: intent only) and its status."""
        cfg = self.backend.config
        if not cfg.route_points:
            return None, 'model has no route input'
        with self.lock:
            route = self.route
        return route_for_plan(route, t0_ns, pose, cfg.route_points, cfg.route_spacing_m,
                              int(self.settings.route_max_age_s * 1e9),
                              self.settings.odom_frame)

    def _on_tf_static(self, msg) -> None:
        for tf in msg.transforms:
            try:
                T_parent_child = transform_to_matrix(tf.transform)
            except ValueError:
                self._count('bad_transform:tf_static')
                continue
            self.static_transforms[tf.child_frame_id] = (tf.header.frame_id, T_parent_child)

    def _tf_extrinsics(self, camera: str):
        """base_frame <- camera optical frame, composed along the tf_static tree."""
        frame = self.camera_frames.get(camera)
        T_total, seen = np.eye(4), set()
        while frame is not None and frame != self.settings.base_frame and frame not in seen:
            seen.add(frame)
            parent = self.static_transforms.get(frame)
            if parent is None:
                return None
            frame, T_parent_child = parent
            T_total = T_parent_child @ T_total
        return T_total if frame == self.settings.base_frame else None

    # -- inference worker -----------------------------------------------------------------------
    def _work(self, queue: LatestOnlyQueue, stopping: threading.Event) -> None:
        while not stopping.is_set():
            pending = queue.get(timeout=0.2)
            if pending is None:
                continue
            try:
                self._plan(pending)
            except Exception as e:  # noqa: BLE001 - the node must survive any one bad frame
                self._skip('worker_error', f'{type(e).__name__}: {e}')
                self.get_logger().error(f'planning failed: {type(e).__name__}: {e}',
                                        throttle_duration_sec=5.0)

    def _skip(self, reason: str, detail: str = '') -> None:
        self._count(reason)
        self.last_skip = f'{reason} {detail}'.strip()

    def _calibrations(self):
        calibs = []
        for cam in self.settings.camera_names:
            intr = self.intrinsics_by_camera.get(cam)
            if intr is None:
                return None, f'no_camera_info:{cam}'
            if self.settings.extrinsics_source == 'file':
                extr = self.extrinsics_by_camera[cam]
            else:
                extr = self._tf_extrinsics(cam)
                if extr is None:
                    return None, f'no_extrinsics:{cam}'
            calibs.append(CameraCalibration(intr[0], intr[1], extr, *intr[2:]))
        return calibs, None

    def _calibrations_waiting(self):
        """The calibrations; a camera whose first CameraInfo is still on its way (it travels on
        its own topic: a set can complete before it arrives) is waited for, up to
        ``camera_info_wait_s``."""
        deadline = time.monotonic() + self.settings.camera_info_wait_s
        with self.info_cond:
            while True:
                calibs, missing = self._calibrations()
                remaining = deadline - time.monotonic()
                if calibs is not None or not missing.startswith('no_camera_info') \
                        or remaining <= 0:
                    return calibs, missing
                self.info_cond.wait(remaining)

    def _past_states(self, t0_ns: int):
        """Past states at t0, waiting briefly when odometry has not reached t0 yet."""
        cfg = self.backend.config
        deadline = time.monotonic() + self.settings.odom_wait_s
        with self.odom_cond:
            while True:
                try:
                    past = self.odometry.past_states(t0_ns, cfg.past_steps, cfg.frequency_hz,
                                                     self.settings.pad_short_history)
                    pose = self.odometry.at(t0_ns)
                    return past, (pose.x, pose.y, pose.yaw)
                except SyncError as e:
                    remaining = deadline - time.monotonic()
                    if e.reason != 'odom_after_end' or remaining <= 0:
                        raise
                    self.odom_cond.wait(remaining)

    def _stale_inputs(self, now_ns: int) -> list:
        """Inputs older than max_input_age_s (or never seen), as 'name (age)' strings."""
        stale = []
        for name in list(self.settings.camera_names) + ['odometry']:
            last = self.last_stamp_ns.get(name)
            if last is None:
                stale.append(f'{name} (never received)')
            elif now_ns - last > self.max_age_ns:
                stale.append(f'{name} ({(now_ns - last) / 1e9:.2f} s old)')
        return stale

    def _plan(self, pending: PendingSet) -> None:
        s = self.settings
        start = time.perf_counter()
        t0 = pending.stamp_ns
        now = self._now_ns()
        with self.lock:
            stale = self._stale_inputs(now)
        if now - t0 > self.max_age_ns or stale:
            self._skip('stale', ', '.join(stale) or f'frame {(now - t0) / 1e9:.2f} s old')
            return
        calibs, missing = self._calibrations_waiting()
        if calibs is None:
            self._skip(missing)
            return
        try:
            past, pose = self._past_states(t0)
        except SyncError as e:
            self._skip(e.reason, str(e))
            return
        route, route_status = self._route_input(t0, pose)
        with self.lock:
            self.route_status = route_status
        try:
            plan, timings = self.pipeline.plan([r.msg for r in pending.items], calibs, past,
                                               self.intent, route=route)
        except FrameError as e:
            self._skip(e.reason, str(e))
            return
        done_ns = self._now_ns()
        if done_ns - t0 > self.max_age_ns:
            self._skip('stale_after_inference', f'{(done_ns - t0) / 1e9:.2f} s')
            return
        t_post = time.perf_counter()
        frame = s.output_frame
        out_pose = pose if frame == s.odom_frame else None
        grid = self.backend.config.grid
        path_msg = messages.path_message(plan['waypoints'], t0, frame, out_pose,
                                         self.backend.config.frequency_hz)
        grid_msg = messages.occupancy_message(plan['risk'], grid, t0, frame, out_pose)
        marker_msg = messages.markers_message(plan['waypoints'], plan['risk'], grid, t0, frame,
                                              out_pose, s.marker_risk_threshold,
                                              lifetime_s=s.max_input_age_s)
        t_pub = time.perf_counter()
        self.path_pub.publish(path_msg)
        self.grid_pub.publish(grid_msg)
        self.marker_pub.publish(marker_msg)
        t_end = time.perf_counter()
        published_ns = self._now_ns()
        timings.update({
            'sync': sum(r.callback_s for r in pending.items),
            'queue': start - pending.complete_perf,
            'postprocess': t_pub - t_post,
            'publish': t_end - t_pub,
        })
        # One clock per table: stamp-based stages are on the ROS clock; under sim time that is
        # not the wall clock, so they go under '<stage>_sim' and 'total' is the wall time from
        # the set's last message to the publish (diagnostics: latency_ms.* wall, *_sim sim).
        stamp_stages = {'transport': max(r.recv_ns for r in pending.items) / 1e9 - t0 / 1e9,
                        'total': (published_ns - t0) / 1e9}
        if self.sim_time:
            timings.update({f'{k}_sim': v for k, v in stamp_stages.items()})
            timings['total'] = t_end - max(r.recv_perf for r in pending.items)
        else:
            timings.update(stamp_stages)
        with self.lock:
            self.latency.add(timings)
            self.plans_published += 1
            self.last_plan_ns = published_ns
            self.last_skip = ''
            announce, self.announce_plan = self.announce_plan, False
        if announce:  # the first plan since activation: its latencies now, not a period later
            self._publish_diagnostics()

    # -- diagnostics ----------------------------------------------------------------------------
    def _publish_snapshot(self, state: str) -> None:
        """Diagnostics now, reporting ``state`` (the one this transition ends in; the state
        machine still says e.g. 'deactivating' inside the callback): the final counters and
        latencies of a run are published even when it ends before the next period."""
        try:
            self._publish_diagnostics(state)
        except Exception as e:  # noqa: BLE001 - the context may already be shut down
            self.get_logger().debug(f'diagnostics snapshot not published ({e})')

    def snapshot(self, state: str | None = None) -> DiagnosticsSnapshot:
        """What the diagnostics report, taken under the lock (``state``: the state to report,
        default the current one)."""
        s = self.settings
        now = self._now_ns()
        state = state or self.lifecycle_state
        with self.lock:
            return DiagnosticsSnapshot(
                node_name=self.get_name(), now_ns=now, state=state,
                camera_names=list(s.camera_names), backend=s.backend, precision=s.precision,
                output_frame=s.output_frame, route_topic=s.route_topic,
                max_age_ns=self.max_age_ns,
                device=self.backend.device if self.backend else 'none',
                stale=self._stale_inputs(now),
                ages={name: (None if name not in self.last_stamp_ns
                             else (now - self.last_stamp_ns[name]) / 1e9)
                      for name in list(s.camera_names) + ['odometry']},
                counters=dict(self.counters), received=dict(self.received),
                sync_drops=dict(self.sync.dropped), sync_emitted=self.sync.emitted,
                latency=self.latency.summary(), plans=self.plans_published,
                last_plan_ns=self.last_plan_ns, last_skip=self.last_skip,
                route_status=self.route_status, intent=self.intent,
                last_transition_error=self.last_transition_error)

    def _publish_diagnostics(self, state: str | None = None) -> None:
        """Every ``diagnostics_period_s`` (steady clock), right after the first plan since
        activation, and on deactivate / shutdown (``state``: the state the node goes to)."""
        self.diag_pub.publish(diagnostic_array(self.snapshot(state)))


def main(args=None) -> int:
    """Console script ``planner_node``: declare parameters; with ``autostart`` configure and
    activate; spin (serving the lifecycle services); shut down cleanly on Ctrl-C."""
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = PlannerNode()
        s = node.settings
        if s.build_only:
            from rsd_drive.deploy.backends import prepare_backend

            summary = prepare_backend(s.backend, s.model_dir, s.precision,
                                      s.engine_cache_dir or None, logger=node.get_logger().info)
            node.get_logger().info(f'build_only: {summary}')
            return 0
        if s.autostart and not node.autostart_transitions():
            return 1
        if not s.autostart:
            node.get_logger().info('unconfigured; waiting for a lifecycle transition '
                                   '(ros2 lifecycle set /planner_node configure)')
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        msg = f'planner_node cannot start: {type(e).__name__}: {e}'
        if node is not None:
            node.get_logger().fatal(msg)
        else:
            print(msg, file=sys.stderr)
        code = 1
    finally:
        if node is not None:
            node.shut_down()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())
