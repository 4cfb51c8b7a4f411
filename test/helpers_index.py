"""A small training index fabricated for tests, with targets that depend learnably on the inputs.

Every frame has a single object on the ground ahead of the ego vehicle. It is drawn into the
front camera as a bright square at the pixel where the camera model (rsd_drive.geometry) projects
it, sized by its depth; the rear camera sees only background. From the inputs a model can learn:

* the planning target: the ego drives on at its current speed (from the past states), bends by
  ``TURN_OFFSET_M`` metres left or right at 5 s when the intent says so, and brakes to a stop
  short of the object when the object is in its lane (``|y| < LANE_HALF_WIDTH_M``), which is only
  visible in the image;
* the teacher risk grid: a Gaussian blob at the object's ground position, the same position the
  bright square shows in the image.

The index is written with the real ``ShardWriter`` (atomic shards, manifest) and read back through
``FrameIndex`` like any labelled drive.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rsd_drive.data.index import ShardWriter
from rsd_drive.geometry import GridSpec, camera_to_ego, intrinsics, project_points
from rsd_drive.model.config import EncoderConfig, ModelConfig

TEST_GRID = GridSpec(rows=16, cols=16, resolution=2.0, origin_x=-8.0, origin_y=-16.0)
IMAGE_HW = (32, 32)
FREQUENCY_HZ = 4.0
PAST_STEPS, FUTURE_STEPS = 16, 20
TURN_OFFSET_M = 5.0
LANE_HALF_WIDTH_M = 2.0
STOP_MARGIN_M = 4.0
RISK_SIGMA_M = 2.0


def tiny_model_config(**overrides) -> ModelConfig:
    """A planner small enough to train in seconds on a CPU (2 cameras, 32x32 images)."""
    encoder = EncoderConfig(source='config', model_type='dinov2', hidden_size=32, num_layers=1,
                            num_heads=2, patch_size=8)
    kwargs = dict(num_cameras=2, image_height=IMAGE_HW[0], image_width=IMAGE_HW[1],
                  encoder=encoder, d_model=32, num_heads=2, bev_size=8, adapter_layers=1,
                  planner_layers=1, num_ego_queries=2, grid=TEST_GRID)
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def camera_rig():
    """(intrinsics [2,3,3], cam_to_ego [2,4,4]) of a front and a rear camera at IMAGE_HW."""
    h, w = IMAGE_HW
    K = intrinsics(16.0, 16.0, (w - 1) / 2.0, (h - 1) / 2.0)
    front = camera_to_ego(1.5, 0.0, 3.0, yaw=0.0, pitch=0.3)
    rear = camera_to_ego(-0.5, 0.0, 3.0, yaw=np.pi, pitch=0.3)
    return np.stack([K, K]).astype(np.float32), np.stack([front, rear]).astype(np.float32)


def _background(rng) -> np.ndarray:
    h, w = IMAGE_HW
    image = np.empty((h, w, 3), dtype=np.float32)
    image[: h // 2] = (110.0, 130.0, 160.0)  # sky
    image[h // 2:] = (70.0, 70.0, 70.0)  # road
    image += rng.normal(0.0, 6.0, size=image.shape)
    return image


def _draw_object(image, K, cam_to_ego, x, y) -> None:
    """Bright square at the projection of a 1 m tall object standing at (x, y)."""
    uv, depth = project_points(np.array([[x, y, 0.5]]), K, cam_to_ego)
    if depth[0] <= 0.5:
        return
    u, v = uv[0]
    half = max(1, int(round(12.0 / depth[0])))
    h, w = image.shape[:2]
    r0, r1 = int(np.clip(round(v) - half, 0, h)), int(np.clip(round(v) + half + 1, 0, h))
    c0, c1 = int(np.clip(round(u) - half, 0, w)), int(np.clip(round(u) + half + 1, 0, w))
    image[r0:r1, c0:c1] = (250.0, 240.0, 60.0)


def _future_path(speed, intent, obj_x, obj_y) -> np.ndarray:
    """Planning target [20, 2]: speed profile (braking for an in-lane object) and intent bend."""
    t = np.arange(1, FUTURE_STEPS + 1) / FREQUENCY_HZ
    if abs(obj_y) < LANE_HALF_WIDTH_M:
        stop_at = max(obj_x - STOP_MARGIN_M, 1.0)
        decel = speed ** 2 / (2.0 * stop_at)
        t_stop = speed / decel
        tc = np.minimum(t, t_stop)
        x = speed * tc - 0.5 * decel * tc ** 2
    else:
        x = speed * t
    sign = {1: 0.0, 2: 1.0, 3: -1.0}[int(intent)]
    y = sign * TURN_OFFSET_M * (x / max(x[-1], 1e-6)) ** 2
    return np.stack([x, y], axis=-1).astype(np.float32)


def _risk_grid(obj_x, obj_y, grid: GridSpec) -> np.ndarray:
    xs, ys = grid.cell_centers()
    d2 = (xs - obj_x) ** 2 + (ys - obj_y) ** 2
    return np.exp(-0.5 * d2 / RISK_SIGMA_M ** 2).astype(np.float16)


def make_frame(rng, grid: GridSpec = TEST_GRID, stamp_ns: int = 0) -> dict:
    """One frame with every ShardWriter field."""
    K, cam_to_ego = camera_rig()
    speed = float(rng.uniform(4.0, 10.0))
    intent = int(rng.integers(1, 4))  # straight / left / right
    obj_x = float(rng.uniform(8.0, 22.0))
    obj_y = float(rng.uniform(-6.0, 6.0))
    images = []
    for cam in range(2):
        image = _background(rng)
        if cam == 0:
            _draw_object(image, K[cam].astype(np.float64), cam_to_ego[cam].astype(np.float64),
                         obj_x, obj_y)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    past_t = (np.arange(PAST_STEPS) - (PAST_STEPS - 1)) / FREQUENCY_HZ  # -3.75 .. 0 s
    past = np.zeros((PAST_STEPS, 4), dtype=np.float32)
    past[:, 0] = speed * past_t
    past[:, 3] = speed
    return {
        'images': np.stack(images), 'intrinsics': K, 'cam_to_ego': cam_to_ego,
        'past_states': past, 'intent': intent, 'init_speed': speed,
        'future': _future_path(speed, intent, obj_x, obj_y),
        'risk': _risk_grid(obj_x, obj_y, grid),
        'stamps': stamp_ns,
    }


def make_index(path, frames: int = 64, seed: int = 0, shard_size: int = 32,
               grid: GridSpec = TEST_GRID) -> Path:
    """Write ``frames`` frames as shards of ``shard_size`` into a new index at ``path``."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    written = 0
    shard = 0
    while written < frames:
        writer = ShardWriter(path, f'synthetic_{seed}_{shard:03d}', meta={'source': 'test'})
        for _ in range(min(shard_size, frames - written)):
            writer.add(**make_frame(rng, grid, stamp_ns=written * 250_000_000))
            written += 1
        writer.commit(grid=grid.to_dict(), image_hw=list(IMAGE_HW), cameras=['front', 'back'])
        shard += 1
    return path
