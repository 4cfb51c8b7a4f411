"""Teacher answers -> BEV risk grid (the RiskHead's :class:`rsd_drive.geometry.GridSpec`).

Objects: the ground contact point of an image box (bottom centre) goes through the camera model to
the ground plane; its footprint width comes from the box width at that depth; a Gaussian of that
footprint, scaled by the object's risk, is splatted into the grid (cells keep the maximum over
objects). Objects that already know their ground position (the scene oracle) skip the first step
and use the same splatting. Dense heatmaps are warped onto the ground plane: every grid cell's
centre is projected into the camera and samples the heatmap there, so only pixels below the
horizon ever reach the grid.
"""
from __future__ import annotations

import math
from collections import Counter

import cv2
import numpy as np

from rsd_drive.data.camera_model import distort_pixels, undistort_pixels
from rsd_drive.geometry import (GridSpec, ground_points_from_pixels, project_points,
                                resize_intrinsics)
from rsd_drive.teacher.base import TeacherOutput


def box_contact_pixel(box) -> tuple:
    """Where a box touches the ground in the image: the bottom centre."""
    x1, _y1, x2, y2 = box
    return 0.5 * (x1 + x2), float(y2)


def frame_distortion(frame, i: int):
    """The lens model of camera ``i`` of a frame (None: the images are ideal pinhole)."""
    distortion = getattr(frame, 'distortion', None)
    return distortion[i] if distortion else None


def ground_from_box(box, K, cam_to_ego, cfg, distortion=None) -> tuple:
    """(x, y, width_m) on the ground plane of an image box; ValueError(reason) when the contact
    point is on/above the horizon, too far, or the implied width is absurd. ``distortion``: the
    lens of a raw (distorted) image; the contact pixel is undistorted before it becomes a ray."""
    uv = undistort_pixels(np.array([box_contact_pixel(box)]), K, distortion)
    xy = ground_points_from_pixels(uv, K, cam_to_ego, ground_z=cfg.ground_z,
                                   max_range=cfg.max_range_m)[0]
    if not np.all(np.isfinite(xy)):
        raise ValueError('above_horizon')
    ego_to_cam = np.linalg.inv(cam_to_ego)
    depth = float(ego_to_cam[2, :3] @ np.array([xy[0], xy[1], cfg.ground_z]) + ego_to_cam[2, 3])
    width = (box[2] - box[0]) * depth / float(K[0, 0])
    if not math.isfinite(width) or width <= 0:
        width = cfg.default_width_m
    if width > cfg.max_width_m:
        raise ValueError('too_wide')
    return float(xy[0]), float(xy[1]), float(width)


class Splatter:
    """Accumulates Gaussian footprints on a grid (max over objects)."""

    def __init__(self, grid: GridSpec, min_sigma_m: float):
        self.grid = grid
        self.min_sigma = float(min_sigma_m)
        self.xs, self.ys = grid.cell_centers()
        self.values = np.zeros((grid.rows, grid.cols), dtype=np.float32)

    def add(self, x: float, y: float, risk: float, width: float, length: float | None = None,
            yaw: float | None = None) -> None:
        length = width if length is None else length
        yaw = 0.0 if yaw is None else yaw
        c, s = math.cos(yaw), math.sin(yaw)
        dx, dy = self.xs - x, self.ys - y
        along, across = c * dx + s * dy, -s * dx + c * dy
        s_along = max(0.5 * length, self.min_sigma)
        s_across = max(0.5 * width, self.min_sigma)
        value = risk * np.exp(-0.5 * ((along / s_along) ** 2 + (across / s_across) ** 2))
        np.maximum(self.values, value.astype(np.float32), out=self.values)


