"""planner_node's ``/diagnostics`` as a pure function of a state snapshot.

The node takes a :class:`DiagnosticsSnapshot` under its lock (:meth:`PlannerNode.snapshot`);
:func:`diagnostic_statuses` turns it into the two statuses ("<node>: inputs", "<node>: planning")
as plain (name, level, message, values, hardware_id) tuples, and :func:`diagnostic_array` into
the ``DiagnosticArray`` the node publishes. Neither needs a node, DDS or a clock, so they are
unit-tested directly (test/test_planner_diagnostics.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rsd_drive import INTENTS
from rsd_drive.deploy.pipeline import NODE_STAGES


@dataclass
class DiagnosticsSnapshot:
    """What the diagnostics report, copied at one instant."""

    node_name: str
    now_ns: int
    state: str                      # lifecycle state reported
    camera_names: list
    backend: str                    # settings: backend, precision, output frame, route topic
    precision: str
    output_frame: str
    route_topic: str
    max_age_ns: int
    device: str = 'none'            # the backend's device, 'none' when unconfigured
    stale: list = field(default_factory=list)       # 'name (age)' of inputs too old
    ages: dict = field(default_factory=dict)        # input -> age (s) or None (never)
    counters: dict = field(default_factory=dict)    # drops, '<reason>:<input>'
    received: dict = field(default_factory=dict)    # valid messages per input
    sync_drops: dict = field(default_factory=dict)
    sync_emitted: int = 0
    latency: dict = field(default_factory=dict)     # stage -> (p50, p99) seconds
    plans: int = 0
    last_plan_ns: int | None = None
    last_skip: str = ''
    route_status: str = 'none'
    intent: int = 0
    last_transition_error: str = ''


def _input_status(snap: DiagnosticsSnapshot):
    values = {}
    for name, age in snap.ages.items():
        values[f'age_s.{name}'] = 'never' if age is None else f'{age:.3f}'
        values[f'received.{name}'] = snap.received.get(name, 0)
    values.update({f'drops.{k}': v for k, v in sorted(snap.counters.items())})
    values.update({f'sync.{k}': v for k, v in sorted(snap.sync_drops.items())})
    values['sync.emitted'] = snap.sync_emitted
    values['intent'] = INTENTS[snap.intent]
    values['route'] = snap.route_status if snap.route_status == 'ok' else \
        f'{snap.route_status}: planning from the intent alone'
    if snap.route_topic:
        values['received.route'] = snap.received.get('route', 0)
    if snap.state != 'active':
        level, msg = 'WARN', f'lifecycle state {snap.state}: not subscribed'
    elif snap.stale:
        level, msg = 'ERROR', 'stale inputs: ' + ', '.join(snap.stale)
    else:
        level, msg = 'OK', 'all inputs fresh'
    return f'{snap.node_name}: inputs', level, msg, values


def _latency_values(latency: dict) -> dict:
    values = {'latency_clock': 'latency_ms: wall; latency_sim_ms: ROS (sim) time'}
    for stage, (p50, p99) in latency.items():
        key = f'latency_sim_ms.{stage[:-4]}' if stage.endswith('_sim') else \
            f'latency_ms.{stage}'
        values[f'{key}.p50'] = f'{p50 * 1e3:.2f}'
        values[f'{key}.p99'] = f'{p99 * 1e3:.2f}'
    if 'inference' in latency:
        node = sum(latency[st][0] for st in NODE_STAGES if st in latency)
        values['node_overhead_to_inference'] = f'{node / latency["inference"][0]:.3f}'
    return values


def _planning_status(snap: DiagnosticsSnapshot):
    error = snap.last_transition_error
    values = {'backend': snap.backend, 'precision': snap.precision, 'device': snap.device,
              'plans_published': snap.plans, 'output_frame': snap.output_frame,
              'lifecycle_state': snap.state}
    if error:
        values['last_transition_error'] = error
    values.update(_latency_values(snap.latency))
    recent = snap.last_plan_ns is not None and snap.now_ns - snap.last_plan_ns <= snap.max_age_ns
    if snap.state != 'active':
        level = 'ERROR' if error else 'WARN'
        msg = f'lifecycle state {snap.state}: not planning' + (f' ({error})' if error else '')
    elif snap.stale:
        level, msg = 'ERROR', 'not planning: stale inputs: ' + ', '.join(snap.stale)
    elif recent:
        level = 'OK'
        p50 = snap.latency.get('total', (0.0, 0.0))[0]
        msg = f'planning; stamp-to-publish p50 {p50 * 1e3:.1f} ms'
    else:
        level, msg = 'WARN', f'no recent plan: {snap.last_skip or "waiting for data"}'
    return f'{snap.node_name}: planning', level, msg, values


def diagnostic_statuses(snap: DiagnosticsSnapshot) -> list:
    """-> [(name, level, message, values, hardware_id)] for inputs and planning."""
    hw = f'{snap.backend}:{snap.precision}'
    return [(*_input_status(snap), hw), (*_planning_status(snap), hw)]


def diagnostic_array(snap: DiagnosticsSnapshot):
    """The ``diagnostic_msgs/DiagnosticArray`` of :func:`diagnostic_statuses`, stamped now."""
    from rsd_drive.ros import messages

    return messages.diagnostic_array(snap.now_ns, [
        messages.diagnostic_status(*status) for status in diagnostic_statuses(snap)])
