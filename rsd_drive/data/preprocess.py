"""The one way to turn decoded camera images + calibration into model inputs.

Used by the labeler when it writes the training index, by training/evaluation, and by the planner
node, so a frame is resized and normalised identically offline and on the vehicle.
"""
from __future__ import annotations

import cv2
import numpy as np

from rsd_drive.geometry import resize_intrinsics


def resize_camera(image: np.ndarray, K: np.ndarray, out_hw) -> tuple[np.ndarray, np.ndarray]:
    """Resize an HxWx3 uint8 image to out_hw (height, width) and adapt its pinhole matrix."""
    h, w = image.shape[:2]
    if (h, w) == tuple(out_hw):
        return image, np.asarray(K, dtype=np.float64)
    interp = cv2.INTER_AREA if h > out_hw[0] else cv2.INTER_LINEAR
    resized = cv2.resize(image, (int(out_hw[1]), int(out_hw[0])), interpolation=interp)
    return resized, resize_intrinsics(K, (h, w), out_hw)


def model_inputs(images, intrinsics, cam_to_ego, past_states, intent) -> dict:
    """Stack one frame (or a batch, if arrays already have a batch axis) into the model's named
    inputs: images [B,N,3,H,W] float32 in [0,1], intrinsics [B,N,3,3], cam_to_ego [B,N,4,4],
    past_states [B,16,4] float32, intent [B] int64."""
    images = np.asarray(images)
    batched = images.ndim == 5
    if not batched:
        images, intrinsics, cam_to_ego = images[None], np.asarray(intrinsics)[None], \
            np.asarray(cam_to_ego)[None]
        past_states, intent = np.asarray(past_states)[None], np.asarray([intent])
    return {
        'images': np.ascontiguousarray(images.transpose(0, 1, 4, 2, 3), dtype=np.float32) / 255.0,
        'intrinsics': np.asarray(intrinsics, dtype=np.float32),
        'cam_to_ego': np.asarray(cam_to_ego, dtype=np.float32),
        'past_states': np.asarray(past_states, dtype=np.float32),
        'intent': np.asarray(intent, dtype=np.int64).reshape(-1),
    }
