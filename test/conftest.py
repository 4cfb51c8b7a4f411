"""Test-wide setup. DDS is confined to this host *before* any test can start rclpy: the loopback
Fast DDS profile from config/, LOCALHOST discovery, and a ROS_DOMAIN_ID unique to this run so
parallel runs on one machine never see each other's topics."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'

os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(REPO / 'config' / 'fastdds_loopback.xml')
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
os.environ['ROS_DOMAIN_ID'] = str(1 + os.getpid() % 100)  # 1..100, distinct per run
os.environ['HF_HUB_OFFLINE'] = '1'
os.environ['TRANSFORMERS_OFFLINE'] = '1'


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope='session')
def dgp_scene_dir() -> Path:
    path = SHARED_DATA / 'dgp_test_scene'
    if not path.is_dir():
        pytest.skip(f'real test data not found at {path} (CI has ../shared beside the checkout)')
    return path


@pytest.fixture(scope='session')
def dgp_bag(dgp_scene_dir, tmp_path_factory) -> Path:
    """scene_02 of the DGP test scene as a rosbag2 (MCAP) directory with the topics of
    config/dgp_dataset.yaml: 6 cameras (CompressedImage 1936x1216 + CameraInfo), /tf_static, /odom,
    /dgp/objects; 3 synchronised frames 0.1 s apart. Imported once per test session."""
    from rsd_drive.importers.dgp import ensure_dgp_bag

    return ensure_dgp_bag(dgp_scene_dir, tmp_path_factory.mktemp('dgp_bag'))
