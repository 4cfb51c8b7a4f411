"""Keep DDS on this host for the ``rsd-drive`` command line (every subcommand) and tests."""
import os

from rsd_drive import config_file


def confine_dds_to_host() -> None:
    """Use the project's loopback Fast DDS profile (UDP on 127.0.0.1, shared memory for images)
    unless the caller chose a profile; must run before rclpy creates its first participant.
    Measured here: without shared memory most best-effort 640x360 frames never arrived."""
    profile = config_file('fastdds_loopback.xml')
    if 'FASTDDS_DEFAULT_PROFILES_FILE' not in os.environ and profile.is_file():
        os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = str(profile)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
