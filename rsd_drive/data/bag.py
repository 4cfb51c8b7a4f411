"""Read a recorded drive (rosbag2, MCAP or sqlite3) into synchronised camera frames.

The reader follows ``config/dataset.yaml``: N camera topics (``sensor_msgs/Image`` or
``sensor_msgs/CompressedImage``), their ``CameraInfo``, ``nav_msgs/Odometry``, an optional intent
topic, extrinsics from ``/tf_static`` (else from the config) and, for scenario drives, the
ground-truth objects topic. Images go through :class:`rsd_drive.data.sync.FrameSynchronizer`, the
same code the live planner node uses, so a frame is assembled identically offline and on the
vehicle.

Reading is two passes over the bag: the small topics first (calibration, odometry, intents,
objects: targets need the *future* odometry of a frame), then the images. Frames that can't be
used are skipped and counted per reason; a bag without the needed topics raises
:class:`MissingTopicsError` listing what the bag does have; a truncated or corrupt bag raises
:class:`BagError` naming the file.

The small writer at the bottom (:class:`BagWriter`, :func:`build_message`) is the one way this
package writes rosbag2 files (label bags, test drives): a temporary directory renamed into place
when complete, so an interrupted writer leaves nothing that looks like a finished bag.
"""
from __future__ import annotations

import bisect
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from rsd_drive import config_file
from rsd_drive.data.convert import (MessageError, camera_info_distortion,
                                    camera_info_to_intrinsics, image_to_rgb,
                                    odometry_to_state, path_to_xy, stamp_to_ns,
                                    transform_to_matrix)
from rsd_drive.data.sync import FrameSynchronizer, OdometryHistory, SyncError
from rsd_drive.geometry import extrinsics_to_matrix, resize_intrinsics

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
ODOM_TYPE = 'nav_msgs/msg/Odometry'
STRING_TYPE = 'std_msgs/msg/String'
PATH_TYPE = 'nav_msgs/msg/Path'
TF_TYPE = 'tf2_msgs/msg/TFMessage'


class BagError(RuntimeError):
    """A bag that can't be read; the message names the file."""

    def __init__(self, path, detail: str):
        super().__init__(f'{path}: {detail}')
        self.path = str(path)
        self.detail = detail


class MissingTopicsError(BagError):
    """The bag lacks topics the dataset config needs; the message lists what it does have."""


# -- configuration -------------------------------------------------------------------------------
@dataclass
class DatasetCamera:
    """One camera of the rig: topics, and whether its images are recorded compressed."""

    name: str
    image_topic: str
    info_topic: str
    compressed: bool = False


