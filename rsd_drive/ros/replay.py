"""``rsd-drive replay BAG [--record OUT] [--rate R] [--lockstep]``: play a rosbag2 into ROS 2 with
``/clock``.

For machines without ``ros2 bag`` (no ROS install, only the rclpy wheels): the bag is read with
``rosbags`` and every message's CDR bytes are published unchanged through rclpy (the same bytes
``ros2 bag play`` would send; no Python deserialisation, which costs ~8 ms for a 1080p image).
``/clock`` follows bag time, so nodes started with ``use_sim_time:=true`` live in the bag's time.
Topics whose message package is not installed (e.g. ``tf2_msgs`` here) are skipped and listed.

``--record OUT`` records topics (by default the planner node's outputs and ``/diagnostics``) into
an MCAP rosbag2 at OUT: rclpy raw subscriptions give CDR bytes that go straight into the
``rosbags`` writer, stamped with the bag time they arrived at. The bag is written in a temporary
directory beside OUT and renamed into place when complete.

``--lockstep`` paces the replay to the node instead of the wall clock: after the messages that
complete a camera set (found by the node's own synchroniser), bag time and ``/clock`` stand still
until the node has answered that set (its ``~/path`` with the set's stamp) or a wall-clock deadline
has passed. A slow machine then plays the same drive, only slower, and the node's sim-time age
checks see the same ages as on a fast one; sets not answered in time are counted and reported.
"""
from __future__ import annotations

import importlib
import shutil
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ANSWER_TOPIC = '/planner_node/path'
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
    passes: int = 0            # times the bag was played (loop_for_s)
    set_waits: list = field(default_factory=list)  # lockstep: (monotonic end, s, answered)
    record_path: Path | None = None
    lockstep: dict | None = None  # see Lockstep.summary()

    def table(self) -> str:
        lines = [f'{"topic":<40} {"published":>10} {"recorded":>9}']
        for topic in sorted(set(self.published) | set(self.recorded)):
            lines.append(f'{topic:<40} {self.published.get(topic, 0):>10} '
                         f'{self.recorded.get(topic, 0):>9}')
        for topic, why in sorted(self.skipped.items()):
            lines.append(f'{topic:<40} skipped: {why}')
        passes = f' ({self.passes} passes)' if self.passes > 1 else ''
        lines.append(f'bag {self.bag_seconds:.2f} s played{passes} in {self.wall_seconds:.2f} s '
                     f'(wall)')
        if self.lockstep:
            ls = self.lockstep
            lines.append(f'lockstep on {ls["answer_topic"]}: {ls["sets"]} camera sets, '
                         f'{ls["answered"]} answered in time, {ls["skipped"]} handled without a '
                         f'plan (node diagnostics), {ls["late"]} answered after the deadline '
                         f'({ls["timeout_s"]} s), {ls["unanswered"]} never answered; '
                         f'wait for the node p50 {ls["wait_p50_ms"]:.0f} ms, p99 '
                         f'{ls["wait_p99_ms"]:.0f} ms (wall clock; bag time stood still); node '
                         f'drops: {ls["node_drops"] or "none"}')
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


