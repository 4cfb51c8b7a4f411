"""planner_node's diagnostics as a pure function of a state snapshot: no node, no DDS."""
from rsd_drive.ros.planner_diagnostics import (DiagnosticsSnapshot, diagnostic_array,
                                               diagnostic_statuses)


def snapshot(**changes) -> DiagnosticsSnapshot:
    values = dict(node_name='planner_node', now_ns=10_000_000_000, state='active',
                  camera_names=['front'], backend='onnxruntime', precision='fp32',
                  output_frame='base_link', route_topic='', max_age_ns=500_000_000, device='cpu',
                  ages={'front': 0.05, 'odometry': None}, received={'front': 7},
                  counters={'too_old:front': 2}, sync_drops={'unmatched': 1}, sync_emitted=6,
                  latency={'total': (0.012, 0.02), 'inference': (0.01, 0.015),
                           'decode': (0.001, 0.002), 'transport_sim': (0.003, 0.004)},
                  plans=6, last_plan_ns=9_800_000_000, route_status='none', intent=0)
    values.update(changes)
    return DiagnosticsSnapshot(**values)


def by_name(statuses) -> dict:
    return {name.split(': ')[1]: (level, msg, values, hw)
            for name, level, msg, values, hw in statuses}


def test_active_and_planning_reports_ok_with_latencies_and_counters():
    got = by_name(diagnostic_statuses(snapshot()))
    level, msg, values, hw = got['inputs']
    assert (level, msg, hw) == ('OK', 'all inputs fresh', 'onnxruntime:fp32')
    assert values['age_s.front'] == '0.050' and values['age_s.odometry'] == 'never'
    assert values['received.front'] == 7 and values['received.odometry'] == 0
    assert values['drops.too_old:front'] == 2 and values['sync.unmatched'] == 1
    assert values['sync.emitted'] == 6
    assert values['route'] == 'none: planning from the intent alone'
    assert 'received.route' not in values
    level, msg, values, _ = got['planning']
    assert level == 'OK' and msg == 'planning; stamp-to-publish p50 12.0 ms'
    assert values['latency_ms.total.p50'] == '12.00'
    assert values['latency_sim_ms.transport.p99'] == '4.00'
    assert values['plans_published'] == 6 and values['device'] == 'cpu'
    assert 'node_overhead_to_inference' in values


def test_stale_inactive_and_no_recent_plan():
    stale = by_name(diagnostic_statuses(snapshot(stale=['front (1.00 s old)'])))
    assert stale['inputs'][:2] == ('ERROR', 'stale inputs: front (1.00 s old)')
    assert stale['planning'][:2] == ('ERROR', 'not planning: stale inputs: front (1.00 s old)')
    inactive = by_name(diagnostic_statuses(snapshot(state='inactive')))
    assert inactive['inputs'][:2] == ('WARN', 'lifecycle state inactive: not subscribed')
    assert inactive['planning'][:2] == ('WARN', 'lifecycle state inactive: not planning')
    failed = by_name(diagnostic_statuses(snapshot(state='unconfigured',
                                                  last_transition_error='configure failed: x')))
    assert failed['planning'][0] == 'ERROR'
    assert failed['planning'][2]['last_transition_error'] == 'configure failed: x'
    old = by_name(diagnostic_statuses(snapshot(last_plan_ns=1, last_skip='stale x')))
    assert old['planning'][:2] == ('WARN', 'no recent plan: stale x')
    route = by_name(diagnostic_statuses(snapshot(route_topic='/route', route_status='ok',
                                                 received={'route': 3})))
    assert route['inputs'][2]['route'] == 'ok' and route['inputs'][2]['received.route'] == 3


def test_diagnostic_array_carries_both_statuses():
    array = diagnostic_array(snapshot())
    assert [s.name for s in array.status] == ['planner_node: inputs', 'planner_node: planning']
    assert array.header.stamp.sec == 10
    assert {kv.key: kv.value for kv in array.status[0].values}['received.front'] == '7'
