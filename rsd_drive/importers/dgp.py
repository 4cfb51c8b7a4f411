"""DGP scenes (TRI-ML Dataset Governance Policy, plain JSON + JPEG) -> rosbag2 (MCAP) recordings.

The bag looks like what a vehicle would record with ``ros2 bag record``; topic names come from
a dataset config (``config/dgp_dataset.yaml``, the schema of ``config/dataset.yaml``)::

    <image_topic>   sensor_msgs/CompressedImage  the scene's original JPEG bytes, untouched
    <info_topic>    sensor_msgs/CameraInfo       K from the calibration, with every image
    /tf_static      tf2_msgs/TFMessage           base_link -> <camera>_optical, once (latched)
    /tf             tf2_msgs/TFMessage           odom -> base_link with every odometry message
    <odom_topic>    nav_msgs/Odometry            odom -> base_link, twist by finite differences
    <objects_topic> std_msgs/String              the sample's LiDAR 3D boxes as JSON in odom, in
                                                 the /scenario/objects schema (+ DGP ``label``)

Frames, worked out from the data (and checked by the tests: 3D boxes projected with the bag's
CameraInfo, /tf_static, /odom and objects bound the scene's 2D boxes with IoU 0.83-0.97):

- DGP's *vehicle* frame is x forward, y left, z up with its origin on the ground (the LiDAR
  returns around the car are at z = 0.0 +- 0.05 m), which is REP-103 ``base_link``.
- DGP camera frames are optical frames (z along the view, x right, y down: a pinhole K applies
  directly), so a camera's calibration extrinsic (sensor -> vehicle) *is* ``cam_to_ego``, the
  transform base_link -> ``<camera>_optical`` of /tf_static.
- A datum's ``pose`` is sensor -> world, so the ego pose is ``pose @ inv(extrinsic)``. The world
  frame is gravity aligned (z up); ``odom`` is the world frame shifted so that the first ego
  position is its origin (axes unchanged, so odom stays z-up as REP-105 wants).
- Odometry is written at the camera stamps (the ego pose from the camera datums, which agree to
  within a centimetre), so every image has odometry at its own stamp; the twist (body frame) comes
  from central finite differences of the poses.

Time: DGP stores ``id.timestamp`` as an RFC 3339 string. The public test scene's stamps read as
the year 2464: its integer clock (also the file names) counts 100 ns units, not microseconds. With
``time_scale='auto'`` an implausible date (after 2100) is scaled by 1/10 when that gives a
plausible one; the ego then moves 1.27 m per 0.1 s sample, 12.7 m/s, as a car on a road does.

The bag is written to a temporary directory beside the target and renamed into place when
complete, so an error (a missing or corrupt file is named in the message) leaves nothing behind.
"""
from __future__ import annotations

import calendar
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsd_drive import config_file
from rsd_drive.geometry import make_transform, quaternion_to_matrix
from rsd_drive.importers.common import (EgoPose, ImageItem, ImporterError, add_velocities,
                                        read_dataset_config as _read_config, read_json,
                                        write_drive, yaw_of as _yaw)

log = logging.getLogger(__name__)

# DGP annotation type ids (dgp.proto.annotations AnnotationType).
BOUNDING_BOX_2D, BOUNDING_BOX_3D = '0', '1'
# DGP ontology names -> the classes of /scenario/objects (the original name stays in 'label').
PEDESTRIAN_LABELS = {'person', 'pedestrian'}
# Camera names of config/dataset.yaml by the yaw (degrees, left positive) of the optical axis.
YAW_SECTORS = (('front', -30.0, 30.0), ('front_left', 30.0, 90.0), ('back_left', 90.0, 150.0),
               ('front_right', -90.0, -30.0), ('back_right', -150.0, -90.0))
PLAUSIBLE_NS = (946_684_800 * 10**9, 4_102_444_800 * 10**9)   # 2000-01-01 .. 2100-01-01
_SCENE_FILE_RE = re.compile(r'^scene(_[0-9a-f]+)?\.json$')  # not scene_dataset_v1.0.json
_STAMP_RE = re.compile(r'^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$')


class DgpError(ImporterError):
    """A scene that cannot be converted; the message names the file (and datum) at fault."""


# -- reading a scene ------------------------------------------------------------------------------

