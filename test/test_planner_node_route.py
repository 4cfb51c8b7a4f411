"""planner_node with the route input, over real DDS: without a route it plans intent-only and
says so; a route on ``route_topic`` (transient local, odom) bends the plan along it; a route
that ages past ``route_max_age_s`` is stale and the plan is intent-only again; a malformed route
is counted and changes nothing. An artifact exported before the route input (five inputs) still
plans, with diagnostics saying the model has no route input."""
import math
import time
from dataclasses import replace

import numpy as np
import pytest
from node_helpers import (NodeProcess, Peer, Streamer, diagnostic_status, ego_pose,
                          make_artifact, planner_params, tiny_config)

pytestmark = pytest.mark.timeout(300)

PAST_S = 15 / 4.0
ROUTE_RADIUS_M = 12.0   # a sharp left turn from the ego: far from the intent-only plan
ROUTE_AGE_S = 4.0


@pytest.fixture(scope='module')
def route_artifact(tmp_path_factory):
    return make_artifact(tmp_path_factory.mktemp('route_artifact'),
                         config=replace(tiny_config(), route_points=16))


def left_turn_route(pose, radius: float = ROUTE_RADIUS_M):
    """[M, 2] in odom: 6 m straight behind the ego, then a left circle of ``radius``."""
    x, y, yaw = pose
    behind = [(x - math.cos(yaw) * d, y - math.sin(yaw) * d) for d in np.arange(6.0, 0.0, -2.0)]
    angles = np.linspace(0.0, 1.5 * math.pi, 60)
    cx, cy = x - math.sin(yaw) * radius, y + math.cos(yaw) * radius
    arc = [(cx + radius * math.sin(yaw + a), cy - radius * math.cos(yaw + a)) for a in angles]
    return np.array(behind + arc)


def route_message(xy, stamp_ns: int, frame: str = 'odom'):
    from geometry_msgs.msg import PoseStamped
    from nav_msgs.msg import Path as PathMsg

    msg = PathMsg()
    msg.header.frame_id = frame
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    for px, py in xy:
        pose = PoseStamped()
        pose.header = msg.header
        pose.pose.position.x, pose.pose.position.y = float(px), float(py)
        pose.pose.orientation.w = 1.0
        msg.poses.append(pose)
    return msg


def route_status(peer, since):
    """The 'route' value of the newest inputs status after ``since`` (monotonic), or None."""
    arrays = peer.diagnostics_since(since)
    for array in reversed(arrays):
        status = diagnostic_status(array, ': inputs')
        if status is not None and 'route' in status[2]:
            return status[2]['route']
    return None


def final_lateral(paths) -> float:
    """Mean lateral offset (base_link y) of the last waypoint of ``paths``."""
    return float(np.mean([p.poses[-1].pose.position.y for p in paths]))


def stamp_ns(path) -> int:
    return path.header.stamp.sec * 10**9 + path.header.stamp.nanosec


def test_route_bends_the_plan_and_a_stale_route_falls_back_to_intent(tmp_path, route_artifact):
    from nav_msgs.msg import Path as PathMsg
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    params = planner_params(tmp_path, route_artifact, use_info_topics=False,
                            output_frame='base_link', route_topic='/test/route',
                            route_max_age_s=ROUTE_AGE_S, max_input_age_s=1.0)
    node = NodeProcess(params)
    peer = Peer()
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    route_pub = peer.node.create_publisher(PathMsg, '/test/route', latched)
    streamer = None
    try:
        node.wait_for(r'active:', timeout=90)
        peer.wait_for_node()
        streamer = Streamer(peer)
        t0 = time.monotonic()
        peer.wait_until(lambda: len(peer.paths_since(t0)) >= 3, PAST_S + 20.0,
                        'three intent-only paths')
        status = peer.wait_until(lambda: route_status(peer, t0), 10.0,
                                 'diagnostics reporting the route status')
        assert status.startswith('none') and 'intent alone' in status, status
        intent_only = final_lateral(peer.paths_since(t0)[-3:])

        # A malformed route is counted and changes nothing.
        bad = route_message([(0.0, 0.0), (float('nan'), 1.0)], time.time_ns())
        route_pub.publish(bad)
        peer.wait_until(lambda: any(
            'drops.nan_route:route' in (diagnostic_status(a, ': inputs') or (0, '', {}))[2]
            for a in peer.diagnostics_since(t0)), 10.0, 'the malformed route counted')
        assert node.proc.poll() is None

        # A valid route: the plan follows its left turn.
        now_ns = time.time_ns()
        x, y, yaw, _ = ego_pose((now_ns - peer.t0_ns) / 1e9)
        route_pub.publish(route_message(left_turn_route((x, y, yaw)), now_ns))
        t_route = time.monotonic()
        peer.wait_until(lambda: route_status(peer, t_route) == 'ok', 10.0,
                        "diagnostics route 'ok' after the route was published")
        t_ok = time.monotonic()
        with_route = peer.wait_until(
            lambda: [p for p in peer.paths_since(t_ok)
                     if stamp_ns(p) - now_ns < (ROUTE_AGE_S - 0.5) * 1e9][:3]
            if len(peer.paths_since(t_ok)) >= 3 else None, 10.0, 'three paths along the route')
        along = final_lateral(with_route)
        assert along > intent_only + 8.0, (along, intent_only)

        # The route ages past route_max_age_s: stale, intent only again.
        peer.wait_until(lambda: (route_status(peer, time.monotonic() - 0.6) or '')
                        .startswith('stale'), ROUTE_AGE_S + 10.0, 'the route reported stale')
        t_stale = time.monotonic()
        stale = peer.wait_until(lambda: peer.paths_since(t_stale)[:3]
                                if len(peer.paths_since(t_stale)) >= 3 else None, 10.0,
                                'three paths after the route went stale')
        assert abs(final_lateral(stale) - intent_only) < abs(along - intent_only) / 2, \
            (final_lateral(stale), intent_only, along)
        assert node.proc.poll() is None
    finally:
        if streamer:
            streamer.stop()
        peer.close()
        code = node.stop()
    assert code == 0, node.log()


def test_an_artifact_without_the_route_input_still_plans(tmp_path, artifact):
    """Artifacts exported before the route input have five inputs: the node plans with them
    and its diagnostics say the model takes no route."""
    params = planner_params(tmp_path, artifact, use_info_topics=False, route_topic='/test/route')
    node = NodeProcess(params)
    peer = Peer()
    streamer = None
    try:
        node.wait_for(r'active:', timeout=90)
        peer.wait_for_node()
        streamer = Streamer(peer)
        t0 = time.monotonic()
        peer.wait_until(lambda: peer.paths_since(t0), PAST_S + 20.0, 'a path')
        peer.wait_until(lambda: (route_status(peer, t0) or '').startswith(
            'model has no route input'), 10.0, "the route status 'model has no route input'")
    finally:
        if streamer:
            streamer.stop()
        peer.close()
        code = node.stop()
    assert code == 0, node.log()
