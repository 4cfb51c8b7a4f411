"""What every frozen vision tower shares (``FrozenEncoder``: transformers; ``OnnxFrozenEncoder``:
an ONNX graph): no trainable parameters, eval mode whatever its parent asks, and the patch-token
grid of an image size."""
from __future__ import annotations

from torch import nn


class FrozenTower(nn.Module):
    """Base of the frozen encoders: subclasses set ``patch_size`` and call :meth:`freeze` at the
    end of ``__init__``."""

    patch_size: int

    def freeze(self) -> None:
        """No gradients, eval mode: dropout and norm statistics never change."""
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # noqa: D102 (frozen: eval whatever the parent asks)
        return super().train(False)

    def token_grid(self, image_hw) -> tuple[int, int]:
        """(rows, columns) of patch tokens for an image of ``image_hw`` (H, W)."""
        return image_hw[0] // self.patch_size, image_hw[1] // self.patch_size
