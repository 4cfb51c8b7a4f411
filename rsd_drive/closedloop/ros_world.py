"""The closed-loop world as a ROS 2 node (``rsd-drive closedloop ... --ros``), with the real
``planner_node`` in its own process.

Topics the world publishes (what a CARLA ROS bridge provides, see the README):

* ``/clock`` (``rosgraph_msgs/Clock``) every world step: the planner runs on sim time;
* ``/odom`` (``nav_msgs/Odometry``, ``odom`` -> ``base_link``) every world step;
* per camera at the planning rate: ``/cameras/<name>/image_raw`` (``sensor_msgs/Image`` rgb8) or
  ``/cameras/<name>/image_raw/compressed`` (``CompressedImage`` JPEG, ``ros.compressed``) and
  ``/cameras/<name>/camera_info``; extrinsics go to the node as parameters (``tf2_msgs`` is not
  installable here; with it, ``/tf_static`` is published too);
* ``/scenario/intent`` (``std_msgs/String``) when the route intent changes.
* ``/route`` (``nav_msgs/Path``, odom, transient local) at the start of each route, for a model
  with the route input (``closedloop.route``); the world waits until the node counts it.

It follows ``/planner_node/path`` (and draws ``/planner_node/risk_grid``). The run is lockstep
in sim time: after publishing a frame the world waits (wall clock, ``ros.plan_deadline_s``) for
the path stamped with that frame; a plan that does not come is *late* (counted, the last plan is
kept). A new intent is published before the frame and the world waits until the node's
``/diagnostics`` reports it, so each frame is planned with its own intent. Given the same inputs
the node computes what the in-process loop computes, so their metrics agree.

Robustness: ``planner_node`` exiting, or ``ros.max_missing_plans`` late plans in a row (a hang),
fails the route with the reason (:class:`~rsd_drive.closedloop.loop.PlannerFailure`); the node
is restarted for the next route. Routes are laid out one after another on the ROS time line,
``ros.route_gap_s`` apart, so the node's odometry history never mixes two routes.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from rsd_drive import INTENTS
from rsd_drive.closedloop.controller import Plan
from rsd_drive.closedloop.loop import PlannerFailure, encode_jpeg
from rsd_drive.closedloop.policies import Policy, resolve_model_dir
from rsd_drive.ros.launcher import PlannerNodeProcess

WARMUP_START_NS = 1000 * 10**9   # ROS time of the warm-up frames (routes follow)
PATH_TOPIC, GRID_TOPIC = '/planner_node/path', '/planner_node/risk_grid'
ROUTE_TOPIC = '/route'


def camera_parameters(rig, compressed: bool) -> dict:
    """cameras.<name>.* for planner_node from the rendered rig (K at the render size, mount)."""
    out = {}
    for cam, calib in zip(rig.cameras, rig.calibrations):
        K, spec = calib.K, cam.spec
        topic = f'/cameras/{cam.name}/image_raw'
        out[cam.name] = dict(
            image_topic=topic + ('/compressed' if compressed else ''), compressed=compressed,
            info_topic=f'/cameras/{cam.name}/camera_info',
            intrinsics=[float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])],
            image_size=[cam.width, cam.height],
            extrinsics=[float(spec.x), float(spec.y), float(spec.z),
                        float(np.radians(spec.yaw_deg)), float(np.radians(spec.pitch_deg))])
    return out


class SimWorldNode:
    """The world's rclpy node (own context, spun in a thread): publishers for the sensors and
    the clock, collectors for the planner's path, risk grid and diagnostics."""

    def __init__(self, camera_names, compressed: bool):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import OccupancyGrid, Odometry, Path as PathMsg
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from std_msgs.msg import String

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('sim_world', context=self.context)
        node, sensor = self.node, qos_profile_sensor_data
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.compressed = compressed
        self.clock_pub = node.create_publisher(Clock, '/clock', reliable)
        self.odom_pub = node.create_publisher(Odometry, '/odom', sensor)
        latest = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.intent_pub = node.create_publisher(String, '/scenario/intent', latest)
        from rclpy.qos import DurabilityPolicy

        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.route_pub = node.create_publisher(PathMsg, ROUTE_TOPIC, latched)
        image_type = CompressedImage if compressed else Image
        suffix = '/compressed' if compressed else ''
        self.image_pubs = {c: node.create_publisher(image_type, f'/cameras/{c}/image_raw{suffix}',
                                                    sensor) for c in camera_names}
        self.info_pubs = {c: node.create_publisher(CameraInfo, f'/cameras/{c}/camera_info',
                                                   sensor) for c in camera_names}
        self.cond = threading.Condition()
        self.paths, self.grids = {}, {}
        self.diag_inputs = {}
        self.diag_count = 0
        node.create_subscription(PathMsg, PATH_TOPIC, self._on_path, reliable)
        node.create_subscription(OccupancyGrid, GRID_TOPIC, self._on_grid, reliable)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, reliable)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    # -- collectors (executor thread) ----------------------------------------------------------
    @staticmethod
    def _stamp(msg) -> int:
        return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec

    def _on_path(self, msg) -> None:
        wp = np.array([[p.pose.position.x, p.pose.position.y] for p in msg.poses], np.float64)
        with self.cond:
            self.paths[self._stamp(msg)] = wp
            self.cond.notify_all()

    def _on_grid(self, msg) -> None:
        from rsd_drive.data.convert import occupancy_to_risk

        risk = occupancy_to_risk(msg.data, msg.info.height, msg.info.width)
        with self.cond:
            self.grids[self._stamp(msg)] = risk
            self.cond.notify_all()

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.endswith(': inputs'):
                with self.cond:
                    self.diag_inputs = {kv.key: kv.value for kv in status.values}
                    self.diag_count += 1
                    self.cond.notify_all()

    def wait(self, predicate, timeout: float, poll=None):
        """predicate() under the lock until true or ``timeout`` (wall); ``poll()`` may raise."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return value
                if poll is not None:
                    self.cond.release()
                    try:
                        poll()
                    finally:
                        self.cond.acquire()
                self.cond.wait(min(remaining, 0.05))

    # -- publishing ----------------------------------------------------------------------------
    def publish_clock(self, t_ns: int) -> None:
        from rosgraph_msgs.msg import Clock

        from rsd_drive.ros.messages import time_msg

        self.clock_pub.publish(Clock(clock=time_msg(t_ns)))

    def publish_odometry(self, t_ns: int, ego) -> None:
        """The ego (scenario.sim.SimEgo) as Odometry: the quaternion of its yaw, the body twist."""
        from nav_msgs.msg import Odometry

        from rsd_drive.ros.messages import header, yaw_quaternion

        msg = Odometry(header=header(t_ns, 'odom'), child_frame_id='base_link')
        msg.pose.pose.position.x, msg.pose.pose.position.y = float(ego.x), float(ego.y)
        msg.pose.pose.orientation = yaw_quaternion(float(ego.yaw))
        msg.twist.twist.linear.x = float(ego.v)
        msg.twist.twist.angular.z = float(ego.yaw_rate)
        self.odom_pub.publish(msg)

    def publish_frame(self, t_ns: int, images, rig) -> None:
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        from rsd_drive.ros.messages import header

        for img, cam, calib in zip(images, rig.cameras, rig.calibrations):
            hdr = header(t_ns, cam.frame_id)
            info = CameraInfo(header=hdr, height=cam.height, width=cam.width,
                              distortion_model='plumb_bob')
            K = calib.K
            info.d = [0.0] * 5
            info.k = [float(v) for v in K.ravel()]
            info.r = [float(v) for v in np.eye(3).ravel()]
            info.p = [float(v) for v in np.hstack([K, np.zeros((3, 1))]).ravel()]
            self.info_pubs[cam.name].publish(info)
            if self.compressed:
                msg = CompressedImage(header=hdr, format='jpeg')
                msg.data = encode_jpeg(img)
            else:
                msg = Image(header=hdr, height=img.shape[0], width=img.shape[1],
                            encoding='rgb8', is_bigendian=0, step=img.shape[1] * 3)
                msg.data = np.ascontiguousarray(img).tobytes()
            self.image_pubs[cam.name].publish(msg)

    def publish_route(self, t_ns: int, route_xy) -> None:
        """The navigation route (odom frame) as planner_node's route_topic takes it."""
        from rsd_drive.ros.messages import path_message

        self.route_pub.publish(path_message(route_xy, t_ns, 'odom'))

    def publish_intent(self, intent: str) -> None:
        from std_msgs.msg import String

        self.intent_pub.publish(String(data=intent))

    def planner_visible(self) -> bool:
        topic = next(iter(self.image_pubs.values())).topic_name
        return (self.node.count_subscribers(topic) > 0
                and self.node.count_publishers(PATH_TOPIC) > 0)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.spinner.join(timeout=2.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


class RosPlannerPolicy(Policy):
    """A model policy whose plans come from ``planner_node`` over ROS 2 (see the module
    docstring); the closed loop calls ``begin_route`` / ``on_step`` / ``plan`` / ``end_route``."""

    kind = 'plan'
    needs_cameras = True

    def __init__(self, spec, backend: str, cfg, out, name: str | None = None):
        from rsd_drive.deploy.backends import load_model_config

        self.model_dir = resolve_model_dir(spec)
        self.config = load_model_config(self.model_dir)
        self.name = (name or self.model_dir.name) + '@ros'
        self.backend_kind, self.cfg, self.ros = backend, cfg, cfg.ros
        self.out = Path(out)
        self.frequency_hz, self.steps = float(self.config.frequency_hz), \
            int(self.config.future_steps)
        self.past_steps = int(self.config.past_steps)
        self.image_hw = (int(self.config.image_height), int(self.config.image_width))
        self.camera_names, self.rig = [], None
        self.world, self.process = None, None
        self.cursor_ns = WARMUP_START_NS
        self.base_ns = 0
        self.acked_intent = None
        self.missing = 0
        self.route = {}
        self.routes_sent = 0

    # -- the planner process -------------------------------------------------------------------
    def _params(self) -> Path:
        from rsd_drive.ros.planner_params import write_parameters

        age = max(1.0, 2.0 / self.cfg.plan_hz)
        path = self.out / 'planner_closedloop.yaml'
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_parameters(
            path, camera_parameters(self.rig, self.ros.compressed),
            model_dir=str(self.model_dir), backend=self.backend_kind, device='cpu',
            threads=int(self.ros.threads), pad_short_history=True, odom_wait_s=10.0,
            max_input_age_s=age, diagnostics_period_s=float(self.ros.diagnostics_period_s),
            output_frame='base_link', intent_topic='/scenario/intent', default_intent='straight',
            route_topic=ROUTE_TOPIC if self.cfg.route else '', route_max_age_s=0.0)

    def _check_alive(self) -> None:
        code = self.process.returncode() if self.process else None
        if code is not None:
            raise PlannerFailure(f'planner_node exited with code {code} '
                                 f'(log: {self.process.tail(3)})')

    def _start(self) -> None:
        """Start planner_node and run warm-up frames until it plans (camera_info received,
        model loaded)."""
        if self.world is None:
            self.world = SimWorldNode(self.rig.names, self.ros.compressed)
        self.process = PlannerNodeProcess(self._params(), log_path=self.out / 'planner_node.log',
                                          sim_time=True).start()
        self.acked_intent = None
        self.routes_sent = 0
        self.odom_sent = self.lost_before = 0
        deadline = time.monotonic() + self.ros.node_start_timeout_s
        w = self.world
        w.wait(w.planner_visible, self.ros.node_start_timeout_s, self._check_alive)
        blank = [np.zeros((c.height, c.width, 3), np.uint8) for c in self.rig.cameras]
        dt_ns = 100_000_000
        while True:
            self._check_alive()
            if time.monotonic() > deadline:
                raise PlannerFailure(f'planner_node did not plan within '
                                     f'{self.ros.node_start_timeout_s} s of starting')
            t_ns = self.cursor_ns
            for k in range(5):  # half a second of odometry, standing still
                w.publish_clock(t_ns - (4 - k) * dt_ns)
                self._publish_odometry(t_ns - (4 - k) * dt_ns, _Standing())
            w.publish_frame(t_ns, blank, self.rig)
            # Any warm-up plan will do: the first inference may take longer than a frame.
            got = w.wait(lambda: bool(w.paths), 5.0, self._check_alive)
            self.cursor_ns += 10 * dt_ns
            if got:
                break
        self.cursor_ns += int(self.ros.route_gap_s * 1e9)
        self._odometry_lost()  # warm-up odometry sent before the node subscribed is not a route's

    def _stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    # -- the loop's hooks ----------------------------------------------------------------------
    def bind_cameras(self, camera_names) -> None:
        self.camera_names = list(camera_names)

    def begin_route(self, runner) -> None:
        if self.rig is None:
            self.rig = runner.rig
        elif [c.name for c in runner.rig.cameras] != self.rig.names:
            raise ValueError('the --ros world keeps one camera rig for the whole run')
        self.route = {'late_plans': 0, 'odom_published': 0, 'odom_lost': None,
                      'intent_ack_timeouts': 0, 'planner_pid': None, 'planner_start_s': 0.0}
        if self.process is None or self.process.returncode() is not None:
            t0 = time.perf_counter()
            self._stop()
            self._start()
            self.route['planner_start_s'] = round(time.perf_counter() - t0, 2)
        self.route['planner_pid'] = self.process.pid
        self.base_ns = self.cursor_ns
        self.missing = 0
        self._send_route(runner)
        with self.world.cond:
            self.world.paths.clear()
            self.world.grids.clear()

    def _send_route(self, runner) -> None:
        """Publish this route's navigation route and wait until the node's diagnostics count
        it, so its first plan already has it (as in the in-process loop)."""
        if not self.cfg.route or runner.route_xy is None or not self.config.route_points:
            return
        w = self.world
        w.publish_route(self.base_ns, runner.route_xy)
        self.routes_sent += 1

        def received():
            return int(w.diag_inputs.get('received.route', 0) or 0)
        ok = w.wait(lambda: received() >= self.routes_sent, self.ros.intent_ack_timeout_s,
                    self._check_alive)
        self.route['route_ack_timeouts'] = 0 if ok else 1

    def _publish_odometry(self, t_ns: int, ego) -> None:
        self.world.publish_odometry(t_ns, ego)
        self.odom_sent += 1

    def on_step(self, stamp_ns: int, odom, ego) -> None:
        t_ns = self.base_ns + stamp_ns
        self.world.publish_clock(t_ns)
        self._publish_odometry(t_ns, ego)
        self.route['odom_published'] += 1
        self.last_ns = t_ns

    def _odometry_lost(self) -> int | None:
        """Odometry messages the node has not counted as received (its /diagnostics), since the
        last call: best-effort messages lost on the way would make its past states differ."""
        w = self.world

        def received():
            value = w.diag_inputs.get('received.odometry')
            return int(value) if value is not None else None
        count = w.diag_count
        # Once per route: returns as soon as the node's count has caught up, so the deadline
        # only costs time when odometry really was lost (a loaded machine may take seconds).
        w.wait(lambda: w.diag_count > count and (received() or 0) >= self.odom_sent,
               max(10.0, 10 * self.ros.diagnostics_period_s))
        got = received()
        if got is None:
            return None
        lost_total = self.odom_sent - got
        lost, self.lost_before = lost_total - self.lost_before, lost_total
        return lost

    def _ack_intent(self, intent: str) -> None:
        if intent == self.acked_intent:
            return
        w = self.world
        w.publish_intent(intent)
        ok = w.wait(lambda: w.diag_inputs.get('intent') == intent,
                    self.ros.intent_ack_timeout_s, self._check_alive)
        if not ok:
            self.route['intent_ack_timeouts'] += 1
        self.acked_intent = intent

    def plan(self, obs):
        w = self.world
        self._check_alive()
        self._ack_intent(INTENTS[obs.intent])
        t_ns = self.base_ns + obs.stamp_ns
        w.publish_frame(t_ns, obs.images_raw if obs.images_raw is not None else obs.images,
                        self.rig)
        got = w.wait(lambda: t_ns in w.paths, self.ros.plan_deadline_s, self._check_alive)
        if not got:
            self.missing += 1
            self.route['late_plans'] += 1
            if self.missing >= self.ros.max_missing_plans:
                self._stop_hung()
                raise PlannerFailure(f'planner_node hangs: no plan for {self.missing} frames '
                                     f'in a row (deadline {self.ros.plan_deadline_s} s each)')
            return None
        self.missing = 0
        w.wait(lambda: t_ns in w.grids, 1.0)
        with w.cond:
            wp = w.paths.pop(t_ns)
            risk = w.grids.pop(t_ns, None)
        return Plan(obs.t, obs.pose, wp, self.frequency_hz, risk, self.config.grid)

    def _stop_hung(self) -> None:
        if self.process is not None:
            self.process.kill()
            self._stop()

    def end_route(self, runner) -> None:
        if self.process is not None and self.process.returncode() is None:
            self.route['odom_lost'] = self._odometry_lost()
        end = getattr(self, 'last_ns', self.cursor_ns)
        self.cursor_ns = max(self.cursor_ns, end) + int(self.ros.route_gap_s * 1e9)

    def route_info(self) -> dict:
        return dict(self.route)

    def close(self) -> None:
        self._stop()
        if self.world is not None:
            self.world.close()
            self.world = None


class _Standing:
    """The warm-up ego: at the origin, standing still."""

    x = y = yaw = v = yaw_rate = 0.0
