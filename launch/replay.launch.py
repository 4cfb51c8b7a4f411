"""Replay a recorded drive into the planner on bag time, with RViz.

    ros2 launch rsd_drive replay.launch.py bag:=drives/drive_0000 model_dir:=work_dirs/deploy

``ros2 bag play --clock`` publishes /clock; every node runs with use_sim_time so input ages,
latencies and output stamps are in bag time. The bag starts playing when planner_node reports the
lifecycle state ``active`` (a launch_ros state-transition event), not after a fixed delay: a
TensorRT engine build on an Orin can take minutes. Backend, precision and the rest come from the
params file unless given here. Without a ROS install, ``rsd-drive replay BAG`` does the playing
(and can record the outputs) through rclpy.
"""
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription,
                            LogInfo, RegisterEventHandler)
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, SetParameter
from launch_ros.event_handlers import OnStateTransition
from launch_ros.substitutions import FindPackageShare

SHARE = FindPackageShare('rsd_drive')
ARGUMENTS = {
    'bag': ('', 'rosbag2 directory to play (required)'),
    'rate': ('1.0', 'playback speed factor'),
    'params_file': (PathJoinSubstitution([SHARE, 'config', 'planner.yaml']),
                    'planner_node parameters'),
    'model_dir': ('', "deploy artifact; '' keeps model_dir from params_file"),
    'backend': ('', "tensorrt | onnxruntime | torch; '' = params file"),
    'precision': ('', "fp32 | fp16; '' = params file"),
    'rviz': ('true', 'start rviz2 with rviz/rsd_drive.rviz'),
    'rviz_config': (PathJoinSubstitution([SHARE, 'rviz', 'rsd_drive.rviz']), 'RViz config'),
}


def generate_launch_description():
    arg = LaunchConfiguration
    planner = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([SHARE, 'launch',
                                                            'planner.launch.py'])),
        launch_arguments={'params_file': arg('params_file'), 'model_dir': arg('model_dir'),
                          'backend': arg('backend'), 'precision': arg('precision'),
                          'use_sim_time': 'true'}.items())
    play = ExecuteProcess(cmd=['ros2', 'bag', 'play', arg('bag'), '--clock', '--rate',
                               arg('rate')], output='screen')
    # planner_node is this launch's only lifecycle node; once: a later re-activation (a manager
    # cycling it) must not start a second playback.
    start_when_active = RegisterEventHandler(OnStateTransition(
        goal_state='active', handle_once=True,
        entities=[LogInfo(msg='planner_node is active: playing the bag'), play]))
    rviz = Node(package='rviz2', executable='rviz2', name='rviz2', output='log',
                arguments=['-d', arg('rviz_config')], condition=IfCondition(arg('rviz')))
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, (default, description) in ARGUMENTS.items()]
        + [SetParameter(name='use_sim_time', value=True), start_when_active, planner, rviz])
