"""Robust extraction of the teacher's JSON answer from free text, and validation of its objects.

VLMs wrap JSON in prose and code fences, use single quotes, leave trailing commas, write NaN, put
boxes outside the image or swap corners. Everything that can be repaired safely is; everything
else is counted under a reason and dropped, never raised.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter

from rsd_drive.teacher.base import RiskyObject

_FENCE = re.compile(r'```(?:json|JSON)?\s*(.*?)```', re.DOTALL)
_TRAILING_COMMA = re.compile(r',\s*([\]}])')
_RISK_WORDS = {'none': 0.0, 'negligible': 0.05, 'very low': 0.1, 'low': 0.25, 'medium': 0.5,
               'moderate': 0.5, 'high': 0.8, 'very high': 0.95, 'critical': 1.0}
_OBJECT_LIST_KEYS = ('objects', 'risky_objects', 'hazards', 'results', 'detections', 'items')
_BOX_KEYS = ('bbox_2d', 'bbox', 'box', 'box_2d')


class ParseError(ValueError):
    """No JSON in the answer; ``reason`` is a counter key."""

    def __init__(self, reason: str, detail: str = ''):
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason


def _candidates(text: str):
    """Substrings that may hold the JSON, most likely first."""
    yield text.strip()
    for block in _FENCE.findall(text):
        yield block.strip()
    for i, ch in enumerate(text):
        if ch in '[{':
            yield text[i:]


def _lenient(s: str) -> str:
    """Repairs that can't change a valid document's meaning: trailing commas, Python literals
    and single-quoted strings (only when the text has no double quotes at all)."""
    s = _TRAILING_COMMA.sub(r'\1', s)
    s = re.sub(r'\bNone\b', 'null', re.sub(r'\bTrue\b', 'true', re.sub(r'\bFalse\b', 'false', s)))
    if '"' not in s:
        s = s.replace("'", '"')
    return s


def extract_json(text) -> object:
    """The first JSON array or object in ``text`` (a list or dict). Raises ParseError."""
    if not isinstance(text, str) or not text.strip():
        raise ParseError('empty_answer')
    decoder = json.JSONDecoder()
    seen = set()
    for cand in _candidates(text):
        if cand in seen or not cand or cand[0] not in '[{':
            continue
        seen.add(cand)
        for attempt in (cand, _lenient(cand)):
            try:
                value, _end = decoder.raw_decode(attempt)
            except (ValueError, RecursionError):
                continue
            if isinstance(value, (list, dict)):
                return value
    raise ParseError('no_json', text[:80].replace('\n', ' '))


def answer_json(text, rejected: Counter):
    """The JSON of one answer (``extract_json``), or None with the reason counted in
    ``rejected``: the one reading of an answer for every VLM backend and runtime."""
    try:
        return extract_json(text)
    except ParseError as exc:
        rejected[exc.reason] += 1
        return None


def _number(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip().rstrip('%'))
        except ValueError:
            return None
    return None


def parse_risk(v):
    """A risk in [0, 1] from a number, a numeric string or a word; None when unusable."""
    if isinstance(v, str) and v.strip().lower() in _RISK_WORDS:
        return _RISK_WORDS[v.strip().lower()]
    r = _number(v)
    if r is None or not math.isfinite(r) or r < 0 or r > 1:
        return None
    return r


def object_list(data) -> list:
    """The list of object dicts in a parsed answer: a bare list, a dict holding one under a
    usual key, or a single object dict."""
    if isinstance(data, dict):
        for key in _OBJECT_LIST_KEYS:
            if isinstance(data.get(key), list):
                return data[key]
        return [data] if any(k in data for k in _BOX_KEYS + ('id', 'risk')) else []
    return data if isinstance(data, list) else []


def to_image_box(raw, coords: str, image_hw, model_hw=None):
    """A box from the answer -> (x1, y1, x2, y2) in original-image pixels.

    coords: 'absolute' (pixels of the model's resized input ``model_hw``), 'norm1000' or 'norm1'.
    Raises ValueError with a reason: bad_box, degenerate_box, box_outside_image.
    """
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        raise ValueError('bad_box')
    vals = [_number(v) for v in raw]
    if any(v is None or not math.isfinite(v) for v in vals):
        raise ValueError('bad_box')
    h, w = image_hw
    if coords == 'absolute':
        mh, mw = model_hw or image_hw
        sx, sy = w / mw, h / mh
    elif coords == 'norm1000':
        sx, sy = w / 1000.0, h / 1000.0
    elif coords == 'norm1':
        sx, sy = float(w), float(h)
    else:
        raise ValueError(f'unknown box coords {coords!r}')
    x1, y1, x2, y2 = vals[0] * sx, vals[1] * sy, vals[2] * sx, vals[3] * sy
    x1, x2 = min(x1, x2), max(x1, x2)  # swapped corners are a harmless, common slip
    y1, y2 = min(y1, y2), max(y1, y2)
    if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
        raise ValueError('box_outside_image')
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        raise ValueError('degenerate_box')
    return (x1, y1, x2, y2)


def parse_objects(data, camera: str, image_hw, coords: str, model_hw=None):
    """Validated RiskyObjects from a parsed answer; returns (objects, rejected Counter)."""
    objects, rejected = [], Counter()
    items = object_list(data)
    if not items and isinstance(data, dict) and data:
        rejected['unrecognised_json'] += 1
    for item in items:
        if not isinstance(item, dict):
            rejected['not_an_object'] += 1
            continue
        raw_box = next((item[k] for k in _BOX_KEYS if k in item), None)
        if raw_box is None:
            rejected['no_box'] += 1
            continue
        try:
            box = to_image_box(raw_box, coords, image_hw, model_hw)
        except ValueError as exc:
            rejected[str(exc)] += 1
            continue
        risk = parse_risk(item.get('risk', item.get('risk_score', item.get('score'))))
        if risk is None:
            rejected['bad_risk'] += 1
            continue
        label = str(item.get('label', item.get('class', item.get('category', 'object'))))[:64]
        reason = str(item.get('reason', ''))[:256]
        objects.append(RiskyObject(label=label or 'object', risk=risk, reason=reason,
                                   camera=camera, box=box))
    return objects, rejected


def parse_rankings(data, n_candidates: int):
    """{candidate id: (risk, reason)} from a ranking answer; returns (scores, rejected)."""
    scores, rejected = {}, Counter()
    for item in object_list(data):
        if not isinstance(item, dict):
            rejected['not_an_object'] += 1
            continue
        idx = _number(item.get('id', item.get('index')))
        if idx is None or not math.isfinite(idx) or idx != int(idx) \
                or not 0 <= int(idx) < n_candidates:
            rejected['bad_id'] += 1
            continue
        risk = parse_risk(item.get('risk', item.get('score')))
        if risk is None:
            rejected['bad_risk'] += 1
            continue
        scores[int(idx)] = (risk, str(item.get('reason', ''))[:256])
    return scores, rejected