@dataclass
class DatasetConfig:
    """``config/dataset.yaml``: what a recorded drive contains (see the YAML for field docs)."""

    cameras: list
    reference_camera: str
    sync_slop_s: float = 0.05
    odom_topic: str = '/odom'
    odom_max_gap_s: float = 0.2
    intent_topic: str = ''
    tf_static_topic: str = '/tf_static'
    objects_topic: str = ''
    route_topic: str = ''
    noise_topic: str = ''
    target_topic: str = ''
    extrinsics: dict = field(default_factory=dict)
    sync_queue_size: int = 10
    base_frame: str = 'base_link'

    def __post_init__(self):
        self.cameras = [c if isinstance(c, DatasetCamera) else DatasetCamera(**c)
                        for c in self.cameras]
        names = [c.name for c in self.cameras]
        if not names:
            raise ValueError('dataset config lists no cameras')
        if len(set(names)) != len(names):
            raise ValueError(f'duplicate camera names in dataset config: {names}')
        if self.reference_camera not in names:
            raise ValueError(f'reference_camera {self.reference_camera!r} is not one of {names}')
        if self.sync_slop_s <= 0 or self.odom_max_gap_s <= 0:
            raise ValueError('sync_slop_s and odom_max_gap_s must be positive')
        if not self.base_frame:
            raise ValueError('base_frame must name the vehicle frame (REP-105 base_link)')
        for name, mount in (self.extrinsics or {}).items():
            if name not in names:
                raise ValueError(f'extrinsics given for unknown camera {name!r}')
            try:
                extrinsics_to_matrix(mount)
            except (TypeError, ValueError) as exc:
                raise ValueError(f'extrinsics of {name!r}: {exc}') from exc

    @property
    def camera_names(self) -> list:
        return [c.name for c in self.cameras]

    @classmethod
    def from_dict(cls, data: dict) -> 'DatasetConfig':
        data = dict(data.get('dataset', data))
        return cls(**data)

    @classmethod
    def from_yaml(cls, path=None) -> 'DatasetConfig':
        path = Path(path) if path else config_file('dataset.yaml')
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise FileNotFoundError(f'dataset config {path}: {exc}') from exc
        if not isinstance(data, dict):
            raise ValueError(f'{path}: expected a mapping with a "dataset" key')
        try:
            return cls.from_dict(data)
        except TypeError as exc:
            raise ValueError(f'{path}: {exc}') from exc

    def to_dict(self) -> dict:
        return {'cameras': [vars(c).copy() for c in self.cameras],
                'reference_camera': self.reference_camera, 'sync_slop_s': self.sync_slop_s,
                'odom_topic': self.odom_topic, 'odom_max_gap_s': self.odom_max_gap_s,
                'intent_topic': self.intent_topic, 'tf_static_topic': self.tf_static_topic,
                'objects_topic': self.objects_topic, 'route_topic': self.route_topic,
                'noise_topic': self.noise_topic, 'target_topic': self.target_topic,
                'extrinsics': dict(self.extrinsics),
                'sync_queue_size': self.sync_queue_size, 'base_frame': self.base_frame}


# -- frames --------------------------------------------------------------------------------------
@dataclass
class SyncedFrame:
    """One synchronised multi-camera frame.

    seq: position among the synchronised sets of the bag (stable across runs: resume keys on it).
    stamp_ns: the reference camera's stamp (t0 of targets, stamp of every label).
    stamps_ns: each camera's image stamp. images: HxWx3 uint8 RGB per camera (None when the
    frame was read without decoding). K [N,3,3] at each image's size, cam_to_ego [N,4,4],
    image_hw: (height, width) per camera.
    """

    seq: int
    stamp_ns: int
    stamps_ns: list
    cameras: list
    images: list | None
    K: np.ndarray
    cam_to_ego: np.ndarray
    image_hw: list
    distortion: list | None = None  # camera_model.Distortion per camera (lens of the images)
    messages: list | None = None    # the image messages themselves (their JPEG bytes)


@dataclass
class SkippedFrame:
    """A frame that could not be used (``reason`` is a counter key). Reference images the
    synchroniser dropped have ``stamp_ns`` -1 and the ``seq`` the next synchronised set gets."""

    seq: int
    stamp_ns: int
    reason: str
    detail: str = ''


def _resolve_tf_chain(transforms: dict, parent: str, child: str):
    """4x4 ``parent_T_child`` by walking child -> parent links of a static TF tree, or None."""
    T, frame, seen = np.eye(4), child, set()
    while frame != parent:
        link = transforms.get(frame)
        if link is None or frame in seen:
            return None
        seen.add(frame)
        up, up_T_frame = link
        T = up_T_frame @ T
        frame = up
    return T


