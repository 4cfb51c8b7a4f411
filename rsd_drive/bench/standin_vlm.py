"""A stand-in for a served VLM on 127.0.0.1: an OpenAI-compatible ``/v1/chat/completions`` that
answers in Qwen2.5-VL's format, counts requests in flight, and injects faults on command.

For tests and ``rsd-drive bench served``; never a model. ``answer(prompt, image) -> str`` makes
the answer (``image``: the decoded RGB array the client sent); the default names one car in the
lower middle of the image, in absolute pixels of the image received (Qwen2.5-VL's convention).

Faults (``inject(name, n)``: the next ``n`` requests get it, in order of arrival):
``http_429``, ``http_503`` (with ``Retry-After``), ``http_500``, ``http_401``, ``timeout`` (the
request is held until :meth:`stop` or ``hold_s``), ``drop`` (connection closed, no response),
``truncated`` (the body is cut short), ``non_json`` (an HTML error page with status 200),
``length`` (``finish_reason: length``, half an answer), ``prose`` (an answer without JSON),
``outside`` (boxes outside the image). :meth:`stop` then :meth:`start` is a server that dies
and comes back on the same port (connection refused in between); ``die_after(n)`` stops it once
``n`` more answers are sent.
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

FAULTS = ('http_429', 'http_503', 'http_500', 'http_401', 'timeout', 'drop', 'truncated',
          'non_json', 'length', 'prose', 'outside')
RETRY_AFTER_S = 0.05


def car_ahead(prompt: str, image: np.ndarray) -> str:
    h, w = image.shape[:2]
    box = [round(0.4 * w), round(0.6 * h), round(0.6 * w), round(0.9 * h)]
    return json.dumps([{'bbox_2d': box, 'label': 'car', 'risk': 0.8,
                        'reason': 'stopped ahead in the lane'}])


def decode_data_url(url: str) -> np.ndarray:
    from PIL import Image

    payload = url.split(',', 1)[1]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert('RGB'))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype='application/json', headers=None,
              length=None):
        self.send_response(status)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 - http.server's name
        owner = self.server.owner
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        if not owner._up or self.server is not owner._httpd:  # stopped: kept-alive ones too
            self.close_connection = True
            return
        fault = owner._enter(self.headers.get('Authorization'))
        try:
            owner._gate_wait()
            if fault == 'timeout':
                owner._release.wait(owner.hold_s)
            elif owner.latency_s:
                time.sleep(owner.latency_s)
            self._respond(owner, json.loads(body), fault)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            owner._leave()

    def _respond(self, owner, doc, fault):
        if fault == 'drop':
            self.close_connection = True
            return
        if fault in ('http_429', 'http_503', 'http_500', 'http_401'):
            code = int(fault[5:])
            headers = {'Retry-After': str(RETRY_AFTER_S)} if code in (429, 503) else {}
            return self._send(code, b'{"error": "stand-in fault"}', headers=headers)
        if fault == 'non_json':
            return self._send(200, b'<html>502 Bad Gateway</html>', ctype='text/html')
        content = doc['messages'][0]['content']
        prompt = next(c['text'] for c in content if c['type'] == 'text')
        image = decode_data_url(next(c['image_url']['url'] for c in content
                                     if c['type'] == 'image_url'))
        owner._seen(image.shape[:2])
        text, finish = owner.answer(prompt, image), 'stop'
        if fault == 'length':
            text, finish = text[:len(text) // 2], 'length'
        elif fault == 'prose':
            text = 'I am not sure what is in this image.'
        elif fault == 'outside':
            h, w = image.shape[:2]
            text = json.dumps([{'bbox_2d': [w + 50, h + 50, w + 200, h + 200], 'label': 'car',
                                'risk': 0.9, 'reason': 'outside'}])
        tokens_in = (image.shape[0] // 28) * (image.shape[1] // 28) + len(prompt) // 4
        out = json.dumps({'id': 'standin', 'object': 'chat.completion', 'model': doc['model'],
                          'choices': [{'index': 0, 'finish_reason': finish,
                                       'message': {'role': 'assistant', 'content': text}}],
                          'usage': {'prompt_tokens': tokens_in,
                                    'completion_tokens': max(1, len(text) // 4)}}).encode()
        if fault == 'truncated':
            self.close_connection = True
            return self._send(200, out[:len(out) // 2], length=len(out))
        self._send(200, out)
        owner._answered()


class StandInVlm:
    """The stand-in server (see the module docstring); a context manager."""

    def __init__(self, answer=car_ahead, latency_s: float = 0.0, api_key: str | None = None,
                 hold_s: float = 30.0):
        self.answer, self.latency_s, self.api_key, self.hold_s = answer, latency_s, api_key, hold_s
        self.port = 0
        self._lock = threading.Condition()
        self._stopping = threading.Lock()
        self._faults = deque()
        self._release = threading.Event()
        self._httpd = self._thread = None
        self._up = False
        self._die_after = None
        self._gate = 0
        self.requests = self.in_flight = self.max_in_flight = self.answered = 0
        self.faults_sent = Counter()
        self.image_hw = set()

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}/v1'

    def start(self) -> 'StandInVlm':
        self._release.clear()
        self._httpd = ThreadingHTTPServer(('127.0.0.1', self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self._up = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket (connections refused from now on)."""
        with self._stopping:
            if self._httpd is not None:
                self._up = False
                self._release.set()
                self._httpd.shutdown()
                self._httpd.server_close()
                self._httpd = None

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def inject(self, fault: str, n: int = 1) -> None:
        if fault not in FAULTS:
            raise ValueError(f'unknown fault {fault!r}; one of {FAULTS}')
        with self._lock:
            self._faults.extend([fault] * n)

    def die_after(self, n: int) -> None:
        with self._lock:
            self._die_after = self.answered + n

    def gate(self, n: int) -> None:
        """Hold requests until ``n`` are in flight at once (then let all through): shows that a
        client keeps ``n`` in flight. ``gate_timeouts`` counts requests that waited in vain."""
        with self._lock:
            self._gate, self.gate_timeouts = n, 0

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = self.max_in_flight = self.answered = 0
            self.faults_sent.clear()

    def wait_for(self, condition, timeout_s: float, what: str) -> None:
        """Wait until ``condition()`` holds (checked whenever a request ends)."""
        with self._lock:
            if not self._lock.wait_for(condition, timeout_s):
                raise TimeoutError(f'stand-in VLM: waited {timeout_s} s for {what}')

    # -- called by the handler threads -----------------------------------------------------------
    def _enter(self, authorization) -> str | None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            fault = self._faults.popleft() if self._faults else None
            if fault is None and self.api_key and authorization != f'Bearer {self.api_key}':
                fault = 'http_401'
            if fault:
                self.faults_sent[fault] += 1
            self._lock.notify_all()
            return fault

    def _gate_wait(self) -> None:
        with self._lock:
            if self._gate and not self._lock.wait_for(
                    lambda: self.in_flight >= self._gate or not self._gate, self.hold_s):
                self.gate_timeouts += 1
            self._gate = 0  # reached once: open for good
            self._lock.notify_all()

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self._lock.notify_all()

    def _seen(self, hw) -> None:
        with self._lock:
            self.image_hw.add(tuple(int(v) for v in hw))

    def _answered(self) -> None:
        with self._lock:
            self.answered += 1
            die = self._die_after is not None and self.answered >= self._die_after
            if die:
                self._die_after = None
            self._lock.notify_all()
        if die:  # from another thread: shutdown() waits for serve_forever
            threading.Thread(target=self.stop, daemon=True).start()
