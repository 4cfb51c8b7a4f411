"""Nothing the package runs sends packets off this machine: a local Ray cluster, and ONNX
Runtime's telemetry (the second test, at the end).

Ray's head starts its usage-statistics module even without a dashboard and with usage statistics
off, and that module asks the cloud metadata services (HTTP to 169.254.169.254, a DNS lookup of
metadata.google.internal) which cloud it runs on. Measured on this machine before the fix: 12
TCP packets to 169.254.169.254:80 and 2 DNS queries per cluster start. Here every frame that
leaves through a non-loopback interface while a cluster starts is captured (``AF_PACKET``, which
needs CAP_NET_RAW: skips without it) until the module logged that it is done."""
import importlib.util
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.skipif(importlib.util.find_spec('ray') is None,
                                 reason='ray is not installed (requirements.txt pins it)'),
              pytest.mark.timeout(300)]


def dns_name(payload: bytes) -> str:
    """The first question's name of a DNS query (UDP payload), '' when it does not parse."""
    labels, i = [], 12
    try:
        while payload[i]:
            labels.append(payload[i + 1:i + 1 + payload[i]].decode('ascii', 'replace'))
            i += 1 + payload[i]
    except IndexError:
        return ''
    return '.'.join(labels)


class Egress:
    """Outgoing IPv4 frames on every interface but ``lo``: [(dst, proto, dst port, dns name)]."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.sock.settimeout(0.2)
        self.seen, self._stop = [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            if addr[0] == 'lo' or addr[2] != socket.PACKET_OUTGOING or data[12:14] != b'\x08\x00':
                continue
            proto, dst, ihl = data[23], socket.inet_ntoa(data[30:34]), (data[14] & 15) * 4
            port = struct.unpack('!H', data[16 + ihl:18 + ihl])[0] if proto in (6, 17) else 0
            name = dns_name(data[22 + ihl:]) if proto == 17 and port == 53 else ''
            self.seen.append((dst, proto, port, name))

    def stop(self) -> list:
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()
        return self.seen


def test_a_local_cluster_asks_no_cloud_metadata_service():
    from rsd_drive.teacher.ray_run import connect, import_ray

    try:
        egress = Egress()
    except PermissionError:
        pytest.skip('capturing frames (AF_PACKET) needs CAP_NET_RAW')
    ray = import_ray('local')
    assert connect('local', num_cpus=1)
    try:
        logs = Path(ray._private.worker._global_node.get_logs_dir_path())
        deadline = time.monotonic() + 120
        # the module logs this right after its cloud check (and before anything else it does)
        while not any('Usage reporting is disabled' in p.read_text(errors='replace')
                      for p in logs.glob('dashboard*')):
            assert time.monotonic() < deadline, f'no "Usage reporting is disabled" in {logs}'
            time.sleep(0.1)
        assert ray.get(ray.remote(lambda: 1).remote(), timeout=120) == 1
    finally:
        ray.shutdown()
        seen = egress.stop()
    metadata = [s for s in seen if s[0] == '169.254.169.254' or 'metadata' in s[3]]
    assert not metadata, metadata


ORT_LOOP = ('import sys, time\n'
            'import rsd_drive  # noqa: F401  (sets ORT_DISABLE_TELEMETRY before ORT loads)\n'
            'import numpy as np\n'
            'import onnxruntime as ort\n'
            'from onnx import TensorProto, helper\n'
            "x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4])\n"
            "y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4])\n"
            "g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g', [x], [y])\n"
            "m = helper.make_model(g, opset_imports=[helper.make_opsetid('', 17)])\n"
            "s = ort.InferenceSession(m.SerializeToString(), providers=['CPUExecutionProvider'])\n"
            'print("running", flush=True)\n'
            'end = time.monotonic() + float(sys.argv[1])\n'
            'while time.monotonic() < end:\n'
            "    s.run(None, {'x': np.ones((1, 4), np.float32)})\n"
            '    time.sleep(0.05)\n')


def test_onnx_runtime_sends_no_telemetry():
    """ONNX Runtime's telemetry looked up mobile.events.data.microsoft.com every ~9 s (10 DNS
    queries in 90 s before rsd_drive set ORT_DISABLE_TELEMETRY); an ORT session in a process
    that imported rsd_drive runs 25 s here without one. (A negative check over a window: the
    window is 2-3 of the intervals measured.)"""
    import os
    import subprocess
    import sys

    try:
        egress = Egress()
    except PermissionError:
        pytest.skip('capturing frames (AF_PACKET) needs CAP_NET_RAW')
    env = {k: v for k, v in os.environ.items() if k != 'ORT_DISABLE_TELEMETRY'}
    try:
        out = subprocess.run([sys.executable, '-c', ORT_LOOP, '25'], env=env,
                             capture_output=True, text=True, timeout=200)
    finally:
        seen = egress.stop()
    assert out.returncode == 0 and 'running' in out.stdout, out.stderr
    telemetry = [s for s in seen if 'microsoft' in s[3] or 'events.data' in s[3]]
    assert not telemetry, telemetry
