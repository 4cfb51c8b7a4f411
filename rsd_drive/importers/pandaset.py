"""PandaSet sequences (Hesai / Scale AI, JSON + JPEG as in ``shared/data/pandaset_002``) ->
rosbag2 (MCAP) recordings with the topics of ``config/pandaset_dataset.yaml``::

    <image_topic>   sensor_msgs/CompressedImage  the original JPEG bytes, at each camera's stamp
    <info_topic>    sensor_msgs/CameraInfo       K from intrinsics.json, with every image
    /tf_static      tf2_msgs/TFMessage           base_link -> <camera>_optical, once (latched)
    /tf             tf2_msgs/TFMessage           odom -> base_link with every odometry message
    <odom_topic>    nav_msgs/Odometry            odom -> base_link at the LiDAR stamps, body twist
    <objects_topic> std_msgs/String              the frame's cuboids as JSON in odom, in the
                                                 /scenario/objects schema (+ label, uuid, motion)

Frames, worked out from the data (DESIGN.md "PandaSet frames") and checked here and by the tests:

- All poses and cuboids are in one world frame (gravity aligned; its origin is the first LiDAR
  pose). Every sensor's pose is sampled at that sensor's own stamp.
- ``lidar/poses.json`` has x to the right, y forward (the direction of travel), z up, its origin
  near the ground. REP-103 ``base_link`` (x forward, y left) is that frame turned +90 degrees
  about z and lowered onto the road: ``world_from_base = world_from_lidar @ Rz(+90 deg) @
  Tz(-h)``. The importer checks the axes: the ego velocity in base_link must point along +x while
  the car moves (else it refuses the sequence). ``h`` is measured from the annotations: the
  bottoms of the road users within 12 m lie ``h`` below the LiDAR pose origin (0.35 m in sequence
  002, from 1200+ boxes), so base_link's origin is on the road as REP-103 and the ground-plane
  projection of the teachers expect.
- Camera poses are optical frames (z along the view, x right, y down: a pinhole K applies). The
  cameras fire up to 0.1 s before the LiDAR, so a camera's mount is
  ``inv(world_from_base(t_camera)) @ world_from_camera(t_camera)`` with the ego pose at the
  camera's stamp; the per-frame mounts are averaged into the static transform and their spread is
  reported (:class:`MountEstimate`).
- Where the ego is between LiDAR poses (the *sweep model*, measured on sequence 002): the six
  camera poses of frame ``k`` are frame ``k``'s LiDAR pose moved back in time at one constant
  velocity of that sweep (through the averaged mounts, the six ego positions they imply lie on
  one line through the LiDAR pose within 1.4 mm; 0.7 mm with a free intercept). That velocity is
  smooth, while the LiDAR poses themselves are not: between frames 12 and 13 they step 1 cm
  further than that sweep's velocity, so interpolating between LiDAR poses puts frame 13's
  cameras up to 1.5 cm off. A sweep whose cameras lie farther than ``SWEEP_RESIDUAL_WARN_M``
  from its line is logged (the model may not hold for that sequence). The importer
  therefore fits each sweep's linear and angular velocity to its cameras (pinned at the LiDAR
  pose, :func:`fit_sweeps`; a constant body-frame offset of all sweeps' velocities is not
  observable, as it moves each mount by a constant, and is fixed so that the sweeps' mean matches
  the LiDAR poses' velocity), re-estimates the mounts on that track and repeats
  (``SWEEP_ITERATIONS``). The spread of the mounts over the plain LiDAR interpolation is kept
  for comparison (``MountEstimate`` of ``lidar_spread``).
- ``odom`` is the world frame shifted so that the first ego position is its origin. Odometry is
  written at the LiDAR stamps (the measured ego poses, 10 Hz) and at the first camera stamp of
  each sweep (its start, 0.1 ms after the previous LiDAR pose in sequence 002), posed by the
  sweep model, so that a reader interpolating odometry at an image's stamp (as tf does) gets the
  ego pose that the dataset's camera pose implies. The twist is in base_link, signed (negative x
  when reversing), from central differences of the LiDAR poses.
- Cuboids: ``position`` is the box centre, ``dimensions`` [width, length, height], ``yaw`` 0
  points the length side along world +y (counter-clockwise positive), so the schema's yaw (of the
  length axis from odom +x) is ``yaw + pi/2``. Objects in the overlap of the two LiDARs have a
  box per LiDAR: only ``sensor_id`` -1 or 0 are kept. The boxes hold at the LiDAR stamp and are
  stamped there (the frame's cameras come earlier: a teacher reading them at the camera time
  uses the previous sweep's boxes moved by their velocity, never the later sweep).

Everything is written to a temporary directory beside the target and renamed into place when
complete; a missing or broken file is named with its frame and leaves nothing behind.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsd_drive import config_file
from rsd_drive.geometry import make_transform, quaternion_to_matrix, yaw_matrix
from rsd_drive.importers.common import (EgoPose, ImageItem, ImporterError, add_velocities,
                                        jpeg_size, read_dataset_config, read_json, write_drive)

log = logging.getLogger(__name__)

# PandaSet camera directories; our name drops the "_camera".
PANDASET_CAMERAS = ('front_camera', 'front_left_camera', 'front_right_camera', 'left_camera',
                    'right_camera', 'back_camera')
BASE_FROM_LIDAR = make_transform(yaw_matrix(math.pi / 2), (0.0, 0.0, 0.0))
PEDESTRIAN_LABELS = {'pedestrian', 'pedestrian with object'}
SCENERY_LABELS = {'cones', 'signs', 'construction signs', 'temporary construction barriers',
                  'rolling containers', 'pylons', 'road barriers', 'towed object'}
KEEP_SENSOR_IDS = (-1, 0)
MAX_EXTRAPOLATION_S = 0.15
SWEEP_ITERATIONS = 4        # mounts <-> sweep velocities, alternately (converged after 2-3)
SWEEP_RESIDUAL_WARN_M = 0.005
GROUND_RANGE_M = 12.0      # road users this close tell where the road is
MOVING_SPEED = 1.0          # m/s: frames used to check base_link against the travel direction
MIN_FORWARD_COSINE = 0.98   # the mean travel direction must be within ~11 degrees of +x


class PandasetError(ImporterError):
    """A sequence that cannot be converted; the message names the file (and frame) at fault."""


# -- rotations ------------------------------------------------------------------------------------

def rotation_log(R: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle) of a 3x3 rotation."""
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    angle = math.acos(cos)
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if angle < 1e-9:
        return 0.5 * w
    if math.pi - angle < 1e-6:  # near pi: axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(R) + 1.0) / 2.0, 0.0, None))
        axis *= np.where(w >= 0, 1.0, -1.0)
        return axis / np.linalg.norm(axis) * angle
    return w * angle / (2.0 * math.sin(angle))


