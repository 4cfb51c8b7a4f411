"""Pinhole rendering of a :class:`WorldState` with OpenCV polygon fills.

Each camera image is: a static background (sky gradient above the horizon, grass below; the ego
never pitches or rolls, so it is precomputed per camera), then the ground polygons layer by layer
(sidewalks, road, markings), then the boxes far to near (painter's algorithm), each showing only
the faces that point at the camera, shaded by a fixed sun. Polygons are clipped against the near
plane in camera coordinates before projection, which is exact for planar polygons, so geometry
beside or behind the camera never folds over the image.

Cameras follow :mod:`rsd_drive.geometry`: optical frame, ``cam_to_ego`` into ``base_link``.
"""
from __future__ import annotations

import cv2
import numpy as np

from rsd_drive.geometry import make_transform, yaw_matrix
from rsd_drive.scenario.config import CameraSpec
from rsd_drive.scenario.world import Boxes, WorldState

NEAR = 0.1
# Polygon vertices are passed to OpenCV in fixed point with this many fractional bits.
SHIFT = 4
SCALE = float(1 << SHIFT)

SKY_HORIZON = np.array([205.0, 218.0, 235.0])
SKY_ZENITH = np.array([85.0, 135.0, 205.0])
GRASS = np.array([78.0, 122.0, 58.0])
HAZE = np.array([170.0, 180.0, 175.0])
FOG_DISTANCE = 250.0

LIGHT = np.array([0.5, 0.35, 0.79]) / np.linalg.norm([0.5, 0.35, 0.79])
# Box corners: index bits (x, y, z) -> sign; faces as corner indices (front +x, back -x,
# left +y, right -y, top +z). The bottom face lies on the ground and is never seen.
CORNER_SIGNS = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)]) * 2.0 - 1.0
FACES = np.array([[4, 6, 7, 5], [0, 1, 3, 2], [2, 3, 7, 6], [0, 4, 5, 1], [1, 5, 7, 3]])
# Small per-face offsets keep two equally lit sides of a box distinguishable.
FACE_BIAS = np.array([0.04, 0.0, -0.04, -0.06, 0.1])


class Camera:
    """A camera of the rig at a given image size: K, ``cam_to_ego``, frame id, background."""

    def __init__(self, spec: CameraSpec, width: int, height: int):
        self.spec, self.name = spec, spec.name
        self.width, self.height = int(width), int(height)
        self.frame_id = f'{spec.name}_optical'
        self.K = spec.K(self.width, self.height)
        self.cam_to_ego = spec.cam_to_ego()
        self._background = None

    @property
    def background(self) -> np.ndarray:
        """Sky and grass for this camera's mounting (computed once)."""
        if self._background is None:
            v, u = np.mgrid[0:self.height, 0:self.width].astype(np.float64)
            pix = np.stack([u, v, np.ones_like(u)], axis=-1)
            rays = pix @ np.linalg.inv(self.K).T @ self.cam_to_ego[:3, :3].T
            horizontal = np.linalg.norm(rays[..., :2], axis=-1)
            elevation = np.arctan2(rays[..., 2], horizontal)
            t = np.clip(elevation / 0.4, 0.0, 1.0)[..., None] ** 0.7
            sky = SKY_HORIZON * (1 - t) + SKY_ZENITH * t
            with np.errstate(divide='ignore'):
                dist = self.cam_to_ego[2, 3] / np.tan(np.maximum(-elevation, 1e-6))
            fog = 1.0 - np.exp(-dist / FOG_DISTANCE)[..., None]
            ground = GRASS * (1 - fog) + HAZE * fog
            img = np.where((elevation > 0)[..., None], sky, ground)
            self._background = np.round(img).astype(np.uint8)
        return self._background


def clip_polygon_near(poly: np.ndarray, near: float = NEAR):
    """Sutherland-Hodgman clip of a planar polygon [k,3] (camera coordinates) to z >= near.

    Returns the clipped polygon, or None when nothing (or a sliver of < 3 vertices) remains.
    """
    out = []
    k = len(poly)
    for i in range(k):
        a, b = poly[i], poly[(i + 1) % k]
        a_in, b_in = a[2] >= near, b[2] >= near
        if a_in:
            out.append(a)
        if a_in != b_in:
            out.append(a + (near - a[2]) / (b[2] - a[2]) * (b - a))
    return np.array(out) if len(out) >= 3 else None


