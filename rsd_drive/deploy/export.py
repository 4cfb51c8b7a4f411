"""Export a RiskPlanner checkpoint to a deploy artifact: ``model.onnx`` + ``deploy.json``.

``rsd-drive export CHECKPOINT --out DEPLOY_DIR`` (default ``CHECKPOINT/deploy``). The graph has
static shapes, named inputs/outputs (``rsd_drive.model.spec``), standard-domain operators only
(checked, so TensorRT builds it without plugins), and takes uint8 RGB images: the cast, /255 and
the encoder's normalisation are in the graph. The ONNX Runtime result is compared with torch on
example inputs and the differences are written into ``deploy.json`` (see
``rsd_drive.deploy.artifact`` for its fields). The directory is written beside its final place and
renamed into it, so a reader sees the old artifact or the new one, never a mix.

This module needs torch (the training machine); the vehicle only reads the artifact.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from rsd_drive.atomic import replace_dir, write_atomic, write_json_atomic
from rsd_drive.deploy.artifact import (DEPLOY_JSON, FORMAT, ONNX_NAME, DeployArtifact,
                                       example_feeds, input_specs, is_artifact, output_specs,
                                       spec_to_json)
from rsd_drive.deploy.torch_inputs import OPSET, example_inputs
from rsd_drive.hashing import update_from_file
from rsd_drive.model.spec import CONFIG_NAME, OUTPUT_NAMES, WEIGHTS_NAME, input_names

DEPLOY_SUBDIR = 'deploy'


class Uint8Images(torch.nn.Module):
    """The planner with uint8 images in: cast and /255 become the first nodes of the graph."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, *inputs):
        """images uint8, then the planner's other inputs in ``input_names`` order."""
        return self.model(images.to(torch.float32) / 255.0, *inputs)


def export_onnx(model, out_path, batch_size: int = 1) -> Path:
    """Write the graph alone to ``out_path`` (atomically), uint8 images in.

    Uses the TorchScript exporter: the model is plain linear/attention/conv ops, which that
    exporter turns into a compact static graph in seconds (the dynamo exporter needs minutes for
    the transformers encoder on a small CPU). A planner whose frozen encoder is an ONNX graph is
    exported as heads + encoder graph merged (``rsd_drive.deploy.onnx_merge``).
    """
    from rsd_drive.model.onnx_encoder import OnnxFrozenEncoder

    out_path = Path(out_path)
    model = model.eval()
    if isinstance(model.encoder, OnnxFrozenEncoder):
        return _export_with_onnx_encoder(model, out_path, batch_size)
    feeds = example_feeds(model.config, batch_size)
    names = input_names(model.config)
    args = tuple(torch.from_numpy(feeds[k]) for k in names)

    def write(tmp):
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(Uint8Images(model).eval(), args, tmp,
                              input_names=list(names), output_names=list(OUTPUT_NAMES),
                              opset_version=OPSET, do_constant_folding=True, dynamo=False)

    return write_atomic(out_path, write)


def _export_with_onnx_encoder(model, out_path: Path, batch_size: int) -> Path:
    """An ONNX-graph encoder can't be traced from torch: export the heads (``plan``) and join
    them with the encoder's own graph into one graph of the same inputs and outputs."""
    from rsd_drive.deploy.onnx_merge import export_heads_onnx, merge_with_planner_onnx

    out_path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        heads = export_heads_onnx(model, Path(tmp) / 'heads.onnx', batch_size, opset=OPSET)
        return merge_with_planner_onnx(model.encoder.source_path, heads, out_path,
                                       image_hw=(cfg.image_height, cfg.image_width),
                                       image_mean=cfg.encoder.image_mean,
                                       image_std=cfg.encoder.image_std,
                                       encoder_output=cfg.encoder.onnx_output)


def check_against_torch(model, onnx_path, seed: int = 1) -> dict:
    """Run the graph in ONNX Runtime (uint8 feeds) and torch (the same images / 255) on the same
    inputs; max abs difference per output."""
    import onnxruntime as ort

    feeds = example_feeds(model.config, 1, seed)
    inputs = example_inputs(model, 1, seed)
    with torch.no_grad():
        args = (inputs[k] for k in input_names(model.config))
        expected = dict(zip(OUTPUT_NAMES, model.eval()(*args)))
    sess = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    got = dict(zip(OUTPUT_NAMES, sess.run(list(OUTPUT_NAMES), feeds)))
    return {k: float(np.max(np.abs(got[k] - expected[k].numpy()))) for k in OUTPUT_NAMES}


# -- the checkpoint's identity --------------------------------------------------------------------
def checkpoint_files(checkpoint) -> list:
    """What the exported graph is made from: config, weights, encoder files (when saved there)."""
    checkpoint = Path(checkpoint)
    files = [checkpoint / CONFIG_NAME, checkpoint / WEIGHTS_NAME]
    encoder_dir = checkpoint / 'encoder'
    if encoder_dir.is_dir():
        files += sorted(p for p in encoder_dir.rglob('*') if p.is_file())
    return [p for p in files if p.is_file()]