@dataclass
class DgpCamera:
    """One camera of a scene: DGP name, our name, pinhole, image size and mount.

    ``cam_to_ego`` is the 4x4 optical frame -> base_link (DGP's extrinsic, unchanged)."""

    dgp_name: str
    name: str
    K: np.ndarray
    width: int
    height: int
    cam_to_ego: np.ndarray
    distortion: np.ndarray = field(default_factory=lambda: np.zeros(5))

    @property
    def frame_id(self) -> str:
        return f'{self.name}_optical'

    @property
    def yaw_deg(self) -> float:
        z = self.cam_to_ego[:3, 2]
        return math.degrees(math.atan2(z[1], z[0]))


@dataclass
class DgpImage:
    """One image datum: camera (DGP name), stamp, JPEG path, annotation paths, ego pose."""

    camera: str
    stamp_ns: int
    path: Path
    world_from_ego: np.ndarray
    boxes_2d: Path | None = None
    boxes_3d: Path | None = None


@dataclass
class DgpLidar:
    """One point-cloud datum: 3D boxes (in the sensor frame), ego pose, sensor mount."""

    sensor: str
    stamp_ns: int
    world_from_ego: np.ndarray
    boxes_3d: Path | None
    ego_from_sensor: np.ndarray


@dataclass
class DgpSample:
    """One sample (a time step): its kept images and its first point cloud, if any."""

    index: int
    images: list
    lidar: DgpLidar | None


@dataclass
class AnnotatedObject:
    """A 2D box in one image with its 3D box in base_link at that image's time."""

    instance_id: int
    label: str
    box_2d: tuple           # (x0, y0, x1, y1) pixels
    ego_from_box: np.ndarray  # 4x4, box centre and axes (x along length) in base_link
    size: tuple             # (length, width, height) metres

    @property
    def centre(self) -> np.ndarray:
        return self.ego_from_box[:3, 3]

    @property
    def bottom_centre_px(self) -> np.ndarray:
        x0, y0, x1, y1 = self.box_2d
        return np.array([(x0 + x1) / 2.0, y1])


@dataclass
class DgpScene:
    """A parsed scene: calibration, samples in time order, ontology and the stamp scale used."""

    scene_json: Path
    root: Path
    cameras: dict            # DGP name -> DgpCamera (cameras kept for the bag, in config order)
    samples: list
    labels: dict             # class_id -> ontology name
    time_scale: float
    skipped_cameras: list = field(default_factory=list)

    def camera_by_name(self, name: str) -> DgpCamera:
        for cam in self.cameras.values():
            if cam.name == name:
                return cam
        raise KeyError(f'no camera named {name!r} in {self.scene_json}')

    def objects(self, sample_index: int, camera_name: str) -> list:
        """The annotated objects of one image: 2D box + 3D box (base_link at the image's time)."""
        cam = self.camera_by_name(camera_name)
        image = next((im for im in self.samples[sample_index].images
                      if im.camera == cam.dgp_name), None)
        if image is None or image.boxes_2d is None or image.boxes_3d is None:
            return []
        boxes_3d = {a['instance_id']: a for a in _annotations(image.boxes_3d)}
        out = []
        for a in _annotations(image.boxes_2d):
            if a['instance_id'] not in boxes_3d:
                continue
            b, box3 = a['box'], boxes_3d[a['instance_id']]['box']
            out.append(AnnotatedObject(
                instance_id=int(a['instance_id']),
                label=self.labels.get(a.get('class_id'), str(a.get('class_id'))),
                box_2d=(float(b['x']), float(b['y']), float(b['x'] + b['w']),
                        float(b['y'] + b['h'])),
                ego_from_box=cam.cam_to_ego @ _pose(box3['pose'], image.boxes_3d),
                size=(float(box3['length']), float(box3['width']), float(box3['height']))))
        return out


def _read_json(path: Path):
    return read_json(path, DgpError)


def _annotations(path: Path) -> list:
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get('annotations', []), list):
        raise DgpError(f'{path}: expected {{"annotations": [...]}}')
    return data.get('annotations', [])


def _pose(p: dict, where) -> np.ndarray:
    try:
        r, t = p['rotation'], p['translation']
        return make_transform(quaternion_to_matrix(r['qx'], r['qy'], r['qz'], r['qw']),
                              (t['x'], t['y'], t['z']))
    except (KeyError, TypeError, ValueError) as e:
        raise DgpError(f'{where}: invalid pose {p!r} ({e})') from e


