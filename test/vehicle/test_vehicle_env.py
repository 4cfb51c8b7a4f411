"""The vehicle profile is what it claims: ROS 2 Jazzy wheels, numpy < 2, no torch/transformers.

Asserted where ``make test`` runs this folder in .venv-vehicle (``RSD_DRIVE_VEHICLE_PROFILE=1``);
elsewhere (the folder run from the main venv) skipped with the reason.
"""
import importlib.metadata as md
import importlib.util
import os

import pytest

pytestmark = pytest.mark.skipif(os.environ.get('RSD_DRIVE_VEHICLE_PROFILE') != '1',
                                reason='not the vehicle profile (make test sets '
                                       'RSD_DRIVE_VEHICLE_PROFILE=1 for .venv-vehicle)')


def test_no_torch_or_transformers():
    for name in ('torch', 'transformers', 'onnx'):
        assert importlib.util.find_spec(name) is None, f'{name} is installed in the vehicle venv'


def test_jazzy_wheels_and_numpy_1():
    import numpy

    assert numpy.__version__.startswith('1.'), numpy.__version__
    assert md.version('ros-rclpy').startswith('7.1.'), md.version('ros-rclpy')  # Jazzy
    assert md.version('ros-jazzy-rclpy') == md.version('ros-rclpy')
    assert md.version('ros-sensor-msgs').startswith('5.3.')  # Jazzy's common_interfaces
    import lifecycle_msgs.srv  # noqa: F401 - the lifecycle services' types
    import rclpy.lifecycle  # noqa: F401


def test_message_arrays_work_with_numpy_1():
    """The Jazzy message packages use numpy for float arrays: they must take numpy 1.x arrays."""
    import numpy as np
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo()
    info.k = np.arange(9, dtype=np.float64)
    assert float(info.k[4]) == 4.0
