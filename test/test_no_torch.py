"""No torch on the car: with a deploy artifact and ONNX Runtime (or TensorRT), neither planner_node
nor ``rsd-drive replay`` imports torch or transformers. Run where torch *is* installed (the main
profile), so an import would show in the child's ``sys.modules``."""
import json
import subprocess
import sys

import pytest
from node_helpers import planner_params, write_drive_bag

CHILD = r'''
import json, sys
from pathlib import Path

import rclpy

from rsd_drive.cli import main as cli_main
from rsd_drive.deploy.tensorrt_engine import TensorRTUnavailable
from rsd_drive.ros.planner_node import PlannerNode

params, bag, record = sys.argv[1:4]
rclpy.init(args=['planner_node', '--ros-args', '--params-file', params,
                 '-p', 'use_sim_time:=true'])
node = PlannerNode()
started = node.autostart_transitions()  # configure (artifact, ONNX Runtime, warm-up) + activate
trt = 'not tried'
try:
    from rsd_drive.deploy.backends import create_backend
    create_backend('tensorrt', node.settings.model_dir, 'fp16')
    trt = 'built'
except TensorRTUnavailable as e:
    trt = f'unavailable: {e}'
code = cli_main(['replay', bag, '--record', record, '--wait', '3', '--tail', '0.2',
                 '--no-progress', '--rate', '4'])
node.shut_down()
node.destroy_node()
rclpy.try_shutdown()
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))
print('RESULT ' + json.dumps({'started': started, 'replay': code, 'tensorrt': trt,
                              'state': node.lifecycle_state, 'heavy': heavy}))
'''


def test_node_and_replay_import_no_torch(tmp_path, artifact):
    pytest.importorskip('torch', reason='the check means something only where torch exists')
    write_drive_bag(tmp_path / 'drive', duration_s=1.0)
    params = planner_params(tmp_path, artifact, use_info_topics=False)
    out = subprocess.run([sys.executable, '-c', CHILD, str(params), str(tmp_path / 'drive'),
                          str(tmp_path / 'outputs')], capture_output=True, text=True,
                         timeout=240)
    lines = [line for line in out.stdout.splitlines() if line.startswith('RESULT ')]
    assert out.returncode == 0 and lines, out.stdout + out.stderr
    result = json.loads(lines[-1][len('RESULT '):])
    assert result['started'] and result['replay'] == 0 and result['state'] == 'finalized', result
    assert result['tensorrt'].startswith('unavailable') or result['tensorrt'] == 'built'
    assert result['heavy'] == [], f'torch/transformers imported: {result["heavy"][:10]}'
    assert (tmp_path / 'outputs').is_dir()  # replay recorded (the node's diagnostics at least)
