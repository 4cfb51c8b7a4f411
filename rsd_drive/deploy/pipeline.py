"""One synchronised camera set -> model inputs -> plan, without ROS.

The planner node and ``rsd-drive bench node`` share this, so the stages they time are the same
code: ``decode`` (message -> RGB), ``preprocess`` (resize, intrinsics, past states -> the model's
named inputs), ``inference`` (the backend). Message building and publishing stay in the node.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np

from rsd_drive.data.convert import MessageError, image_to_rgb
from rsd_drive.data.preprocess import model_inputs, resize_camera
from rsd_drive.geometry import resize_intrinsics

# Stages timed for every planned frame, in pipeline order. ``transport``: camera stamp -> the set's
# last message received; ``sync``: callback work (validation + synchroniser) for the set's
# messages; ``queue``: set complete -> the worker starts on it; ``total``: camera stamp -> publish.
STAGES = ('transport', 'sync', 'queue', 'decode', 'preprocess', 'inference', 'postprocess',
          'publish', 'total')
# What the node adds on top of the model itself (``total`` minus inference and the inputs' own
# transport/queue waits is the node's compute overhead).
NODE_STAGES = ('sync', 'decode', 'preprocess', 'postprocess', 'publish')


class LatencyStats:
    """Rolling window of per-stage durations (seconds) with percentiles, for diagnostics."""

    def __init__(self, window: int = 300):
        self.window = int(window)
        self._samples = defaultdict(lambda: deque(maxlen=self.window))
        self.count = 0

    def add(self, timings: dict) -> None:
        for stage, seconds in timings.items():
            self._samples[stage].append(float(seconds))
        self.count += 1

    def percentile(self, stage: str, q: float) -> float | None:
        values = self._samples.get(stage)
        if not values:
            return None
        return float(np.percentile(np.fromiter(values, dtype=np.float64), q))

    def summary(self) -> dict:
        """stage -> (p50, p99) in seconds, for stages with samples, in STAGES order first."""
        names = [s for s in STAGES if s in self._samples] + \
            sorted(s for s in self._samples if s not in STAGES)
        return {s: (self.percentile(s, 50), self.percentile(s, 99)) for s in names
                if self._samples[s]}

    def clear(self) -> None:
        self._samples.clear()
        self.count = 0


@dataclass
class CameraCalibration:
    """Pinhole ``K`` for images of size ``image_hw`` and the camera->base_link transform."""

    K: np.ndarray
    image_hw: tuple
    cam_to_ego: np.ndarray

    def K_for(self, image_hw) -> np.ndarray:
        """K for the size the images actually have (a driver may publish a scaled stream)."""
        if tuple(image_hw) == tuple(self.image_hw):
            return self.K
        return resize_intrinsics(self.K, self.image_hw, image_hw)


class FrameError(ValueError):
    """A set that can't be planned; ``reason`` is a counter key (e.g. ``decode_failed:front``)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f'{reason}: {detail}')
        self.reason = reason


class FramePlanner:
    """Decodes, preprocesses and runs one camera set on a backend, timing each stage."""

    def __init__(self, backend, camera_names):
        self.backend = backend
        self.config = backend.config
        self.camera_names = list(camera_names)
        if len(self.camera_names) != self.config.num_cameras:
            raise ValueError(f'the model takes {self.config.num_cameras} cameras, '
                             f'{len(self.camera_names)} configured: {self.camera_names}')
        self.out_hw = (self.config.image_height, self.config.image_width)

    def decode(self, messages) -> list:
        images = []
        for name, msg in zip(self.camera_names, messages):
            try:
                images.append(image_to_rgb(msg))
            except MessageError as e:
                raise FrameError(f'{e.reason}:{name}', str(e)) from e
        return images

    def preprocess(self, images, calibrations, past_states, intent: int) -> dict:
        resized, Ks, extrinsics = [], [], []
        for image, calib in zip(images, calibrations):
            img, K = resize_camera(image, calib.K_for(image.shape[:2]), self.out_hw)
            resized.append(img)
            Ks.append(K)
            extrinsics.append(calib.cam_to_ego)
        return model_inputs(np.stack(resized), np.stack(Ks), np.stack(extrinsics), past_states,
                            int(intent))

    def plan(self, messages, calibrations, past_states, intent: int) -> tuple[dict, dict]:
        """-> (outputs {'waypoints' [20,2], 'risk' [rows,cols]}, timings {stage: seconds})."""
        t0 = time.perf_counter()
        images = self.decode(messages)
        t1 = time.perf_counter()
        feeds = self.preprocess(images, calibrations, past_states, intent)
        t2 = time.perf_counter()
        outputs = self.backend.infer(feeds)
        t3 = time.perf_counter()
        plan = {k: v[0] for k, v in outputs.items()}
        return plan, {'decode': t1 - t0, 'preprocess': t2 - t1, 'inference': t3 - t2}