def rotation_exp(w) -> np.ndarray:
    """3x3 rotation of a rotation vector (Rodrigues)."""
    w = np.asarray(w, dtype=np.float64)
    angle = float(np.linalg.norm(w))
    if angle < 1e-12:
        return np.eye(3)
    k = w / angle
    Kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * Kx + (1.0 - math.cos(angle)) * Kx @ Kx


def mean_rotation(Rs) -> np.ndarray:
    """Chordal L2 mean of rotations (the rotation closest to their arithmetic mean)."""
    U, _, Vt = np.linalg.svd(np.sum(Rs, axis=0))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def angle_deg(R: np.ndarray) -> float:
    return math.degrees(float(np.linalg.norm(rotation_log(R))))


# -- poses over time ------------------------------------------------------------------------------

class PoseTrack:
    """4x4 poses at sorted stamps, interpolated between them (linear position, slerp rotation)
    and extrapolated at most ``max_extrapolation_s`` beyond the ends."""

    def __init__(self, stamps_ns, poses, where: str,
                 max_extrapolation_s: float = MAX_EXTRAPOLATION_S):
        self.stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
        self.poses = np.asarray(poses, dtype=np.float64)
        self.where = where
        self.max_ns = int(max_extrapolation_s * 1e9)
        if len(self.stamps_ns) < 2:
            raise PandasetError(f'{where}: need at least two poses')
        if np.any(np.diff(self.stamps_ns) <= 0):
            k = int(np.argmax(np.diff(self.stamps_ns) <= 0)) + 1
            raise PandasetError(f'{where}: stamps not increasing at frame {k}')

    def at(self, t_ns: int) -> np.ndarray:
        s = self.stamps_ns
        if t_ns < s[0] - self.max_ns or t_ns > s[-1] + self.max_ns:
            raise PandasetError(f'{self.where}: no pose within {self.max_ns / 1e9:.2f} s of '
                                f'{t_ns} ns (poses span {s[0]}..{s[-1]})')
        i = int(np.clip(np.searchsorted(s, t_ns) - 1, 0, len(s) - 2))
        a = (t_ns - s[i]) / float(s[i + 1] - s[i])
        A, B = self.poses[i], self.poses[i + 1]
        R = A[:3, :3] @ rotation_exp(a * rotation_log(A[:3, :3].T @ B[:3, :3]))
        return make_transform(R, (1.0 - a) * A[:3, 3] + a * B[:3, 3])

    def twist(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(world linear velocity, body angular velocity) at sample ``i``: central differences
        (one-sided at the ends)."""
        a, b = max(i - 1, 0), min(i + 1, len(self.stamps_ns) - 1)
        dt = (self.stamps_ns[b] - self.stamps_ns[a]) * 1e-9
        A, B = self.poses[a], self.poses[b]
        return (B[:3, 3] - A[:3, 3]) / dt, rotation_log(A[:3, :3].T @ B[:3, :3]) / dt


# -- reading a sequence ---------------------------------------------------------------------------

@dataclass
class MountEstimate:
    """How constant a camera's mount is over the drive: deviations of the per-frame mounts from
    the averaged one (translation in metres, rotation in degrees)."""

    max_m: float
    rms_m: float
    max_deg: float
    rms_deg: float
    worst_frame: int

    def to_dict(self) -> dict:
        return {'max_cm': round(self.max_m * 100, 3), 'rms_cm': round(self.rms_m * 100, 3),
                'max_deg': round(self.max_deg, 4), 'rms_deg': round(self.rms_deg, 4),
                'worst_frame': self.worst_frame}


@dataclass
class PandasetCamera:
    """One camera: PandaSet name, our name, pinhole, image size, per-frame stamps and poses, and
    the static mount ``cam_to_ego`` (optical frame -> base_link) derived from them."""

    pandaset_name: str
    name: str
    K: np.ndarray
    width: int
    height: int
    stamps_ns: np.ndarray
    world_from_cam: np.ndarray           # [frames, 4, 4]
    cam_to_ego: np.ndarray = field(default_factory=lambda: np.eye(4))
    spread: MountEstimate | None = None
    lidar_spread: MountEstimate | None = None   # the spread over the LiDAR poses alone
    distortion: np.ndarray = field(default_factory=lambda: np.zeros(5))

    @property
    def frame_id(self) -> str:
        return f'{self.name}_optical'

    def image_path(self, root: Path, k: int) -> Path:
        return root / 'camera' / self.pandaset_name / f'{k:02d}.jpg'


@dataclass
class PandasetSequence:
    """A parsed sequence: cameras (config order), the ego track, GPS, cuboid files."""

    root: Path
    cameras: dict            # our name -> PandasetCamera
    lidar_stamps_ns: np.ndarray
    ego: PoseTrack           # world_from_base_link at the LiDAR stamps
    track: PoseTrack         # ... and at each sweep's first camera stamp (the sweep model)
    sweeps: list             # [SweepMotion] per frame
    origin: np.ndarray       # world position of the first ego pose (odom origin)
    cuboid_files: list
    cuboids: list            # each frame's parsed cuboid file (read once)
    forward_cosine: float | None
    ground_height_m: float = 0.0   # LiDAR pose origin above the road (base_link is below it)
    skipped_cameras: list = field(default_factory=list)


def _read_json(path: Path):
    return read_json(path, PandasetError)


def _pose(p, where: str) -> np.ndarray:
    try:
        pos, q = p['position'], p['heading']
        return make_transform(quaternion_to_matrix(q['x'], q['y'], q['z'], q['w']),
                              (float(pos['x']), float(pos['y']), float(pos['z'])))
    except (KeyError, TypeError, ValueError) as e:
        raise PandasetError(f'{where}: invalid pose {p!r} ({e})') from e


def _stamps_ns(path: Path, n: int | None) -> np.ndarray:
    data = _read_json(path)
    try:
        stamps = np.array([int(round(float(t) * 1e9)) for t in data], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise PandasetError(f'{path}: expected a list of UNIX times in seconds ({e})') from e
    if n is not None and len(stamps) != n:
        raise PandasetError(f'{path}: {len(stamps)} stamps, expected one per frame ({n})')
    return stamps


def _poses(path: Path, n: int) -> np.ndarray:
    data = _read_json(path)
    if not isinstance(data, list) or len(data) != n:
        raise PandasetError(f'{path}: expected {n} poses (one per frame), got '
                            f'{len(data) if isinstance(data, list) else type(data).__name__}')
    return np.stack([_pose(p, f'{path} frame {k}') for k, p in enumerate(data)])


def _camera(root: Path, pandaset_name: str, n: int) -> PandasetCamera:
    d = root / 'camera' / pandaset_name
    intr = _read_json(d / 'intrinsics.json')
    try:
        K = np.array([[float(intr['fx']), 0.0, float(intr['cx'])],
                      [0.0, float(intr['fy']), float(intr['cy'])], [0.0, 0.0, 1.0]])
    except (KeyError, TypeError, ValueError) as e:
        raise PandasetError(f'{d / "intrinsics.json"}: need fx, fy, cx, cy ({e})') from e
    first = d / '00.jpg'
    try:
        head = first.read_bytes()
    except OSError as e:
        raise PandasetError(f'{first}: image of frame 0 unreadable ({e})') from e
    size = jpeg_size(head)
    if size is None:
        raise PandasetError(f'{first}: not a JPEG (no start-of-frame marker)')
    name = pandaset_name[:-len('_camera')] if pandaset_name.endswith('_camera') else pandaset_name
    return PandasetCamera(pandaset_name, name, K, size[0], size[1],
                          _stamps_ns(d / 'timestamps.json', n), _poses(d / 'poses.json', n))


def estimate_mount(cam: PandasetCamera, ego: PoseTrack) -> MountEstimate:
    """Per-frame mounts ``inv(ego(t_cam)) @ camera(t_cam)``, their average (``cam_to_ego``) and
    spread, filled in place; returns the spread."""
    mounts = np.stack([np.linalg.inv(ego.at(int(t))) @ T
                       for t, T in zip(cam.stamps_ns, cam.world_from_cam)])
    R = mean_rotation(mounts[:, :3, :3])
    t = mounts[:, :3, 3].mean(axis=0)
    dt = np.linalg.norm(mounts[:, :3, 3] - t, axis=1)
    da = np.array([angle_deg(R.T @ M[:3, :3]) for M in mounts])
    cam.cam_to_ego = make_transform(R, t)
    cam.spread = MountEstimate(float(dt.max()), float(np.sqrt(np.mean(dt ** 2))),
                               float(da.max()), float(np.sqrt(np.mean(da ** 2))),
                               int(np.argmax(dt)))
    return cam.spread


# -- the sweep model ------------------------------------------------------------------------------

@dataclass
class SweepMotion:
    """The ego's motion within one LiDAR sweep: frame ``k``'s pose ``E(t)`` is the LiDAR sweep's
    ego pose ``L`` moved at a constant ``velocity`` (world, m/s) and ``angular`` velocity (body,
    rad/s) for ``t - t_L``. ``residual_m``: how far the cameras' implied ego positions lie from
    that line (the worst camera)."""

    velocity: np.ndarray
    angular: np.ndarray
    residual_m: float = 0.0

    def pose(self, lidar_pose: np.ndarray, dt_s: float) -> np.ndarray:
        return make_transform(lidar_pose[:3, :3] @ rotation_exp(self.angular * dt_s),
                              lidar_pose[:3, 3] + self.velocity * dt_s)


def fit_sweeps(cameras: list, ego: PoseTrack) -> list:
    """[SweepMotion] per frame: least-squares velocities (pinned at the LiDAR pose) of the ego
    poses that the cameras' poses imply through their current mounts. A frame whose cameras all
    fire at the LiDAR stamp takes the LiDAR poses' velocity. The sweeps' mean body-frame offset
    from the LiDAR poses' velocity is removed (it is not observable: see the module docstring)."""
    sweeps, offsets_v, offsets_w = [], [], []
    for k, L in enumerate(ego.poses):
        taus, dps, dws = [], [], []
        for cam in cameras:
            B = cam.world_from_cam[k] @ np.linalg.inv(cam.cam_to_ego)
            taus.append((int(cam.stamps_ns[k]) - int(ego.stamps_ns[k])) * 1e-9)
            dps.append(B[:3, 3] - L[:3, 3])
            dws.append(rotation_log(L[:3, :3].T @ B[:3, :3]))
        tau, dps, dws = np.array(taus), np.array(dps), np.array(dws)
        v_ref, w_ref = ego.twist(k)
        norm = float(tau @ tau)
        if norm < 1e-8:  # cameras within 0.1 ms of the LiDAR: nothing to fit
            sweeps.append(SweepMotion(v_ref, w_ref))
            continue
        v, w = tau @ dps / norm, tau @ dws / norm
        residual = float(np.linalg.norm(dps - np.outer(tau, v), axis=1).max())
        sweeps.append(SweepMotion(v, w, residual))
        offsets_v.append(L[:3, :3].T @ (v - v_ref))
        offsets_w.append(w - w_ref)
    if offsets_v:
        dv, dw = np.mean(offsets_v, axis=0), np.mean(offsets_w, axis=0)
        for L, sweep in zip(ego.poses, sweeps):
            sweep.velocity = sweep.velocity - L[:3, :3] @ dv
            sweep.angular = sweep.angular - dw
    return sweeps


def sweep_track(cameras: list, ego: PoseTrack, sweeps: list) -> PoseTrack:
    """The LiDAR poses plus, per frame, the sweep model's pose at its first camera stamp (and at
    its last, should a camera fire after the LiDAR). A sweep start at or before the previous
    sample is left out (the interpolation from that sample is used there)."""
    stamps, poses = [], []
    for k, (t_lidar, L) in enumerate(zip(ego.stamps_ns, ego.poses)):
        t_lidar = int(t_lidar)
        first = min(int(c.stamps_ns[k]) for c in cameras)
        last = max(int(c.stamps_ns[k]) for c in cameras)
        samples = [t_lidar] + [first] * (first < t_lidar) + [last] * (last > t_lidar)
        for t in sorted(samples):
            if stamps and t <= stamps[-1]:
                continue
            stamps.append(t)
            poses.append(L if t == t_lidar else sweeps[k].pose(L, (t - t_lidar) * 1e-9))
    return PoseTrack(stamps, poses, ego.where)


def fit_sweep_model(cameras: list, ego: PoseTrack) -> tuple[PoseTrack, list]:
    """Mounts and sweep velocities, estimated alternately from the LiDAR-interpolated start
    (each camera's ``lidar_spread`` keeps that start's spread); returns (the odometry track, the
    sweeps), the cameras' mounts and spreads filled in on that track."""
    for cam in cameras:
        cam.lidar_spread = estimate_mount(cam, ego)
    track, sweeps = ego, []
    for _ in range(SWEEP_ITERATIONS):
        sweeps = fit_sweeps(cameras, ego)
        track = sweep_track(cameras, ego, sweeps)
        for cam in cameras:
            estimate_mount(cam, track)
    worst = int(np.argmax([s.residual_m for s in sweeps]))
    if sweeps[worst].residual_m > SWEEP_RESIDUAL_WARN_M:
        log.warning('%s: frame %d\'s camera poses lie %.1f mm from one velocity over the sweep '
                    '(the sweep model expects < %.0f mm): odometry between LiDAR poses may be '
                    'off there', ego.where, worst, sweeps[worst].residual_m * 1e3,
                    SWEEP_RESIDUAL_WARN_M * 1e3)
    return track, sweeps


def check_forward(ego: PoseTrack, where: str) -> float | None:
    """Mean cosine between the body-frame velocity and base_link +x over the frames that move;
    raises when base_link does not point along the direction of travel. None: never moved."""
    dirs = []
    for i in range(len(ego.stamps_ns)):
        v_world, _ = ego.twist(i)
        v = ego.poses[i][:3, :3].T @ v_world
        speed = float(np.linalg.norm(v[:2]))
        if speed >= MOVING_SPEED:
            dirs.append(v[:2] / speed)
    if not dirs:
        log.warning('%s: the car never moves faster than %.1f m/s; base_link is not checked '
                    'against the travel direction', where, MOVING_SPEED)
        return None
    mean = np.mean(dirs, axis=0)
    if mean[0] < MIN_FORWARD_COSINE:
        heading = math.degrees(math.atan2(mean[1], mean[0]))
        raise PandasetError(f'{where}: base_link (the LiDAR pose frame turned +90 deg) does not '
                            f'point along the travel direction: the car moves at {heading:.0f} '
                            f'deg from its x axis over {len(dirs)} frames')
    return float(mean[0])


def ground_height(ego: PoseTrack, cuboid_files: list, cuboids: list) -> float:
    """Height of the LiDAR pose frame's origin above the road: the median bottom of the annotated
    road users within ``GROUND_RANGE_M`` in that frame, over the drive (``cuboids``: each frame's
    parsed file). Their wheels stand on the road, so this is where the road is below the car."""
    bottoms = []
    for k, (path, data) in enumerate(zip(cuboid_files, cuboids)):
        T = np.linalg.inv(ego.poses[k])
        for j, c in enumerate(data if isinstance(data, list) else []):
            try:
                if c.get('sensor_id', -1) not in KEEP_SENSOR_IDS or \
                        object_class(str(c['label'])) == 'scenery':
                    continue
                x, y, z = (float(v) for v in c['position'])
                bottom = T[:3, :3] @ np.array([x, y, z - float(c['dimensions'][2]) / 2]) + T[:3, 3]
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise PandasetError(f'{path} (frame {k}) cuboid {j}: malformed cuboid '
                                    f'({type(e).__name__}: {e})') from e
            if math.hypot(bottom[0], bottom[1]) <= GROUND_RANGE_M:
                bottoms.append(bottom[2])
    if len(bottoms) < 10:
        log.warning('only %d annotated road users within %.0f m: base_link is left at the LiDAR '
                    'pose origin (its height above the road is unknown)', len(bottoms),
                    GROUND_RANGE_M)
        return 0.0
    return -float(np.median(bottoms))


def load_sequence(seq_dir, wanted_cameras=None) -> PandasetSequence:
    """Parse a sequence directory (poses, stamps, intrinsics, file lists) and derive base_link
    and the camera mounts; images are not read (except frame 0's header, for the size)."""
    root = Path(seq_dir)
    if not root.is_dir():
        raise PandasetError(f'{root}: not a directory')
    cuboid_dir = root / 'annotations' / 'cuboids'
    lidar_stamps = _stamps_ns(root / 'lidar' / 'timestamps.json', None)
    n = len(lidar_stamps)
    if n < 2:
        raise PandasetError(f'{root / "lidar" / "timestamps.json"}: need at least two frames')
    world_from_lidar = _poses(root / 'lidar' / 'poses.json', n)
    where = str(root / 'lidar' / 'poses.json')
    turned = PoseTrack(lidar_stamps, world_from_lidar @ BASE_FROM_LIDAR, where)
    forward = check_forward(turned, where)
    cuboid_files = [cuboid_dir / f'{k:02d}.json' for k in range(n)]
    missing = [p for p in cuboid_files if not p.is_file()]
    if missing:
        raise PandasetError(f'{missing[0]}: annotation of frame {cuboid_files.index(missing[0])}'
                            f' missing ({len(missing)} of {n} frames have none)')
    cuboids = [_read_json(p) for p in cuboid_files]
    height = ground_height(turned, cuboid_files, cuboids)
    down = make_transform(np.eye(3), (0.0, 0.0, -height))
    ego = PoseTrack(lidar_stamps, world_from_lidar @ BASE_FROM_LIDAR @ down, where)

    available = [c for c in PANDASET_CAMERAS if (root / 'camera' / c).is_dir()]
    extra = sorted(p.name for p in (root / 'camera').glob('*') if p.is_dir()
                   and p.name not in PANDASET_CAMERAS) if (root / 'camera').is_dir() else []
    all_cams = {}
    for c in available + extra:
        cam = _camera(root, c, n)
        all_cams[cam.name] = cam
    order = list(wanted_cameras) if wanted_cameras is not None else list(all_cams)
    cameras = {name: all_cams[name] for name in order if name in all_cams}
    if not cameras:
        raise PandasetError(f'{root / "camera"}: none of the cameras {order} (it has '
                            f'{sorted(all_cams)})')
    track, sweeps = fit_sweep_model(list(cameras.values()), ego)
    skipped = sorted(c.pandaset_name for n_, c in all_cams.items() if n_ not in cameras)
    return PandasetSequence(root, cameras, lidar_stamps, ego, track, sweeps,
                            ego.poses[0][:3, 3].copy(), cuboid_files, cuboids, forward, height,
                            skipped)


# -- ego motion and objects -----------------------------------------------------------------------

def odometry(seq: PandasetSequence) -> list:
    """EgoPose (odom) at every sample of the sweep model's track (the LiDAR stamps and each
    sweep's first camera stamp), with the twist of the LiDAR frame the sample belongs to (the
    first LiDAR stamp at or after it)."""
    lidar = seq.ego.stamps_ns
    out = []
    for t, T in zip(seq.track.stamps_ns, seq.track.poses):
        i = int(min(np.searchsorted(lidar, t), len(lidar) - 1))
        v_world, omega = seq.ego.twist(i)
        T_odom = T.copy()
        T_odom[:3, 3] -= seq.origin
        out.append(EgoPose(int(t), T_odom, T[:3, :3].T @ v_world, float(omega[2]), omega))
    return out


def object_class(label: str) -> str:
    low = label.strip().lower()
    if low in PEDESTRIAN_LABELS:
        return 'pedestrian'
    return 'scenery' if low in SCENERY_LABELS else 'vehicle'


def cuboid_to_object(c: dict, origin: np.ndarray, ids: dict, where: str) -> dict:
    """One PandaSet cuboid (world) -> a /scenario/objects dict in odom (no velocity yet)."""
    try:
        x, y, z = (float(v) for v in c['position'])
        width, length, height = (float(v) for v in c['dimensions'])
        yaw = float(c['yaw']) + math.pi / 2
        label, uuid = str(c['label']), str(c['uuid'])
    except (KeyError, TypeError, ValueError) as e:
        raise PandasetError(f'{where}: malformed cuboid ({type(e).__name__}: {e})') from e
    if not all(math.isfinite(v) for v in (x, y, z, width, length, height, yaw)):
        raise PandasetError(f'{where}: non-finite cuboid {uuid}')
    ids.setdefault(uuid, len(ids))
    yaw = math.atan2(math.sin(yaw), math.cos(yaw))
    return {'id': ids[uuid], 'uuid': uuid, 'class': object_class(label), 'label': label,
            'x': round(x - origin[0], 4), 'y': round(y - origin[1], 4),
            'z': round(z - origin[2], 4), 'yaw': round(yaw, 6),
            'length': length, 'width': width, 'height': height,
            'motion': c.get('object_motion'), 'stationary': bool(c.get('stationary', False))}


def sequence_objects(seq: PandasetSequence) -> list:
    """[(LiDAR stamp, [objects in odom])] per frame: sensor_id -1/0 boxes, velocities by
    finite differences along each uuid's track."""
    frames, ids = [], {}
    for k, (path, data) in enumerate(zip(seq.cuboid_files, seq.cuboids)):
        if not isinstance(data, list):
            raise PandasetError(f'{path}: expected a list of cuboids (frame {k})')
        objs, seen = [], set()
        for j, c in enumerate(data):
            if not isinstance(c, dict):
                raise PandasetError(f'{path}: cuboid {j} of frame {k} is not an object')
            if c.get('sensor_id', -1) not in KEEP_SENSOR_IDS:
                continue
            o = cuboid_to_object(c, seq.origin, ids, f'{path} (frame {k}) cuboid {j}')
            if o['uuid'] in seen:
                continue
            seen.add(o['uuid'])
            objs.append(o)
        frames.append((int(seq.lidar_stamps_ns[k]), objs))
    add_velocities(frames)
    return frames


# -- writing the bag ------------------------------------------------------------------------------

@dataclass
class PandasetSummary:
    """What ``import_pandaset`` wrote."""

    path: Path
    sequence: str
    cameras: dict            # our name -> PandaSet name
    images: int
    odometry: int
    object_frames: int
    objects: int
    duration_s: float
    forward_cosine: float | None
    ground_height_m: float
    mount_spread: dict       # our name -> MountEstimate.to_dict() (on the sweep model)
    skipped_cameras: list
    lidar_mount_spread: dict = field(default_factory=dict)  # ... between the LiDAR poses alone
    sweep_residual_mm: float = 0.0   # the worst camera's distance from its sweep's line

    def table(self) -> str:
        lines = [f'{"camera":<12} {"max cm":>7} {"rms cm":>7} {"max deg":>8} {"rms deg":>8}'
                 f' {"worst frame":>11}   {"LiDAR poses only: max cm (frame)":>32}']
        for name, s in self.mount_spread.items():
            lid = self.lidar_mount_spread.get(name)
            other = f'{lid["max_cm"]:>7.2f} ({lid["worst_frame"]})' if lid else ''
            lines.append(f'{name:<12} {s["max_cm"]:>7.2f} {s["rms_cm"]:>7.2f} '
                         f'{s["max_deg"]:>8.3f} {s["rms_deg"]:>8.3f} {s["worst_frame"]:>11}   '
                         f'{other:>32}')
        return '\n'.join(lines)


def default_dataset_config() -> Path:
    """``config/pandaset_dataset.yaml`` of the source tree or of the installed package."""
    return config_file('pandaset_dataset.yaml')


def _images(seq: PandasetSequence) -> list:
    items = []
    for cam in seq.cameras.values():
        for k, t in enumerate(cam.stamps_ns):
            path = cam.image_path(seq.root, k)
            where = f'{seq.root} camera {cam.pandaset_name} frame {k}'
            items.append(ImageItem(int(t), cam, path, where, (cam.width, cam.height)))
    return items


def import_pandaset(seq_dir, out_path, dataset_config=None,
                    progress: bool = True) -> PandasetSummary:
    """Convert one PandaSet sequence directory into the rosbag2 (MCAP) directory ``out_path``.

    dataset_config: topics and camera names (default ``config/pandaset_dataset.yaml``); cameras
    it does not list are skipped (and reported). Refuses to overwrite ``out_path``; the bag is
    written to a temporary directory beside it and renamed into place when complete.
    """
    from rsd_drive.data.bag import BagWriter

    out_path = Path(out_path)
    if out_path.exists():
        raise FileExistsError(f'{out_path} exists already, not overwriting')
    cfg_path = Path(dataset_config) if dataset_config else default_dataset_config()
    ds = read_dataset_config(cfg_path, PandasetError, 'PandaSet')
    seq = load_sequence(seq_dir, ds.camera_names)
    missing = [n for n in ds.camera_names if n not in seq.cameras]
    if missing:
        raise PandasetError(f'{seq.root / "camera"}: no camera for {missing} of {cfg_path}')
    objects = sequence_objects(seq)
    with BagWriter(out_path, storage='mcap') as writer:
        d = write_drive(writer, ds, list(seq.cameras.values()), odometry(seq), _images(seq),
                        objects, progress, f'import {seq.root.name}', PandasetError)
    return PandasetSummary(
        path=out_path, sequence=seq.root.name,
        cameras={c.name: c.pandaset_name for c in seq.cameras.values()}, images=d.images,
        odometry=d.odometry, object_frames=d.object_frames,
        objects=sum(len(o) for _, o in objects), duration_s=d.duration_s,
        forward_cosine=seq.forward_cosine, ground_height_m=seq.ground_height_m,
        mount_spread={n: c.spread.to_dict() for n, c in seq.cameras.items()},
        skipped_cameras=seq.skipped_cameras,
        lidar_mount_spread={n: c.lidar_spread.to_dict() for n, c in seq.cameras.items()},
        sweep_residual_mm=1000.0 * max(sw.residual_m for sw in seq.sweeps))


def ensure_pandaset_bag(seq_dir, out_dir, progress: bool = False) -> Path:
    """The bag of a PandaSet sequence under ``out_dir`` (imported on first use, then reused):
    for tests and tools that need the real 6-camera drive in rosbag2 form."""
    out = Path(out_dir) / f'pandaset_{Path(seq_dir).name}'
    if not (out / 'metadata.yaml').is_file():
        import_pandaset(seq_dir, out, progress=progress)
    return out
