"""``rsd-drive replay BAG [--record OUT] [--rate R]``: play a rosbag2 into ROS 2 with ``/clock``.

For machines without ``ros2 bag`` (no ROS install, only the rclpy wheels): the bag is read with
``rosbags`` and every message's CDR bytes are published unchanged through rclpy (the same bytes
``ros2 bag play`` would send; no Python deserialisation, which costs ~8 ms for a 1080p image).
``/clock`` follows bag time, so nodes started with ``use_sim_time:=true`` live in the bag's time.
Topics whose message package is not installed (e.g. ``tf2_msgs`` here) are skipped and listed.

``--record OUT`` records topics (by default the planner node's outputs and ``/diagnostics``) into
an MCAP rosbag2 at OUT: rclpy raw subscriptions give CDR bytes that go straight into the
``rosbags`` writer, stamped with the bag time they arrived at. The bag is written in a temporary
directory beside OUT and renamed into place when complete.
"""
from __future__ import annotations

import importlib
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_RECORD_TOPICS = ('/planner_node/path', '/planner_node/risk_grid',
                         '/planner_node/markers', '/diagnostics')
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
LATCHED_TOPICS = ('/tf_static',)


def message_class(msgtype: str):
    """'pkg/msg/Name' -> the rclpy message class, or None when the package isn't installed."""
    pkg, kind, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{pkg}.{kind}'), name)
    except (ImportError, AttributeError):
        return None


@dataclass
class ReplaySummary:
    """What a replay did: messages published and recorded per topic, topics skipped and why."""

    published: Counter = field(default_factory=Counter)
    recorded: Counter = field(default_factory=Counter)
    skipped: dict = field(default_factory=dict)
    bag_seconds: float = 0.0
    wall_seconds: float = 0.0
    record_path: Path | None = None

    def table(self) -> str:
        lines = [f'{"topic":<40} {"published":>10} {"recorded":>9}']
        for topic in sorted(set(self.published) | set(self.recorded)):
            lines.append(f'{topic:<40} {self.published.get(topic, 0):>10} '
                         f'{self.recorded.get(topic, 0):>9}')
        for topic, why in sorted(self.skipped.items()):
            lines.append(f'{topic:<40} skipped: {why}')
        lines.append(f'bag {self.bag_seconds:.2f} s played in {self.wall_seconds:.2f} s')
        return '\n'.join(lines)


