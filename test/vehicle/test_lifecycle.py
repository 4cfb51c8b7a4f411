"""planner_node as a managed (lifecycle) node, driven through its real lifecycle services over DDS
(lifecycle_msgs ChangeState / GetState from a client node), on a deploy artifact.

Every transition: configure, activate, deactivate, activate again, cleanup, configure again,
shutdown from inactive; a configure that fails (FAILURE, reason logged, back to unconfigured) and
shutdown from unconfigured; autostart (``ros2 run``) and shutdown from active. Diagnostics carry
the state; no output while inactive; inputs are unsubscribed while inactive.
"""
import time

import pytest
from node_helpers import (CAMERAS, LifecycleClient, NodeProcess, Peer, Streamer, diagnostic_status,
                          planner_params)

from rsd_drive.data.convert import stamp_to_ns

pytestmark = pytest.mark.timeout(300)

PAST_S = 15 / 4.0
CONFIGURE, CLEANUP, ACTIVATE, DEACTIVATE = 1, 2, 3, 4
UNCONFIGURED_SHUTDOWN, INACTIVE_SHUTDOWN, ACTIVE_SHUTDOWN = 5, 6, 7


def stamp_ns(msg) -> int:
    return stamp_to_ns(msg.header.stamp)


def diag_state(peer, since: float):
    """(lifecycle_state, planning level, message, values) of the newest diagnostics since."""
    arrays = peer.diagnostics_since(since)
    if not arrays:
        return None
    level, message, values = diagnostic_status(arrays[-1], ': planning')
    return values.get('lifecycle_state'), level, message, values


def wait_diag_state(peer, state: str, timeout: float = 60.0):
    """The newest diagnostics received from now on, once they report ``state`` (the node also
    publishes them right after a deactivate or shutdown; otherwise every period)."""
    since = time.monotonic()

    def check():
        got = diag_state(peer, since)
        return got if got and got[0] == state else None
    return peer.wait_until(check, timeout, f'diagnostics reporting lifecycle state {state}')


def image_subscribers(peer) -> int:
    return peer.node.count_subscribers(f'/cameras/{CAMERAS[0]}/image_raw')


def test_every_transition_over_the_lifecycle_services(tmp_path, artifact):
    params = planner_params(tmp_path, artifact, use_info_topics=False, autostart=False)
    node = NodeProcess(params, no_torch=True)
    peer = Peer()
    streamer = None
    try:
        node.wait_for(r'waiting for a lifecycle transition', timeout=90)
        lc = LifecycleClient(peer)
        lc.wait()
        assert lc.state() == 'unconfigured'
        wait_diag_state(peer, 'unconfigured')
        assert 'configured' not in node.log.replace('unconfigured', '')  # nothing loaded yet

        assert lc.transition(CONFIGURE)
        assert lc.state() == 'inactive'
        node.wait_for(r'configured onnxruntime fp32')
        _, level, message, values = wait_diag_state(peer, 'inactive')
        assert level == 1 and 'not planning' in message, message
        assert values['device'] == 'CPUExecutionProvider'
        assert image_subscribers(peer) == 0  # inputs are only subscribed while active

        streamer = Streamer(peer)
        # A negative check: inputs for a while (frames with odometry history) and no output.
        peer.wait_until(lambda: streamer.frames >= 10, 60.0, '10 frames streamed while inactive')
        assert not peer.paths_since(0.0), 'a path was published while inactive'

        assert lc.transition(ACTIVATE)
        assert lc.state() == 'active'
        t_active = time.monotonic()
        peer.wait_until(lambda: peer.paths_since(t_active), PAST_S + 60.0, 'a path once active')
        wait_diag_state(peer, 'active')
        assert image_subscribers(peer) >= 1

        assert lc.transition(DEACTIVATE)
        assert lc.state() == 'inactive'
        off_wall, off_mono = time.time_ns(), time.monotonic()
        wait_diag_state(peer, 'inactive')
        peer.wait_until(lambda: image_subscribers(peer) == 0, 60.0, 'inputs unsubscribed')
        # A negative check: frames keep coming for a while, and no path answers them.
        frames = streamer.frames
        peer.wait_until(lambda: streamer.frames >= frames + 10, 60.0,
                        '10 more frames streamed after deactivate')
        late = [p for p in peer.paths_since(off_mono) if stamp_ns(p) > off_wall]
        assert not late, f'{len(late)} paths published after deactivate'

        assert lc.transition(ACTIVATE)  # the worker and subscriptions come back
        again_wall, again = time.time_ns(), time.monotonic()
        peer.wait_until(lambda: [p for p in peer.paths_since(again) if stamp_ns(p) > again_wall],
                        PAST_S + 60.0, 'a path after re-activation')
        assert lc.transition(DEACTIVATE)

        assert lc.transition(CLEANUP)
        assert lc.state() == 'unconfigured'
        _, _, _, values = wait_diag_state(peer, 'unconfigured')
        assert values['device'] == 'none'  # the backend is freed
        node.wait_for(r'cleaned up: backend freed')

        assert lc.transition(CONFIGURE)  # loads again from the artifact
        assert lc.state() == 'inactive'

        assert lc.transition(INACTIVE_SHUTDOWN)
        assert lc.state() == 'finalized'
        node.wait_for(r'shut down from inactive')
        assert node.proc.poll() is None  # finalized, still answering its services
    finally:
        if streamer:
            streamer.stop()
        peer.close()
        code = node.stop()
    assert code == 0 and 'Traceback' not in node.log, node.log


