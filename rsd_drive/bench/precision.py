"""``rsd-drive bench precision CKPT --calibration INDEX --json OUT``: fp32 vs int8, side by side.

The checkpoint is exported once in fp32 and once in int8 (``rsd_drive.deploy.quantize``, the
encoder calibrated on frames of INDEX); both graphs then run in ONNX Runtime on the same held-out
frames of INDEX (not used for calibration), at 1 and at 2 intra-op threads, the precisions
interleaved frame by frame so the machine's load falls on all of them alike. Latency is one
whole graph (6 cameras through the encoder and the heads), wall clock (``time.perf_counter``).

bf16: ONNX Runtime's CPU execution provider has no bfloat16 ``MatMul`` kernel (checked here
with a one-node graph, and reported with the error), so there is no bf16 artifact for the node;
the JSON says so instead of a number. Accuracy against fp32: waypoint max abs difference (m) and
risk-grid Pearson over all cells of the held-out frames.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from rsd_drive.atomic import write_json_atomic

GOALS = {'int8_speedup_1thread': 2.5, 'waypoint_max_diff_m': 0.10, 'risk_pearson': 0.98}


def add_arguments(parser) -> None:
    parser.add_argument('checkpoint', help='RiskPlanner checkpoint directory')
    parser.add_argument('--calibration', required=True, metavar='INDEX',
                        help='training index: calibration and held-out timing frames')
    parser.add_argument('--json', metavar='OUT', required=True)
    parser.add_argument('--work', default='work_dirs/bench_precision',
                        help='the fp32 and int8 artifacts are written here')
    parser.add_argument('--frames', type=int, default=16, help='held-out frames timed')
    parser.add_argument('--repeats', type=int, default=2, help='passes over those frames')
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])


def bf16_support() -> dict:
    """Whether ONNX Runtime's CPU provider runs a bfloat16 MatMul, and the error if not."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.BFLOAT16, [4, 4]) for n in 'abc']
    graph = helper.make_graph([helper.make_node('MatMul', ['a', 'b'], ['c'])], 'bf16',
                              io[:2], io[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    try:
        ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])
        return {'available': True}
    except Exception as e:  # noqa: BLE001 - the runtime's own words are the result
        return {'available': False, 'reason': f'onnxruntime {ort.__version__} CPU: '
                                              f'{str(e).splitlines()[0][:200]}'}


def time_graphs(paths: dict, feeds_list: list, threads: int, repeats: int) -> dict:
    """{name: [ms per run]}: the graphs run interleaved on the same feeds, after one warm-up."""
    import onnxruntime as ort

    sessions = {}
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        sessions[name] = ort.InferenceSession(str(path), options,
                                              providers=['CPUExecutionProvider'])
    for sess in sessions.values():
        sess.run(None, feeds_list[0])
    times = {name: [] for name in sessions}
    for _ in range(repeats):
        for feeds in feeds_list:
            for name, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(None, feeds)
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def run(args) -> int:
    from rsd_drive.data.index import FrameIndex
    from rsd_drive.deploy.export import export_artifact
    from rsd_drive.deploy.quantize import frame_feeds, quantize_artifact

    work = Path(args.work)
    fp32 = export_artifact(args.checkpoint, work / 'fp32', check=True)
    int8 = quantize_artifact(fp32.path, work / 'int8', args.calibration,
                             check_frames=args.frames)
    # the export already compared int8 with fp32 on held-out frames: time on those same frames
    accuracy = dict(int8.meta['check_against_fp32'])
    index = FrameIndex(args.calibration)
    feeds_list = [frame_feeds(index[i], fp32.specs) for i in accuracy.pop('frames_ids')]
    result = {'checkpoint': str(args.checkpoint), 'frames': len(feeds_list),
              'repeats': args.repeats, 'clock': 'wall (time.perf_counter), ms per graph run',
              'load_avg_start': os.getloadavg(), 'threads': {}}
    for threads in args.threads:
        times = time_graphs({'fp32': fp32.onnx_path, 'int8': int8.onnx_path}, feeds_list,
                            threads, args.repeats)
        row = {name: {'p50_ms': float(np.percentile(t, 50)), 'p99_ms': float(np.percentile(t, 99))}
               for name, t in times.items()}
        row['speedup_int8'] = row['fp32']['p50_ms'] / row['int8']['p50_ms']
        result['threads'][str(threads)] = row
        print(f'{threads} thread(s): fp32 p50 {row["fp32"]["p50_ms"]:.0f} ms, int8 p50 '
              f'{row["int8"]["p50_ms"]:.0f} ms: int8 {row["speedup_int8"]:.2f}x')
    first = result['threads'][str(args.threads[0])]
    result.update(fp32=first['fp32'], int8=first['int8'], speedup_int8=first['speedup_int8'],
                  bf16=bf16_support(), speedup_bf16=None,
                  waypoint_max_diff_m={'int8': accuracy['waypoint_max_diff_m'], 'bf16': None},
                  risk_pearson_vs_fp32={'int8': accuracy['risk_pearson'], 'bf16': None},
                  accuracy_int8=accuracy, load_avg_end=os.getloadavg())
    result['goals'] = {
        'int8_speedup_1thread': first['speedup_int8'] >= GOALS['int8_speedup_1thread'],
        'int8_waypoints': accuracy['waypoint_max_diff_m'] <= GOALS['waypoint_max_diff_m'],
        'int8_risk': accuracy['risk_pearson'] >= GOALS['risk_pearson'], 'targets': GOALS}
    write_json_atomic(args.json, result)
    print(f'int8 vs fp32 on {len(feeds_list)} held-out frames: waypoints max '
          f'{accuracy["waypoint_max_diff_m"]:.3f} m, risk Pearson {accuracy["risk_pearson"]:.4f};'
          f' bf16: {result["bf16"]}; wrote {args.json}')
    return 0