def parse_timestamp_ns(text: str) -> int:
    """RFC 3339 ``YYYY-MM-DDTHH:MM:SS[.fffffffff]Z`` -> integer nanoseconds since the epoch."""
    m = _STAMP_RE.match(str(text))
    if not m:
        raise ValueError(f'not an RFC 3339 UTC timestamp: {text!r}')
    y, mo, d, h, mi, s, frac = m.groups()
    secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
    return secs * 10**9 + int((frac or '0').ljust(9, '0'))


def choose_time_scale(stamps_ns, requested='auto') -> float:
    """The factor that turns DGP stamps into real nanoseconds (see the module docstring)."""
    if requested != 'auto':
        return float(requested)
    first = min(stamps_ns)
    if PLAUSIBLE_NS[0] <= first <= PLAUSIBLE_NS[1]:
        return 1.0
    if PLAUSIBLE_NS[0] <= first // 10 <= PLAUSIBLE_NS[1]:
        log.info('DGP stamps read as year > 2100: treating the clock as 100 ns units (x0.1)')
        return 0.1
    raise DgpError(f'implausible DGP timestamps (first {first} ns); pass --time-scale')


def find_scene_json(scene_dir, scene: str | None = None) -> Path:
    """The scene JSON of a scene directory, or of ``scene`` inside a dataset root."""
    scene_dir = Path(scene_dir)
    if scene:
        scene_dir = scene_dir / scene
    if not scene_dir.is_dir():
        raise DgpError(f'{scene_dir}: not a directory')
    found = sorted(p for p in scene_dir.glob('scene*.json') if _SCENE_FILE_RE.match(p.name))
    if len(found) == 1:
        return found[0]
    if not found:
        subs = sorted(p.parent.name for p in scene_dir.glob('*/scene*.json')
                      if _SCENE_FILE_RE.match(p.name))
        hint = f'; it holds scenes {subs}: pass --scene NAME' if subs else ''
        raise DgpError(f'{scene_dir}: no scene_*.json{hint}')
    raise DgpError(f'{scene_dir}: several scene JSON files {[p.name for p in found]}')


def camera_names_by_yaw(cameras: dict) -> dict:
    """DGP camera name -> ``config/dataset.yaml`` camera name from the optical axis' yaw."""
    names = {}
    for dgp_name, cam in cameras.items():
        yaw = cam.yaw_deg
        names[dgp_name] = next((n for n, lo, hi in YAW_SECTORS if lo <= yaw <= hi), 'back')
    taken = {}
    for dgp_name, name in names.items():
        if name in taken:
            raise DgpError(f'cameras {taken[name]} and {dgp_name} both face {name!r} '
                           f'(yaw {cameras[taken[name]].yaw_deg:.0f} and '
                           f'{cameras[dgp_name].yaw_deg:.0f} deg); pass --camera-map')
        taken[name] = dgp_name
    return names


def _parse_datum(d: dict, root: Path, cameras: dict, lidar_ext: dict, where: str):
    """A DgpImage (cameras kept), a DgpLidar, or None for anything else."""
    name, stamp, datum = d['id']['name'], parse_timestamp_ns(d['id']['timestamp']), d['datum']
    if 'image' in datum:
        if name not in cameras:
            return None
        im, cam = datum['image'], cameras[name]
        size = (int(im['width']), int(im['height']))
        if cam.width and (cam.width, cam.height) != size:
            raise DgpError(f'{where}: image size {size} differs from earlier images of {name}')
        cam.width, cam.height = size
        ann = im.get('annotations', {})
        return DgpImage(
            camera=name, stamp_ns=stamp, path=root / im['filename'],
            world_from_ego=_pose(im['pose'], where) @ np.linalg.inv(cam.cam_to_ego),
            boxes_2d=root / ann[BOUNDING_BOX_2D] if BOUNDING_BOX_2D in ann else None,
            boxes_3d=root / ann[BOUNDING_BOX_3D] if BOUNDING_BOX_3D in ann else None)
    if 'point_cloud' in datum:
        pc, ext = datum['point_cloud'], lidar_ext.get(name, np.eye(4))
        ann = pc.get('annotations', {})
        return DgpLidar(name, stamp, _pose(pc['pose'], where) @ np.linalg.inv(ext),
                        root / ann[BOUNDING_BOX_3D] if BOUNDING_BOX_3D in ann else None, ext)
    return None


