"""Loading the teachers' ``transformers`` models from local directories (no hub at run time).

:class:`VisionChat` wraps an image-text-to-text model (``AutoModelForImageTextToText``, Qwen2.5-VL
class) and its ``AutoProcessor``. Qwen2-VL-family processors also construct a *video* processor,
which needs torchvision; where torchvision is missing (CPU wheels here), the same checkpoint is
served by its tokenizer + image processor with the processor's image-token expansion done here,
so the model sees exactly the inputs its processor would build.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

QWEN_VL_TYPES = ('qwen2_vl', 'qwen2_5_vl')
DTYPES = {'float32': 'float32', 'bfloat16': 'bfloat16', 'float16': 'float16'}
# The pixel budget of the released Qwen2.5-VL checkpoints' preprocessor_config.json
# ("min_pixels": 3136, "max_pixels": 12845056); transformers' Qwen2VLImageProcessor defaults to
# max_pixels 28 * 28 * 1280 when a checkpoint does not say.
QWEN2_5_VL_MIN_PIXELS = 56 * 56
QWEN2_5_VL_MAX_PIXELS = 28 * 28 * 16384
QWEN_FACTOR = 28   # patch_size 14 x merge_size 2


def smart_resize(height: int, width: int, factor: int = QWEN_FACTOR,
                 min_pixels: int = QWEN2_5_VL_MIN_PIXELS,
                 max_pixels: int = QWEN2_5_VL_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) a Qwen2-VL / Qwen2.5-VL image processor resizes an image to: both
    multiples of ``factor``, ``min_pixels <= h * w <= max_pixels``, aspect ratio kept as closely
    as possible. Qwen2.5-VL's absolute box coordinates are pixels of this size.

    A faithful copy of ``smart_resize`` in transformers
    (``models/qwen2_vl/image_processing_qwen2_vl.py``, also ``image_processing_pil_qwen2_vl.py``;
    the same function is in Qwen's ``qwen_vl_utils/vision_process.py``), Python's ``round``
    (half to even) included; only the defaults differ (Qwen2.5-VL's released budget here)."""
    import math

    if max(height, width) / min(height, width) > 200:
        raise ValueError(f'absolute aspect ratio must be smaller than 200, got '
                         f'{max(height, width) / min(height, width)}')
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def default_box_coords(model_type: str, setting: str) -> str:
    """'auto' -> the convention of the model family (Qwen2.5-VL: absolute pixels of its input;
    Qwen2-VL and most others: 0..1000); anything else as set."""
    if setting != 'auto':
        return setting
    return 'absolute' if model_type == 'qwen2_5_vl' else 'norm1000'


def torch_dtype(name: str):
    import torch
    return getattr(torch, DTYPES[name])


def check_model_dir(path, what: str) -> Path:
    """A local model directory with a config.json, or a clear error naming the setting."""
    if not path:
        raise ValueError(f'{what}: no model directory given (set it in config/teacher.yaml or '
                         f'pass --model-dir); models load from local directories only')
    p = Path(path).expanduser()
    if not (p / 'config.json').is_file():
        raise FileNotFoundError(f'{what}: {p} is not a transformers model directory '
                                f'(no config.json); save one with save_pretrained first')
    return p


def _to_device(inputs: dict, device, dtype) -> dict:
    out = {}
    for k, v in inputs.items():
        if hasattr(v, 'to'):
            v = v.to(device)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


class VisionChat:
    """One image + one text prompt in, the model's generated text out."""

    def __init__(self, model_dir, device: str = 'cpu', dtype: str = 'float32'):
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        self.path = check_model_dir(model_dir, 'vlm')
        self.device, self.dtype = torch.device(device), torch_dtype(dtype)
        self.config = AutoConfig.from_pretrained(self.path)
        self.model_type = self.config.model_type
        self.model = AutoModelForImageTextToText.from_pretrained(
            self.path, dtype=self.dtype).to(self.device).eval()
        self.processor = None
        try:
            self.processor = AutoProcessor.from_pretrained(self.path)
            self.tokenizer = self.processor.tokenizer
            self.image_processor = self.processor.image_processor
        except ImportError as exc:
            if self.model_type not in QWEN_VL_TYPES:
                raise RuntimeError(f'{self.path}: the processor of {self.model_type} needs a '
                                   f'missing package: {exc}') from exc
            from transformers import AutoImageProcessor, AutoTokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.image_processor = AutoImageProcessor.from_pretrained(self.path)
            if getattr(self.tokenizer, 'chat_template', None) is None:
                self.tokenizer.chat_template = self._read_chat_template()
        self.loaded_via = 'AutoProcessor' if self.processor is not None else \
            'AutoTokenizer+AutoImageProcessor'

    def _read_chat_template(self) -> str:
        import json
        jinja = self.path / 'chat_template.jinja'
        if jinja.is_file():
            return jinja.read_text()
        js = self.path / 'chat_template.json'
        if js.is_file():
            return json.loads(js.read_text())['chat_template']
        raise FileNotFoundError(f'{self.path}: no chat template')

    def _inputs(self, image: np.ndarray, prompt: str) -> dict:
        messages = [{'role': 'user', 'content': [{'type': 'image'},
                                                 {'type': 'text', 'text': prompt}]}]
        if self.processor is not None:
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                      tokenize=False)
            return dict(self.processor(text=[text], images=[image], return_tensors='pt'))
        # Qwen2-VL processor semantics: one <|image_pad|> per merged patch of the image.
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
        pixels = self.image_processor(images=[image], return_tensors='pt')
        merge = int(self.image_processor.merge_size)
        n_tokens = int(pixels['image_grid_thw'][0].prod()) // (merge * merge)
        image_token = getattr(self.tokenizer, 'image_token', None) or '<|image_pad|>'
        text = text.replace(image_token, image_token * n_tokens, 1)
        tokens = self.tokenizer([text], return_tensors='pt')
        image_token_id = self.tokenizer.convert_tokens_to_ids(image_token)
        mm = (tokens['input_ids'] == image_token_id).int()
        return {**tokens, **pixels, 'mm_token_type_ids': mm}

    def model_input_hw(self, inputs: dict, image_hw) -> tuple:
        """(height, width) of the image as the model saw it (box coordinates refer to it)."""
        grid = inputs.get('image_grid_thw')
        patch = getattr(self.image_processor, 'patch_size', None)
        if grid is not None and patch:
            return int(grid[0][1]) * int(patch), int(grid[0][2]) * int(patch)
        return tuple(image_hw)

    def input_hw(self, image: np.ndarray) -> tuple:
        """(height, width) the model will see ``image`` at (runs the image processor only)."""
        pixels = self.image_processor(images=[image], return_tensors='pt')
        return self.model_input_hw(pixels, image.shape[:2])

    def ask(self, image: np.ndarray, prompt: str, max_new_tokens: int = 256):
        """Greedy answer to ``prompt`` about ``image`` (HxWx3 uint8 RGB): (text, model_hw)."""
        import torch

        inputs = self._inputs(image, prompt)
        model_hw = self.model_input_hw(inputs, image.shape[:2])
        inputs = _to_device(inputs, self.device, self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=int(max_new_tokens),
                                      do_sample=False)
        new = out[:, inputs['input_ids'].shape[1]:]
        text = self.tokenizer.batch_decode(new, skip_special_tokens=True)[0]
        return text, model_hw

    def box_coords(self, setting: str) -> str:
        return default_box_coords(self.model_type, setting)
