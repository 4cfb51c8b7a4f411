"""``detector+vlm`` (RSD's recipe): an open-vocabulary detector (OWL-ViT / OWLv2 through
transformers) proposes boxes; the VLM ranks them and gives each a risk and a reason."""
from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np

from rsd_drive.teacher.base import FrameContext, RiskyObject, Teacher, TeacherOutput
from rsd_drive.teacher.answer_cache import image_digest
from rsd_drive.teacher.hf import VisionChat, check_model_dir, torch_dtype
from rsd_drive.teacher.parse import answer_json, parse_rankings, to_image_box
from rsd_drive.teacher.vlm import COORD_WORDS, camera_indices, make_chat

DETECTOR_TYPES = ('owlvit', 'owlv2')


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.5) -> list:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order, keep = list(np.argsort(-scores)), []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = np.array(order, dtype=np.int64)
        if not len(rest):
            break
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = [j for j, o in zip(order, overlap) if o <= iou]
    return keep


class OpenVocabularyDetector:
    """Text-queried box proposals from a local OWL-ViT / OWLv2 checkpoint."""

    def __init__(self, model_dir, device: str = 'cpu', dtype: str = 'float32'):
        import torch
        from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor

        self.path = check_model_dir(model_dir, 'detector')
        self.model_type = AutoConfig.from_pretrained(self.path).model_type
        if self.model_type not in DETECTOR_TYPES:
            raise ValueError(f'{self.path}: detector must be one of {DETECTOR_TYPES}, '
                             f'got {self.model_type}')
        self.device, self.dtype = torch.device(device), torch_dtype(dtype)
        self.processor = AutoProcessor.from_pretrained(self.path)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(
            self.path, dtype=self.dtype).to(self.device).eval()

    def detect(self, image: np.ndarray, queries, min_score: float, max_proposals: int):
        """[(label, score, (x1, y1, x2, y2) in image pixels)], best first, overlaps removed."""
        import torch

        inputs = self.processor(text=[list(queries)], images=[image], return_tensors='pt',
                                padding='max_length', truncation=True)
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point()
                      else v.to(self.device)) for k, v in inputs.items()}
        with torch.inference_mode():
            outputs = self.model(**inputs)
        h, w = image.shape[:2]
        # OWLv2 pads to a square before resizing: its boxes are relative to that square.
        target = (max(h, w), max(h, w)) if self.model_type == 'owlv2' else (h, w)
        result = self.processor.post_process_grounded_object_detection(
            outputs, threshold=-1.0, target_sizes=[target])[0]
        scores = result['scores'].float().cpu().numpy()
        boxes = result['boxes'].float().cpu().numpy()
        labels = result['labels'].cpu().numpy()
        ok = np.isfinite(scores) & np.all(np.isfinite(boxes), axis=1) & (scores >= min_score)
        proposals = []
        idx = np.flatnonzero(ok)
        for j in idx[nms(boxes[idx], scores[idx])] if len(idx) else []:
            try:
                box = to_image_box(boxes[j].tolist(), 'absolute', (h, w), (h, w))
            except ValueError:
                continue
            proposals.append((str(queries[int(labels[j])]), float(scores[j]), box))
            if len(proposals) >= max_proposals:
                break
        return proposals


def _to_model_coords(box, coords: str, image_hw, model_hw) -> list:
    h, w = image_hw
    if coords == 'absolute':
        sx, sy = model_hw[1] / w, model_hw[0] / h
    elif coords == 'norm1000':
        sx, sy = 1000.0 / w, 1000.0 / h
    else:
        sx, sy = 1.0 / w, 1.0 / h
    digits = 3 if coords == 'norm1' else 0
    return [round(box[0] * sx, digits), round(box[1] * sy, digits), round(box[2] * sx, digits),
            round(box[3] * sy, digits)]


class DetectorVlmTeacher(Teacher):
    name = 'detector+vlm'

    def __init__(self, config, chat: VisionChat | None = None,
                 detector: OpenVocabularyDetector | None = None):
        self.config = config
        self.detector = detector or OpenVocabularyDetector(config.detector_dir, config.device,
                                                           config.dtype)
        self.chat = chat or make_chat(config)
        self.coords = self.chat.box_coords(config.vlm.box_coords)
        self.prefetch_depth = self.chat.prefetch_frames(len(config.cameras)) \
            if hasattr(self.chat, 'submit') else 0
        self._proposals = OrderedDict()  # image digest -> proposals (prefetch, then label)

    def proposals(self, image) -> list:
        """The detector's proposals for ``image``, remembered for the frames asked ahead."""
        cfg = self.config.detector
        key = image_digest(image) if self.prefetch_depth else None
        if key is not None and key in self._proposals:
            return self._proposals[key]
        found = self.detector.detect(image, cfg.queries, cfg.min_score, cfg.max_proposals)
        if key is not None:
            self._proposals[key] = found
            while len(self._proposals) > 4 * (self.prefetch_depth + 1) * len(self.config.cameras):
                self._proposals.popitem(last=False)
        return found

    def requests(self, frame):
        """(camera index, proposals, prompt or None when there is nothing to rank)."""
        for i in camera_indices(frame, self.config.cameras):
            image, hw = frame.images[i], frame.image_hw[i]
            proposals = self.proposals(image)
            if not proposals:
                yield i, proposals, None
                continue
            model_hw = self.chat.input_hw(image)
            listing = '; '.join(
                f'{k}: {label} {_to_model_coords(box, self.coords, hw, model_hw)}'
                for k, (label, _score, box) in enumerate(proposals))
            yield i, proposals, self.config.vlm.rank_prompt.format(
                camera=frame.cameras[i], coords=COORD_WORDS[self.coords], candidates=listing)

    def prefetch(self, frame) -> None:
        for i, _proposals, prompt in self.requests(frame):
            if prompt is not None:
                self.chat.submit(frame.images[i], prompt, self.config.vlm.max_new_tokens)

    def describe(self) -> dict:
        return {'backend': self.name, 'detector_dir': str(self.detector.path),
                'detector_type': self.detector.model_type, 'model_dir': str(self.chat.path),
                'model_type': self.chat.model_type, 'box_coords': self.coords,
                'cameras': list(self.config.cameras)}

    def label(self, frame, context: FrameContext) -> TeacherOutput:
        cfg, out, answers, all_parsed = self.config, TeacherOutput(), {}, True
        for i, proposals, prompt in self.requests(frame):
            camera, image = frame.cameras[i], frame.images[i]
            if prompt is None:
                answers[camera] = {'proposals': [], 'answer': ''}
                continue
            text, _ = self.chat.ask(image, prompt, cfg.vlm.max_new_tokens)
            answers[camera] = {'proposals': [{'id': k, 'label': lb, 'score': round(sc, 4),
                                              'box': [round(v, 1) for v in box]}
                                             for k, (lb, sc, box) in enumerate(proposals)],
                               'answer': text}
            data = answer_json(text, out.rejected)
            if data is None:
                all_parsed = False
                continue
            scores, rejected = parse_rankings(data, len(proposals))
            out.rejected.update(rejected)
            for k, (risk, reason) in scores.items():
                label, score, box = proposals[k]
                out.objects.append(RiskyObject(label=label, risk=risk, reason=reason,
                                               camera=camera, box=box, score=score))
        # A camera with no proposals is a valid "nothing risky"; an unreadable ranking is not.
        out.parsed = all_parsed
        out.answer = json.dumps(answers)
        return out
