"""The frozen vision encoder (FROST-Drive): any HuggingFace vision tower, never trained.

Loaded with ``from_pretrained`` from a local directory (no hub access at run time) or built from a
config for tests. Parameters have ``requires_grad=False`` and the module stays in eval mode even
when its parent is put in train mode, so dropout / norm statistics never change.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from rsd_drive.model.config import EncoderConfig, read_preprocessor_normalisation
from rsd_drive.model.frozen import FrozenTower


class FrozenEncoder(FrozenTower):
    """Wraps a transformers vision model; maps images in [0, 1] to patch tokens [B, P, C]."""

    def __init__(self, vision_model: nn.Module, patch_size: int, image_mean, image_std):
        super().__init__()
        self.vision_model = vision_model
        self.patch_size = int(patch_size)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.register_buffer('mean', torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)
        params = inspect.signature(vision_model.forward).parameters
        self._interpolate_kw = 'interpolate_pos_encoding' in params
        self.freeze()

    @property
    def hidden_size(self) -> int:
        return int(self.vision_model.config.hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        kwargs = {'interpolate_pos_encoding': True} if self._interpolate_kw else {}
        tokens = self.vision_model(pixel_values=x, **kwargs).last_hidden_state
        gh, gw = self.token_grid(images.shape[-2:])
        # Drop CLS / register tokens: keep the last gh*gw, which are the patch tokens in row order.
        return tokens[:, tokens.shape[1] - gh * gw:, :]

    def save_pretrained(self, path) -> None:
        self.vision_model.save_pretrained(str(path), safe_serialization=True)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: EncoderConfig, image_hw) -> 'FrozenEncoder':
        """A randomly initialised tower of the given architecture (tests, random baseline)."""
        from transformers import AutoConfig, AutoModel

        hf_cfg = AutoConfig.for_model(
            cfg.model_type, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, intermediate_size=4 * cfg.hidden_size,
            patch_size=cfg.patch_size, image_size=max(image_hw))
        model = AutoModel.from_config(hf_cfg, attn_implementation='eager')
        return cls(model, cfg.patch_size, cfg.image_mean, cfg.image_std)

    @classmethod
    def from_pretrained(cls, path, cfg: EncoderConfig) -> 'FrozenEncoder':
        """Load a vision tower from a local directory (transformers layout).

        With ``cfg.normalisation == 'auto'`` the directory's ``preprocessor_config.json`` (when
        present) sets the input mean/std: SigLIP and CLIP towers are not ImageNet-normalised.
        """
        from transformers import AutoConfig, AutoModel

        path = Path(path)
        if not (path / 'config.json').is_file():
            raise FileNotFoundError(
                f'frozen encoder directory {path} has no config.json; put a transformers vision '
                f'model there (e.g. save_pretrained of SigLIP, CLIP vision, DINOv2 or InternViT)')
        hf_cfg = AutoConfig.from_pretrained(path, local_files_only=True,
                                            trust_remote_code=cfg.trust_remote_code)
        model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation='eager',
                                          trust_remote_code=cfg.trust_remote_code)
        # Dual image-text checkpoints (CLIP, SigLIP): keep only the vision tower.
        if hasattr(model, 'vision_model') and hasattr(hf_cfg, 'vision_config'):
            model, hf_cfg = model.vision_model, hf_cfg.vision_config
            model.config = hf_cfg
        patch = getattr(hf_cfg, 'patch_size', None)
        if patch is None:
            raise ValueError(f'{path}: the model config has no patch_size; '
                             f'not a ViT vision tower?')
        mean, std = cfg.image_mean, cfg.image_std
        if cfg.normalisation == 'auto':
            mean, std = read_preprocessor_normalisation(path) or (mean, std)
        return cls(model, patch, mean, std)


def build_encoder(cfg: EncoderConfig, image_hw, base_dir=None) -> FrozenEncoder:
    """The encoder a config names; relative paths resolve against ``base_dir`` (a checkpoint),
    ``package:`` paths in the installed distribution, and ``sha256`` is checked when set."""
    if cfg.source == 'config':
        return FrozenEncoder.from_config(cfg, image_hw)
    path = cfg.resolve_path(base_dir)
    if cfg.source == 'pretrained':
        return FrozenEncoder.from_pretrained(path, cfg)
    from rsd_drive.model.onnx_encoder import OnnxFrozenEncoder  # issue: real pretrained encoder

    return OnnxFrozenEncoder(path, cfg)
