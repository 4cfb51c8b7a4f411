"""The teacher backends by name: :func:`build_teacher`. Kept out of the interface module
(``teacher.base``), which every backend imports, so the arrows go one way: factory -> backends ->
base.
"""
from __future__ import annotations

from rsd_drive.teacher.base import Teacher


def build_teacher(config) -> Teacher:
    """The backend named by ``config.backend`` (a :class:`rsd_drive.teacher.config.TeacherConfig`);
    model-based backends load their models here, from local directories only."""
    backend = config.backend
    if backend == 'scene-oracle':
        from rsd_drive.teacher.oracle import SceneOracle
        return SceneOracle(config)
    if backend == 'vlm':
        from rsd_drive.teacher.vlm import VlmTeacher
        return VlmTeacher(config)
    if backend == 'detector+vlm':
        from rsd_drive.teacher.detector import DetectorVlmTeacher
        return DetectorVlmTeacher(config)
    if backend == 'clipseg':
        from rsd_drive.teacher.clipseg import ClipSegTeacher
        return ClipSegTeacher(config)
    raise ValueError(f'unknown teacher backend {backend!r}')