def _to_pixels(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera points [...,3] (z > 0) to fixed-point pixel coordinates [...,2] int32."""
    uv = (points @ K.T)[..., :2] / points[..., 2:3]
    return np.round(uv * SCALE).astype(np.int32)


def _fill_polygons(img: np.ndarray, polys: np.ndarray, colours, K: np.ndarray,
                   near: float) -> None:
    """Fill convex polygons [m,k,3] given in camera coordinates; ``colours`` holds one RGB tuple
    per polygon. The caller orders them (painter's algorithm) where they overlap."""
    if not len(polys):
        return
    h, w = img.shape[:2]
    z = polys[..., 2]
    ahead = z >= near
    whole = ahead.all(axis=1)
    pts = _to_pixels(polys[whole], K)
    on_screen = ((pts[..., 0].max(axis=1) >= 0) & (pts[..., 0].min(axis=1) < w * SCALE)
                 & (pts[..., 1].max(axis=1) >= 0) & (pts[..., 1].min(axis=1) < h * SCALE))
    idx = np.flatnonzero(whole)
    for j in np.flatnonzero(on_screen):
        cv2.fillConvexPoly(img, pts[j], colours[idx[j]], cv2.LINE_8, SHIFT)
    for i in np.flatnonzero(ahead.any(axis=1) & ~whole):
        clipped = clip_polygon_near(polys[i], near)
        if clipped is not None:
            cv2.fillConvexPoly(img, _to_pixels(clipped, K), colours[i], cv2.LINE_8, SHIFT)


def camera_pose(state: WorldState, camera: Camera) -> np.ndarray:
    """4x4 pose of the camera's optical frame in the world (odom) frame."""
    x, y, yaw = state.ego
    return make_transform(yaw_matrix(yaw), (x, y, 0.0)) @ camera.cam_to_ego


def box_corners(boxes: Boxes) -> np.ndarray:
    """World coordinates [N,8,3] of the boxes' corners (see ``CORNER_SIGNS``)."""
    local = CORNER_SIGNS[None] * boxes.size[:, None, :] / 2
    c, s = np.cos(boxes.yaw)[:, None], np.sin(boxes.yaw)[:, None]
    x = c * local[..., 0] - s * local[..., 1]
    y = s * local[..., 0] + c * local[..., 1]
    return np.stack([x, y, local[..., 2]], axis=-1) + boxes.centre[:, None, :]


def _face_shades(boxes: Boxes) -> np.ndarray:
    """[N,5] brightness of each face under the fixed sun."""
    c, s = np.cos(boxes.yaw), np.sin(boxes.yaw)
    zero, one = np.zeros_like(c), np.ones_like(c)
    normals = np.stack([np.stack([c, s, zero], -1), np.stack([-c, -s, zero], -1),
                        np.stack([-s, c, zero], -1), np.stack([s, -c, zero], -1),
                        np.stack([zero, zero, one], -1)], axis=1)
    return np.clip(0.65 + 0.35 * normals @ LIGHT + FACE_BIAS, 0.45, 1.0)


def _draw_boxes(img, boxes: Boxes, world_to_cam: np.ndarray, cam_pos: np.ndarray, K, near,
                draw_distance: float) -> None:
    if not len(boxes):
        return
    dist = np.linalg.norm(boxes.centre - cam_pos, axis=1)
    corners = box_corners(boxes) @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    # Camera position in each box's frame decides which faces point at it.
    rel = cam_pos - boxes.centre
    c, s = np.cos(boxes.yaw), np.sin(boxes.yaw)
    lx, ly = c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]
    half = boxes.size / 2
    visible = np.stack([lx > half[:, 0], lx < -half[:, 0], ly > half[:, 1], ly < -half[:, 1],
                        rel[:, 2] > half[:, 2]], axis=1)
    shades = _face_shades(boxes)
    candidates = (dist < draw_distance) & (corners[..., 2] >= near).any(axis=1)
    for i in np.argsort(-dist, kind='stable'):
        if not candidates[i]:
            continue
        faces = np.flatnonzero(visible[i])
        colours = [tuple(int(v) for v in np.minimum(boxes.colour[i] * shades[i, f], 255))
                   for f in faces]
        _fill_polygons(img, corners[i][FACES[faces]], colours, K, near)


def render_camera(state: WorldState, camera: Camera, draw_distance: float = 150.0,
                  near: float = NEAR) -> np.ndarray:
    """Render one camera's RGB image (uint8 [H,W,3]) of the world at ``state``."""
    img = camera.background.copy()
    cam_in_world = camera_pose(state, camera)
    world_to_cam = np.linalg.inv(cam_in_world)
    cam_pos = cam_in_world[:3, 3]
    K = camera.K
    if state.ground is not None:
        for quads, colour, centres, radius in state.ground.layers:
            near_enough = np.linalg.norm(centres - cam_pos[:2], axis=1) < draw_distance + radius
            polys = quads[near_enough] @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
            _fill_polygons(img, polys, [colour] * len(polys), K, near)
    boxes = Boxes.concat([state.scenery, state.objects])
    _draw_boxes(img, boxes, world_to_cam, cam_pos, K, near, draw_distance)
    return img