class BagReader:
    """Synchronised frames of one rosbag2 drive.

    >>> reader = BagReader('drive.mcap', DatasetConfig.from_yaml())
    >>> for frame in reader.frames():
    ...     frame.images, frame.K, frame.cam_to_ego, reader.odometry.at(frame.stamp_ns)

    After :meth:`open`: ``odometry`` (OdometryHistory of the whole drive), ``intents`` (sorted
    (stamp_ns, str)), ``objects`` (sorted (stamp_ns, JSON str) of the objects topic),
    ``topics`` (name -> (type, count)), ``expected_frames`` (reference image count) and
    ``bad_messages`` (Counter of unusable non-image messages). ``skipped`` counts frames.
    """

    def __init__(self, path, config: DatasetConfig):
        self.path = Path(path)
        self.config = config
        self.topics: dict = {}
        self.odometry = OdometryHistory(max_gap_ns=int(config.odom_max_gap_s * 1e9))
        self.intents: list = []
        self.objects: list = []
        self.K: dict = {}
        self.distortion: dict = {}  # camera -> camera_model.Distortion (CameraInfo D)
        self.info_hw: dict = {}
        self.cam_to_ego: dict = {}
        self.extrinsics_source: dict = {}
        self.image_topics: dict = {}
        self.expected_frames = 0
        self.has_intent_topic = False
        self.routes: list = []  # (stamp_ns, frame_id, [M, 2] polyline) sorted by stamp
        self.noise_intervals: list = []  # (start_ns, end_ns) of injected noise (scenario drives)
        # frame stamp -> (waypoints [T, 2] in base_link, pose offsets [T] ns): recorded targets
        # (a DAgger drive's expert rollouts from the visited states)
        self.targets: dict = {}
        self.bad_messages: Counter = Counter()
        self.skipped: Counter = Counter()
        self._reader = None
        self._typestore = None

    # -- low level: every call into rosbags is wrapped so a damaged file names itself --------
    def _wrap(self, exc: Exception) -> BagError:
        if isinstance(exc, BagError):
            return exc
        return BagError(self.path, f'corrupt or truncated bag ({type(exc).__name__}: {exc})')

    def _messages(self, topics):
        conns = [c for c in self._reader.connections if c.topic in topics]
        if not conns:
            return
        it = self._reader.messages(connections=conns)
        while True:
            try:
                conn, t_ns, raw = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - storage errors of any kind mean damage
                raise self._wrap(exc) from exc
            try:
                msg = self._reader.deserialize(raw, conn.msgtype)
            except Exception:  # noqa: BLE001 - one undecodable message: count it, go on
                self.bad_messages[f'undecodable:{conn.topic}'] += 1
                continue
            yield conn.topic, t_ns, msg

    def open(self) -> 'BagReader':
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        if not self.path.exists():
            raise BagError(self.path, 'no such bag')
        try:
            self._reader = AnyReader([self.path],
                                     default_typestore=get_typestore(Stores.ROS2_JAZZY))
            self._reader.open()
        except Exception as exc:  # noqa: BLE001
            self._reader = None
            raise self._wrap(exc) from exc
        try:
            self.topics = {name: (info.msgtype, info.msgcount)
                           for name, info in self._reader.topics.items()}
            self._check_topics()
            self._read_small_topics()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception:  # noqa: BLE001 - closing a damaged bag may fail again; ignore
                pass
            self._reader = None

    def __enter__(self) -> 'BagReader':
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def describe_topics(self) -> str:
        return ', '.join(f'{n} [{t}]' for n, (t, _) in sorted(self.topics.items())) or 'none'

    def _check_topics(self) -> None:
        cfg, missing = self.config, []
        for cam in cfg.cameras:
            candidates = [cam.image_topic, cam.image_topic + '/compressed']
            if cam.compressed:
                candidates.reverse()
            topic = next((t for t in candidates
                          if self.topics.get(t, (None,))[0] in (IMAGE_TYPE, COMPRESSED_TYPE)),
                         None)
            if topic is None:
                missing.append(f'{cam.image_topic} (camera {cam.name}: Image or CompressedImage)')
            else:
                self.image_topics[topic] = cam.name
            if self.topics.get(cam.info_topic, (None,))[0] != INFO_TYPE:
                missing.append(f'{cam.info_topic} (CameraInfo of {cam.name})')
        if self.topics.get(cfg.odom_topic, (None,))[0] != ODOM_TYPE:
            missing.append(f'{cfg.odom_topic} (nav_msgs/Odometry)')
        # The intent topic is optional: without it, intents come from the route's heading.
        self.has_intent_topic = bool(cfg.intent_topic) and \
            self.topics.get(cfg.intent_topic, (None,))[0] == STRING_TYPE
        if missing:
            raise MissingTopicsError(
                self.path, f'missing topics: {"; ".join(missing)}. The bag has: '
                           f'{self.describe_topics()}')
        ref = next(t for t, c in self.image_topics.items() if c == cfg.reference_camera)
        self.expected_frames = int(self.topics[ref][1])

    def _read_small_topics(self) -> None:
        cfg = self.config
        info_topics = {c.info_topic: c.name for c in cfg.cameras}
        frame_ids, tf_links = {}, {}
        wanted = set(info_topics) | {cfg.odom_topic}
        has_tf = self.topics.get(cfg.tf_static_topic, (None,))[0] == TF_TYPE
        if has_tf:
            wanted.add(cfg.tf_static_topic)
        if self.has_intent_topic:
            wanted.add(cfg.intent_topic)
        has_objects = bool(cfg.objects_topic) and \
            self.topics.get(cfg.objects_topic, (None,))[0] == STRING_TYPE
        if has_objects:
            wanted.add(cfg.objects_topic)
        has_route = bool(cfg.route_topic) and \
            self.topics.get(cfg.route_topic, (None,))[0] == PATH_TYPE
        if has_route:
            wanted.add(cfg.route_topic)
        if cfg.noise_topic and self.topics.get(cfg.noise_topic, (None,))[0] == STRING_TYPE:
            wanted.add(cfg.noise_topic)
        if cfg.target_topic and self.topics.get(cfg.target_topic, (None,))[0] == PATH_TYPE:
            wanted.add(cfg.target_topic)
        for topic, t_ns, msg in self._messages(wanted):
            if topic == cfg.odom_topic:
                try:
                    self.odometry.add(odometry_to_state(msg))
                except MessageError as exc:
                    self.bad_messages[f'odometry:{exc.reason}'] += 1
            elif topic in info_topics:
                name = info_topics[topic]
                if name in self.K:
                    continue  # calibration is static: the first valid message wins
                try:
                    distortion = camera_info_distortion(msg)
                    self.K[name], self.info_hw[name] = camera_info_to_intrinsics(msg)
                    self.distortion[name] = distortion
                    frame_ids[name] = msg.header.frame_id
                except MessageError as exc:
                    self.bad_messages[f'camera_info:{exc.reason}:{name}'] += 1
            elif topic == cfg.tf_static_topic:
                for tf in msg.transforms:
                    try:
                        tf_links[tf.child_frame_id] = (tf.header.frame_id,
                                                       transform_to_matrix(tf.transform))
                    except ValueError:
                        self.bad_messages['tf_static:invalid_transform'] += 1
            elif topic == cfg.intent_topic:
                self.intents.append((_msg_time_ns(msg, t_ns), str(msg.data)))
            elif topic == cfg.objects_topic:
                self.objects.append((_objects_stamp(msg.data, t_ns), str(msg.data)))
            elif topic == cfg.noise_topic:
                try:
                    self.noise_intervals += [(int(a), int(b)) for a, b in
                                             json.loads(msg.data)['intervals_ns']]
                except (ValueError, KeyError, TypeError):
                    self.bad_messages['noise:unreadable'] += 1
            elif topic == cfg.route_topic:
                try:
                    self.routes.append((_msg_time_ns(msg, t_ns), *path_to_xy(msg)))
                except MessageError as exc:
                    self.bad_messages[f'route:{exc.reason}'] += 1
            elif topic == cfg.target_topic:
                self._add_target(msg)
        self.intents.sort(key=lambda x: x[0])
        self.objects.sort(key=lambda x: x[0])
        self.routes.sort(key=lambda x: x[0])
        self._check_calibration(frame_ids, tf_links)

    def _check_calibration(self, frame_ids: dict, tf_links: dict) -> None:
        """Every camera's extrinsics (tf_static chain, else the dataset config) and the
        odometry are there; MissingTopicsError naming what is not."""
        cfg = self.config
        problems = []
        for cam in cfg.cameras:
            if cam.name not in self.K:
                problems.append(f'no valid CameraInfo for {cam.name} on {cam.info_topic}')
                continue
            frame_id = frame_ids.get(cam.name) or f'{cam.name}_optical'
            T = _resolve_tf_chain(tf_links, cfg.base_frame, frame_id) if tf_links else None
            if T is not None:
                self.cam_to_ego[cam.name], self.extrinsics_source[cam.name] = T, 'tf_static'
            elif cam.name in cfg.extrinsics:
                self.cam_to_ego[cam.name] = extrinsics_to_matrix(cfg.extrinsics[cam.name])
                self.extrinsics_source[cam.name] = 'config'
            else:
                problems.append(f'no extrinsics for {cam.name}: no {cfg.base_frame} -> '
                                f'{frame_id} in {cfg.tf_static_topic} and none in the dataset '
                                f'config')
        if not len(self.odometry):
            problems.append(f'no valid odometry on {cfg.odom_topic}')
        if problems:
            raise MissingTopicsError(self.path, '; '.join(problems) +
                                     f'. The bag has: {self.describe_topics()}')

    def _add_target(self, msg) -> None:
        try:
            frame, xy = path_to_xy(msg)
        except MessageError as exc:
            self.bad_messages[f'target:{exc.reason}'] += 1
            return
        if frame != self.config.base_frame:
            self.bad_messages['target:frame'] += 1
            return
        t0 = stamp_to_ns(msg.header.stamp)
        offsets = np.array([stamp_to_ns(p.header.stamp) - t0 for p in msg.poses], np.int64)
        self.targets[t0] = (xy, offsets)

    # -- frames --------------------------------------------------------------------------------
    def frames(self, decode=True, include_skipped: bool = False):
        """Yield :class:`SyncedFrame` in stamp order (and :class:`SkippedFrame` when asked).

        ``decode`` is True, False or a predicate on ``seq``: frames not decoded carry
        ``images=None`` (resume uses this to walk past finished work cheaply). Frames whose
        odometry can't be interpolated at the reference stamp, or whose images fail to decode,
        are skipped and counted in ``skipped``. An image of another size than its CameraInfo
        says gets K rescaled to its size (as the planner node does).
        """
        if self._reader is None:
            raise RuntimeError('BagReader.open() first')
        cfg = self.config
        sync = FrameSynchronizer(cfg.camera_names, cfg.reference_camera,
                                 slop_ns=int(cfg.sync_slop_s * 1e9),
                                 queue_size=cfg.sync_queue_size)
        seq = 0
        want = decode if callable(decode) else (lambda _seq: bool(decode))
        reported = Counter()

        def sync_drops():
            # Reference images the synchroniser gave up on. They have no seq of their own: they
            # are attributed to the next one (stable across runs) and carry stamp -1.
            new = sync.dropped - reported
            reported.update(new)
            for reason, count in new.items():
                self.skipped[f'sync:{reason}'] += count
                if include_skipped:
                    for _ in range(count):
                        yield SkippedFrame(seq, -1, f'sync:{reason}')

        def assemble(sets):
            nonlocal seq
            for s in sets:
                item = self._assemble(seq, s, want(seq))
                seq += 1
                if isinstance(item, SkippedFrame):
                    self.skipped[item.reason] += 1
                    if include_skipped:
                        yield item
                else:
                    yield item

        for topic, _t, msg in self._messages(set(self.image_topics)):
            camera = self.image_topics[topic]
            sets = sync.add(camera, stamp_to_ns(msg.header.stamp), msg)
            yield from sync_drops()
            yield from assemble(sets)
        sets = sync.flush()
        yield from sync_drops()
        yield from assemble(sets)

    def _assemble(self, seq: int, synced, decode: bool):
        cfg, t0 = self.config, synced.stamp_ns
        try:
            self.odometry.at(t0)
        except SyncError as exc:
            return SkippedFrame(seq, t0, f'odometry:{exc.reason}', str(exc))
        images, hws = [] if decode else None, []
        for name, msg in zip(cfg.camera_names, synced.payloads):
            if decode:
                try:
                    rgb = image_to_rgb(msg)
                except MessageError as exc:
                    return SkippedFrame(seq, t0, f'image:{exc.reason}:{name}', str(exc))
                hw = rgb.shape[:2]
                images.append(rgb)
            else:
                hw = (int(getattr(msg, 'height', 0)) or self.info_hw[name][0],
                      int(getattr(msg, 'width', 0)) or self.info_hw[name][1])
            hws.append(tuple(hw))
        # One rule with the planner node (deploy.pipeline.CameraCalibration.K_for): an image
        # whose size differs from its CameraInfo (a driver's scaled stream) gets K rescaled.
        K = np.stack([self.K[n] if tuple(hw) == tuple(self.info_hw[n]) else
                      resize_intrinsics(self.K[n], self.info_hw[n], hw)
                      for n, hw in zip(cfg.camera_names, hws)])
        T = np.stack([self.cam_to_ego[n] for n in cfg.camera_names])
        return SyncedFrame(seq, t0, list(synced.stamps_ns), cfg.camera_names, images, K, T, hws,
                           [self.distortion.get(n) for n in cfg.camera_names],
                           list(synced.payloads) if decode else None)

    # -- per-frame context ---------------------------------------------------------------------
    def intent_at(self, t_ns: int) -> str | None:
        """The last intent message at or before ``t_ns`` (None without one: the caller derives
        the intent from the heading then)."""
        stamps = [s for s, _ in self.intents]
        i = bisect.bisect_right(stamps, t_ns) - 1
        return self.intents[i][1] if i >= 0 else None

    def target_at(self, t_ns: int, steps: int, frequency_hz: float):
        """The target recorded for the frame at exactly ``t_ns`` ([steps, 2] in base_link: a
        DAgger drive's expert rollout from the visited state), None when the bag records no
        targets. Raises TargetError when it does but not for this stamp, or not at ``steps``
        waypoints (k + 1) / frequency_hz apart: never the logged future instead."""
        from rsd_drive.data.targets import TargetError

        if not self.targets:
            return None
        if t_ns not in self.targets:
            raise TargetError('future:no_expert_future', f'no {self.config.target_topic} '
                                                         f'at {t_ns}')
        xy, offsets = self.targets[t_ns]
        want = np.round(np.arange(1, steps + 1) * 1e9 / frequency_hz).astype(np.int64)
        if xy.shape != (steps, 2) or len(offsets) != steps or np.abs(offsets - want).max() > 1:
            raise TargetError('future:expert_horizon', f'{len(offsets)} waypoints, not '
                                                       f'{steps} at {frequency_hz} Hz')
        return xy

    def noise_between(self, t0_ns: int, t1_ns: int) -> bool:
        """True when injected noise overlaps [t0_ns, t1_ns] (a frame whose targets it touches
        is not the expert's own correction)."""
        return any(a <= t1_ns and b >= t0_ns for a, b in self.noise_intervals)

    def route_at(self, t_ns: int):
        """The route polyline [M, 2] (odometry frame) of the last route message at or before
        ``t_ns``: the route known at that time, never a later one. None without one."""
        stamps = [s for s, _, _ in self.routes]
        i = bisect.bisect_right(stamps, t_ns) - 1
        return self.routes[i][2] if i >= 0 else None

    def objects_at(self, t_ns: int, max_age_ns: int = 250_000_000) -> dict | None:
        """The last ground-truth objects message at or before ``t_ns`` (parsed), if recent."""
        stamps = [s for s, _ in self.objects]
        i = bisect.bisect_right(stamps, t_ns) - 1
        if i < 0 or t_ns - self.objects[i][0] > max_age_ns:
            return None
        try:
            data = json.loads(self.objects[i][1])
        except ValueError:
            self.bad_messages['objects:bad_json'] += 1
            return None
        return data if isinstance(data, dict) else None


