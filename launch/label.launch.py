"""Offline labeling as a node: teacher_labeler with config/teacher.yaml.

    ros2 launch rsd_drive label.launch.py bags:="['drives/drive_0000']" out_dir:=labels

The labeler reads bags itself (no topics in); it publishes its progress and exits when done.
``rsd-drive label`` is the same job from the command line.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = {
    'config_file': (PathJoinSubstitution([FindPackageShare('rsd_drive'), 'config',
                                          'teacher.yaml']),
                    'teacher configuration (backend, models, projection, job)'),
    'bags': ('', 'bags to label as a YAML list, e.g. "[a, b]"; empty: node.bags of the '
                 'config file'),
    'out_dir': ('', "output directory; '' = node.out_dir of the config file"),
    'log_level': ('info', 'teacher_labeler log level'),
}


def labeler_node(context):
    import yaml

    def arg(name):
        return LaunchConfiguration(name).perform(context)

    parameters = {'config_file': arg('config_file')}
    if arg('bags'):
        parameters['bags'] = [str(b) for b in yaml.safe_load(arg('bags'))]
    if arg('out_dir'):
        parameters['out_dir'] = arg('out_dir')
    return [Node(package='rsd_drive', executable='teacher_labeler', name='teacher_labeler',
                 output='screen', emulate_tty=True, parameters=[parameters],
                 arguments=['--ros-args', '--log-level', arg('log_level')])]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, (default, description) in ARGUMENTS.items()]
        + [OpaqueFunction(function=labeler_node)])