def _read_calibration(calib_path: Path) -> tuple[dict, dict]:
    """The scene's calibration -> ({DGP name: DgpCamera} of its pinhole cameras, {DGP name:
    sensor -> vehicle 4x4} of the others, e.g. the LiDARs)."""
    calib = _read_json(calib_path)
    all_cams = {}
    try:
        for name, ext, intr in zip(calib['names'], calib['extrinsics'], calib['intrinsics']):
            if float(intr.get('fx', 0.0)) <= 0.0:
                continue  # LiDAR and other non-pinhole sensors
            K = np.array([[intr['fx'], intr.get('skew', 0.0), intr['cx']],
                          [0.0, intr['fy'], intr['cy']], [0.0, 0.0, 1.0]], dtype=np.float64)
            dist = np.array([float(intr.get(k, 0.0)) for k in ('k1', 'k2', 'p1', 'p2', 'k3')])
            all_cams[name] = DgpCamera(name, name, K, 0, 0, _pose(ext, f'{calib_path} {name}'),
                                       dist)
        lidar_ext = {n: _pose(e, f'{calib_path} {n}')
                     for n, e, i in zip(calib['names'], calib['extrinsics'], calib['intrinsics'])
                     if float(i.get('fx', 0.0)) <= 0.0}
    except (KeyError, TypeError) as e:
        raise DgpError(f'{calib_path}: unexpected calibration layout ({e})') from e
    return all_cams, lidar_ext


def _select_cameras(all_cams: dict, camera_names, wanted_cameras, calib_path) -> tuple:
    """Name the cameras (``camera_names`` or by yaw) and keep the wanted ones in order ->
    ({DGP name: DgpCamera} kept, sorted DGP names skipped)."""
    names = dict(camera_names) if camera_names else camera_names_by_yaw(all_cams)
    unknown = set(names) - set(all_cams)
    if unknown:
        raise DgpError(f'--camera-map names cameras {sorted(unknown)} that {calib_path} lacks '
                       f'(it has {sorted(all_cams)})')
    for dgp_name, cam in all_cams.items():
        cam.name = names.get(dgp_name, dgp_name)
    order = list(wanted_cameras) if wanted_cameras is not None else \
        [all_cams[n].name for n in sorted(all_cams)]
    by_name = {cam.name: cam for cam in all_cams.values()}
    cameras = {by_name[n].dgp_name: by_name[n] for n in order if n in by_name}
    skipped = sorted(c.dgp_name for c in all_cams.values() if c.dgp_name not in cameras)
    return cameras, skipped


def _read_samples(scene_json: Path, samples_doc, data: dict, cameras: dict,
                  lidar_ext: dict) -> tuple[list, list]:
    """-> ([(sample index, [DgpImage], DgpLidar | None)], every datum's raw stamp), stamps in
    the scene's own clock units (scaled by the caller)."""
    root = scene_json.parent
    raw_samples, raw_stamps = [], []
    for s_index, sample in enumerate(samples_doc):
        images, lidar = [], None
        for key in sample.get('datum_keys', []):
            d = data.get(key)
            if d is None:
                raise DgpError(f'{scene_json}: sample {s_index} refers to missing datum {key}')
            where = f'{scene_json} datum {key}'
            try:
                item = _parse_datum(d, root, cameras, lidar_ext, where)
            except (KeyError, TypeError, ValueError) as e:
                if isinstance(e, DgpError):
                    raise
                raise DgpError(f'{where}: malformed datum ({type(e).__name__}: {e})') from e
            if item is None:
                continue
            raw_stamps.append(item.stamp_ns)
            if isinstance(item, DgpImage):
                images.append(item)
            elif lidar is None:
                lidar = item
        raw_samples.append((s_index, images, lidar))
    if not any(images for _, images, _ in raw_samples):
        raise DgpError(f'{scene_json}: no images of the kept cameras {list(cameras)}')
    return raw_samples, raw_stamps


def _scaled_samples(raw_samples, scale: float) -> list:
    """Stamps in ns (``scale``: see choose_time_scale), samples in stamp order."""
    samples = []
    for s_index, images, lidar in raw_samples:
        for im in images:
            im.stamp_ns = int(round(im.stamp_ns * scale))
        if lidar is not None:
            lidar.stamp_ns = int(round(lidar.stamp_ns * scale))
        samples.append(DgpSample(s_index, images, lidar))
    samples.sort(key=lambda s: min(im.stamp_ns for im in s.images) if s.images else 0)
    return samples


