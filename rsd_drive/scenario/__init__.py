"""Deterministic synthetic drives: a road world, a pinhole renderer, rosbag2 recording.

``generate_drive(out_path, seed, config)`` writes one bag; see :mod:`rsd_drive.scenario.record`
for the topics and :class:`ScenarioConfig` for what a drive contains.
"""
from rsd_drive.scenario.config import CameraSpec, ScenarioConfig, default_config_path
from rsd_drive.scenario.preview import read_frame_images, save_contact_sheet
from rsd_drive.scenario.record import DriveSummary, drive_name, generate_drive, generate_drives
from rsd_drive.scenario.render import Camera, render_camera
from rsd_drive.scenario.world import Boxes, World, WorldState

__all__ = ['Boxes', 'Camera', 'CameraSpec', 'DriveSummary', 'ScenarioConfig', 'World',
           'WorldState', 'default_config_path', 'drive_name', 'generate_drive', 'generate_drives',
           'read_frame_images', 'render_camera', 'save_contact_sheet']