class Lockstep:
    """Paces a replay to the node: after each camera set, bag time (and /clock) stand still until
    the node has answered it (a message on ``answer_topic`` stamped at or after the set's stamp
    minus the slop) or ``timeout_s`` of wall time has passed. Sets are found by the same
    synchroniser the node runs (rsd_drive.data.sync), over the bag's image topics. A set the node
    handled without a plan (e.g. too little odometry history yet) shows in its ``/diagnostics``
    drop counters: when they grow, the wait ends too, counted as ``skipped``. (Plans are not
    counted there: a plan's own path answers it, and its diagnostics arrive later. Nor are the
    node's events that drop no set, ``EVENT_COUNTERS``: the time-jump reset at a new pass.)"""

    EVENT_COUNTERS = ('time_jump_back',)

    def __init__(self, node, image_topics, reference_topic, answer_topic: str, timeout_s: float,
                 slop_s: float):
        from nav_msgs.msg import Path as PathMsg
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from rsd_drive.data.sync import FrameSynchronizer

        if not image_topics:
            raise ValueError('lockstep needs camera (Image / CompressedImage) topics in the bag')
        reference = reference_topic or image_topics[0]
        if reference not in image_topics:
            raise ValueError(f'lockstep reference topic {reference!r} is not a camera topic of '
                             f'the bag: {image_topics}')
        self.answer_topic, self.timeout_s = answer_topic, float(timeout_s)
        self.slop_ns = int(slop_s * 1e9)
        self.sync = FrameSynchronizer(image_topics, reference, self.slop_ns, queue_size=100)
        self.cond = threading.Condition()
        self.answers = []          # header stamps (ns) of the node's answers, in arrival order
        self.wait_log = []         # (time.monotonic() at the end, seconds waited, answered)
        self.sets = self.answered = self.skipped = 0
        self.timed_out = []        # set stamps given up on (this pass)
        self.late_before = self.unanswered_before = 0  # ... of them, in earlier passes
        self.handled = 0           # the node's drop counters' sum, from its latest /diagnostics
        self.drops = {}            # ... and the counters themselves
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(PathMsg, answer_topic, self._on_answer, reliable)
        from diagnostic_msgs.msg import DiagnosticArray

        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, reliable)

    def _on_answer(self, msg) -> None:
        from rsd_drive.data.convert import stamp_to_ns

        with self.cond:
            self.answers.append(stamp_to_ns(msg.header.stamp))
            self.cond.notify_all()

    def _on_diagnostics(self, msg) -> None:
        drops = {}
        for status in msg.status:
            if not status.name.startswith(self.answer_topic.strip('/').split('/')[0] + ':'):
                continue
            for kv in status.values:
                if kv.key.startswith('drops.'):
                    try:
                        drops[kv.key[6:]] = int(kv.value)
                    except ValueError:
                        pass
        if drops:
            with self.cond:
                self.drops = drops
                handled = sum(n for k, n in drops.items() if k not in self.EVENT_COUNTERS)
                self.handled = max(self.handled, handled)
                self.cond.notify_all()

    def mark(self) -> int:
        """The node's handled count now (before the set is published in full)."""
        with self.cond:
            return self.handled

    def sets_completed_by(self, topic: str, raw: bytes, msgtype: str) -> list:
        """Feed one published image message; -> stamps of the sets it completed."""
        from rclpy.serialization import deserialize_message

        from rsd_drive.data.convert import stamp_to_ns

        if topic not in self.sync.cameras:
            return []
        msg = deserialize_message(raw, message_class(msgtype))
        return [s.stamp_ns for s in self.sync.add(topic, stamp_to_ns(msg.header.stamp), None)]

    def _answered(self, stamp_ns: int) -> bool:
        return any(a >= stamp_ns - self.slop_ns for a in self.answers)

    def wait(self, stamp_ns: int, handled_before: int, keep_clock) -> None:
        """Block until the node answered the set stamped ``stamp_ns`` (or handled it without a
        plan) or the deadline passed; ``keep_clock()`` republishes the frozen clock meanwhile."""
        t0 = time.monotonic()
        deadline = t0 + self.timeout_s
        self.sets += 1
        with self.cond:
            while not self._answered(stamp_ns):
                if self.handled > handled_before:
                    self.skipped += 1
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    self.timed_out.append(stamp_ns)
                    break
                self.cond.wait(min(left, 0.05))
                keep_clock()
            else:
                self.answered += 1
            answered = self._answered(stamp_ns)
        end = time.monotonic()
        self.wait_log.append((end, end - t0, answered))

    def new_pass(self) -> None:
        """The bag starts over (``loop_for_s``): its stamps repeat, so the answers and the
        synchroniser of the previous pass are forgotten."""
        from rsd_drive.data.sync import FrameSynchronizer

        old = self.sync
        self.sync = FrameSynchronizer(old.cameras, old.reference, self.slop_ns, queue_size=100)
        with self.cond:
            late = sum(1 for t in self.timed_out if self._answered(t))
            self.late_before += late
            self.unanswered_before += len(self.timed_out) - late
            self.timed_out.clear()
            self.answers.clear()

    def summary(self) -> dict:
        with self.cond:
            late_now = sum(1 for t in self.timed_out if self._answered(t))
            late = self.late_before + late_now
            unanswered = self.unanswered_before + len(self.timed_out) - late_now
        waits = sorted(w for _, w, _ in self.wait_log) or [0.0]

        def pick(q: float) -> float:
            return waits[min(len(waits) - 1, int(q * (len(waits) - 1) + 0.5))]

        return {'answer_topic': self.answer_topic, 'timeout_s': self.timeout_s,
                'sets': self.sets, 'answered': self.answered, 'skipped': self.skipped,
                'late': late,
                'unanswered': unanswered, 'node_drops': dict(self.drops),
                'wait_p50_ms': pick(0.5) * 1e3,
                'wait_p99_ms': pick(0.99) * 1e3, 'clock': 'wall'}


