"""The frozen-encoder planner with RiskHead; see planner.py for the whole model in one file.

Names are imported lazily (PEP 562), so ``rsd_drive.model.config`` and ``rsd_drive.model.spec``
are usable without torch (the vehicle runs the exported graph, not the torch model).
"""
import importlib

_LAZY = {
    'EncoderConfig': 'rsd_drive.model.config',
    'ModelConfig': 'rsd_drive.model.config',
    'INPUT_NAMES': 'rsd_drive.model.spec',
    'OUTPUT_NAMES': 'rsd_drive.model.spec',
    'FrozenEncoder': 'rsd_drive.model.encoder',
    'build_encoder': 'rsd_drive.model.encoder',
    'RiskPlanner': 'rsd_drive.model.planner',
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
