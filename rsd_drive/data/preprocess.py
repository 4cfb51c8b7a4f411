"""The one way to turn decoded camera images + calibration into model inputs.

Used by the labeler when it writes the training index, by training/evaluation, and by the planner
node, so a frame is resized and normalised identically offline and on the vehicle.
"""
from __future__ import annotations

import numpy as np

from rsd_drive.data.camera_model import REMAP_CACHE, reduced_scale, undistort_resize
from rsd_drive.data.convert import decode_jpeg_reduced, image_bytes, is_jpeg


def resize_camera(image: np.ndarray, K: np.ndarray, out_hw,
                  distortion=None) -> tuple[np.ndarray, np.ndarray]:
    """An HxWx3 uint8 image -> (the model input at out_hw (height, width), its pinhole K').

    The same two steps as the node's fast input path (rsd_drive.deploy.pipeline): a box
    reduction by 2, 4 or 8 while the image stays at least the model size (what libjpeg's DCT
    scaling does to the node's JPEGs), then one cached remap that undistorts (``distortion``:
    :class:`rsd_drive.data.camera_model.Distortion`, None = pinhole) and resizes."""
    h, w = image.shape[:2]
    if (h, w) == tuple(out_hw) and (distortion is None or distortion.is_pinhole):
        return image, np.asarray(K, dtype=np.float64)
    return undistort_resize(image, K, distortion, out_hw)


def jpeg_model_input(msg, K: np.ndarray, image_hw, out_hw,
                     distortion=None) -> tuple[np.ndarray, np.ndarray] | None:
    """A JPEG ``CompressedImage`` of ``image_hw`` -> (the model input at out_hw, RGB, its K'),
    computed as the planner node's fast path computes it (``deploy.pipeline.FramePlanner``):
    decoded at libjpeg's reduced scale, then the same cached remap, so the pixels are identical.
    None when the message is not a JPEG of that size (then :func:`resize_camera` of the whole
    decoded image applies, the same up to JPEG's scaled IDCT)."""
    if not is_jpeg(msg):
        return None
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    s = reduced_scale(image_hw, out_hw)
    bgr = decode_jpeg_reduced(image_bytes(msg), image_hw, s)
    if bgr is None:
        return None
    table = REMAP_CACHE.get(K, distortion, tuple(image_hw), out_hw, s)
    return np.ascontiguousarray(table.apply(bgr)[..., ::-1]), table.K_out


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
