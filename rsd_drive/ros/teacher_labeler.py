"""``teacher_labeler``: the offline labeling job as a ROS 2 node.

Same job as ``rsd-drive label`` (rsd_drive.teacher.job.run_job), configured from
``config/teacher.yaml`` (parameter ``config_file``); the other parameters override the file when
set. Progress is published as JSON (std_msgs/String) on ``progress_topic`` and as a
DiagnosticArray on /diagnostics; with ``exit_when_done`` the node exits when the job ends (exit
code 1 if a bag failed).

    ros2 run rsd_drive teacher_labeler --ros-args -p bags:="[drive.mcap]" -p out_dir:=labels
"""
from __future__ import annotations

import json
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String

from rsd_drive.teacher.config import TeacherFile

PARAMETERS = {
    'config_file': ('', 'teacher config YAML; empty: the package config/teacher.yaml'),
    'bags': (Parameter.Type.STRING_ARRAY, 'bags to label (default: node.bags of the config)'),
    'out_dir': ('', 'output directory (default: node.out_dir of the config)'),
    'backend': ('', 'teacher backend override: scene-oracle | vlm | detector+vlm | clipseg'),
    'model_dir': ('', 'model directory override of the backend'),
    'detector_dir': ('', 'detector+vlm: detector directory override'),
    'dataset_config': ('', 'dataset config YAML override'),
    'model_config': ('', 'ModelConfig YAML override (image size, risk grid)'),
    'workers': (0, 'bags in parallel; 0: label.workers of the config'),
    'chunk_frames': (0, 'frames per index shard; 0: label.chunk_frames of the config'),
    'ray_address': ('', 'run the bags as Ray tasks: local | auto | HOST:PORT; empty: process '
                        'pool (bags, out_dir and model dirs must then be shared storage)'),
    'gpus_per_task': (-1.0, 'with ray_address: GPUs per bag task; < 0: 1 when teacher.device '
                            'is cuda, else 0'),
    'max_retries': (2, 'with ray_address: reruns of a bag whose worker died'),
}


