"""Vehicle launch: planner_node with config/planner.yaml and the backend chosen at launch.

    ros2 launch rsd_drive planner.launch.py model_dir:=/models/rsd backend:=tensorrt \
        precision:=fp16
    ros2 launch rsd_drive planner.launch.py build_only:=true   # prepare the TensorRT engine, exit
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = {
    'params_file': (PathJoinSubstitution([FindPackageShare('rsd_drive'), 'config',
                                          'planner.yaml']),
                    'planner_node parameters (every parameter is in this file)'),
    'model_dir': ('', "checkpoint directory; '' keeps model_dir from params_file"),
    'backend': ('tensorrt', 'tensorrt | onnxruntime | torch'),
    'precision': ('fp16', 'fp32 | fp16 (fp16: tensorrt, or torch on CUDA)'),
    'build_only': ('false', 'true: export ONNX / build the TensorRT engine, then exit'),
    'output_frame': ('base_link', 'frame of path, grid and markers: base_link | odom'),
    'use_sim_time': ('false', 'true when replaying a bag that publishes /clock'),
    'log_level': ('info', 'planner_node log level'),
}


def planner_node(context):
    """The node, with launch arguments overriding the params file ('' model_dir: keep it)."""
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {
        'backend': arg('backend'),
        'precision': arg('precision'),
        'build_only': arg('build_only').lower() == 'true',
        'output_frame': arg('output_frame'),
        'use_sim_time': arg('use_sim_time').lower() == 'true',
    }
    if arg('model_dir'):
        overrides['model_dir'] = arg('model_dir')
    return [Node(package='rsd_drive', executable='planner_node', name='planner_node',
                 output='screen', emulate_tty=True,
                 parameters=[arg('params_file'), overrides],
                 arguments=['--ros-args', '--log-level', arg('log_level')])]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, (default, description) in ARGUMENTS.items()]
        + [OpaqueFunction(function=planner_node)])