def test_failed_configure_is_reported_and_the_node_stays_unconfigured(tmp_path):
    params = planner_params(tmp_path, tmp_path / 'no_such_artifact', autostart=False)
    node = NodeProcess(params, no_torch=True)
    peer = Peer()
    try:
        lc = LifecycleClient(peer)
        lc.wait()
        assert not lc.transition(CONFIGURE)  # FAILURE -> back to unconfigured
        assert lc.state() == 'unconfigured'
        node.wait_for(r'configure failed: FileNotFoundError: .*no_such_artifact')

        since = time.monotonic()

        def reported():  # the next diagnostics after the failure: ERROR with the reason
            got = diag_state(peer, since)
            error = got[3].get('last_transition_error', '') if got else ''
            return got if 'no_such_artifact' in error else None
        state, level, message, _ = peer.wait_until(reported, 60.0, 'the failure in diagnostics')
        assert state == 'unconfigured' and level == 2 and 'not planning' in message, message
        assert lc.transition(UNCONFIGURED_SHUTDOWN)
        assert lc.state() == 'finalized'
    finally:
        peer.close()
        code = node.stop()
    assert code == 0, node.log


def test_autostart_runs_without_a_manager_and_shuts_down_from_active(tmp_path, artifact):
    node = NodeProcess(planner_params(tmp_path, artifact, use_info_topics=False), no_torch=True)
    peer = Peer()
    try:
        node.wait_for(r'active:', timeout=90)
        lc = LifecycleClient(peer)
        lc.wait()
        assert lc.state() == 'active'
        assert lc.transition(ACTIVE_SHUTDOWN)
        assert lc.state() == 'finalized'
        node.wait_for(r'shut down from active')
    finally:
        peer.close()
        code = node.stop()
    assert code == 0, node.log


def test_autostart_with_a_bad_model_dir_exits_with_the_reason(tmp_path):
    node = NodeProcess(planner_params(tmp_path, tmp_path / 'missing'), no_torch=True)
    try:
        assert node.proc.wait(90) == 1, node.log
    finally:
        node.stop()
    assert 'planner_node cannot start: configure failed' in node.log
    assert 'missing' in node.log and 'Traceback' not in node.log


def test_unexpected_error_takes_the_error_path_and_frees_everything(tmp_path, artifact):
    """An exception the node does not expect: ERROR, on_error frees resources, unconfigured."""
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn

    from rsd_drive.ros.planner_node import PlannerNode

    params = planner_params(tmp_path, artifact, use_info_topics=False, autostart=False)
    context = rclpy.Context()
    rclpy.init(context=context, args=['test', '--ros-args', '--params-file', str(params)])
    try:
        node = PlannerNode(context=context)
        real = node._configure

        def broken():
            real()
            raise KeyError('simulated bug after loading')

        node._configure = broken
        assert node.trigger_configure() == TransitionCallbackReturn.ERROR
        assert node.lifecycle_state == 'unconfigured' and node.backend is None
        assert 'KeyError' in node.last_transition_error
        node._configure = real
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.lifecycle_state == 'inactive' and node.backend is not None
        node.shut_down()
        assert node.lifecycle_state == 'finalized' and node.backend is None
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
