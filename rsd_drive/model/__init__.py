"""The frozen-encoder planner with RiskHead; see planner.py for the whole model in one file."""
from rsd_drive.model.config import EncoderConfig, ModelConfig
from rsd_drive.model.encoder import FrozenEncoder, build_encoder
from rsd_drive.model.planner import INPUT_NAMES, OUTPUT_NAMES, RiskPlanner

__all__ = ['EncoderConfig', 'ModelConfig', 'FrozenEncoder', 'build_encoder', 'RiskPlanner',
           'INPUT_NAMES', 'OUTPUT_NAMES']
