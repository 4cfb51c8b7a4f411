"""``rsd-drive bench node``: the planner node's latency, stage by stage, over real DDS.

Each configuration starts ``planner_node`` in its own process (like on the vehicle), streams live
odometry and camera frames into it from this process (stamped with the wall clock), and reads the
node's own per-stage percentiles from ``/diagnostics`` plus the end-to-end time until its path
arrives back here. Configurations: ONNX Runtime vs torch eager at 6 cameras, then ONNX Runtime
with 1..6 cameras and with camera images from 320x180 to 1920x1080 (the model input stays at its
configured size, 224x224 by default; the small encoder of ``ModelConfig()``).

Stages (see rsd_drive.deploy.pipeline.STAGES): transport (camera stamp -> last message of the set
received), sync (callback work), queue (set complete -> worker), decode, preprocess, inference,
postprocess (message building), publish; total = camera stamp -> published.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsd_drive.deploy.pipeline import NODE_STAGES

STAGE_COLUMNS = ('transport', 'sync', 'queue', 'decode', 'preprocess', 'inference',
                 'postprocess', 'publish')
HISTORY_S = 4.2  # odometry needed before the first frame can be planned (16 past states at 4 Hz)


@dataclass
class BenchConfig:
    label: str
    backend: str
    cameras: int
    width: int
    height: int


def default_configs(quick: bool = False) -> list:
    configs = [BenchConfig('ORT 6 cams 640x360', 'onnxruntime', 6, 640, 360),
               BenchConfig('torch 6 cams 640x360', 'torch', 6, 640, 360)]
    cams = (1, 3) if quick else (1, 2, 4)
    sizes = ((1280, 720),) if quick else ((320, 180), (1280, 720), (1920, 1080))
    configs += [BenchConfig(f'ORT {n} cams 640x360', 'onnxruntime', n, 640, 360) for n in cams]
    configs += [BenchConfig(f'ORT 6 cams {w}x{h}', 'onnxruntime', 6, w, h) for w, h in sizes]
    return configs


def add_arguments(parser) -> None:
    parser.add_argument('--frames', type=int, default=25, help='camera frames per configuration')
    parser.add_argument('--rate', type=float, default=5.0, help='camera rate (Hz)')
    parser.add_argument('--quick', action='store_true', help='fewer configurations')
    parser.add_argument('--image-size', type=int, nargs=2, default=(224, 224),
                        metavar=('H', 'W'), help='model input size')
    parser.add_argument('--out', default='work_dirs/bench', help='table (JSON) and PNG go here')
    bag = parser.add_argument_group('recorded drive (--bag): today\'s input path vs the fast one')
    bag.add_argument('--bag', help='replay this rosbag2 (e.g. the imported PandaSet drive, '
                                   '6x1920x1080 JPEG) through the node\'s stages instead')
    bag.add_argument('--json', metavar='OUT', help='with --bag: write per-path, per-stage '
                                                   'p50/p99 (ms, wall clock) here')
    bag.add_argument('--dataset', help='with --bag: dataset config of the bag (default '
                                       'config/pandaset_dataset.yaml)')
    bag.add_argument('--model', help='with --bag: checkpoint directory (default: the demo\'s '
                                     'DINOv2 encoder with untrained heads, built under --out)')
    bag.add_argument('--threads', type=int, default=0, help='with --bag: ONNX Runtime threads')
    bag.add_argument('--node', action='store_true',
                     help='with --bag: also run planner_node itself on the bag over DDS, '
                          'replayed in lockstep, and report its own /diagnostics latencies')
    bag.add_argument('--variants', nargs='+', choices=('jpeg', 'raw'), default=['jpeg', 'raw'],
                     help='with --bag: the bag\'s JPEGs and/or them as raw rgb8 Images')


# -- the node and the inputs --------------------------------------------------------------------
class _Peer:
    """Publishes camera frames and odometry, collects paths (receive times) and diagnostics."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import Odometry, Path as PathMsg
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('bench_node_peer', context=self.context)
        self.odom_pub = self.node.create_publisher(Odometry, '/bench/odom',
                                                   _sensor_qos())
        self.image_pubs = {}
        self.lock = threading.Lock()
        self.paths, self.diagnostics = [], []
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(PathMsg, '/planner_node/path', self._on_path, reliable)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, reliable)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _on_path(self, msg):
        now = time.time_ns()
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self.lock:
            self.paths.append((stamp, now))

    def _on_diag(self, msg):
        with self.lock:
            self.diagnostics.append(msg)

    def image_pub(self, topic: str):
        from sensor_msgs.msg import Image

        if topic not in self.image_pubs:
            self.image_pubs[topic] = self.node.create_publisher(Image, topic, _sensor_qos())
        return self.image_pubs[topic]

    def reset(self):
        with self.lock:
            self.paths.clear()
            self.diagnostics.clear()

    def close(self):
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


