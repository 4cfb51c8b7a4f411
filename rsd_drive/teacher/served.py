"""The VLM behind an OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, llama.cpp's
server): ``teacher.runtime: served``.

:class:`ServedChat` has :class:`rsd_drive.teacher.hf.VisionChat`'s interface (``ask``,
``input_hw``, ``box_coords``), so ``vlm`` and ``detector+vlm`` build the same prompts and read
the answers with the same parser. The image is resized here to the size the server's Qwen2.5-VL
processor would give it (``smart_resize`` at ``served.min_pixels/max_pixels``) and sent as a
base64 data URL; the server then does not resize it again, and absolute box coordinates refer to
that size, exactly as in process.

Concurrency: ``submit`` starts a request on a pool of ``max_concurrency`` threads (the bound on
requests in flight per worker); ``ask`` takes its answer (or asks now). The job prefetches the
next frames (:func:`prefetched`) and writes them in order.

Faults: connection refused or lost, timeouts, HTTP 429/500/502/503/504 (``Retry-After``
honoured), bodies that are not a chat completion, truncated answers (``finish_reason: length``)
and answers without JSON are retried with jittered exponential backoff up to ``max_retries``;
then :class:`TeacherUnavailable` names the reason and the job leaves the frame for the next run.
Only good answers enter the answer cache. The API key is read from the environment at run time
and only ever placed in the ``Authorization`` header: never in an error, a stat or a file.
"""
from __future__ import annotations

import base64
import io
import os
import random
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime

import numpy as np

from rsd_drive.teacher.answer_cache import AnswerCache, answer_key, image_digest
from rsd_drive.teacher.base import TeacherUnavailable
from rsd_drive.teacher.hf import default_box_coords, smart_resize
from rsd_drive.teacher.parse import ParseError, extract_json

RETRY_STATUS = (429, 500, 502, 503, 504)


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def retry_after_s(value) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def image_data_url(image: np.ndarray, hw, fmt: str = 'png', quality: int = 95) -> str:
    """``image`` (HxWx3 uint8 RGB) resized to ``hw`` (bicubic, as the Qwen2-VL processor) as a
    base64 data URL."""
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(image[..., :3], dtype=np.uint8))
    if (pil.height, pil.width) != tuple(hw):
        pil = pil.resize((int(hw[1]), int(hw[0])), Image.BICUBIC)
    buf = io.BytesIO()
    if fmt == 'jpeg':
        pil.save(buf, format='JPEG', quality=int(quality))
    else:
        pil.save(buf, format='PNG')
    mime = 'image/jpeg' if fmt == 'jpeg' else 'image/png'
    return f'data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}'


