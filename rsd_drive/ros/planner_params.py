"""planner_node's parameter schema: every parameter with its type and description (all set by
config/planner.yaml, no code defaults), :class:`Settings` (the values, read and checked once at
start-up by :func:`read_settings`) and :func:`write_parameters` (a parameters file derived from
config/planner.yaml, for the tools and tests that start the node)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from rsd_drive import config_file

EXTRINSICS_SOURCES = ('file', 'tf_static')
T = Parameter.Type


class ConfigError(ValueError):
    """A parameter is missing or inconsistent; the message names it."""


# name: (type, description); every one must be set by the parameters file (no code defaults).
PARAMETERS = {
    'camera_names': (T.STRING_ARRAY, 'cameras in the order the model sees them; each has '
                                     'cameras.<name>.* parameters'),
    'reference_camera': (T.STRING, 'camera whose stamps anchor synchronisation and the plan'),
    'extrinsics_source': (T.STRING, 'file (cameras.<name>.extrinsics) or tf_static '
                                    '(needs tf2_msgs)'),
    'tf_static_topic': (T.STRING, 'tf2_msgs/TFMessage topic with base_frame -> camera frames'),
    'odom_topic': (T.STRING, 'nav_msgs/Odometry of base_frame in odom_frame'),
    'intent_topic': (T.STRING, "std_msgs/String with unknown|straight|left|right; '' = none"),
    'default_intent': (T.STRING, 'intent used until one arrives on intent_topic'),
    'route_topic': (T.STRING, "nav_msgs/Path: the navigation route in odom_frame (transient "
                              "local); '' = none. Without a valid route the model plans from "
                              'the intent alone (diagnostics say so)'),
    'route_max_age_s': (T.DOUBLE, 'a route whose header stamp is older than this at a frame '
                                  '(ROS time) is stale: intent only; 0 = a route never ages'),
    'model_dir': (T.STRING, 'deploy artifact (model.onnx + deploy.json from rsd-drive export), '
                            'read-only; a training checkpoint works for backend torch (and, with '
                            'torch installed, is exported to <checkpoint>/deploy first)'),
    'backend': (T.STRING, 'tensorrt | onnxruntime | torch'),
    'precision': (T.STRING, 'fp32 | fp16 (fp16: tensorrt, or torch on CUDA)'),
    'device': (T.STRING, 'auto | cpu | cuda'),
    'engine_cache_dir': (T.STRING, "writable TensorRT engine cache; '' = $RSD_DRIVE_CACHE/engines "
                                   'or ~/.cache/rsd_drive/engines'),
    'autostart': (T.BOOL, 'configure and activate at start (no lifecycle manager needed); '
                          'false: wait in unconfigured for ~/change_state'),
    'build_only': (T.BOOL, 'prepare the backend (export ONNX, build the engine) and exit'),
    'threads': (T.INTEGER, 'ONNX Runtime intra-op threads; 0 = runtime default'),
    'sync_slop_s': (T.DOUBLE, 'other cameras must be within this of the reference stamp'),
    'sync_queue_size': (T.INTEGER, 'messages kept per camera while waiting for a match'),
    'max_input_age_s': (T.DOUBLE, 'no plan when a camera or the odometry is older than this '
                                  '(ROS time); diagnostics ERROR'),
    'odom_max_gap_s': (T.DOUBLE, 'odometry gaps longer than this are not interpolated'),
    'pad_short_history': (T.BOOL, 'plan with less than the model\'s past window of odometry by '
                                  'extrapolating the earliest state back at constant velocity '
                                  '(start-up, short recordings); false: wait for full history'),
    'odom_wait_s': (T.DOUBLE, 'how long the worker waits for odometry to reach a frame stamp'),
    'camera_info_wait_s': (T.DOUBLE, "how long the worker waits for a camera's first CameraInfo "
                                     'when a set completes before it (start-up)'),
    'base_frame': (T.STRING, 'vehicle frame (REP-105 base_link)'),
    'odom_frame': (T.STRING, 'odometry frame (REP-105 odom)'),
    'output_frame': (T.STRING, 'frame of path/grid/markers: base_frame or odom_frame'),
    'diagnostics_period_s': (T.DOUBLE, 'period of /diagnostics (steady clock)'),
    'latency_window': (T.INTEGER, 'frames in the rolling latency percentiles'),
    'marker_risk_threshold': (T.DOUBLE, 'risk cells at or above this are drawn as markers'),
}
CAMERA_PARAMETERS = {
    'image_topic': (T.STRING, 'Image or CompressedImage topic of this camera'),
    'compressed': (T.BOOL, 'true: sensor_msgs/CompressedImage (JPEG/PNG); false: Image'),
    'info_topic': (T.STRING, "CameraInfo topic; '' = use intrinsics and image_size"),
}
INTRINSICS_PARAMETERS = {  # declared only for cameras without info_topic
    'intrinsics': (T.DOUBLE_ARRAY, '[fx, fy, cx, cy] in pixels, for images of image_size'),
    'image_size': (T.INTEGER_ARRAY, '[width, height] the intrinsics refer to'),
}
EXTRINSICS_PARAMETERS = {  # declared only with extrinsics_source 'file'
    'extrinsics': (T.DOUBLE_ARRAY, 'camera mount in base_frame: [x, y, z (m), yaw, pitch(, roll) '
                                   '(rad)], yaw left-positive, pitch down-positive, roll about '
                                   'the viewing axis (positive lifts the image\'s left side); or '
                                   'the optical frame pose [x, y, z, qx, qy, qz, qw] (calibrated '
                                   'rigs)'),
}


@dataclass
class Settings:
    """Every parameter, read once at start-up."""

    camera_names: list
    reference_camera: str
    extrinsics_source: str
    tf_static_topic: str
    odom_topic: str
    intent_topic: str
    default_intent: str
    route_topic: str
    route_max_age_s: float
    model_dir: str
    backend: str
    precision: str
    device: str
    engine_cache_dir: str
    autostart: bool
    build_only: bool
    threads: int
    sync_slop_s: float
    sync_queue_size: int
    max_input_age_s: float
    odom_max_gap_s: float
    odom_wait_s: float
    camera_info_wait_s: float
    pad_short_history: bool
    base_frame: str
    odom_frame: str
    output_frame: str
    diagnostics_period_s: float
    latency_window: int
    marker_risk_threshold: float
    cameras: dict  # name -> {image_topic, compressed, info_topic, [intrinsics, image_size],
    #                          [extrinsics]}


def declare_parameter(node, name: str, spec) -> object:
    """Declare ``name`` on ``node`` with its (type, description) and return its value;
    ConfigError when the parameters file does not set it."""
    ptype, description = spec
    node.declare_parameter(name, ptype, ParameterDescriptor(description=description))
    try:
        return node.get_parameter(name).value
    except ParameterUninitializedException as e:
        raise ConfigError(f'parameter {name!r} is not set; every parameter of planner_node '
                          f'is in config/planner.yaml (--params-file)') from e


def _check_top_level(values: dict) -> None:
    names = values['camera_names']
    if not names or len(set(names)) != len(names):
        raise ConfigError(f'camera_names must be unique and non-empty, got {names}')
    if values['reference_camera'] not in names:
        raise ConfigError(f"reference_camera {values['reference_camera']!r} not in "
                          f'camera_names {names}')
    if values['extrinsics_source'] not in EXTRINSICS_SOURCES:
        raise ConfigError(f'extrinsics_source must be one of {EXTRINSICS_SOURCES}')
    if values['output_frame'] not in (values['base_frame'], values['odom_frame']):
        raise ConfigError(f"output_frame {values['output_frame']!r} must be base_frame "
                          f"{values['base_frame']!r} or odom_frame {values['odom_frame']!r}")
    if values['max_input_age_s'] <= 0 or values['sync_slop_s'] <= 0:
        raise ConfigError('max_input_age_s and sync_slop_s must be positive')


def _read_camera(declare, cam: str, extrinsics_source: str) -> dict:
    prefix = f'cameras.{cam}.'
    cfg = {k: declare(prefix + k, spec) for k, spec in CAMERA_PARAMETERS.items()}
    if not cfg['info_topic']:
        cfg.update({k: list(declare(prefix + k, spec))
                    for k, spec in INTRINSICS_PARAMETERS.items()})
        if len(cfg['intrinsics']) != 4 or len(cfg['image_size']) != 2:
            raise ConfigError(f'{prefix}intrinsics needs [fx, fy, cx, cy] and '
                              f'{prefix}image_size [width, height]')
    if extrinsics_source == 'file':
        cfg['extrinsics'] = list(declare(prefix + 'extrinsics',
                                         EXTRINSICS_PARAMETERS['extrinsics']))
        if len(cfg['extrinsics']) not in (5, 6, 7):
            raise ConfigError(f'{prefix}extrinsics needs [x, y, z, yaw, pitch], '
                              f'[x, y, z, yaw, pitch, roll] or '
                              f'[x, y, z, qx, qy, qz, qw]')
    return cfg


def read_settings(declare) -> Settings:
    """Every parameter through ``declare(name, (type, description)) -> value`` (e.g.
    ``functools.partial(declare_parameter, node)``), checked; ConfigError names what is wrong."""
    values = {name: declare(name, spec) for name, spec in PARAMETERS.items()}
    values['camera_names'] = list(values['camera_names'])
    _check_top_level(values)
    cameras = {cam: _read_camera(declare, cam, values['extrinsics_source'])
               for cam in values['camera_names']}
    return Settings(cameras=cameras, **values)


def default_parameters_path() -> Path | None:
    """config/planner.yaml of a source checkout, or of the installed package's share dir."""
    path = config_file('planner.yaml')
    return path if path.is_file() else None


def write_parameters(out_path, cameras: dict | None = None, base=None, **overrides) -> Path:
    """A parameters file derived from config/planner.yaml, for tools that start the node
    (benchmarks, tests): ``cameras`` (name -> cameras.<name>.* values, in model order) replaces
    the camera list and the reference camera becomes the first one; ``overrides`` set top-level
    parameters. The result still holds every parameter, so the node's own checks apply."""
    import yaml

    base = Path(base) if base else default_parameters_path()
    if base is None:
        raise FileNotFoundError('config/planner.yaml not found (source checkout or share dir)')
    doc = yaml.safe_load(base.read_text())
    params = doc['/**']['ros__parameters']
    if cameras is not None:
        params['camera_names'] = list(cameras)
        params['reference_camera'] = next(iter(cameras))
        params['cameras'] = {name: dict(cfg) for name, cfg in cameras.items()}
    unknown = set(overrides) - set(PARAMETERS)
    if unknown:
        raise ValueError(f'unknown planner_node parameters: {sorted(unknown)}')
    params.update(overrides)
    out_path = Path(out_path)
    out_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out_path