class _Player:
    """One replay's moving parts: the bag's publishers, ``/clock``, the optional recorder and
    lockstep pacer, and the pacing state (where bag time and wall time were last tied)."""

    def __init__(self, node, reader, connections, publishers, summary: ReplaySummary, *,
                 rate: float, clock_hz: float, recorder=None, pacer=None):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        self.node, self.reader, self.summary = node, reader, summary
        self.connections, self.publishers = connections, publishers
        self.rate, self.period = rate, 1.0 / clock_hz
        self.recorder, self.pacer = recorder, pacer
        self._clock_cls = Clock
        self.clock_pub = node.create_publisher(Clock, '/clock', QoSProfile(
            depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.start_ns, self.end_ns = reader.start_time, reader.end_time
        self.sim_ns = self.start_ns
        self.paced_bag_ns, self.paced_wall = self.start_ns, time.monotonic()
        self.next_discovery = 0.0
        self.stream = None
        self.held = deque()  # lockstep: messages read ahead of an answer, [conn, t, raw, sent]
        self.bar = None

    def publish_clock(self, t_ns: int) -> None:
        self.sim_ns = t_ns
        msg = self._clock_cls()
        msg.clock.sec, msg.clock.nanosec = divmod(int(t_ns), 1_000_000_000)
        self.clock_pub.publish(msg)

    def keep_clock(self) -> None:
        self.publish_clock(self.sim_ns)

    def camera_topics(self) -> list:
        return camera_topics(self.connections)

    def unmatched(self) -> list:
        """Endpoints discovered in the graph that DDS has not matched with ours yet (a message
        sent before the match is lost: e.g. the first odometry)."""
        node = self.node
        late = [t for t, pub in self.publishers.items()
                if pub.get_subscription_count() < node.count_subscribers(t)]
        if self.recorder:
            late += [sub.topic_name for sub in self.recorder.subscriptions
                     if sub.get_publisher_count() < node.count_publishers(sub.topic_name)]
        return late

    def wait_for_endpoints(self, wait_s: float, log) -> None:
        """Up to ``wait_s``: every camera topic subscribed, every record topic seen, every
        endpoint found matched by DDS (a node that is still starting would miss frames)."""
        node, recorder, cameras = self.node, self.recorder, self.camera_topics()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            self.publish_clock(self.start_ns)
            missing = recorder.subscribe_discovered() if recorder else []
            unheard = [t for t in cameras if node.count_subscribers(t) == 0]
            if not missing and not unheard and not self.unmatched():
                # Matched on our side; the other side matches from the same discovery round: a
                # margin for it.
                time.sleep(0.5)
                return
            time.sleep(0.05)
        if recorder:
            missing = recorder.subscribe_discovered()
            if missing:
                log(f'replay: not (yet) recording {missing}: no publisher seen')
        unheard = [t for t in cameras if node.count_subscribers(t) == 0]
        if unheard:
            log(f'replay: no subscriber on {unheard} after {wait_s} s; playing anyway')
        elif self.unmatched():
            log(f'replay: endpoints on {sorted(set(self.unmatched()))} not matched after '
                f'{wait_s} s (incompatible QoS?); playing anyway')

    def advance_to(self, t_ns: int) -> None:
        """Tick /clock at clock_hz until wall time reaches bag time t_ns."""
        t_ns = max(t_ns, self.sim_ns)
        target = self.paced_wall + (t_ns - self.paced_bag_ns) / 1e9 / self.rate
        while True:
            now = time.monotonic()
            if now >= target:
                break
            self.publish_clock(self.paced_bag_ns + int((now - self.paced_wall) * self.rate * 1e9))
            if self.recorder and now >= self.next_discovery:
                self.recorder.subscribe_discovered()
                self.next_discovery = now + 0.5
            time.sleep(min(self.period, target - now))
        self.publish_clock(t_ns)

    def publish(self, item) -> None:
        conn, _t, raw = item[:3]
        self.publishers[conn.topic].publish(bytes(raw))
        self.summary.published[conn.topic] += 1
        self.bar.update(1)

    def send_ahead(self, until_ns: int) -> None:
        """What the node needs for a set that the bag holds after it (odometry reaching the set's
        stamp, CameraInfo, ...): published now, images held back."""
        for item in self.held:
            if item[1] > until_ns:
                return
            if not item[3] and item[0].msgtype not in IMAGE_TYPES:
                self.publish(item)
                item[3] = True
        while True:
            nxt = next(self.stream, None)
            if nxt is None:
                return
            item = [*nxt, False]
            self.held.append(item)
            if item[1] > until_ns:
                return
            if item[0].msgtype not in IMAGE_TYPES:
                self.publish(item)
                item[3] = True

    def wait_for_set(self, stamp_ns: int, handled: int) -> None:
        """Lockstep: hold bag time until the node answered the set, then pace from here."""
        self.pacer.wait(stamp_ns, handled, self.keep_clock)
        self.paced_bag_ns, self.paced_wall = self.sim_ns, time.monotonic()

    def play(self, lead_s: float, tail_s: float, progress: bool, name: str,
             loop_for_s: float = 0.0) -> None:
        """Publish every message at its bag time (lockstep: waiting on each camera set), then
        keep the clock running ``tail_s`` past the end. ``loop_for_s``: start the bag over
        (``/clock`` jumps back to its start, as ``ros2 bag play --loop``) until that many wall
        seconds have passed since the first pass began; ``summary.passes`` counts them."""
        from tqdm import tqdm

        wall0 = time.monotonic()
        n_total = sum(c.msgcount for c in self.connections)
        while True:
            self.bar = tqdm(total=n_total, desc=f'replay {name}'
                            + (f' pass {self.summary.passes + 1}' if loop_for_s else ''),
                            unit='msg', disable=not progress)
            self._play_pass(lead_s)
            self.bar.close()
            self.summary.passes += 1
            if time.monotonic() - wall0 >= loop_for_s:
                break
            self.held.clear()
            self.sim_ns = self.start_ns  # the clock jumps back with the next message
            if self.pacer is not None:
                self.pacer.new_pass()
        if self.pacer is not None:
            self.summary.lockstep = self.pacer.summary()
            self.summary.set_waits = list(self.pacer.wait_log)
        self.advance_to(self.end_ns + int(tail_s * 1e9))
        self.summary.bag_seconds = (self.end_ns - self.start_ns) / 1e9
        self.summary.wall_seconds = time.monotonic() - wall0

    def _play_pass(self, lead_s: float) -> None:
        """One pass over the bag, from its start."""
        pacer = self.pacer
        self.paced_bag_ns, self.paced_wall = self.start_ns, time.monotonic()
        self.next_discovery = self.paced_wall + 0.5
        handled = pacer.mark() if pacer is not None else 0
        self.stream = self.reader.messages(connections=self.connections)
        while True:
            item = self.held.popleft() if self.held else next(self.stream, None)
            if item is None:
                break
            if len(item) == 4 and item[3]:
                continue  # sent ahead already
            conn, t_ns, raw = item[:3]
            self.advance_to(t_ns)
            data = bytes(raw)
            self.publish((conn, t_ns, data))
            if pacer is not None and conn.msgtype in IMAGE_TYPES:
                for stamp in pacer.sets_completed_by(conn.topic, data, conn.msgtype):
                    self.send_ahead(stamp + int(lead_s * 1e9))
                    self.wait_for_set(stamp, handled)
                handled = pacer.mark()
        if pacer is not None:
            for stamp in [s.stamp_ns for s in pacer.sync.flush()]:
                self.wait_for_set(stamp, handled)


def camera_topics(connections) -> list:
    """The image topics among ``connections``, in first-seen order."""
    return list(dict.fromkeys(c.topic for c in connections if c.msgtype in IMAGE_TYPES))


def _recorded_latched(conn) -> bool:
    """Whether the bag recorded this topic's publisher as transient local."""
    profiles = getattr(getattr(conn, 'ext', None), 'offered_qos_profiles', None) or []
    return any(getattr(getattr(q, 'durability', None), 'name', '') == 'TRANSIENT_LOCAL'
               for q in profiles)


def _open_publishers(node, reader, topics, summary: ReplaySummary):
    """-> (connections to play, {topic: publisher}); topics of types not installed are listed
    in ``summary.skipped``. ``/tf_static`` and every topic recorded with a transient-local
    offered QoS (the scenario drives' ``/route``) are latched, as ``ros2 bag play`` does."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    connections, publishers = [], {}
    for conn in reader.connections:
        if topics and conn.topic not in topics:
            continue
        cls = message_class(conn.msgtype)
        if cls is None:
            summary.skipped[conn.topic] = f'{conn.msgtype} not installed'
            continue
        if conn.topic not in publishers:
            latched = conn.topic in LATCHED_TOPICS or _recorded_latched(conn)
            qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if latched
                             else DurabilityPolicy.VOLATILE)
            publishers[conn.topic] = node.create_publisher(cls, conn.topic, qos)
        connections.append(conn)
    return connections, publishers


def replay(bag, rate: float = 1.0, record=None, record_topics=DEFAULT_RECORD_TOPICS,
           topics=None, wait_s: float = 5.0, tail_s: float = 1.0, clock_hz: float = 100.0,
           progress: bool = True, log=print, lockstep: bool = False,
           answer_topic: str = DEFAULT_ANSWER_TOPIC, lockstep_timeout_s: float = 5.0,
           reference_topic: str | None = None, slop_s: float = 0.05,
           lead_s: float = 0.25, loop_for_s: float = 0.0) -> ReplaySummary:
    """Play ``bag`` into ROS 2 with ``/clock`` (see the module docstring).

    lockstep: pace bag time to the node instead of the wall clock (:class:`Lockstep`): after
        each camera set, wait for its answer on ``answer_topic`` or ``lockstep_timeout_s`` (wall);
        ``rate`` then only caps the speed between sets. Sets without an answer in time are
        counted (``summary.lockstep``), never silently dropped. While a set waits, the bag's
        non-image messages up to ``lead_s`` past its stamp are sent ahead (odometry that reaches
        the stamp; the node rejects nothing that close to its clock).

    wait_s: before playing, wait up to this long for every camera topic to have a subscriber,
        every record topic to appear and DDS to match the endpoints found (a node that is still
        starting would miss the first frames).
    tail_s: after the last message, keep the clock running and recording this long (bag time).
    loop_for_s: play the bag again from its start (``/clock`` jumps back; planner_node then
        starts its synchronisation and odometry history over) until this many wall seconds
        have passed; 0 plays it once.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rosbags.highlevel import AnyReader

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
            connections, publishers = _open_publishers(node, reader, topics, summary)
            if not connections:
                raise ValueError(f'{bag}: no playable topics (skipped: {summary.skipped})')
            player = _Player(node, reader, connections, publishers, summary, rate=rate,
                             clock_hz=clock_hz)
            if record:
                recorder = player.recorder = _Recorder(node, Path(record), record_topics,
                                                       lambda: player.sim_ns)
            if lockstep:
                player.pacer = Lockstep(node, player.camera_topics(), reference_topic,
                                        answer_topic, lockstep_timeout_s, slop_s)
            spinner.start()
            player.wait_for_endpoints(wait_s, log)
            player.play(lead_s, tail_s, progress, bag.name, loop_for_s=loop_for_s)
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
    parser.add_argument('--lockstep', action='store_true',
                        help='pace bag time to the node: after each camera set, /clock stands '
                             'still until the node answered it on --answer-topic or --deadline '
                             'passed (late sets are counted); the result then does not depend '
                             'on the machine\'s speed')
    parser.add_argument('--answer-topic', default=DEFAULT_ANSWER_TOPIC,
                        help='with --lockstep: the node\'s answer per camera set (nav_msgs/Path '
                             'stamped with the set\'s stamp)')
    parser.add_argument('--deadline', type=float, default=5.0, metavar='S',
                        help='with --lockstep: wall seconds to wait for an answer')
    parser.add_argument('--reference-topic', help='with --lockstep: the camera topic whose '
                                                  'stamps anchor a set (default: the first)')
    parser.add_argument('--slop', type=float, default=0.05, metavar='S',
                        help='with --lockstep: sync slop of the camera sets (seconds)')
    parser.add_argument('--loop-for', type=float, default=0.0, metavar='S',
                        help='play the bag again from its start (/clock jumps back, as ros2 bag '
                             'play --loop) until S wall seconds have passed (default: once)')


def run(args) -> int:
    summary = replay(args.bag, rate=args.rate, record=args.record,
                     record_topics=args.record_topics, topics=args.topics, wait_s=args.wait,
                     tail_s=args.tail, clock_hz=args.clock_hz, progress=not args.no_progress,
                     lockstep=args.lockstep, answer_topic=args.answer_topic,
                     lockstep_timeout_s=args.deadline, reference_topic=args.reference_topic,
                     slop_s=args.slop, loop_for_s=args.loop_for)
    print(summary.table())
    if summary.record_path:
        print(f'recorded {sum(summary.recorded.values())} messages into {summary.record_path}')
    return 0