def _msg_time_ns(msg, t_ns: int) -> int:
    """Header stamp of a message; the bag time for header-less ones (std_msgs/String)."""
    header = getattr(msg, 'header', None)
    return stamp_to_ns(header.stamp) if header is not None else int(t_ns)


def _objects_stamp(text: str, t_ns: int) -> int:
    try:
        return int(json.loads(text).get('stamp_ns', t_ns))
    except (ValueError, AttributeError, TypeError):
        return int(t_ns)


# -- writing -------------------------------------------------------------------------------------
def _default_value(typestore, spec):
    from rosbags.interfaces import Nodetype

    kind, arg = spec
    if kind == Nodetype.BASE:
        name = arg[0]
        if name == 'string' or name == 'wstring':
            return ''
        if name == 'bool':
            return False
        return 0.0 if name.startswith('float') else 0
    if kind == Nodetype.NAME:
        return build_message(typestore, arg)
    sub, count = arg
    if sub[0] == Nodetype.BASE and sub[1][0] not in ('string', 'wstring'):
        dtype = {'bool': np.bool_, 'byte': np.uint8, 'char': np.uint8}.get(sub[1][0], sub[1][0])
        return np.zeros(count if kind == Nodetype.ARRAY else 0, dtype=dtype)
    if kind == Nodetype.ARRAY:
        return [_default_value(typestore, sub) for _ in range(count)]
    return []


