"""Test-wide setup. DDS is confined to this host *before* any test can start rclpy: the loopback
Fast DDS profile from config/, LOCALHOST discovery, and a ROS_DOMAIN_ID unique to this run so
parallel runs on one machine never see each other's topics."""
import fcntl
import os
import socket
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'

os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(REPO / 'config' / 'fastdds_loopback.xml')
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')


def _claim_domain_id(first: int = 101, last: int = 232) -> int:
    """A ROS_DOMAIN_ID no other test run on this machine holds, kept for this process's life.

    Each candidate is claimed with an exclusive lock on a file named after it (released by the
    kernel when this process ends, however it ends); a candidate whose DDS discovery port on
    127.0.0.1 is taken (a participant of that domain outside any test run) is passed over.
    Domains 101..232: above the ids people use by hand, within what Fast DDS can map to ports
    (7400 + 250 * id < 65536). The search starts at a pid-derived offset so runs rarely contend.
    """
    span = last - first + 1
    lock_dir = Path(tempfile.gettempdir()) / 'rsd_drive_ros_domains'
    lock_dir.mkdir(exist_ok=True)
    for step in range(span):
        domain = first + (os.getpid() + step) % span
        fh = open(lock_dir / f'{domain}.lock', 'w')
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        if _discovery_port_free(domain):
            _DOMAIN_LOCKS.append(fh)
            return domain
        fh.close()
    raise RuntimeError(f'no free ROS_DOMAIN_ID in {first}..{last} (locks in {lock_dir})')


def _discovery_port_free(domain: int) -> bool:
    """Fast DDS's first unicast metatraffic port of ``domain`` (7410 + 250 * domain)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(('127.0.0.1', 7410 + 250 * domain))
        except OSError:
            return False
    return True


_DOMAIN_LOCKS = []
os.environ['ROS_DOMAIN_ID'] = str(_claim_domain_id())
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


@pytest.fixture(scope='session')
def artifact(tmp_path_factory) -> Path:
    """The deploy artifact (model.onnx + deploy.json) of a tiny perturbed checkpoint that the node
    tests run on, shared by the session (no test writes into it): ``$RSD_DRIVE_TEST_ARTIFACT``
    when set (the vehicle profile), else exported once here (see node_helpers.test_artifact)."""
    from node_helpers import test_artifact

    return test_artifact(tmp_path_factory)