class _Recorder:
    """Raw subscriptions -> MCAP rosbag2 (rosbags writer), stamped with the current bag time."""

    def __init__(self, node, out_path: Path, topics, now_ns):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.node, self.out_path, self.now_ns = node, Path(out_path), now_ns
        self.wanted = list(topics)
        self.typestore = get_typestore(Stores.ROS2_JAZZY)
        self.tmp_dir = Path(tempfile.mkdtemp(dir=self.out_path.parent,
                                             prefix=f'.{self.out_path.name}.'))
        self.writer = Writer(self.tmp_dir / self.out_path.name, version=Writer.VERSION_LATEST,
                             storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.lock = threading.Lock()
        self.connections = {}
        self.subscriptions = []
        self.counts = Counter()
        self.unrecordable = {}
        self.closed = False

    def subscribe_discovered(self) -> list:
        """Subscribe to wanted topics that have appeared in the graph; returns the missing."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        types = dict(self.node.get_topic_names_and_types())
        missing = []
        for topic in list(self.wanted):
            if topic in self.connections:
                continue
            if topic not in types or not types[topic]:
                missing.append(topic)
                continue
            msgtype = types[topic][0]
            cls = message_class(msgtype)
            if cls is None:
                # rclpy needs the type support even for raw bytes: report it once, then drop it.
                self.unrecordable[topic] = f'{msgtype} not installed'
                self.wanted.remove(topic)
                continue
            with self.lock:
                self.connections[topic] = self.writer.add_connection(
                    topic, msgtype, typestore=self.typestore)
            # Like rosbag2: reliable unless a publisher only offers best effort (then we could
            # not match it), e.g. /clock and sensor topics.
            offered = [info.qos_profile.reliability
                       for info in self.node.get_publishers_info_by_topic(topic)]
            reliability = (ReliabilityPolicy.BEST_EFFORT
                           if ReliabilityPolicy.BEST_EFFORT in offered
                           else ReliabilityPolicy.RELIABLE)
            self.subscriptions.append(self.node.create_subscription(
                cls, topic, lambda data, t=topic: self._on_message(t, data),
                QoSProfile(depth=100, reliability=reliability), raw=True))
        return missing

    def _on_message(self, topic: str, data: bytes) -> None:
        with self.lock:
            if self.closed:
                return
            self.writer.write(self.connections[topic], self.now_ns(), bytes(data))
            self.counts[topic] += 1

    def close(self, commit: bool) -> Path | None:
        with self.lock:
            self.closed = True
            self.writer.close()
        try:
            if not commit:
                return None
            if self.out_path.exists():
                shutil.rmtree(self.out_path)
            (self.tmp_dir / self.out_path.name).rename(self.out_path)
            return self.out_path
        finally:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)


def replay(bag, rate: float = 1.0, record=None, record_topics=DEFAULT_RECORD_TOPICS,
           topics=None, wait_s: float = 5.0, tail_s: float = 1.0, clock_hz: float = 100.0,
           progress: bool = True, log=print) -> ReplaySummary:
    """Play ``bag`` into ROS 2 with ``/clock`` (see the module docstring).

    wait_s: before playing, wait up to this long for every camera topic to have a subscriber and
        every record topic to appear (a node that is still starting would miss the first frames).
    tail_s: after the last message, keep the clock running and recording this long (bag time).
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosbags.highlevel import AnyReader
    from rosgraph_msgs.msg import Clock
    from tqdm import tqdm

    if rate <= 0:
        raise ValueError(f'rate must be positive, got {rate}')
    bag = Path(bag)
    if not bag.exists():
        raise FileNotFoundError(f'bag {bag} not found')
    summary = ReplaySummary()
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node('rsd_replay', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    recorder = None
    committed = False
    try:
        with AnyReader([bag]) as reader:
            connections, publishers = [], {}
            for conn in reader.connections:
                if topics and conn.topic not in topics:
                    continue
                cls = message_class(conn.msgtype)
                if cls is None:
                    summary.skipped[conn.topic] = f'{conn.msgtype} not installed'
                    continue
                if conn.topic not in publishers:
                    latched = conn.topic in LATCHED_TOPICS
                    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                     durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                                     else DurabilityPolicy.VOLATILE)
                    publishers[conn.topic] = node.create_publisher(cls, conn.topic, qos)
                connections.append(conn)
            if not connections:
                raise ValueError(f'{bag}: no playable topics (skipped: {summary.skipped})')
            clock_pub = node.create_publisher(Clock, '/clock', QoSProfile(
                depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
            start_ns, end_ns = reader.start_time, reader.end_time
            sim_ns = [start_ns]

            def publish_clock(t_ns: int) -> None:
                sim_ns[0] = t_ns
                msg = Clock()
                msg.clock.sec, msg.clock.nanosec = divmod(int(t_ns), 1_000_000_000)
                clock_pub.publish(msg)

            if record:
                recorder = _Recorder(node, Path(record), record_topics, lambda: sim_ns[0])
            spinner.start()

            camera_topics = [c.topic for c in connections if c.msgtype in IMAGE_TYPES]
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                publish_clock(start_ns)
                missing = recorder.subscribe_discovered() if recorder else []
                unheard = [t for t in camera_topics if node.count_subscribers(t) == 0]
                if not missing and not unheard:
                    time.sleep(0.5)  # let DDS finish matching the endpoints it just discovered
                    break
                time.sleep(0.05)
            else:
                if recorder:
                    missing = recorder.subscribe_discovered()
                    if missing:
                        log(f'replay: not (yet) recording {missing}: no publisher seen')
                unheard = [t for t in camera_topics if node.count_subscribers(t) == 0]
                if unheard:
                    log(f'replay: no subscriber on {unheard} after {wait_s} s; playing anyway')

            period = 1.0 / clock_hz
            wall0 = time.monotonic()
            n_total = sum(c.msgcount for c in connections)
            bar = tqdm(total=n_total, desc=f'replay {bag.name}', unit='msg', disable=not progress)
            next_discovery = time.monotonic() + 0.5

            def advance_to(t_ns: int) -> None:
                """Tick /clock at clock_hz until wall time reaches bag time t_ns."""
                nonlocal next_discovery
                target = wall0 + (t_ns - start_ns) / 1e9 / rate
                while True:
                    now = time.monotonic()
                    if now >= target:
                        break
                    publish_clock(start_ns + int((now - wall0) * rate * 1e9))
                    if recorder and now >= next_discovery:
                        recorder.subscribe_discovered()
                        next_discovery = now + 0.5
                    time.sleep(min(period, target - now))
                publish_clock(t_ns)

            for conn, t_ns, raw in reader.messages(connections=connections):
                advance_to(t_ns)
                publishers[conn.topic].publish(bytes(raw))
                summary.published[conn.topic] += 1
                bar.update(1)
            bar.close()
            advance_to(end_ns + int(tail_s * 1e9))
            summary.bag_seconds = (end_ns - start_ns) / 1e9
            summary.wall_seconds = time.monotonic() - wall0
        committed = True
    finally:
        executor.shutdown(timeout_sec=1.0)
        if spinner.is_alive():
            spinner.join(timeout=2.0)
        if recorder is not None:
            summary.recorded = Counter(recorder.counts)
            summary.skipped.update({t: f'not recorded: {why}'
                                    for t, why in recorder.unrecordable.items()})
            summary.record_path = recorder.close(commit=committed)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return summary


def add_arguments(parser) -> None:
    parser.add_argument('bag', help='rosbag2 directory (mcap or sqlite3)')
    parser.add_argument('--record', metavar='OUT', help='record topics into this MCAP rosbag2 '
                                                        'directory')
    parser.add_argument('--record-topics', nargs='+', default=list(DEFAULT_RECORD_TOPICS),
                        metavar='TOPIC', help='topics to record (default: the planner outputs '
                                              'and /diagnostics)')
    parser.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    parser.add_argument('--topics', nargs='+', metavar='TOPIC',
                        help='play only these topics (default: all installed types)')
    parser.add_argument('--wait', type=float, default=5.0, metavar='S',
                        help='wait up to S seconds for subscribers before playing')
    parser.add_argument('--tail', type=float, default=1.0, metavar='S',
                        help='keep clock and recorder running S bag seconds after the end')
    parser.add_argument('--clock-hz', type=float, default=100.0, help='/clock rate (wall)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def run(args) -> int:
    summary = replay(args.bag, rate=args.rate, record=args.record,
                     record_topics=args.record_topics, topics=args.topics, wait_s=args.wait,
                     tail_s=args.tail, clock_hz=args.clock_hz, progress=not args.no_progress)
    print(summary.table())
    if summary.record_path:
        print(f'recorded {sum(summary.recorded.values())} messages into {summary.record_path}')
    return 0