def _read_labels(doc: dict, root: Path) -> dict:
    """Class id -> name from the scene's ontologies."""
    labels = {}
    for key in set((doc.get('ontologies') or {}).values()):
        onto = _read_json(root / 'ontology' / f'{key}.json')
        labels.update({int(i['id']): str(i['name']) for i in onto.get('items', [])})
    return labels


def load_scene(scene_dir, scene: str | None = None, camera_names: dict | None = None,
               wanted_cameras=None, time_scale='auto') -> DgpScene:
    """Parse a DGP scene (calibration, samples, annotation paths) without reading images.

    camera_names: DGP name -> our name (default: by yaw, see ``camera_names_by_yaw``).
    wanted_cameras: our camera names to keep, in this order (default: all of the scene's).
    """
    scene_json = find_scene_json(scene_dir, scene)
    root = scene_json.parent
    doc = _read_json(scene_json)
    try:
        data = {d['key']: d for d in doc['data']}
        samples_doc = doc['samples']
    except (KeyError, TypeError) as e:
        raise DgpError(f'{scene_json}: missing "data"/"samples" ({e})') from e
    if not samples_doc:
        raise DgpError(f'{scene_json}: scene has no samples')
    calib_keys = {s.get('calibration_key') for s in samples_doc}
    if len(calib_keys) != 1:
        raise DgpError(f'{scene_json}: samples use {len(calib_keys)} calibrations; one expected')
    calib_path = root / 'calibration' / f'{calib_keys.pop()}.json'
    all_cams, lidar_ext = _read_calibration(calib_path)
    cameras, skipped = _select_cameras(all_cams, camera_names, wanted_cameras, calib_path)
    raw_samples, raw_stamps = _read_samples(scene_json, samples_doc, data, cameras, lidar_ext)
    scale = choose_time_scale(raw_stamps, time_scale)
    samples = _scaled_samples(raw_samples, scale)
    return DgpScene(scene_json, root, cameras, samples, _read_labels(doc, root), scale, skipped)


# -- ego motion and objects -----------------------------------------------------------------------

def ego_trajectory(scene: DgpScene) -> tuple[list, np.ndarray]:
    """Ego poses at the image stamps (mean over the cameras of a stamp) in odom, and the 3-vector
    that was subtracted from world positions to make odom (the first ego position)."""
    by_stamp: dict = {}
    for sample in scene.samples:
        for im in sample.images:
            by_stamp.setdefault(im.stamp_ns, []).append(im.world_from_ego)
    stamps = sorted(by_stamp)
    poses = []
    for t in stamps:
        group = by_stamp[t]
        T = group[0].copy()
        T[:3, 3] = np.mean([g[:3, 3] for g in group], axis=0)
        poses.append(T)
    origin = poses[0][:3, 3].copy()
    for T in poses:
        T[:3, 3] -= origin
    t_s = np.array(stamps, dtype=np.float64) * 1e-9
    pos = np.array([T[:3, 3] for T in poses])
    yaw = np.unwrap([_yaw(T) for T in poses])
    out = []
    for i, (t, T) in enumerate(zip(stamps, poses)):
        if len(poses) == 1:
            v_world, rate = np.zeros(3), 0.0
        else:
            a, b = max(i - 1, 0), min(i + 1, len(poses) - 1)
            dt = t_s[b] - t_s[a]
            v_world = (pos[b] - pos[a]) / dt
            rate = float((yaw[b] - yaw[a]) / dt)
        out.append(EgoPose(t, T, T[:3, :3].T @ v_world, rate))
    return out, origin


def scene_objects_odom(scene: DgpScene, world_origin: np.ndarray) -> list:
    """Per annotated sample: (stamp_ns, [object dicts in odom, the /scenario/objects schema plus
    ``label``, the DGP ontology name]); boxes from the sample's LiDAR annotation."""
    frames = []
    for sample in scene.samples:
        lidar = sample.lidar
        if lidar is None or lidar.boxes_3d is None:
            continue
        objs = []
        for a in _annotations(lidar.boxes_3d):
            b = a['box']
            world_from_box = (lidar.world_from_ego @ lidar.ego_from_sensor
                              @ _pose(b['pose'], lidar.boxes_3d))
            c = world_from_box[:3, 3] - world_origin
            label = scene.labels.get(a.get('class_id'), str(a.get('class_id')))
            objs.append({
                'id': int(a['instance_id']),
                'class': 'pedestrian' if label.lower() in PEDESTRIAN_LABELS else 'vehicle',
                'label': label,
                'x': round(float(c[0]), 3), 'y': round(float(c[1]), 3),
                'z': round(float(c[2]), 3), 'yaw': round(_yaw(world_from_box[:3, :3]), 4),
                'length': float(b['length']), 'width': float(b['width']),
                'height': float(b['height'])})
        # DGP's per-camera 3D boxes are these world boxes seen from the camera pose, without
        # motion compensation: a sample's boxes hold at its image time, so stamp them there.
        stamp = min((im.stamp_ns for im in sample.images), default=lidar.stamp_ns)
        frames.append((stamp, objs))
    add_velocities(frames)
    return frames


