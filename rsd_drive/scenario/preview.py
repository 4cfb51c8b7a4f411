"""Contact sheets: all cameras of one frame in one PNG, for a person to look at."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import Reader

from rsd_drive.scenario.record import TYPESTORE

# Tiles as a driver would arrange them: front row left to right, back row below.
LAYOUT = ('front_left', 'front', 'front_right', 'back_left', 'back', 'back_right')
COLUMNS = 3
IMAGE_TOPIC_RE = re.compile(r'^/cameras/([^/]+)/image_raw(/compressed)?$')


def decode_image(msg) -> np.ndarray:
    """RGB uint8 [H,W,3] of a deserialised ``Image`` (rgb8/bgr8) or ``CompressedImage``."""
    if hasattr(msg, 'format'):
        bgr = cv2.imdecode(np.asarray(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f'cannot decode {msg.format!r} image')
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if msg.encoding not in ('rgb8', 'bgr8'):
        raise ValueError(f'unsupported image encoding {msg.encoding!r}')
    rows = np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    img = rows[:, :msg.width * 3].reshape(msg.height, msg.width, 3)
    return img[..., ::-1].copy() if msg.encoding == 'bgr8' else img.copy()


def read_frame_images(bag_path, frame: int | None = None) -> dict:
    """{camera name: RGB image} of the ``frame``-th message of every camera topic in a bag
    (default: the middle frame)."""
    images = {}
    with Reader(bag_path) as reader:
        for conn in reader.connections:
            match = IMAGE_TOPIC_RE.match(conn.topic)
            if not match:
                continue
            index = conn.msgcount // 2 if frame is None else frame
            if not 0 <= index < conn.msgcount:
                raise IndexError(f'frame {index} out of range for {conn.topic} '
                                 f'({conn.msgcount} messages)')
            for i, (_, _, raw) in enumerate(reader.messages(connections=[conn])):
                if i == index:
                    images[match.group(1)] = decode_image(
                        TYPESTORE.deserialize_cdr(raw, conn.msgtype))
                    break
    return images


def save_contact_sheet(bag_or_frames, png_path, frame: int | None = None) -> Path:
    """Write a labelled mosaic of one frame's camera images to ``png_path``.

    ``bag_or_frames``: a bag path (``frame`` picks the frame, default the middle one), a dict
    {camera name: RGB image}, or a sequence of RGB images. Known camera names are laid out as
    ``LAYOUT``; other cameras follow in rows of three.
    """
    if isinstance(bag_or_frames, (str, Path)):
        images = read_frame_images(bag_or_frames, frame)
    elif isinstance(bag_or_frames, dict):
        images = dict(bag_or_frames)
    else:
        images = {f'camera {i}': img for i, img in enumerate(bag_or_frames)}
    if not images:
        raise ValueError('no camera images to put on a contact sheet')
    names = [n for n in LAYOUT if n in images] + [n for n in images if n not in LAYOUT]
    h = max(img.shape[0] for img in images.values())
    w = max(img.shape[1] for img in images.values())
    rows = -(-len(names) // COLUMNS)
    sheet = np.zeros((rows * h, COLUMNS * w, 3), dtype=np.uint8)
    for i, name in enumerate(names):
        img = images[name]
        r, c = divmod(i, COLUMNS)
        tile = sheet[r * h:r * h + img.shape[0], c * w:c * w + img.shape[1]]
        tile[:] = img
        cv2.putText(tile, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(png_path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f'could not write {png_path}')
    return png_path