class ServedChat:
    """One image + one prompt in, the served model's answer out (see the module docstring)."""

    loaded_via = 'served'

    def __init__(self, served, cache_dir: str | None = None):
        self.cfg = served
        self.path = f'{served.base_url} ({served.model})'
        self.model_type = served.model_type
        cache_dir = cache_dir if cache_dir is not None else served.cache_dir
        self.cache = AnswerCache(cache_dir) if cache_dir else None
        if served.api_key_env and served.api_key_env not in os.environ:
            raise ValueError(f'served.api_key_env: the environment variable '
                             f'{served.api_key_env} is not set')
        self._lock = threading.Lock()
        self._pending: dict = {}
        self._client = self._pool = None
        self._stats = Counter()

    # -- VisionChat's interface ------------------------------------------------------------------
    def box_coords(self, setting: str) -> str:
        return default_box_coords(self.model_type, setting)

    def input_hw(self, image: np.ndarray) -> tuple:
        """(height, width) the server's processor sees ``image`` at (box coordinates refer to
        it): Qwen2.5-VL's ``smart_resize`` at the configured pixel budget."""
        h, w = image.shape[:2]
        return smart_resize(h, w, min_pixels=self.cfg.min_pixels, max_pixels=self.cfg.max_pixels)

    def ask(self, image: np.ndarray, prompt: str, max_new_tokens: int = 256):
        """(text, model_hw): the prefetched answer, the cached one, or one asked for now."""
        key = self.key(image, prompt, max_new_tokens)
        with self._lock:
            future = self._pending.pop(key, None)
        if future is None:
            record = self.cache.get(key) if self.cache else None
            if record is not None:
                self._count('cache_hits')
                return record['text'], tuple(record['model_hw'])
            future = self._executor().submit(self._fetch, key, image, prompt, max_new_tokens)
        record = future.result()
        return record['text'], tuple(record['model_hw'])

    # -- concurrency -----------------------------------------------------------------------------
    def submit(self, image: np.ndarray, prompt: str, max_new_tokens: int = 256) -> None:
        """Start asking (unless the answer is cached or already asked for); ``ask`` takes it."""
        key = self.key(image, prompt, max_new_tokens)
        with self._lock:
            if key in self._pending:
                return
        if self.cache is not None and self.cache.get(key) is not None:
            return
        future = self._executor().submit(self._fetch, key, image, prompt, max_new_tokens)
        with self._lock:
            self._pending[key] = future

    def forget(self) -> None:
        """Drop answers asked for and never taken (they are still cached when they arrive)."""
        with self._lock:
            self._pending.clear()

    def prefetch_frames(self, requests_per_frame: int) -> int:
        """Frames to ask ahead so that ``max_concurrency`` requests can be in flight."""
        return -(-self.cfg.max_concurrency // max(1, requests_per_frame))

    def stats(self) -> dict:
        with self._lock:
            return dict(self._stats)

    # -- the request -----------------------------------------------------------------------------
    def settings(self, max_new_tokens: int) -> dict:
        """Everything besides model, prompt and image that the answer depends on."""
        s = {'max_tokens': int(max_new_tokens), 'temperature': 0.0,
             'min_pixels': self.cfg.min_pixels, 'max_pixels': self.cfg.max_pixels,
             'image_format': self.cfg.image_format}
        if self.cfg.image_format == 'jpeg':
            s['jpeg_quality'] = self.cfg.jpeg_quality
        return s

    def key(self, image, prompt: str, max_new_tokens: int) -> str:
        return answer_key(self.cfg.model, prompt, [image_digest(image)],
                          self.settings(max_new_tokens))

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.cfg.max_concurrency,
                                                thread_name_prefix='served-vlm')
            return self._pool

    def _http(self):
        import httpx

        with self._lock:
            if self._client is None:
                n = self.cfg.max_concurrency
                self._client = httpx.Client(
                    base_url=self.cfg.base_url.rstrip('/') + '/',
                    timeout=httpx.Timeout(self.cfg.timeout_s, connect=min(10.0,
                                                                          self.cfg.timeout_s)),
                    limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                    trust_env=False)  # no proxies from the environment
            return self._client

    def _headers(self) -> dict:
        if not self.cfg.api_key_env:
            return {}
        return {'Authorization': f'Bearer {os.environ.get(self.cfg.api_key_env, "")}'}

    def _body(self, image, prompt: str, max_new_tokens: int) -> dict:
        url = image_data_url(image, self.input_hw(image), self.cfg.image_format,
                             self.cfg.jpeg_quality)
        return {'model': self.cfg.model, 'max_tokens': int(max_new_tokens), 'temperature': 0.0,
                'messages': [{'role': 'user', 'content': [
                    {'type': 'image_url', 'image_url': {'url': url}},
                    {'type': 'text', 'text': prompt}]}]}

    def _backoff(self, attempt: int, retry_after) -> float:
        cfg = self.cfg
        delay = min(cfg.backoff_max_s, cfg.backoff_s * 2 ** (attempt - 1))
        delay *= 0.5 + 0.5 * random.random()
        if retry_after is not None:
            delay = max(delay, min(retry_after, cfg.retry_after_max_s))
        return delay

    def _fetch(self, key: str, image, prompt: str, max_new_tokens: int) -> dict:
        body = self._body(image, prompt, max_new_tokens)
        last = None
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self._count('retries')
                time.sleep(self._backoff(attempt, last.retry_after))
            t0 = time.monotonic()
            try:
                record = self._post(body)
            except _Retry as exc:
                self._count(f'error:{exc.reason}')
                last = exc
                continue
            self._count('request_ms', int(1000 * (time.monotonic() - t0)))
            record['model_hw'] = list(self.input_hw(image))
            record['model'] = self.cfg.model
            if self.cache is not None:
                self.cache.put(key, record)
            self._count('answers')
            self._count('tokens_in', record['tokens_in'])
            self._count('tokens_out', record['tokens_out'])
            return record
        self._count(f'failed:{last.reason}')
        raise TeacherUnavailable(last.reason, f'{self.cfg.max_retries + 1} tries')

    def _post(self, body: dict) -> dict:
        import httpx

        self._count('requests')
        try:
            resp = self._http().post('chat/completions', json=body, headers=self._headers())
        except httpx.ConnectError:
            raise _Retry('connection_refused') from None
        except httpx.TimeoutException:
            raise _Retry('timeout') from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            raise _Retry('connection_lost') from None
        except httpx.HTTPError as exc:
            raise _Retry(type(exc).__name__) from None
        if resp.status_code in RETRY_STATUS:
            raise _Retry(f'http_{resp.status_code}',
                         retry_after_s(resp.headers.get('retry-after')))
        if resp.status_code != 200:  # 400, 401, 404...: asking again changes nothing
            raise TeacherUnavailable(f'http_{resp.status_code}')
        try:
            doc = resp.json()
            choice = doc['choices'][0]
            text, finish = choice['message']['content'], choice.get('finish_reason')
            usage = doc.get('usage') or {}
            tokens = int(usage.get('prompt_tokens', 0)), int(usage.get('completion_tokens', 0))
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retry('bad_response') from None
        if not isinstance(text, str):
            raise _Retry('bad_response')
        if finish == 'length':
            raise _Retry('truncated_answer')
        try:
            extract_json(text)  # the parser of the in-process answers
        except ParseError as exc:
            raise _Retry(f'answer_{exc.reason}') from None
        return {'text': text, 'finish_reason': finish, 'tokens_in': tokens[0],
                'tokens_out': tokens[1]}


