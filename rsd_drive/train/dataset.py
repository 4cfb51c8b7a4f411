"""Torch dataset over a training index: cached frozen features (default) or raw camera images.

Inputs and targets stay apart (NAVSIM's lesson): ``INPUT_KEYS`` are what the model sees, the
rest are targets and bookkeeping used by the losses and metrics.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from rsd_drive.data.index import FIELDS, FrameIndex
from rsd_drive.data.preprocess import model_inputs
from rsd_drive.geometry import GridSpec

INPUT_KEYS = ('features', 'images', 'intrinsics', 'cam_to_ego', 'past_states', 'intent', 'route',
              'route_valid')
TARGET_KEYS = ('future', 'init_speed', 'risk')
NON_IMAGE_FIELDS = tuple(k for k in FIELDS if k != 'images')


def check_index_fits(index: FrameIndex, model_cfg) -> None:
    """Raise ValueError naming the index and the mismatch if it cannot feed this model."""
    if len(index) == 0:
        raise ValueError(f'{index.index_dir}: the index has no frames')
    frame = index[0]
    c = model_cfg
    expected = {
        'images': (c.num_cameras, c.image_height, c.image_width, 3),
        'past_states': (c.past_steps, 4),
        'future': (c.future_steps, 2),
        'risk': (c.grid.rows, c.grid.cols),
    }
    problems = [f'{k} has shape {tuple(frame[k].shape)}, the model needs {shape}'
                for k, shape in expected.items() if tuple(frame[k].shape) != shape]
    if c.route_points:
        route = index.manifest.get('route')
        if route is not None and (route.get('points') != c.route_points
                                  or abs(route.get('spacing_m', 0) - c.route_spacing_m) > 1e-9):
            problems.append(f'route input {route} differs from the model\'s '
                            f'{c.route_points} points every {c.route_spacing_m} m')
    grid = index.manifest.get('grid')
    if grid is not None and GridSpec(**grid) != c.grid:
        problems.append(f'risk grid {grid} differs from the model grid {c.grid.to_dict()}')
    if problems:
        raise ValueError(f'{index.index_dir} does not fit the model config: '
                         + '; '.join(problems))


def _float32(array) -> torch.Tensor:
    # A copy: index arrays are read-only memory maps, torch wants writable memory.
    return torch.from_numpy(np.array(array, dtype=np.float32))


class FrameDataset(Dataset):
    """``dataset[i]`` -> dict of tensors for frame i of the index.

    features: a ``CachedFeatures`` reader -> item 'features' float16 [N, P, C]; or None with
    ``images=True`` -> item 'images' float32 [N, 3, H, W] in [0, 1] (encoder in the loop).
    Always: intrinsics, cam_to_ego, past_states, intent (inputs); future, init_speed, risk
    (targets, risk as float32); 'frame' (the global frame number, for reports). With
    ``route_points`` > 0 also route [R, 2] and route_valid (an index frame without a route, or
    an index written before the route input, gives zeros with the mask off).
    """

    def __init__(self, index, features=None, images: bool = False, route_points: int = 0):
        self.index = index if isinstance(index, FrameIndex) else FrameIndex(index)
        if (features is None) == (not images):
            raise ValueError('FrameDataset needs exactly one of features= or images=True')
        if features is not None and len(features) != len(self.index):
            raise ValueError(f'feature cache has {len(features)} frames, index '
                             f'{self.index.index_dir} has {len(self.index)}')
        self.features, self.images = features, images
        self.route_points = int(route_points)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        if self.images:
            frame = self.index[i]
            # One frame -> the model's named inputs with a batch of 1 (the node's exact path).
            inputs = model_inputs(frame['images'], frame['intrinsics'], frame['cam_to_ego'],
                                  frame['past_states'], frame['intent'])
            item = {k: torch.from_numpy(np.array(v[0])) for k, v in inputs.items()}
        else:
            frame = self.index.get(i, NON_IMAGE_FIELDS)  # the pixels are in the cache already
            item = {'features': torch.from_numpy(self.features[i]),
                    'intent': torch.tensor(int(frame['intent']), dtype=torch.int64)}
            for k in ('intrinsics', 'cam_to_ego', 'past_states'):
                item[k] = _float32(frame[k])
        if self.route_points:
            item.update(self._route(frame))
        item['future'] = _float32(frame['future'])
        item['init_speed'] = torch.tensor(float(frame['init_speed']), dtype=torch.float32)
        item['risk'] = _float32(frame['risk'])
        item['frame'] = torch.tensor(i, dtype=torch.int64)
        return item

    def _route(self, frame) -> dict:
        route = np.asarray(frame['route'], np.float32).reshape(-1, 2)
        valid = float(frame['route_valid']) > 0.5 and len(route) == self.route_points
        if not valid:
            route = np.zeros((self.route_points, 2), np.float32)
        return {'route': torch.from_numpy(np.array(route)),
                'route_valid': torch.tensor(1.0 if valid else 0.0, dtype=torch.float32)}