def build_message(typestore, msgtype: str, **fields):
    """A rosbags message of ``msgtype`` with every field not given set to its zero value."""
    consts, defs = typestore.fielddefs[msgtype]
    values = {}
    for name, spec in defs:
        values[name] = fields.pop(name) if name in fields else _default_value(typestore, spec)
    if fields:
        raise TypeError(f'{msgtype} has no fields {sorted(fields)}')
    return typestore.types[msgtype](**values)


def stamp_msg(typestore, t_ns: int):
    sec, nanosec = divmod(int(t_ns), 1_000_000_000)
    return typestore.types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)


def header_msg(typestore, t_ns: int, frame_id: str):
    return typestore.types['std_msgs/msg/Header'](stamp=stamp_msg(typestore, t_ns),
                                                  frame_id=frame_id)


class BagWriter:
    """Write a rosbag2 (``storage`` 'mcap' or 'sqlite3') atomically: everything goes to a
    temporary directory beside ``path`` that replaces ``path`` on :meth:`close`; :meth:`abort`
    (or an exception inside ``with``) removes it."""

    def __init__(self, path, storage: str = 'mcap', typestore=None):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        self.typestore = typestore or get_typestore(Stores.ROS2_JAZZY)
        plugins = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
        if storage not in plugins:
            raise ValueError(f'storage must be one of {sorted(plugins)}, got {storage!r}')
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_parent = Path(tempfile.mkdtemp(dir=self.path.parent,
                                                 prefix=f'.{self.path.name}.'))
        self._writer = Writer(self._tmp_parent / self.path.name, version=9,
                              storage_plugin=plugins[storage])
        self._writer.open()
        self._connections = {}

    def add_topic(self, topic: str, msgtype: str, qos=()) -> None:
        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=self.typestore, offered_qos_profiles=list(qos))

    def write(self, topic: str, t_ns: int, msg) -> None:
        """Serialise and append ``msg`` (its topic is added on first use)."""
        self.add_topic(topic, msg.__msgtype__)
        conn = self._connections[topic]
        self._writer.write(conn, int(t_ns), bytes(self.typestore.serialize_cdr(msg, conn.msgtype)))

    def close(self) -> Path:
        self._writer.close()
        final_tmp = self._tmp_parent / self.path.name
        if self.path.exists():
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        os.replace(final_tmp, self.path)
        shutil.rmtree(self._tmp_parent, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - aborting: the partial output is deleted anyway
            pass
        shutil.rmtree(self._tmp_parent, ignore_errors=True)

    def __enter__(self) -> 'BagWriter':
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
