"""Export a RiskPlanner checkpoint (frozen encoder included) to one ONNX graph.

Static shapes, named inputs/outputs (rsd_drive.model.INPUT_NAMES / OUTPUT_NAMES), standard-domain
operators only, so TensorRT builds it without plugins. A JSON sidecar next to the graph records
the input shapes and dtypes and the model config, for the backends and the engine cache.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from rsd_drive.model import INPUT_NAMES, OUTPUT_NAMES, RiskPlanner

OPSET = 17


def example_inputs(model: RiskPlanner, batch_size: int = 1, seed: int = 0) -> dict:
    """Plausible inputs of the model's static shapes (a ring of cameras, straight driving)."""
    from rsd_drive.geometry import camera_to_ego, intrinsics

    c = model.config
    g = torch.Generator().manual_seed(seed)
    n, h, w = c.num_cameras, c.image_height, c.image_width
    K = torch.tensor(intrinsics(0.8 * w, 0.8 * w, w / 2, h / 2), dtype=torch.float32)
    yaws = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    E = torch.stack([torch.tensor(camera_to_ego(1.0, 0.0, 1.6, y), dtype=torch.float32)
                     for y in yaws])
    past = torch.zeros(batch_size, c.past_steps, 4)
    past[..., 0] = torch.linspace(-(c.past_steps - 1) * 2.5, 0.0, c.past_steps)
    past[..., 3] = 10.0
    return {
        'images': torch.rand(batch_size, n, 3, h, w, generator=g),
        'intrinsics': K.expand(batch_size, n, 3, 3).contiguous(),
        'cam_to_ego': E.expand(batch_size, n, 4, 4).contiguous(),
        'past_states': past,
        'intent': torch.ones(batch_size, dtype=torch.int64),
    }


def input_spec(inputs: dict) -> dict:
    return {k: {'shape': list(v.shape), 'dtype': str(v.dtype).replace('torch.', '')}
            for k, v in inputs.items()}


def export_onnx(model: RiskPlanner, out_path, batch_size: int = 1) -> Path:
    """Write ``out_path`` (ONNX) and ``out_path.with_suffix('.json')`` (shapes + config).

    Uses the TorchScript exporter: the model is plain linear/attention/conv ops, which that
    exporter turns into a compact static graph in seconds (the dynamo exporter needs minutes for
    the transformers encoder on a small CPU). Written to a temp file and renamed into place.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    from rsd_drive.model.onnx_encoder import OnnxFrozenEncoder

    if isinstance(model.encoder, OnnxFrozenEncoder):
        return _export_with_onnx_encoder(model, out_path, batch_size)
    inputs = example_inputs(model, batch_size)
    args = tuple(inputs[k] for k in INPUT_NAMES)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=out_path.name, suffix='.tmp')
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(model, args, tmp, input_names=list(INPUT_NAMES),
                              output_names=list(OUTPUT_NAMES), opset_version=OPSET,
                              do_constant_folding=True, dynamo=False)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    sidecar = {'inputs': input_spec(inputs), 'outputs': list(OUTPUT_NAMES), 'opset': OPSET,
               'model_config': model.config.to_dict()}
    out_path.with_suffix('.json').write_text(json.dumps(sidecar, indent=1))
    return out_path


def _export_with_onnx_encoder(model: RiskPlanner, out_path: Path, batch_size: int) -> Path:
    """An ONNX-graph encoder can't be traced from torch: export the heads (``plan``) and join
    them with the encoder's own graph into one graph of the same inputs and outputs."""
    from rsd_drive.model.onnx_encoder import export_heads_onnx, merge_with_planner_onnx

    enc = model.encoder
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        heads = export_heads_onnx(model, Path(tmp) / 'heads.onnx', batch_size)
        merge_with_planner_onnx(enc.source_path, heads, out_path,
                                image_hw=(model.config.image_height, model.config.image_width),
                                image_mean=model.config.encoder.image_mean,
                                image_std=model.config.encoder.image_std,
                                encoder_output=model.config.encoder.onnx_output)
    inputs = example_inputs(model, batch_size)
    sidecar = {'inputs': input_spec(inputs), 'outputs': list(OUTPUT_NAMES), 'opset': OPSET,
               'model_config': model.config.to_dict(), 'encoder_graph': str(enc.source_path)}
    out_path.with_suffix('.json').write_text(json.dumps(sidecar, indent=1))
    return out_path


def check_against_torch(model: RiskPlanner, onnx_path, seed: int = 1) -> dict:
    """Run the ONNX graph in ONNX Runtime and torch on the same inputs; max abs difference."""
    import onnxruntime as ort

    inputs = example_inputs(model, batch_size=1, seed=seed)
    with torch.no_grad():
        expected = dict(zip(OUTPUT_NAMES, model.eval()(*(inputs[k] for k in INPUT_NAMES))))
    sess = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    got = dict(zip(OUTPUT_NAMES, sess.run(list(OUTPUT_NAMES),
                                          {k: v.numpy() for k, v in inputs.items()})))
    return {k: float(np.max(np.abs(got[k] - expected[k].numpy()))) for k in OUTPUT_NAMES}


def add_arguments(parser) -> None:
    parser.add_argument('checkpoint', help='RiskPlanner checkpoint directory (config.yaml + '
                                           'model.safetensors)')
    parser.add_argument('--out', help='ONNX file to write (default: CHECKPOINT/model.onnx)')
    parser.add_argument('--no-check', action='store_true',
                        help='skip the ONNX Runtime vs torch comparison')


def run(args) -> int:
    model = RiskPlanner.from_pretrained(args.checkpoint)
    out = Path(args.out) if args.out else Path(args.checkpoint) / 'model.onnx'
    export_onnx(model, out)
    print(f'wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix(".json")}')
    if not args.no_check:
        diff = check_against_torch(model, out)
        print('ONNX Runtime vs torch, max abs difference: '
              + ', '.join(f'{k} {v:.2e}' for k, v in diff.items()))
    return 0
