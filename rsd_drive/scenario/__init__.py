"""Deterministic synthetic drives: a reactive world driven by a privileged expert through hazard
families, a pinhole renderer, rosbag2 recording.

``generate_drive(out_path, seed, config, family=...)`` writes one bag; see
:mod:`rsd_drive.scenario.record` for the topics, :mod:`rsd_drive.scenario.sim` for the steppable
world and the expert, :mod:`rsd_drive.scenario.families` for the families and
:class:`ScenarioConfig` for what a drive contains. ``read_drive_info(bag)`` gives a bag's family.
"""
from rsd_drive.scenario.config import CameraSpec, ScenarioConfig, default_config_path
from rsd_drive.scenario.preview import read_frame_images, save_contact_sheet
from rsd_drive.scenario.record import (DriveSummary, drive_name, generate_drive, generate_drives,
                                       read_drive_info)
from rsd_drive.scenario.render import Camera, render_camera
from rsd_drive.scenario.world import Boxes, World, WorldState

__all__ = ['Boxes', 'Camera', 'CameraSpec', 'DriveSummary', 'ScenarioConfig', 'World',
           'WorldState', 'default_config_path', 'drive_name', 'generate_drive', 'generate_drives',
           'read_drive_info', 'read_frame_images', 'render_camera', 'save_contact_sheet']