def checkpoint_fingerprint(checkpoint) -> str:
    """sha256 over the checkpoint's files; computed once, at export, and kept in deploy.json."""
    checkpoint = Path(checkpoint)
    h = hashlib.sha256()
    for path in checkpoint_files(checkpoint):
        h.update(str(path.relative_to(checkpoint)).encode())
        update_from_file(h, path)
    return h.hexdigest()


def checkpoint_stat(checkpoint) -> dict:
    """relative path -> [size, mtime_ns]: a cheap test of whether a checkpoint changed."""
    checkpoint = Path(checkpoint)
    return {str(p.relative_to(checkpoint)): [p.stat().st_size, p.stat().st_mtime_ns]
            for p in checkpoint_files(checkpoint)}


def _versions() -> dict:
    import onnx
    import onnxruntime

    import rsd_drive

    return {'rsd_drive': rsd_drive.__version__, 'torch': torch.__version__,
            'onnx': onnx.__version__, 'onnxruntime': onnxruntime.__version__,
            'numpy': np.__version__, 'opset': OPSET}


def training_cameras(checkpoint) -> list | None:
    """The camera order a portable checkpoint records (``provenance.json``), else that of the
    training index named by the checkpoint's train.yaml, if any. A relative index path is what
    the trainer was given in its working directory: it is tried from here, then from each
    directory above the checkpoint (a run tree moved or exported from elsewhere still finds its
    index)."""
    import yaml

    from rsd_drive.data.index import MANIFEST, read_manifest
    from rsd_drive.model.portable import recorded_cameras

    checkpoint = Path(checkpoint).resolve()
    recorded = recorded_cameras(checkpoint)
    if recorded:
        return recorded
    train_yaml = checkpoint / 'train.yaml'
    if not train_yaml.is_file():
        return None
    try:
        index = (yaml.safe_load(train_yaml.read_text()) or {}).get('train', {}).get('index')
    except (OSError, ValueError, AttributeError):
        return None
    if not index:
        return None
    index = Path(index)
    candidates = [index] if index.is_absolute() else \
        [index] + [parent / index for parent in checkpoint.parents]
    for path in candidates:
        if (path / MANIFEST).is_file():
            try:
                names = read_manifest(path).get('cameras')
            except (OSError, ValueError, AttributeError):
                continue
            return list(names) if names else None
    return None


# -- the artifact ---------------------------------------------------------------------------------
def build_metadata(model, checkpoint, onnx_path: Path, cameras, diff) -> dict:
    from rsd_drive import INTENTS
    from rsd_drive.deploy.graph_check import assert_plain_graph
    from rsd_drive.deploy.tensorrt_engine import onnx_sha256

    cfg = model.config
    report = assert_plain_graph(onnx_path)
    return {
        'format': FORMAT,
        'exported_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'precision': 'fp32',
        'source_checkpoint': str(Path(checkpoint).resolve()),
        'fingerprint': checkpoint_fingerprint(checkpoint),
        'checkpoint_stat': checkpoint_stat(checkpoint),
        'onnx': {'file': onnx_path.name, 'bytes': onnx_path.stat().st_size,
                 'sha256': onnx_sha256(onnx_path), 'opset': OPSET,
                 'graph_check': report.summary().split(': ', 1)[-1]},
        'inputs': spec_to_json(input_specs(cfg)),
        'outputs': spec_to_json(output_specs(cfg)),
        'cameras': {'count': cfg.num_cameras, 'names': cameras,
                    'image_size': {'height': cfg.image_height, 'width': cfg.image_width},
                    'layout': 'images [B, N, 3, H, W] uint8 RGB in this camera order'},
        'normalisation': {'in_graph': True, 'scale': 1 / 255.0,
                          'mean': list(cfg.encoder.image_mean),
                          'std': list(cfg.encoder.image_std),
                          'formula': '(images / 255 - mean) / std, per RGB channel'},
        'grid': cfg.grid.to_dict(),
        'intents': list(INTENTS),
        'model_config': cfg.to_dict(),
        'check_against_torch': diff,
        'versions': _versions(),
    }


def export_artifact(checkpoint, out_dir=None, cameras=None, check: bool = True,
                    logger=print) -> DeployArtifact:
    """Checkpoint -> deploy directory (default ``CHECKPOINT/deploy``), replaced as a whole."""
    from rsd_drive.model.planner import RiskPlanner

    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir) if out_dir else checkpoint / DEPLOY_SUBDIR
    model = RiskPlanner.from_pretrained(checkpoint).eval()
    cameras = list(cameras) if cameras else training_cameras(checkpoint)
    if cameras is not None and len(cameras) != model.config.num_cameras:
        raise ValueError(f'{len(cameras)} camera names {cameras} for a '
                         f'{model.config.num_cameras}-camera model')
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f'.{out_dir.name}.'))
    try:
        onnx_path = export_onnx(model, tmp / ONNX_NAME)
        diff = check_against_torch(model, onnx_path) if check else None
        write_json_atomic(tmp / DEPLOY_JSON, build_metadata(model, checkpoint, onnx_path,
                                                            cameras, diff))
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    artifact = DeployArtifact.load(out_dir)
    logger(f'wrote {out_dir}/{ONNX_NAME} ({artifact.onnx_path.stat().st_size / 1e6:.1f} MB) and '
           f'{DEPLOY_JSON} (fingerprint {artifact.fingerprint[:12]})')
    return artifact


