"""``vlm``: an image-text-to-text model (Qwen2.5-VL class) asked, per configured camera, for the
risky objects as JSON (``bbox_2d``, ``label``, ``risk``, ``reason``). The model runs in process
(transformers, ``teacher.runtime: in-process``) or behind a server (``served``, teacher.served):
same prompts, same image layout, same parser."""
from __future__ import annotations

import json

from rsd_drive.teacher.base import FrameContext, Teacher, TeacherOutput
from rsd_drive.teacher.hf import VisionChat
from rsd_drive.teacher.parse import answer_json, parse_objects

COORD_WORDS = {'absolute': 'pixels of the image', 'norm1000': 'coordinates scaled to 0..1000',
               'norm1': 'coordinates scaled to 0..1'}


def camera_indices(frame, cameras) -> list:
    """Indices of the configured cameras in the frame (unknown names are a config error)."""
    missing = [c for c in cameras if c not in frame.cameras]
    if missing:
        raise ValueError(f'teacher.cameras {missing} not in the drive cameras {frame.cameras}')
    return [frame.cameras.index(c) for c in cameras]


def make_chat(config):
    """The VLM of ``config.runtime``: in process (VisionChat) or served (ServedChat)."""
    if config.runtime == 'served':
        from rsd_drive.teacher.served import ServedChat
        return ServedChat(config.served)
    return VisionChat(config.model_dir, config.device, config.dtype)


class VlmTeacher(Teacher):
    name = 'vlm'

    def __init__(self, config, chat: VisionChat | None = None):
        self.config = config
        self.chat = chat or make_chat(config)
        self.coords = self.chat.box_coords(config.vlm.box_coords)
        self.prefetch_depth = self.chat.prefetch_frames(len(config.cameras)) \
            if hasattr(self.chat, 'submit') else 0

    def requests(self, frame):
        """(camera index, prompt) of each question about ``frame``."""
        for i in camera_indices(frame, self.config.cameras):
            yield i, self.config.vlm.prompt.format(camera=frame.cameras[i],
                                                   coords=COORD_WORDS[self.coords])

    def prefetch(self, frame) -> None:
        for i, prompt in self.requests(frame):
            self.chat.submit(frame.images[i], prompt, self.config.vlm.max_new_tokens)

    def describe(self) -> dict:
        return {'backend': self.name, 'model_dir': str(self.chat.path),
                'model_type': self.chat.model_type, 'processor': self.chat.loaded_via,
                'box_coords': self.coords, 'cameras': list(self.config.cameras)}

    def label(self, frame, context: FrameContext) -> TeacherOutput:
        out, answers, all_parsed = TeacherOutput(), {}, True
        for i, prompt in self.requests(frame):
            camera = frame.cameras[i]
            text, model_hw = self.chat.ask(frame.images[i], prompt,
                                           self.config.vlm.max_new_tokens)
            answers[camera] = text
            data = answer_json(text, out.rejected)
            if data is None:
                all_parsed = False
                continue
            objects, rejected = parse_objects(data, camera, frame.image_hw[i], self.coords,
                                              model_hw)
            out.objects.extend(objects)
            out.rejected.update(rejected)
        # One unreadable camera leaves its objects out of the grid: the frame is not usable.
        out.parsed = all_parsed
        out.answer = json.dumps(answers)
        return out