def teacher_stats(teacher) -> dict:
    """The served chat's counters of ``teacher`` (empty for other teachers)."""
    chat = getattr(teacher, 'chat', None)
    return chat.stats() if isinstance(chat, ServedChat) else {}


def stats_since(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def prefetched(teacher, frames, wanted):
    """``frames`` in order, with the teacher asked about the next ones ahead of time
    (``teacher.prefetch(frame)`` for frames where ``wanted(frame)``). A wrong ``wanted`` costs a
    request, never a label: the caller still decides per frame."""
    depth = getattr(teacher, 'prefetch_depth', 0)
    if not depth:
        yield from frames
        return
    window = deque()
    try:
        for item in frames:
            if wanted(item):
                teacher.prefetch(item)
            window.append(item)
            while len(window) > depth:
                yield window.popleft()
        while window:
            yield window.popleft()
    finally:
        teacher.chat.forget()


def share_concurrency(teacher: dict, workers: int) -> dict:
    """The teacher config (as plain data) of one of ``workers`` concurrent labeling workers:
    ``served.max_concurrency`` capped so all of them together keep at most
    ``served.cluster_concurrency`` requests in flight (0: no cluster cap)."""
    served = dict(teacher.get('served') or {})
    total = int(served.get('cluster_concurrency') or 0)
    if teacher.get('runtime') != 'served' or not total:
        return teacher
    served['max_concurrency'] = max(1, min(int(served['max_concurrency']),
                                           total // max(1, workers)))
    return {**teacher, 'served': served}
