"""What both export paths share (``deploy.export`` for a traced planner, ``deploy.onnx_merge`` for
one with an ONNX-graph encoder): the ONNX opset and the example inputs as torch tensors.

Needs torch (the training machine), like the two modules that import it.
"""
from __future__ import annotations

import torch

from rsd_drive.deploy.artifact import example_feeds

OPSET = 17


def example_inputs(model, batch_size: int = 1, seed: int = 0) -> dict:
    """The example feeds as torch tensors, for the torch model: images as float in [0, 1]
    (exactly the uint8 feeds / 255, what the graph computes from them)."""
    feeds = example_feeds(model.config, batch_size, seed)
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    tensors['images'] = tensors['images'].to(torch.float32) / 255.0
    return tensors