def _sensor_qos():
    from rclpy.qos import qos_profile_sensor_data

    return qos_profile_sensor_data


def _image_msgs(cfg: BenchConfig):
    """One rgb8 Image per camera (content differs per camera); only stamps change per frame."""
    from sensor_msgs.msg import Image

    msgs = []
    yy, xx = np.mgrid[0:cfg.height, 0:cfg.width]
    for i in range(cfg.cameras):
        rgb = np.stack([(xx + 17 * i) % 256, (yy * 2) % 256, ((xx + yy) // 2 + 40 * i) % 256],
                       axis=-1).astype(np.uint8)
        msg = Image(height=cfg.height, width=cfg.width, encoding='rgb8', step=cfg.width * 3)
        msg.header.frame_id = f'cam{i}_optical'
        msg.data = rgb.tobytes()
        msgs.append(msg)
    return msgs


def _odometry(stamp_ns: int, t_s: float):
    from nav_msgs.msg import Odometry

    msg = Odometry()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.header.frame_id, msg.child_frame_id = 'odom', 'base_link'
    msg.pose.pose.position.x = 8.0 * t_s
    msg.pose.pose.orientation.w = 1.0
    msg.twist.twist.linear.x = 8.0
    return msg


def _stream(peer: _Peer, cfg: BenchConfig, frames: int, rate: float) -> int:
    """Odometry at 50 Hz from now on; camera sets at ``rate`` after HISTORY_S. Returns frames."""
    pubs = [peer.image_pub(f'/bench/cam{i}/image_raw') for i in range(cfg.cameras)]
    msgs = _image_msgs(cfg)
    t0 = time.monotonic()
    wall0 = time.time_ns()
    sent, tick, next_frame = 0, 0, t0 + HISTORY_S
    while sent < frames:
        now = time.monotonic()
        stamp = time.time_ns()
        peer.odom_pub.publish(_odometry(stamp, (stamp - wall0) / 1e9))
        if now >= next_frame:
            sec, nanosec = divmod(stamp, 10**9)
            for pub, msg in zip(pubs, msgs):
                msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
                pub.publish(msg)
            sent += 1
            next_frame += 1.0 / rate
        tick += 1
        time.sleep(max(0.0, t0 + tick / 50.0 - time.monotonic()))
    return sent


def _camera_specs(cfg: BenchConfig) -> dict:
    fx = 0.5 * cfg.width / math.tan(math.radians(35))
    specs = {}
    for i in range(cfg.cameras):
        yaw = 2 * math.pi * i / cfg.cameras
        specs[f'cam{i}'] = dict(image_topic=f'/bench/cam{i}/image_raw', compressed=False,
                                info_topic='', intrinsics=[fx, fx, (cfg.width - 1) / 2,
                                                           (cfg.height - 1) / 2],
                                image_size=[cfg.width, cfg.height],
                                extrinsics=[1.0, 0.0, 1.6, yaw, 0.087])
    return specs


def _planning_values(arrays) -> dict:
    for array in reversed(arrays):
        for status in array.status:
            if status.name.endswith(': planning'):
                values = {kv.key: kv.value for kv in status.values}
                if 'latency_ms.inference.p50' in values:
                    return values
    return {}


def _input_values(arrays) -> dict:
    for array in reversed(arrays):
        for status in array.status:
            if status.name.endswith(': inputs'):
                return {kv.key: kv.value for kv in status.values}
    return {}


def bench_config(peer: _Peer, cfg: BenchConfig, checkpoint: Path, work: Path, frames: int,
                 rate: float) -> dict:
    from rsd_drive.ros.launcher import PlannerNodeProcess
    from rsd_drive.ros.planner_params import write_parameters

    params = write_parameters(
        work / f'params_{cfg.cameras}_{cfg.backend}.yaml', _camera_specs(cfg),
        model_dir=str(checkpoint), backend=cfg.backend, precision='fp32', threads=0,
        odom_topic='/bench/odom', intent_topic='', max_input_age_s=2.0,
        diagnostics_period_s=0.5, latency_window=10 * frames, sync_slop_s=0.05)
    node = PlannerNodeProcess(params).start()
    try:
        node.wait_active(timeout=180)
        deadline = time.monotonic() + 10
        while peer.node.count_subscribers('/bench/cam0/image_raw') == 0:
            if time.monotonic() > deadline:
                raise RuntimeError('planner_node never subscribed to the bench cameras')
            time.sleep(0.05)
        time.sleep(0.5)
        peer.reset()
        sent = _stream(peer, cfg, frames, rate)
        time.sleep(2.0)  # last plans and one more diagnostics period
        with peer.lock:
            paths, arrays = list(peer.paths), list(peer.diagnostics)
    finally:
        node.stop()
    planning, inputs = _planning_values(arrays), _input_values(arrays)
    row = {'label': cfg.label, 'backend': cfg.backend, 'cameras': cfg.cameras,
           'image': f'{cfg.width}x{cfg.height}', 'frames': sent, 'plans': len(paths),
           'queue_drops': int(inputs.get('drops.queue_drop', 0))}
    for stage in STAGE_COLUMNS + ('total',):
        for q in ('p50', 'p99'):
            value = planning.get(f'latency_ms.{stage}.{q}')
            row[f'{stage}_{q}'] = float(value) if value is not None else math.nan
    e2e = np.array([(recv - stamp) / 1e6 for stamp, recv in paths])
    row['e2e_p50'] = float(np.percentile(e2e, 50)) if e2e.size else math.nan
    row['e2e_p99'] = float(np.percentile(e2e, 99)) if e2e.size else math.nan
    node_ms = sum(row[f'{s}_p50'] for s in NODE_STAGES)
    row['node_over_inference'] = node_ms / row['inference_p50']
    row['total_minus_inference_over_inference'] = \
        (row['total_p50'] - row['inference_p50']) / row['inference_p50']
    return row


# -- report ---------------------------------------------------------------------------------------
def format_tables(rows: list, meta: dict) -> str:
    head = f'{"configuration":<24}' + ''.join(f'{s[:8]:>9}' for s in STAGE_COLUMNS) + \
        f'{"total":>9}{"p99":>9}{"e2e":>9}{"node/inf":>9}{"plans":>8}'
    lines = [f'planner_node latency, ms p50 per stage (model input {meta["input"]}, cameras at '
             f'{meta["rate"]} Hz, {meta["frames"]} frames per row, {os.cpu_count()} CPU cores)',
             head, '-' * len(head)]
    for r in rows:
        lines.append(f'{r["label"]:<24}' + ''.join(f'{r[f"{s}_p50"]:>9.2f}'
                                                   for s in STAGE_COLUMNS)
                     + f'{r["total_p50"]:>9.1f}{r["total_p99"]:>9.1f}{r["e2e_p50"]:>9.1f}'
                     + f'{r["node_over_inference"]:>9.2f}{r["plans"]:>4}/{r["frames"]:<3}')
    lines.append('node/inf: (sync + decode + preprocess + postprocess + publish) / inference; '
                 'e2e: camera stamp -> path received by a subscriber')
    by_label = {r['label']: r for r in rows}
    ort, pt = by_label.get('ORT 6 cams 640x360'), by_label.get('torch 6 cams 640x360')
    if ort and pt:
        lines += ['', 'ONNX Runtime vs torch eager (6 cameras 640x360), p50 ms:',
                  f'  inference   {pt["inference_p50"]:8.1f} torch  {ort["inference_p50"]:8.1f} '
                  f'ORT   torch/ORT {pt["inference_p50"] / ort["inference_p50"]:.2f}x',
                  f'  total       {pt["total_p50"]:8.1f} torch  {ort["total_p50"]:8.1f} '
                  f'ORT   torch/ORT {pt["total_p50"] / ort["total_p50"]:.2f}x']
    cams = sorted((r for r in rows if r['backend'] == 'onnxruntime' and r['image'] == '640x360'),
                  key=lambda r: r['cameras'])
    if cams:
        base = cams[0]
        lines += ['', 'growth with cameras (ORT, 640x360), p50 ms and x of the smallest:']
        for r in cams:
            lines.append(f'  {r["cameras"]} cams: inference {r["inference_p50"]:7.1f} '
                         f'({r["inference_p50"] / base["inference_p50"]:4.2f}x)  node stages '
                         f'{_node_ms(r):6.1f} ({_node_ms(r) / _node_ms(base):4.2f}x)  total '
                         f'{r["total_p50"]:7.1f} ({r["total_p50"] / base["total_p50"]:4.2f}x)')
    sizes = sorted((r for r in rows if r['backend'] == 'onnxruntime' and r['cameras'] == 6),
                   key=lambda r: int(r['image'].split('x')[0]))
    if sizes:
        base = sizes[0]
        lines += ['', 'growth with camera image size (ORT, 6 cams), p50 ms, x of the smallest:']
        for r in sizes:
            lines.append(f'  {r["image"]:>9}: decode+preprocess '
                         f'{r["decode_p50"] + r["preprocess_p50"]:6.1f} transport '
                         f'{r["transport_p50"]:6.1f} inference {r["inference_p50"]:6.1f} '
                         f'total {r["total_p50"]:7.1f} '
                         f'({r["total_p50"] / base["total_p50"]:4.2f}x)')
    return '\n'.join(lines)


def _node_ms(r: dict) -> float:
    return sum(r[f'{s}_p50'] for s in NODE_STAGES)


def write_png(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    labels = [r['label'] for r in rows]
    bottom = np.zeros(len(rows))
    for stage in STAGE_COLUMNS:
        values = np.array([r[f'{stage}_p50'] for r in rows])
        ax.barh(labels, np.nan_to_num(values), left=bottom, label=stage)
        bottom += np.nan_to_num(values)
    ax.set_xlabel('ms (p50 per stage, stacked)')
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncol=len(STAGE_COLUMNS), loc='upper center',
              bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax.set_title('planner_node: camera stamp -> publish, by stage')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    if getattr(args, 'bag', None):
        from rsd_drive.bench.node_bag import run_bag

        return run_bag(args)
    import torch
    from tqdm import tqdm

    from rsd_drive.model import ModelConfig, RiskPlanner

    from rsd_drive.ros.dds import confine_dds_to_host

    confine_dds_to_host()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = default_configs(args.quick)
    rows = []
    peer = _Peer()
    try:
        with tempfile.TemporaryDirectory(prefix='bench_node_') as tmp:
            work = Path(tmp)
            checkpoints = {}
            for cfg in tqdm(configs, desc='bench node', unit='config'):
                if cfg.cameras not in checkpoints:
                    torch.manual_seed(0)
                    model = RiskPlanner(ModelConfig(num_cameras=cfg.cameras,
                                                    image_height=args.image_size[0],
                                                    image_width=args.image_size[1]))
                    checkpoints[cfg.cameras] = work / f'ckpt_{cfg.cameras}'
                    model.save_pretrained(checkpoints[cfg.cameras])
                rows.append(bench_config(peer, cfg, checkpoints[cfg.cameras], work, args.frames,
                                         args.rate))
    finally:
        peer.close()
    meta = {'input': f'{args.image_size[0]}x{args.image_size[1]}', 'rate': args.rate,
            'frames': args.frames}
    table = format_tables(rows, meta)
    print(table)
    (out / 'bench_node.txt').write_text(table + '\n')
    (out / 'bench_node.json').write_text(json.dumps({'meta': meta, 'rows': rows}, indent=1))
    write_png(rows, out / 'bench_node.png')
    print(f'wrote {out / "bench_node.txt"}, .json and .png')
    return 0 if all(r['plans'] > 0 for r in rows) else 1
