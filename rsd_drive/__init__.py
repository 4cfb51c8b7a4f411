"""rsd_drive: frozen-encoder end-to-end planner with VLM risk semantic distillation, for ROS 2.

Core packages (model, data, teacher, train, deploy, scenario) never import rclpy; the ROS 2 glue
lives in :mod:`rsd_drive.ros`.
"""

import os

__version__ = '0.1.0'

# ONNX Runtime (1.32 on Linux) ships Microsoft's 1DS telemetry: a bare InferenceSession looked up
# mobile.events.data.microsoft.com about every 9 s here (10 DNS queries in 90 s, measured with a
# frame capture), and ``onnxruntime.disable_telemetry_events()`` did not stop them; this
# variable, read when the library starts, does (0 in 65 s). Set before any ORT import of the
# package's (node, training, tools), unless the user chose otherwise.
os.environ.setdefault('ORT_DISABLE_TELEMETRY', '1')

# Driving intent indices, in the Waymo Open E2E order.
INTENTS = ('unknown', 'straight', 'left', 'right')


def build_config(cls, data, where: str):
    """``cls(**data)`` for a config dataclass, with unknown keys reported by name (a typo must not
    pass silently); ``data`` may be a mapping, None (the defaults) or already a ``cls``."""
    from dataclasses import fields

    if isinstance(data, cls):
        return data
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f'{where}: unknown keys {sorted(unknown)}; expected {sorted(known)}')
    return cls(**data)


def share_path(*parts: str):
    """A path of the package's data (``config/``, ``models/``): the source tree's, else the
    installed share directory (colcon: via ament_index; pip: ``<prefix>/share/rsd_drive``)."""
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parents[1].joinpath(*parts)
    if here.exists():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory('rsd_drive')).joinpath(*parts)
    except Exception:  # noqa: BLE001 - ament_index is optional; fall back to the pip layout
        return Path(sys.prefix).joinpath('share', 'rsd_drive', *parts)


def config_file(name: str):
    """A file of the package's ``config/`` (see ``share_path``)."""
    return share_path('config', name)