def artifact_staleness(checkpoint, deploy_dir) -> list[str]:
    """Why ``deploy_dir`` does not (or no longer) match ``checkpoint``; empty when current.
    Compares file sizes and modification times recorded at export (no hashing)."""
    if not is_artifact(deploy_dir):
        return [f'{deploy_dir} has no {DEPLOY_JSON}']
    try:
        meta = json.loads((Path(deploy_dir) / DEPLOY_JSON).read_text())
    except (OSError, ValueError) as e:
        return [f'{DEPLOY_JSON} unreadable ({e})']
    if meta.get('format') != FORMAT:
        return [f'{DEPLOY_JSON} format {meta.get("format")!r} != {FORMAT!r}']
    if meta.get('checkpoint_stat') != checkpoint_stat(checkpoint):
        return ['checkpoint files changed since the export']
    return []


def ensure_checkpoint_artifact(checkpoint, logger=print) -> DeployArtifact:
    """On a training machine: the artifact of a checkpoint (``CHECKPOINT/deploy``), exported
    first when it is missing or older than the checkpoint. The vehicle uses deploy dirs."""
    from rsd_drive.atomic import locked

    deploy_dir = Path(checkpoint) / DEPLOY_SUBDIR
    with locked(checkpoint):  # two processes starting on one checkpoint export it once
        reasons = artifact_staleness(checkpoint, deploy_dir)
        if not reasons:
            return DeployArtifact.load(deploy_dir)
        logger(f'exporting {deploy_dir}: ' + '; '.join(reasons))
        return export_artifact(checkpoint, deploy_dir, check=False, logger=logger)


def add_arguments(parser) -> None:
    parser.add_argument('checkpoint', help='RiskPlanner checkpoint directory (config.yaml + '
                                           'model.safetensors)')
    parser.add_argument('--out', help='deploy directory to write (model.onnx + deploy.json); '
                                      'default: CHECKPOINT/deploy')
    parser.add_argument('--cameras', nargs='+', metavar='NAME',
                        help='camera order of the model (default: from the training index)')
    parser.add_argument('--no-check', action='store_true',
                        help='skip the ONNX Runtime vs torch comparison')
    parser.add_argument('--precision', choices=('fp32', 'int8'), default='fp32',
                        help='int8: the frozen encoder statically quantised (QDQ), calibrated '
                             'on --calibration; heads fp32 (rsd_drive.deploy.quantize)')
    parser.add_argument('--calibration', metavar='INDEX',
                        help='with --precision int8: training index whose frames calibrate it')
    parser.add_argument('--calibration-frames', type=int, default=32, metavar='N')


def export_int8(checkpoint, out_dir, calibration, cameras=None, check: bool = True,
                frames: int = 32, logger=print) -> DeployArtifact:
    """The fp32 artifact (in a temporary directory beside ``out_dir``), then its int8 copy."""
    from rsd_drive.deploy.quantize import quantize_artifact

    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir) if out_dir else checkpoint / 'deploy_int8'
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f'.{out_dir.name}.fp32.') as tmp:
        fp32 = export_artifact(checkpoint, Path(tmp) / 'deploy', cameras=cameras, check=check,
                               logger=logger)
        artifact = quantize_artifact(fp32.path, out_dir, calibration, calibrate_frames=frames,
                                     logger=logger)
    return artifact  # its deploy.json keeps the fp32 graph's check against torch


def run(args) -> int:
    if args.precision == 'int8':
        if not args.calibration:
            raise SystemExit('--precision int8 needs --calibration INDEX (a training index)')
        artifact = export_int8(args.checkpoint, args.out, args.calibration, args.cameras,
                               check=not args.no_check, frames=args.calibration_frames)
        print(f'int8 vs fp32: {artifact.meta["check_against_fp32"]}')
    else:
        artifact = export_artifact(args.checkpoint, args.out, cameras=args.cameras,
                                   check=not args.no_check)
    diff = artifact.meta['check_against_torch']
    if diff:
        print('ONNX Runtime vs torch, max abs difference: '
              + ', '.join(f'{k} {v:.2e}' for k, v in diff.items()))
    print(f'graph: {artifact.meta["onnx"]["graph_check"]}; cameras: '
          f'{artifact.camera_names or "not recorded (pass --cameras)"}')
    return 0
