"""The teacher interface: synchronised images + calibration in; risky objects (class, image box,
risk 0..1, reason) and/or image-space risk heatmaps out. Backends are built by name with
:func:`rsd_drive.teacher.factory.build_teacher`; their outputs become BEV grids in
:mod:`rsd_drive.teacher.projection`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RiskyObject:
    """One object the teacher considers risky.

    camera/box: the camera name and the image box (x1, y1, x2, y2) in pixels of that camera's
    original image (None for objects known only on the ground). ground: (x, y) of the ground
    contact point in ``base_link`` when known (the scene oracle knows it; for image boxes the
    projector fills it). width_m/length_m/yaw: footprint on the ground (None: estimated).
    """

    label: str
    risk: float
    reason: str = ''
    camera: str | None = None
    box: tuple | None = None
    ground: tuple | None = None
    width_m: float | None = None
    length_m: float | None = None
    yaw: float | None = None
    score: float | None = None

    def to_dict(self) -> dict:
        d = {'label': self.label, 'risk': round(float(self.risk), 4), 'reason': self.reason}
        if self.camera is not None:
            d['camera'] = self.camera
        if self.box is not None:
            d['box'] = [round(float(v), 1) for v in self.box]
        if self.ground is not None:
            d['ground'] = [round(float(v), 3) for v in self.ground]
        for key in ('width_m', 'length_m', 'yaw', 'score'):
            value = getattr(self, key)
            if value is not None:
                d[key] = round(float(value), 4)
        return d


@dataclass
class TeacherOutput:
    """What a teacher says about one frame.

    parsed: False when the answer held nothing usable (no JSON, no objects message): the job
    skips such frames or labels them empty (``unparsable_answer``). answer: the raw answer text
    (published on the label bag's answer topic). rejected: garbage items counted by reason.
    heatmaps: camera name -> HxW risk in [0, 1] over that camera's image (any resolution).
    """

    objects: list = field(default_factory=list)
    heatmaps: dict = field(default_factory=dict)
    answer: str = ''
    parsed: bool = True
    rejected: Counter = field(default_factory=Counter)


@dataclass
class FrameContext:
    """What a teacher may know besides the images: ego pose (x, y, yaw in the odometry frame at
    t0), its logged future (base_link at t0) and speed, and the ground-truth objects message
    (scenario drives; only the scene oracle reads it)."""

    stamp_ns: int
    ego_pose: tuple
    future: np.ndarray
    init_speed: float
    frequency_hz: float = 4.0
    objects: dict | None = None
    odometry: object = None


class Teacher:
    """Base class: ``label(frame, context) -> TeacherOutput``.

    ``needs_objects``: whether it reads the ground-truth objects topic (the job checks the bag
    has it before starting).
    """

    name = 'teacher'
    needs_objects = False

    def label(self, frame, context: FrameContext) -> TeacherOutput:
        raise NotImplementedError

    def describe(self) -> dict:
        return {'backend': self.name}



class TeacherUnavailable(RuntimeError):
    """The teacher could not answer about a frame for a reason that may pass (a served model
    down, overloaded, timing out, answering garbage) after its retries: the job records the
    frame by name and ``reason`` and does not commit its chunk as done, so the next run labels
    it."""

    def __init__(self, reason: str, detail: str = ''):
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason
