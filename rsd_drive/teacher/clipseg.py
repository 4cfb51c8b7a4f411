"""``clipseg``: text-prompted dense risk heatmaps (CLIPSeg) per camera; the projector warps them
onto the ground plane below the horizon."""
from __future__ import annotations

import json

import numpy as np

from rsd_drive.teacher.base import FrameContext, Teacher, TeacherOutput
from rsd_drive.teacher.hf import check_model_dir, torch_dtype
from rsd_drive.teacher.vlm import camera_indices


class ClipSegTeacher(Teacher):
    name = 'clipseg'

    def __init__(self, config):
        import torch
        from transformers import AutoConfig, AutoProcessor, CLIPSegForImageSegmentation

        self.config = config
        self.path = check_model_dir(config.model_dir, 'clipseg')
        model_type = AutoConfig.from_pretrained(self.path).model_type
        if model_type != 'clipseg':
            raise ValueError(f'{self.path}: expected a CLIPSeg model, got {model_type}')
        self.device, self.dtype = torch.device(config.device), torch_dtype(config.dtype)
        self.processor = AutoProcessor.from_pretrained(self.path)
        self.model = CLIPSegForImageSegmentation.from_pretrained(
            self.path, dtype=self.dtype).to(self.device).eval()
        self.texts = [str(p['text']) for p in config.clipseg.prompts]
        self.risks = np.array([float(p.get('risk', 1.0)) for p in config.clipseg.prompts],
                              dtype=np.float32)

    def describe(self) -> dict:
        return {'backend': self.name, 'model_dir': str(self.path), 'prompts': self.texts,
                'cameras': list(self.config.cameras)}

    def heatmap(self, image: np.ndarray) -> tuple:
        """(risk heatmap [h, w] at the model's output size, per-prompt max probability)."""
        import torch

        n = len(self.texts)
        inputs = self.processor(text=self.texts, images=[image] * n, padding=True,
                                truncation=True, return_tensors='pt')
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point()
                      else v.to(self.device)) for k, v in inputs.items()}
        with torch.inference_mode():
            logits = self.model(**inputs).logits.float()
        probs = torch.sigmoid(logits.reshape(n, *logits.shape[-2:])).cpu().numpy()
        probs = np.where(probs >= self.config.clipseg.min_heat, probs, 0.0)
        heat = (probs * self.risks[:, None, None]).max(axis=0)
        return heat.astype(np.float32), probs.reshape(n, -1).max(axis=1)

    def label(self, frame, context: FrameContext) -> TeacherOutput:
        out, answers = TeacherOutput(), {}
        for i in camera_indices(frame, self.config.cameras):
            camera = frame.cameras[i]
            heat, peaks = self.heatmap(frame.images[i])
            answers[camera] = {t: (round(float(p), 4) if np.isfinite(p) else None)
                               for t, p in zip(self.texts, peaks)}
            if not np.all(np.isfinite(heat)):
                out.rejected['nan_heatmap'] += 1
                out.parsed = False
                continue
            out.heatmaps[camera] = heat
        out.answer = json.dumps(answers)
        return out
