"""The label bag: what the teacher said about a drive, replayable beside the original in RViz.

Topics (all stamped with the frame's reference-camera stamp, bag time = that stamp):

    /rsd/teacher/risk_grid   nav_msgs/OccupancyGrid   0..100, frame base_link, the model's GridSpec
    /rsd/teacher/objects     visualization_msgs/MarkerArray   footprints + labels, base_link
    /rsd/teacher/answer      std_msgs/String   the raw teacher answer (also for skipped frames)
    /rsd/target/path         nav_msgs/Path     the logged future (planning target), base_link
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rsd_drive.data.bag import BagWriter, build_message, header_msg, stamp_msg
from rsd_drive.data.convert import path_message, risk_to_occupancy
from rsd_drive.geometry import GridSpec

GRID_TOPIC = '/rsd/teacher/risk_grid'
OBJECTS_TOPIC = '/rsd/teacher/objects'
ANSWER_TOPIC = '/rsd/teacher/answer'
PATH_TOPIC = '/rsd/target/path'
FRAME_ID = 'base_link'


@dataclass
class LabelRecord:
    """One frame of a label bag; ``risk``/``future`` are None for frames the teacher couldn't
    label (their raw answer is still written)."""

    stamp_ns: int
    answer: str
    objects: list
    risk: np.ndarray | None = None
    future: np.ndarray | None = None


def _quat(ts, yaw: float):
    return ts.types['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=math.sin(yaw / 2),
                                                    w=math.cos(yaw / 2))


def _pose(ts, x: float, y: float, z: float, yaw: float):
    return ts.types['geometry_msgs/msg/Pose'](
        position=ts.types['geometry_msgs/msg/Point'](x=float(x), y=float(y), z=float(z)),
        orientation=_quat(ts, yaw))


def occupancy_grid_msg(ts, stamp_ns: int, risk: np.ndarray, grid: GridSpec):
    info = build_message(ts, 'nav_msgs/msg/MapMetaData', map_load_time=stamp_msg(ts, stamp_ns),
                         resolution=float(grid.resolution), width=int(grid.cols),
                         height=int(grid.rows),
                         origin=_pose(ts, grid.origin_x, grid.origin_y, 0.0, 0.0))
    return build_message(ts, 'nav_msgs/msg/OccupancyGrid',
                         header=header_msg(ts, stamp_ns, FRAME_ID), info=info,
                         data=risk_to_occupancy(risk).astype(np.int8))


def _rgba(ts, risk: float, alpha: float):
    return ts.types['std_msgs/msg/ColorRGBA'](r=1.0, g=float(1.0 - risk), b=0.0, a=float(alpha))


def marker_array_msg(ts, stamp_ns: int, objects: list):
    """A DELETEALL (clears the previous frame) then a footprint and a text per placed object."""
    Vector3 = ts.types['geometry_msgs/msg/Vector3']
    header = header_msg(ts, stamp_ns, FRAME_ID)
    markers = [build_message(ts, 'visualization_msgs/msg/Marker', header=header, ns='teacher',
                             action=3)]
    for i, obj in enumerate(o for o in objects if o.get('ground')):
        x, y = obj['ground']
        risk = float(obj.get('risk', 0.0))
        width = float(obj.get('width_m') or 1.8)
        length = float(obj.get('length_m') or width)
        markers.append(build_message(
            ts, 'visualization_msgs/msg/Marker', header=header, ns='teacher/footprint', id=i,
            type=1, action=0, pose=_pose(ts, x, y, 0.75, float(obj.get('yaw') or 0.0)),
            scale=Vector3(x=length, y=width, z=1.5), color=_rgba(ts, risk, 0.35 + 0.5 * risk)))
        markers.append(build_message(
            ts, 'visualization_msgs/msg/Marker', header=header, ns='teacher/label', id=i,
            type=9, action=0, pose=_pose(ts, x, y, 2.2, 0.0), scale=Vector3(x=0.0, y=0.0, z=0.6),
            color=_rgba(ts, risk, 1.0), text=f'{obj.get("label", "object")} {risk:.2f}'))
    return ts.types['visualization_msgs/msg/MarkerArray'](markers=markers)


def path_msg(ts, stamp_ns: int, future: np.ndarray, frequency_hz: float):
    """The logged future from the ego (origin first, pose k at t0 + k/f), headings along the
    path: the node's own Path builder (rsd_drive.data.convert.path_message)."""
    return path_message(ts.types.__getitem__, future, stamp_ns, FRAME_ID, frequency_hz,
                        include_origin=True)


def write_label_bag(path, records, grid: GridSpec, frequency_hz: float = 4.0,
                    storage: str = 'mcap'):
    """Write ``records`` (LabelRecord, any order) as a rosbag2 at ``path``, atomically."""
    with BagWriter(path, storage=storage) as writer:
        ts = writer.typestore
        for topic, msgtype in ((GRID_TOPIC, 'nav_msgs/msg/OccupancyGrid'),
                               (OBJECTS_TOPIC, 'visualization_msgs/msg/MarkerArray'),
                               (ANSWER_TOPIC, 'std_msgs/msg/String'),
                               (PATH_TOPIC, 'nav_msgs/msg/Path')):
            writer.add_topic(topic, msgtype)
        for rec in sorted(records, key=lambda r: r.stamp_ns):
            t = int(rec.stamp_ns)
            writer.write(ANSWER_TOPIC, t, ts.types['std_msgs/msg/String'](data=rec.answer))
            if rec.risk is None:
                continue
            writer.write(GRID_TOPIC, t, occupancy_grid_msg(ts, t, rec.risk, grid))
            writer.write(OBJECTS_TOPIC, t, marker_array_msg(ts, t, rec.objects))
            writer.write(PATH_TOPIC, t, path_msg(ts, t, rec.future, frequency_hz))
    return path