# -- writing the bag ------------------------------------------------------------------------------

@dataclass
class ImportSummary:
    """What ``import_dgp`` wrote."""

    path: Path
    scene: str
    cameras: dict            # our name -> DGP name
    images: int
    odometry: int
    object_frames: int
    duration_s: float
    time_scale: float
    skipped_cameras: list


def default_dataset_config() -> Path:
    """``config/dgp_dataset.yaml`` of the source tree or of the installed package."""
    return config_file('dgp_dataset.yaml')


def read_dataset_config(path):
    """The dataset config (``rsd_drive.data.bag.DatasetConfig``), checked for what DGP needs."""
    return _read_config(path, DgpError, 'DGP')


def _write_bag(writer, scene: DgpScene, ds, progress: bool) -> ImportSummary:
    cams = list(scene.cameras.values())
    ego, origin = ego_trajectory(scene)
    objects = scene_objects_odom(scene, origin)
    images = [ImageItem(im.stamp_ns, scene.cameras[im.camera], im.path,
                        f'{scene.scene_json} camera {im.camera} at {im.stamp_ns} ns')
              for s in scene.samples for im in s.images]
    d = write_drive(writer, ds, cams, ego, images, objects, progress,
                    f'import {scene.root.name}', DgpError)
    return ImportSummary(path=writer.path, scene=scene.root.name,
                         cameras={c.name: c.dgp_name for c in cams}, images=d.images,
                         odometry=d.odometry, object_frames=d.object_frames,
                         duration_s=d.duration_s, time_scale=scene.time_scale,
                         skipped_cameras=scene.skipped_cameras)


def import_dgp(scene_dir, out_path, scene: str | None = None, dataset_config=None,
               camera_map: dict | None = None, time_scale='auto',
               progress: bool = True) -> ImportSummary:
    """Convert one DGP scene into the rosbag2 (MCAP) directory ``out_path``.

    scene_dir: a scene directory (holding ``scene_*.json``), or a dataset root with ``scene``.
    dataset_config: topics and camera names (default ``config/dgp_dataset.yaml``); the scene's
    cameras are named by their yaw unless ``camera_map`` (DGP name -> our name) says otherwise;
    cameras the config does not list are skipped (and reported).
    Refuses to overwrite ``out_path``; everything is written to a temporary directory beside it
    and renamed into place when complete (``rsd_drive.data.bag.BagWriter``).
    """
    from rsd_drive.data.bag import BagWriter

    out_path = Path(out_path)
    if out_path.exists():
        raise FileExistsError(f'{out_path} exists already, not overwriting')
    cfg_path = Path(dataset_config) if dataset_config else default_dataset_config()
    ds = read_dataset_config(cfg_path)
    parsed = load_scene(scene_dir, scene, camera_names=camera_map,
                        wanted_cameras=ds.camera_names, time_scale=time_scale)
    missing = [n for n in ds.camera_names
               if n not in {cam.name for cam in parsed.cameras.values()}]
    if missing:
        log.warning('%s: no camera for %s of %s', parsed.scene_json, missing, cfg_path)
    with BagWriter(out_path, storage='mcap') as writer:
        summary = _write_bag(writer, parsed, ds, progress)
    return summary


def ensure_dgp_bag(scene_dir, out_dir, scene: str = 'scene_02', progress: bool = False) -> Path:
    """The bag of a DGP scene under ``out_dir`` (imported on first use, then reused): for tests
    and demos that need real camera data in rosbag2 form (6 cameras at 1936x1216 in scene_02)."""
    out = Path(out_dir) / f'dgp_{scene}'
    if not (out / 'metadata.yaml').is_file():
        import_dgp(scene_dir, out, scene=scene, progress=progress)
    return out
