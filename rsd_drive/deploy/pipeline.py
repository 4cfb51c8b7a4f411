"""One synchronised camera set -> model inputs -> plan, without ROS.

The planner node and ``rsd-drive bench node`` share this, so the stages they time are the same
code: ``decode`` (message -> image at reduced scale), ``preprocess`` (undistort + resize by one
remap, intrinsics, past states -> the model's named inputs), ``inference`` (the backend).
Message building and publishing stay in the node.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from rsd_drive.data.camera_model import Distortion, RemapCache, reduced_scale, reduced_size
from rsd_drive.data.convert import (MessageError, check_image, decode_compressed_bgr,
                                    decode_jpeg_reduced, image_bytes, image_to_rgb, image_view,
                                    is_compressed, is_jpeg)
from rsd_drive.data.preprocess import model_inputs
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
    """Pinhole ``K`` for images of size ``image_hw``, the camera->base_link transform and the
    lens distortion (CameraInfo ``D``; None or pinhole when the images are already ideal)."""

    K: np.ndarray
    image_hw: tuple
    cam_to_ego: np.ndarray
    distortion: Distortion | None = None

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


# Channel order of a decoded / raw image -> RGB planes of the model input.
_ORDER = {'bgr': (2, 1, 0), 'rgb': (0, 1, 2), 'rgba': (0, 1, 2), 'bgra': (2, 1, 0),
          'mono': (0, 0, 0)}


@dataclass
class _Decoded:
    """One camera after the decode stage: the source image for its remap table."""

    image: np.ndarray     # src_hw x C uint8 (the raw image at 1/scale)
    raw_hw: tuple         # the full-resolution size of this camera's images
    scale: int            # decoded at 1/scale
    order: str            # key of _ORDER


class _Slot:
    """Per-camera buffers, reused every frame (the model-input image, the reduced raw image)."""

    def __init__(self, out_hw):
        self.out_hw = tuple(out_hw)
        self.out = {}         # channels -> out_hw x C uint8 remap output
        self.reduced = None   # reduced-size buffer of the raw Image path
        self.jpeg_hw = None   # full size of this camera's JPEGs when it differs from CameraInfo

    def out_buffer(self, channels: int) -> np.ndarray:
        buf = self.out.get(channels)
        if buf is None:
            shape = self.out_hw + ((channels,) if channels > 1 else ())
            buf = self.out[channels] = np.empty(shape, np.uint8)
        return buf

    def reduced_buffer(self, shape) -> np.ndarray:
        if self.reduced is None or self.reduced.shape != tuple(shape):
            self.reduced = np.empty(shape, np.uint8)
        return self.reduced


class FramePlanner:
    """Decodes, preprocesses and runs one camera set on a backend, timing each stage.

    The fast input path (``legacy=False``, what the node runs): JPEGs are decoded at reduced
    scale (libjpeg DCT scaling 1/2, 1/4, 1/8) whenever the model input is at most half the image,
    into a buffer reused per camera (simplejpeg), cameras are decoded in parallel (a thread
    pool; the decoders release the GIL), and one cached remap per camera undistorts (CameraInfo
    ``D``) and resizes into preallocated buffers; raw Images are read through zero-copy views.
    The images are fed in the dtype the backend's graph takes (``backend.specs['images']``):
    uint8 as decoded, or float32 in [0, 1] converted in place. ``legacy=True`` is the previous
    path (full decode one camera after another, resize, float normalisation), kept for
    ``rsd-drive bench node`` to compare against.
    """

    def __init__(self, backend, camera_names, legacy: bool = False, workers: int | None = None):
        self.backend = backend
        self.config = backend.config
        self.camera_names = list(camera_names)
        if len(self.camera_names) != self.config.num_cameras:
            raise ValueError(f'the model takes {self.config.num_cameras} cameras, '
                             f'{len(self.camera_names)} configured: {self.camera_names}')
        self.out_hw = (self.config.image_height, self.config.image_width)
        self.legacy = bool(legacy)
        self.image_dtype = np.dtype(backend.specs['images'][1])
        n, (h, w) = len(self.camera_names), self.out_hw
        self._u8 = np.zeros((1, n, 3, h, w), np.uint8)
        self._images = self._u8 if self.image_dtype == np.uint8 else \
            np.zeros((1, n, 3, h, w), self.image_dtype)
        self._K = np.zeros((1, n, 3, 3), np.float32)
        self._T = np.zeros((1, n, 4, 4), np.float32)
        self._past = np.zeros((1, self.config.past_steps, 4), np.float32)
        self._intent = np.zeros((1,), np.int64)
        self.has_route = bool(getattr(self.config, 'route_points', 0))
        if self.has_route:
            self._route = np.zeros((1, self.config.route_points, 2), np.float32)
            self._route_valid = np.zeros((1,), np.float32)
        self._slots = [_Slot(self.out_hw) for _ in range(n)]
        self.remaps = RemapCache()
        workers = n if workers is None else int(workers)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix='decode') \
            if workers > 1 and not self.legacy else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- decode ---------------------------------------------------------------------------------
    def decode(self, messages, calibrations=None) -> list:
        """Messages -> per camera, the image the preprocessing starts from (legacy: full-size
        RGB; fast: a :class:`_Decoded` at reduced scale). Errors name the camera."""
        if self.legacy:
            return [self._guard(name, image_to_rgb, msg)
                    for name, msg in zip(self.camera_names, messages)]
        calibrations = calibrations or [None] * len(self.camera_names)
        jobs = list(zip(range(len(self.camera_names)), messages, calibrations))
        if self._pool is None:
            return [self._decode_one(*job) for job in jobs]
        return list(self._pool.map(lambda job: self._decode_one(*job), jobs))

    def _guard(self, name, fn, *args):
        try:
            return fn(*args)
        except MessageError as e:
            raise FrameError(f'{e.reason}:{name}', str(e)) from e

    def _decode_one(self, i: int, msg, calib) -> _Decoded:
        return self._guard(self.camera_names[i], self._decode_message, self._slots[i], msg, calib)

    def _decode_message(self, slot: _Slot, msg, calib) -> _Decoded:
        check_image(msg)
        if is_compressed(msg):
            return self._decode_compressed(slot, msg, calib)
        view, enc = image_view(msg)
        return self._reduce(slot, view, view.shape[:2], enc[:-1])

    def _reduce(self, slot: _Slot, full: np.ndarray, raw_hw, order: str) -> _Decoded:
        """A full-size image -> box-reduced by the scale libjpeg would use (INTER_AREA)."""
        s = reduced_scale(raw_hw, self.out_hw)
        if s == 1:
            return _Decoded(full, tuple(raw_hw), 1, order)
        size = reduced_size(raw_hw, s)
        dst = slot.reduced_buffer(size + full.shape[2:])
        cv2.resize(full, (size[1], size[0]), dst=dst, interpolation=cv2.INTER_AREA)
        return _Decoded(dst, tuple(raw_hw), s, order)

    def _decode_compressed(self, slot: _Slot, msg, calib) -> _Decoded:
        data = image_bytes(msg)
        expected = slot.jpeg_hw or (tuple(calib.image_hw) if calib is not None else None)
        if is_jpeg(msg) and expected is not None:
            s = reduced_scale(expected, self.out_hw)
            size = reduced_size(expected, s)
            img = decode_jpeg_reduced(data, expected, s, slot.reduced_buffer(size + (3,)))
            if img is not None:
                return _Decoded(img, tuple(expected), s, 'bgr')
        # Not a JPEG, or not the size CameraInfo says (a scaled stream): decode it whole once;
        # its size is remembered, so later frames of this camera take the reduced decode again.
        img = decode_compressed_bgr(msg, data)
        if is_jpeg(msg):
            slot.jpeg_hw = img.shape[:2]
        return self._reduce(slot, img, img.shape[:2], 'bgr')

    # -- preprocess -----------------------------------------------------------------------------
    def preprocess(self, images, calibrations, past_states, intent: int, copy: bool = True,
                   route=None):
        """Decoded images -> the model's named inputs. ``images`` are HxWx3 uint8 RGB arrays (any
        size: the closed-loop evaluator) or what :meth:`decode` returned. The feeds live in
        buffers reused by the next call unless ``copy`` (the default for callers that keep them).
        ``route``: a :class:`rsd_drive.data.route.RouteInput` (None: no route, the mask is off);
        ignored by a model without the route input.
        """
        if self.legacy:
            feeds = self._preprocess_legacy(images, calibrations, past_states, intent)
            if self.has_route:
                feeds.update(self._route_feeds(route, True))
            return feeds
        for i, (image, calib) in enumerate(zip(images, calibrations)):
            if not isinstance(image, _Decoded):
                image = self._reduce(self._slots[i], np.asarray(image), image.shape[:2], 'rgb')
            self._prepare_camera(i, image, calib)
        if self._images is not self._u8:
            np.multiply(self._u8, np.float32(1.0 / 255.0), out=self._images, casting='unsafe')
        self._past[0] = past_states
        self._intent[0] = int(intent)
        feeds = {'images': self._images, 'intrinsics': self._K, 'cam_to_ego': self._T,
                 'past_states': self._past, 'intent': self._intent}
        if self.has_route:
            feeds.update(self._route_feeds(route, False))
        return {k: v.copy() for k, v in feeds.items()} if copy else feeds

    def _route_feeds(self, route, copy: bool) -> dict:
        if route is not None and route.valid:
            self._route[0] = route.points
            self._route_valid[0] = 1.0
        else:
            self._route[0] = 0.0
            self._route_valid[0] = 0.0
        feeds = {'route': self._route, 'route_valid': self._route_valid}
        return {k: v.copy() for k, v in feeds.items()} if copy else feeds

    def _prepare_camera(self, i: int, dec: _Decoded, calib) -> None:
        table = self.remaps.get(calib.K_for(dec.raw_hw), calib.distortion, dec.raw_hw,
                                self.out_hw, dec.scale)
        channels = dec.image.shape[2] if dec.image.ndim == 3 else 1
        out = table.apply(dec.image, self._slots[i].out_buffer(channels))
        planes = self._u8[0, i]
        if channels == 1:
            planes[:] = out
        else:
            for c, src in enumerate(_ORDER[dec.order]):
                np.copyto(planes[c], out[:, :, src])
        self._K[0, i] = table.K_out
        self._T[0, i] = calib.cam_to_ego

    def _preprocess_legacy(self, images, calibrations, past_states, intent: int) -> dict:
        resized, Ks, extrinsics = [], [], []
        for image, calib in zip(images, calibrations):
            h, w = image.shape[:2]
            K = calib.K_for((h, w))
            if (h, w) != self.out_hw:
                interp = cv2.INTER_AREA if h > self.out_hw[0] else cv2.INTER_LINEAR
                image = cv2.resize(image, self.out_hw[::-1], interpolation=interp)
                K = resize_intrinsics(K, (h, w), self.out_hw)
            resized.append(image)
            Ks.append(K)
            extrinsics.append(calib.cam_to_ego)
        return model_inputs(np.stack(resized), np.stack(Ks), np.stack(extrinsics), past_states,
                            int(intent))

    def plan(self, messages, calibrations, past_states, intent: int,
             route=None) -> tuple[dict, dict]:
        """-> (outputs {'waypoints' [20,2], 'risk' [rows,cols]}, timings {stage: seconds})."""
        t0 = time.perf_counter()
        images = self.decode(messages, calibrations)
        t1 = time.perf_counter()
        feeds = self.preprocess(images, calibrations, past_states, intent, copy=False,
                                route=route)
        t2 = time.perf_counter()
        outputs = self.backend.infer(feeds)
        t3 = time.perf_counter()
        plan = {k: v[0] for k, v in outputs.items()}
        return plan, {'decode': t1 - t0, 'preprocess': t2 - t1, 'inference': t3 - t2}
