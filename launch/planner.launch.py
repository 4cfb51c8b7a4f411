"""Vehicle launch: planner_node (a lifecycle node) with config/planner.yaml.

    ros2 launch rsd_drive planner.launch.py                                # the params file as is
    ros2 launch rsd_drive planner.launch.py model_dir:=/models/rsd_deploy backend:=tensorrt \
        precision:=fp16                                                    # NVIDIA (Orin)
    ros2 launch rsd_drive planner.launch.py build_only:=true   # prepare the TensorRT engine, exit
    ros2 launch rsd_drive planner.launch.py autostart:=false   # a lifecycle manager drives it

The params file is the source of truth: a launch argument overrides a parameter only when it is
given (every parameter argument defaults to '' = keep the file's value), so the default launch
runs whatever the file says (ONNX Runtime on the CPU as shipped).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

# planner_node parameters a launch argument may override: name -> type.
PARAMETER_ARGUMENTS = {
    'model_dir': str, 'backend': str, 'precision': str, 'device': str,
    'engine_cache_dir': str, 'build_only': bool, 'autostart': bool, 'output_frame': str,
    'use_sim_time': bool,
}
ARGUMENTS = {
    'params_file': (PathJoinSubstitution([FindPackageShare('rsd_drive'), 'config',
                                          'planner.yaml']),
                    'planner_node parameters (every parameter is in this file)'),
    'model_dir': ('', "deploy artifact (rsd-drive export CKPT --out DIR); '' = params file"),
    'backend': ('', "tensorrt | onnxruntime | torch; '' = params file"),
    'precision': ('', "fp32 | fp16 (fp16: tensorrt, or torch on CUDA); '' = params file"),
    'device': ('', "auto | cpu | cuda; '' = params file"),
    'engine_cache_dir': ('', "writable TensorRT engine cache; '' = params file"),
    'build_only': ('', "true: build the TensorRT engine (or check the artifact), then exit"),
    'autostart': ('', "false: stay unconfigured until a lifecycle manager configures it"),
    'output_frame': ('', "frame of path, grid and markers: base_link | odom; '' = params file"),
    'use_sim_time': ('', "true when replaying a bag that publishes /clock; '' = params file"),
    'log_level': ('info', 'planner_node log level'),
}


def overrides(values: dict) -> dict:
    """Parameters for the launch arguments that were given (non-empty), typed."""
    out = {}
    for name, kind in PARAMETER_ARGUMENTS.items():
        text = values.get(name, '')
        if text == '':
            continue
        if kind is bool:
            if text.lower() not in ('true', 'false'):
                raise ValueError(f'launch argument {name}:={text}: expected true or false')
            out[name] = text.lower() == 'true'
        else:
            out[name] = text
    return out


def planner_node(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    given = overrides({name: arg(name) for name in PARAMETER_ARGUMENTS})
    parameters = [arg('params_file')] + ([given] if given else [])
    return [LifecycleNode(package='rsd_drive', executable='planner_node', name='planner_node',
                          namespace='', output='screen', emulate_tty=True, parameters=parameters,
                          arguments=['--ros-args', '--log-level', arg('log_level')])]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, (default, description) in ARGUMENTS.items()]
        + [OpaqueFunction(function=planner_node)])
