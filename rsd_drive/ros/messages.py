"""numpy plan -> rclpy messages (Path, OccupancyGrid, MarkerArray, DiagnosticArray).

Thin wrappers over rsd_drive.data.convert so the planner node only wires topics. Plans are in
``base_link`` at the camera stamp; ``pose`` (x, y, yaw of base_link in the odometry frame at that
stamp) re-expresses them in the odometry frame when the node publishes there.
"""
from __future__ import annotations

import array
import importlib
import math

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
from nav_msgs.msg import OccupancyGrid, Path
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from rsd_drive.data import convert
from rsd_drive.data.convert import ns_to_stamp_fields, risk_to_occupancy, to_frame
from rsd_drive.geometry import GridSpec

LEVELS = {'OK': DiagnosticStatus.OK, 'WARN': DiagnosticStatus.WARN,
          'ERROR': DiagnosticStatus.ERROR, 'STALE': DiagnosticStatus.STALE}


def time_msg(t_ns: int) -> Time:
    sec, nanosec = ns_to_stamp_fields(t_ns)
    return Time(sec=sec, nanosec=nanosec)


def header(t_ns: int, frame_id: str) -> Header:
    return Header(stamp=time_msg(t_ns), frame_id=frame_id)


def yaw_quaternion(yaw: float) -> Quaternion:
    return Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0))


# The classes convert.path_message asks for (several per published Path); others are imported
# on first use and remembered.
_MESSAGE_TYPES = {'builtin_interfaces/msg/Time': Time, 'std_msgs/msg/Header': Header,
                  'geometry_msgs/msg/Point': Point, 'geometry_msgs/msg/Quaternion': Quaternion,
                  'geometry_msgs/msg/Pose': Pose, 'geometry_msgs/msg/PoseStamped': PoseStamped,
                  'nav_msgs/msg/Path': Path}


def message_type(name: str):
    """'pkg/msg/Name' -> the rclpy message class."""
    cls = _MESSAGE_TYPES.get(name)
    if cls is None:
        pkg, kind, short = name.split('/')
        cls = _MESSAGE_TYPES[name] = getattr(importlib.import_module(f'{pkg}.{kind}'), short)
    return cls


def path_message(waypoints: np.ndarray, stamp_ns: int, frame_id: str, pose=None,
                 frequency_hz: float = 4.0) -> Path:
    """Waypoints [T,2] in base_link -> nav_msgs/Path: pose k stamped t0 + (k+1)/f with the
    heading along the path (the one builder, rsd_drive.data.convert.path_message)."""
    return convert.path_message(message_type, waypoints, stamp_ns, frame_id, frequency_hz, pose)


def occupancy_message(risk: np.ndarray, grid: GridSpec, stamp_ns: int, frame_id: str,
                      pose=None) -> OccupancyGrid:
    """Risk [rows, cols] in [0, 1] -> OccupancyGrid 0..100 with the GridSpec's geometry."""
    if tuple(risk.shape) != (grid.rows, grid.cols):
        raise ValueError(f'risk grid {risk.shape} does not match GridSpec {grid.rows}x{grid.cols}')
    msg = OccupancyGrid()
    msg.header = header(stamp_ns, frame_id)
    msg.info.map_load_time = msg.header.stamp
    msg.info.resolution = float(grid.resolution)
    msg.info.width, msg.info.height = int(grid.cols), int(grid.rows)
    (ox, oy), = to_frame(np.array([[grid.origin_x, grid.origin_y]]), pose)
    msg.info.origin.position = Point(x=float(ox), y=float(oy), z=0.0)
    msg.info.origin.orientation = yaw_quaternion(0.0 if pose is None else float(pose[2]))
    msg.data = array.array('b', risk_to_occupancy(risk).tobytes())
    return msg


def _color(r, g, b, a=1.0) -> ColorRGBA:
    return ColorRGBA(r=float(r), g=float(g), b=float(b), a=float(a))


def markers_message(waypoints: np.ndarray, risk: np.ndarray, grid: GridSpec, stamp_ns: int,
                    frame_id: str, pose=None, risk_threshold: float = 0.5,
                    lifetime_s: float = 1.0, max_cells: int = 400) -> MarkerArray:
    """RViz view of a plan: the path as a line, waypoints as spheres, risky cells as cubes.

    Markers expire after ``lifetime_s``, so a node that stops planning (stale inputs) leaves no
    outdated plan on screen.
    """
    hdr = header(stamp_ns, frame_id)
    life = Duration(sec=int(lifetime_s), nanosec=int((lifetime_s % 1) * 1e9))
    pts = to_frame(waypoints, pose)
    points = [Point(x=float(x), y=float(y), z=0.1) for x, y in pts]

    (ex, ey), = to_frame(np.zeros((1, 2)), pose)  # the line starts at the ego
    line = Marker(header=hdr, ns='plan', id=0, type=Marker.LINE_STRIP, action=Marker.ADD,
                  lifetime=life, points=[Point(x=float(ex), y=float(ey), z=0.1)] + points,
                  color=_color(0.1, 0.8, 0.2))
    line.pose.orientation.w = 1.0
    line.scale.x = 0.15
    spheres = Marker(header=hdr, ns='plan', id=1, type=Marker.SPHERE_LIST, action=Marker.ADD,
                     lifetime=life, points=points, color=_color(0.1, 0.5, 1.0))
    spheres.pose.orientation.w = 1.0
    spheres.scale.x = spheres.scale.y = spheres.scale.z = 0.35

    rows, cols = np.nonzero(np.asarray(risk) >= risk_threshold)
    if rows.size > max_cells:  # keep the riskiest cells: RViz slows down on huge lists
        keep = np.argsort(np.asarray(risk)[rows, cols])[-max_cells:]
        rows, cols = rows[keep], cols[keep]
    centers = np.stack([grid.origin_x + (cols + 0.5) * grid.resolution,
                        grid.origin_y + (rows + 0.5) * grid.resolution], axis=-1)
    cells = Marker(header=hdr, ns='risk', id=2, type=Marker.CUBE_LIST, action=Marker.ADD,
                   lifetime=life, color=_color(1.0, 0.2, 0.1, 0.6),
                   points=[Point(x=float(x), y=float(y), z=0.05)
                           for x, y in to_frame(centers.reshape(-1, 2), pose)])
    cells.pose.orientation.w = 1.0
    cells.scale.x = cells.scale.y = float(grid.resolution)
    cells.scale.z = 0.1
    return MarkerArray(markers=[line, spheres, cells])


def diagnostic_status(name: str, level: str, message: str, values: dict,
                      hardware_id: str = '') -> DiagnosticStatus:
    return DiagnosticStatus(level=LEVELS[level], name=name, message=message,
                            hardware_id=hardware_id,
                            values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()])


def diagnostic_array(stamp_ns: int, statuses) -> DiagnosticArray:
    return DiagnosticArray(header=header(stamp_ns, ''), status=list(statuses))
