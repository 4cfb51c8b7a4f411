"""Tiny, randomly initialised teacher models built from configs and saved like real checkpoints.

Used by the tests, the labeling benchmark and anyone trying the pipeline without downloading
weights: each builder writes a directory that the backends load with the same ``from_pretrained``
code a user runs on a real Qwen2.5-VL / OWL-ViT / CLIPSeg checkpoint. Their outputs are garbage,
which is exactly what the answer parser and the projector must survive.

Tokenizers are byte-level BPE with no merges (every byte is a token), so any text encodes; the
Qwen-style vocabulary adds the chat and vision special tokens its processor expects.
"""
from __future__ import annotations

from pathlib import Path

QWEN_SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|vision_start|>',
                 '<|vision_end|>', '<|image_pad|>', '<|video_pad|>']
# The Qwen2-VL chat layout (system turn omitted): images become <|vision_start|><|image_pad|>...
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    '{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}'
    '{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}')


def byte_alphabet() -> list:
    """GPT-2's printable stand-ins for the 256 byte values (byte-level BPE alphabet)."""
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) \
        + list(range(ord('®'), ord('ÿ') + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _seed(seed: int) -> None:
    import torch
    torch.manual_seed(seed)


def build_tiny_vlm(path, arch: str = 'qwen2_5_vl', seed: int = 0) -> Path:
    """A ~0.2 M parameter Qwen2.5-VL (or Qwen2-VL) with its tokenizer, image processor and chat
    template, saved to ``path``."""
    import json

    from tokenizers import AddedToken
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2VLConfig, Qwen2VLForConditionalGeneration)
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import \
        Qwen2VLImageProcessorPil

    if arch not in ('qwen2_5_vl', 'qwen2_vl'):
        raise ValueError(f'tiny vlm arch must be qwen2_5_vl or qwen2_vl, got {arch!r}')
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {ch: i for i, ch in enumerate(byte_alphabet())}
    for tok in QWEN_SPECIALS:
        vocab[tok] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token='<|im_end|>',
                               pad_token='<|endoftext|>', chat_template=QWEN_CHAT_TEMPLATE)
    tokenizer.add_tokens([AddedToken(t, special=True) for t in QWEN_SPECIALS],
                         special_tokens=True)
    images = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64,
                                      patch_size=14, merge_size=2, temporal_patch_size=2)
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=4096,
                rope_parameters={'rope_type': 'default', 'mrope_section': [2, 3, 3],
                                 'rope_theta': 10000.0},
                bos_token_id=None, eos_token_id=vocab['<|im_end|>'],
                pad_token_id=vocab['<|endoftext|>'])
    ids = dict(image_token_id=vocab['<|image_pad|>'], video_token_id=vocab['<|video_pad|>'],
               vision_start_token_id=vocab['<|vision_start|>'],
               vision_end_token_id=vocab['<|vision_end|>'])
    _seed(seed)
    if arch == 'qwen2_5_vl':
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                      out_hidden_size=64, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
        model = Qwen2_5_VLForConditionalGeneration(
            Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids))
        processor_class = 'Qwen2_5_VLProcessor'
    else:
        vision = dict(depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        model = Qwen2VLForConditionalGeneration(
            Qwen2VLConfig(text_config=text, vision_config=vision, **ids))
        processor_class = 'Qwen2VLProcessor'
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    images.save_pretrained(path)
    (path / 'processor_config.json').write_text(json.dumps({'processor_class': processor_class}))
    return path


def _clip_tokenizer(max_length: int):
    from transformers import CLIPTokenizer

    vocab = {'<|startoftext|>': 0, '<|endoftext|>': 1}
    for ch in byte_alphabet():
        vocab[ch] = len(vocab)
    for ch in byte_alphabet():
        vocab[ch + '</w>'] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token='!', model_max_length=max_length)


def _clip_text_config(tokenizer, max_length: int) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=max_length,
                bos_token_id=0, eos_token_id=1, pad_token_id=tokenizer.pad_token_id)


def build_tiny_detector(path, seed: int = 0) -> Path:
    """A tiny OWL-ViT open-vocabulary detector (64x64 input, 16 box proposals) + processor."""
    from transformers import (OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessorPil,
                              OwlViTProcessor)

    path = Path(path)
    tokenizer = _clip_tokenizer(16)  # OWL-ViT's query length
    images = OwlViTImageProcessorPil(size={'height': 64, 'width': 64},
                                     crop_size={'height': 64, 'width': 64})
    _seed(seed)
    model = OwlViTForObjectDetection(OwlViTConfig(
        text_config=_clip_text_config(tokenizer, 16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=64, patch_size=16),
        projection_dim=32))
    model.save_pretrained(path)
    OwlViTProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path


def build_tiny_clipseg(path, seed: int = 0) -> Path:
    """A tiny CLIPSeg (64x64 input and output) + processor."""
    from transformers import (CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor,
                              ViTImageProcessorPil)

    path = Path(path)
    tokenizer = _clip_tokenizer(77)  # CLIP's text length
    images = ViTImageProcessorPil(size={'height': 64, 'width': 64})
    _seed(seed)
    model = CLIPSegForImageSegmentation(CLIPSegConfig(
        text_config=_clip_text_config(tokenizer, 77),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                           num_attention_heads=2, image_size=64, patch_size=16),
        projection_dim=32, extract_layers=[1, 2], reduce_dim=16, decoder_num_attention_heads=2,
        decoder_intermediate_size=32))
    model.save_pretrained(path)
    CLIPSegProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path