def project_objects(objects, frame, grid: GridSpec, cfg):
    """Splat objects into a grid. Objects without ``ground`` are located from their image box
    (their ``ground``/``width_m`` are filled in place). Returns (grid [rows, cols], the objects
    that made it, rejected)."""
    splat, rejected, kept = Splatter(grid, cfg.min_sigma_m), Counter(), []
    for obj in objects:
        if not (isinstance(obj.risk, (int, float)) and math.isfinite(obj.risk)):
            rejected['bad_risk'] += 1
            continue
        if obj.ground is None:
            if obj.box is None or obj.camera not in frame.cameras:
                rejected['no_location'] += 1
                continue
            i = frame.cameras.index(obj.camera)
            try:
                x, y, width = ground_from_box(obj.box, frame.K[i], frame.cam_to_ego[i], cfg,
                                              frame_distortion(frame, i))
            except ValueError as exc:
                rejected[str(exc)] += 1
                continue
            obj.ground, obj.width_m = (x, y), width
        x, y = obj.ground
        if not (math.isfinite(x) and math.isfinite(y)):
            rejected['bad_ground'] += 1
            continue
        width = obj.width_m if obj.width_m and math.isfinite(obj.width_m) else cfg.default_width_m
        splat.add(x, y, float(np.clip(obj.risk, 0.0, 1.0)), width, obj.length_m, obj.yaw)
        kept.append(obj)
    return splat.values, kept, rejected


def project_heatmaps(heatmaps: dict, frame, grid: GridSpec, cfg):
    """Warp image-space heatmaps onto the ground grid (max over cameras). Returns (grid,
    rejected): non-finite heatmaps are counted and left out."""
    out, rejected = np.zeros((grid.rows, grid.cols), dtype=np.float32), Counter()
    if not heatmaps:
        return out, rejected
    xs, ys = grid.cell_centers()
    pts = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, cfg.ground_z)], axis=1)
    for camera, heat in heatmaps.items():
        heat = np.asarray(heat, dtype=np.float32)
        if camera not in frame.cameras or heat.ndim != 2 or heat.size == 0:
            rejected['bad_heatmap'] += 1
            continue
        if not np.all(np.isfinite(heat)):
            rejected['nan_heatmap'] += 1
            continue
        i = frame.cameras.index(camera)
        hh, hw = heat.shape
        K = resize_intrinsics(frame.K[i], frame.image_hw[i], (hh, hw))
        uv, depth = project_points(pts, K, frame.cam_to_ego[i])
        ok = (depth > 0.1) & np.all(np.isfinite(uv), axis=1)
        uv = _through_lens(uv, ok, K, frame_distortion(frame, i))
        ok &= np.hypot(pts[:, 0] - frame.cam_to_ego[i][0, 3],
                       pts[:, 1] - frame.cam_to_ego[i][1, 3]) <= cfg.max_range_m
        ok &= (uv[:, 0] >= -0.5) & (uv[:, 0] <= hw - 0.5) & (uv[:, 1] >= -0.5) \
            & (uv[:, 1] <= hh - 0.5)
        map_x = np.where(ok, uv[:, 0], -10).astype(np.float32).reshape(grid.rows, grid.cols)
        map_y = np.where(ok, uv[:, 1], -10).astype(np.float32).reshape(grid.rows, grid.cols)
        sampled = cv2.remap(np.clip(heat, 0.0, 1.0), map_x, map_y, cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)
        sampled = np.where(ok.reshape(grid.rows, grid.cols), sampled, 0.0)
        np.maximum(out, sampled.astype(np.float32), out=out)
    return out, rejected


def _through_lens(uv: np.ndarray, ok: np.ndarray, K, distortion) -> np.ndarray:
    """Ideal pixels -> raw (distorted) pixels; points where the lens polynomial folds back (far
    outside the calibrated field of view) are marked invalid (NaN)."""
    if distortion is None or distortion.is_pinhole:
        return uv
    raw = np.full_like(uv, np.nan)
    raw[ok] = distort_pixels(uv[ok], K, distortion)
    back = np.full_like(uv, np.nan)
    back[ok] = undistort_pixels(raw[ok], K, distortion)
    folded = ~(np.abs(back - uv) < 0.5).all(axis=1)
    raw[folded] = np.nan
    return raw


def teacher_grid(output: TeacherOutput, frame, grid: GridSpec, cfg):
    """The BEV risk grid of one teacher output: objects and heatmaps, max-combined, in [0, 1].
    Returns (grid, the objects that could be placed, rejected)."""
    objects_grid, kept, rejected = project_objects(output.objects, frame, grid, cfg)
    heat_grid, heat_rejected = project_heatmaps(output.heatmaps, frame, grid, cfg)
    rejected.update(heat_rejected)
    return np.clip(np.maximum(objects_grid, heat_grid), 0.0, 1.0), kept, rejected