class TeacherLabeler(Node):
    """Runs the labeling job in a worker thread and reports its progress."""

    def __init__(self):
        super().__init__('teacher_labeler')
        for name, (default, text) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=text))
        config = TeacherFile.load(self._param('config_file') or None)
        for name in ('backend', 'model_dir', 'detector_dir'):
            if self._param(name):
                setattr(config.teacher, name, self._param(name))
        node_cfg = config.node
        self.bags = list(self._param('bags') or node_cfg.bags)
        self.out_dir = self._param('out_dir') or node_cfg.out_dir
        if not self.bags or not self.out_dir:
            raise ValueError('teacher_labeler needs bags and out_dir (parameters or node.* of '
                             'the config)')
        self.exit_when_done = node_cfg.exit_when_done
        self.spec = self._spec(config)
        self.workers = self._param('workers') or config.label.workers
        self.ray_address = self._param('ray_address') or None
        gpus = self._param('gpus_per_task')
        self.gpus_per_task = float(gpus) if gpus >= 0 else \
            (1.0 if config.teacher.device.startswith('cuda') else 0.0)
        self.max_retries = max(0, int(self._param('max_retries')))
        self.progress_pub = self.create_publisher(String, node_cfg.progress_topic, 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._lock = threading.Lock()
        self._state = {'state': 'starting', 'bags_total': len(self.bags), 'bags_done': 0,
                       'bags_failed': 0, 'current': {}, 'frames_labelled': 0, 'frames_seen': 0,
                       'errors': []}
        self.finished = threading.Event()
        self.exit_code = 0
        self.create_timer(node_cfg.progress_period_s, self._publish)
        self._worker = threading.Thread(target=self._run, daemon=True)
        self._worker.start()
        where = f'Ray at {self.ray_address}' if self.ray_address else \
            f'{self.workers} workers'
        self.get_logger().info(f'labelling {len(self.bags)} bags into {self.out_dir} with '
                               f'{config.teacher.backend}, {where}')

    def _param(self, name):
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            return None

    def _spec(self, config):
        from rsd_drive.data.bag import DatasetConfig
        from rsd_drive.model.config import ModelConfig
        from rsd_drive.teacher.job import make_spec

        label = config.label
        dataset = DatasetConfig.from_yaml(self._param('dataset_config') or
                                          label.dataset_config or None)
        model_path = self._param('model_config') or label.model_config
        model = ModelConfig.from_yaml(model_path) if model_path else None
        image_hw = tuple(label.image_size) if label.image_size else None
        chunk = self._param('chunk_frames') or label.chunk_frames
        return make_spec(self.out_dir, config.teacher, dataset, model, image_hw, chunk)

    def _on_progress(self, event: dict) -> None:
        with self._lock:
            s = self._state
            s['state'] = 'running'
            bag_id, state = event.get('bag_id'), event.get('state')
            if state == 'running':
                s['current'][bag_id] = [event.get('frames_done', 0), event.get('frames_total', 0)]
            elif state in ('done', 'already_done', 'failed'):
                last = s['current'].pop(bag_id, None)  # [frames_done, frames_total]
                s['frames_seen'] += int(event.get('frames_done', last[0] if last else 0))
                s['bags_done'] += 1
                if state == 'failed':
                    s['bags_failed'] += 1
                    s['errors'].append(str(event.get('error')))
                    self.get_logger().error(f'bag failed: {event.get("error")}')
                else:
                    self.get_logger().info(f'bag {bag_id}: {state}')

    def _run(self) -> None:
        from rsd_drive.teacher.job import run_job

        try:
            summary = run_job(self.bags, self.spec, workers=self.workers, show_progress=False,
                              on_progress=self._on_progress, ray_address=self.ray_address,
                              gpus_per_task=self.gpus_per_task, max_retries=self.max_retries)
            with self._lock:
                self._state.update(state='done', frames_labelled=summary.frames_labelled,
                                   bags_failed=len(summary.failed),
                                   bags_done=len(summary.bags), current={})
            self.exit_code = 1 if summary.failed else 0
        except Exception as exc:  # noqa: BLE001 - report it on the topics, then exit non-zero
            with self._lock:
                self._state.update(state='error', errors=[f'{type(exc).__name__}: {exc}'])
            self.get_logger().error(f'labeling job failed: {exc}')
            self.exit_code = 1
        self._publish()
        self.finished.set()

    def _publish(self) -> None:
        with self._lock:
            s = json.loads(json.dumps(self._state))
        self.progress_pub.publish(String(data=json.dumps(s)))
        level = DiagnosticStatus.OK
        if s['state'] == 'error' or (s['state'] == 'done' and s['bags_failed']):
            level = DiagnosticStatus.ERROR
        elif s['bags_failed']:
            level = DiagnosticStatus.WARN
        values = [KeyValue(key='state', value=s['state']),
                  KeyValue(key='bags_done', value=f'{s["bags_done"]}/{s["bags_total"]}'),
                  KeyValue(key='bags_failed', value=str(s['bags_failed'])),
                  KeyValue(key='frames_labelled', value=str(s['frames_labelled'])),
                  KeyValue(key='frames_seen', value=str(s['frames_seen']))]
        values += [KeyValue(key=f'frames:{k}', value=f'{v[0]}/{v[1]}')
                   for k, v in s['current'].items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [DiagnosticStatus(level=level, name='teacher_labeler: job',
                                       message='; '.join(s['errors'][-3:]) or s['state'],
                                       hardware_id='offline', values=values)]
        self.diag_pub.publish(msg)


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = TeacherLabeler()
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.1)
            if node.finished.is_set() and node.exit_when_done:
                # Let the last progress and diagnostics messages go out before leaving (the
                # timer republishes them): 0.5 s after a listener is matched, or up to 3 s for
                # discovery when a short job ended before any listener had found the node.
                start = time.monotonic()
                matched = None
                while time.monotonic() - start < 3.0 and (
                        matched is None or time.monotonic() - matched < 0.5):
                    rclpy.spin_once(node, timeout_sec=0.05)
                    if matched is None and node.progress_pub.get_subscription_count() > 0:
                        matched = time.monotonic()
                break
        code = node.exit_code
    except (ValueError, FileNotFoundError) as exc:
        print(f'teacher_labeler: {exc}', file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return code


if __name__ == '__main__':
    sys.exit(main())
