"""planner_node over real DDS, in its own process, on a deploy artifact: a generated bag replayed
into it (sim time), and live inputs with a camera / the odometry going stale and coming back (wall
time). The vehicle profile (test/vehicle, no torch) runs these same tests.

Also the pieces that need no graph: message building, the latest-only queue, parameter errors.
"""
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from node_helpers import (CAMERAS, GRID, Peer, NodeProcess, START_NS, Streamer, camera_extrinsics,
                          diagnostic_status, ego_pose, make_checkpoint, planner_params,
                          write_drive_bag)

from rsd_drive import INTENTS
from rsd_drive.geometry import GridSpec

pytestmark = pytest.mark.timeout(240)

PAST_S = 15 / 4.0   # the oldest past state of the tiny model: frames need this much odometry
OK, WARN, ERROR = 0, 1, 2


# -- messages, queue, parameters (no DDS) ---------------------------------------------------------
def test_path_message_base_link_and_odom_frames():
    from rsd_drive.ros.messages import path_message

    wps = np.array([[1.0, 0.0], [2.0, 1.0], [2.0, 1.0], [2.0, 3.0]])
    path = path_message(wps, 1_700_000_000_250_000_000, 'base_link')
    assert path.header.frame_id == 'base_link'
    assert (path.header.stamp.sec, path.header.stamp.nanosec) == (1_700_000_000, 250_000_000)
    assert [p.pose.position.x for p in path.poses] == [1.0, 2.0, 2.0, 2.0]
    yaws = [2 * math.atan2(p.pose.orientation.z, p.pose.orientation.w) for p in path.poses]
    # heading from the previous point; a zero step keeps the previous heading
    assert yaws == pytest.approx([0.0, math.pi / 4, math.pi / 4, math.pi / 2])

    pose = (10.0, -5.0, math.pi / 2)  # base_link at (10, -5) facing +y of odom
    odom = path_message(wps, 0, 'odom', pose)
    first = odom.poses[0].pose
    assert (first.position.x, first.position.y) == pytest.approx((10.0, -4.0))
    assert 2 * math.atan2(first.orientation.z, first.orientation.w) == pytest.approx(math.pi / 2)


def test_occupancy_message_has_gridspec_geometry():
    from rsd_drive.ros.messages import occupancy_message

    grid = GridSpec(rows=3, cols=4, resolution=0.5, origin_x=-1.0, origin_y=-0.75)
    risk = np.linspace(0, 1, 12).reshape(3, 4).astype(np.float32)
    risk[2, 3] = np.nan
    msg = occupancy_message(risk, grid, 5, 'base_link')
    assert (msg.info.width, msg.info.height, msg.info.resolution) == (4, 3, 0.5)
    assert (msg.info.origin.position.x, msg.info.origin.position.y) == (-1.0, -0.75)
    data = np.array(msg.data, dtype=np.int16)
    assert data[0] == 0 and data[1] == 9 and data[-1] == -1 and data[-2] == 91
    with pytest.raises(ValueError, match='does not match'):
        occupancy_message(risk.T, grid, 5, 'base_link')


def test_latest_only_queue_keeps_the_newest():
    from rsd_drive.ros.planner_node import LatestOnlyQueue

    q = LatestOnlyQueue()
    assert q.put(1) is None
    assert q.put(2) == 1       # the waiting (older) item is dropped and handed back for counting
    assert q.get(0.01) == 2
    assert q.get(0.01) is None


def test_missing_parameter_is_named(tmp_path, artifact):
    """No silent code defaults: a parameters file without model_dir stops the node by name."""
    import rclpy
    from rclpy.parameter import Parameter

    from rsd_drive.ros.planner_node import ConfigError, PlannerNode

    overrides = [p for p in _overrides(planner_params(tmp_path, artifact))
                 if p.name != 'model_dir']
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ConfigError, match="'model_dir' is not set"):
            PlannerNode(context=context, parameter_overrides=overrides)
        node = PlannerNode(context=context, parameter_overrides=overrides
                           + [Parameter('model_dir', value=str(artifact))])
        assert node.settings.camera_names == list(CAMERAS)
        assert node.backend is None  # nothing heavy before on_configure
        assert node.lifecycle_state == 'unconfigured'
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def _overrides(params_file, **changes):
    """rclpy Parameter overrides equal to a parameters file (for in-process nodes)."""
    import yaml
    from rclpy.parameter import Parameter

    values = yaml.safe_load(params_file.read_text())['/**']['ros__parameters']
    values.update(changes)
    overrides = [Parameter(k, value=v) for k, v in values.items() if k != 'cameras']
    for cam, cfg in values['cameras'].items():
        overrides += [Parameter(f'cameras.{cam}.{k}', value=v) for k, v in cfg.items()]
    return overrides


def test_extrinsics_parameter_takes_a_mount_with_roll_or_a_pose(tmp_path, artifact):
    """``cameras.<name>.extrinsics`` as [x, y, z, yaw, pitch], [.., roll] or [x, y, z, qx, qy,
    qz, qw] gives the same cam_to_ego as the bag reader's parser; 4 values are refused by name."""
    import rclpy
    from rclpy.parameter import Parameter

    from rsd_drive.geometry import camera_to_ego, matrix_to_quaternion
    from rsd_drive.ros.planner_node import ConfigError, PlannerNode

    rolled = camera_to_ego(1.5, 0.2, 1.4, 0.3, 0.1, 0.05)
    pose = [1.5, 0.2, 1.4, *matrix_to_quaternion(rolled[:3, :3])]
    forms = {'front': [1.5, 0.2, 1.4, 0.3, 0.1, 0.05], 'front_left': pose}
    base = _overrides(planner_params(tmp_path, artifact))
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = PlannerNode(context=context, parameter_overrides=base + [
            Parameter(f'cameras.{cam}.extrinsics', value=v) for cam, v in forms.items()])
        try:
            from rclpy.lifecycle import TransitionCallbackReturn
            assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            for cam in forms:
                np.testing.assert_allclose(node.extrinsics_by_camera[cam], rolled, atol=1e-9)
            assert not np.allclose(rolled, camera_to_ego(1.5, 0.2, 1.4, 0.3, 0.1), atol=1e-3)
        finally:
            node.destroy_node()
        with pytest.raises(ConfigError, match=r'cameras\.front\.extrinsics needs .*roll'):
            PlannerNode(context=context, parameter_overrides=base + [
                Parameter('cameras.front.extrinsics', value=[1.0, 0.0, 1.0, 0.0])])
    finally:
        rclpy.try_shutdown(context=context)


def test_extrinsics_from_tf_static_chain(tmp_path, artifact):
    """base_link -> front_mount -> front_optical composed from tf_static; without tf2_msgs the
    configure transition fails (FAILURE, back to unconfigured) with a message naming it."""
    import rclpy
    from geometry_msgs.msg import TransformStamped

    from rsd_drive.geometry import camera_to_ego, make_transform, matrix_to_quaternion, yaw_matrix
    from rsd_drive.ros.planner_node import PlannerNode

    def tf(parent, child, T):
        msg = TransformStamped()
        msg.header.frame_id, msg.child_frame_id = parent, child
        t, q = msg.transform.translation, msg.transform.rotation
        t.x, t.y, t.z = (float(v) for v in T[:3, 3])
        q.x, q.y, q.z, q.w = matrix_to_quaternion(T[:3, :3])
        return msg

    mount = make_transform(yaw_matrix(0.3), (1.5, 0.2, 1.4))
    cam_to_ego = camera_to_ego(1.5, 0.2, 1.4, 0.3, 0.1)
    mount_to_optical = np.linalg.inv(mount) @ cam_to_ego
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = PlannerNode(context=context, parameter_overrides=_overrides(
            planner_params(tmp_path, artifact), extrinsics_source='tf_static'))
        assert node._tf_extrinsics('front') is None  # nothing known yet
        node.camera_frames['front'] = 'front_optical'
        node._on_tf_static(SimpleNamespace(transforms=[
            tf('front_mount', 'front_optical', mount_to_optical),
            tf('base_link', 'front_mount', mount)]))
        np.testing.assert_allclose(node._tf_extrinsics('front'), cam_to_ego, atol=1e-9)
        node.camera_frames['front_left'] = 'front_left_optical'
        assert node._tf_extrinsics('front_left') is None  # not connected to base_link
        try:
            import tf2_msgs  # noqa: F401
        except ImportError:
            from rclpy.lifecycle import TransitionCallbackReturn

            assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
            assert node.lifecycle_state == 'unconfigured' and node.backend is None
            assert 'tf2_msgs' in node.last_transition_error
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_build_only_prepares_and_exits(tmp_path, artifact):
    """On a deploy dir: checks it loads, writes nothing into it, exits before activating."""
    before = sorted((p.name, p.stat().st_mtime_ns) for p in artifact.iterdir())
    node = NodeProcess(planner_params(tmp_path, artifact), '-p', 'build_only:=true')
    try:
        assert node.proc.wait(90) == 0, node.log
    finally:
        node.stop()
    assert 'build_only: onnxruntime fp32: graph ready' in node.log
    assert 'active:' not in node.log
    assert sorted((p.name, p.stat().st_mtime_ns) for p in artifact.iterdir()) == before


def test_checkpoint_dir_is_exported_once_on_a_training_machine(tmp_path):
    """A training checkpoint as model_dir (torch installed): exported to <ckpt>/deploy on first
    use, reused while the checkpoint is unchanged."""
    pytest.importorskip('torch', reason='exporting a checkpoint needs torch (training machine)')
    ckpt = make_checkpoint(tmp_path / 'ckpt', seed=4)
    node = NodeProcess(planner_params(tmp_path, ckpt), '-p', 'build_only:=true')
    try:
        assert node.proc.wait(120) == 0, node.log
    finally:
        node.stop()
    assert 'exporting' in node.log and (ckpt / 'deploy' / 'deploy.json').is_file()
    again = NodeProcess(planner_params(tmp_path, ckpt), '-p', 'build_only:=true')
    try:
        assert again.proc.wait(90) == 0, again.log
    finally:
        again.stop()
    assert 'exporting' not in again.log


# -- a bag replayed into the node (sim time) ------------------------------------------------------
def read_bag(path):
    from rosbags.highlevel import AnyReader

    out = {}
    with AnyReader([Path(path)]) as reader:
        for conn, t_ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t_ns, reader.deserialize(raw, conn.msgtype)))
    return out


def expected_plan(bag_dir, artifact, stamp_ns):
    """The plan for one frame computed offline from the bag with the same backend."""
    from rsd_drive.data.convert import odometry_to_state
    from rsd_drive.data.sync import OdometryHistory
    from rsd_drive.deploy.backends import OnnxRuntimeBackend
    from rsd_drive.deploy.pipeline import CameraCalibration, FramePlanner
    from rsd_drive.geometry import camera_to_ego

    bag = read_bag(bag_dir)
    history = OdometryHistory()
    for _, msg in bag['/odom']:
        history.add(odometry_to_state(msg))
    images, calibs = [], []
    for cam in CAMERAS:
        t, img = min(bag[f'/cameras/{cam}/image_raw'], key=lambda m: abs(m[0] - stamp_ns))
        assert abs(t - stamp_ns) < 10_000_000
        info = bag[f'/cameras/{cam}/camera_info'][0][1]
        images.append(img)
        calibs.append(CameraCalibration(np.asarray(info.k).reshape(3, 3),
                                        (info.height, info.width),
                                        camera_to_ego(*camera_extrinsics(cam))))
    backend = OnnxRuntimeBackend(artifact, threads=1)
    plan, _ = FramePlanner(backend, CAMERAS).plan(
        images, calibs, history.past_states(stamp_ns), INTENTS.index('left'))
    return plan


def test_replayed_bag_gives_paths_and_risk_grids(tmp_path, artifact):
    from rsd_drive.ros.replay import replay

    stamps = write_drive_bag(tmp_path / 'drive', duration_s=6.0)
    params = planner_params(tmp_path, artifact)
    node = NodeProcess(params, '-p', 'use_sim_time:=true')
    try:
        node.wait_for(r'active:', timeout=90)
        summary = replay(tmp_path / 'drive', record=tmp_path / 'outputs', wait_s=15.0,
                         tail_s=1.0, progress=False)
        # Played again: bag time jumps back; the node starts over instead of rejecting the
        # frames as out of order, and plans the same frames again.
        again = replay(tmp_path / 'drive', record=tmp_path / 'outputs_again', wait_s=5.0,
                       tail_s=1.0, progress=False, record_topics=['/planner_node/path'])
        assert node.proc.poll() is None, node.log
    finally:
        node.stop()
    print(summary.table())
    assert '/tf_static' in summary.skipped  # tf2_msgs is not installed: skipped, not fatal
    assert summary.published['/cameras/front/image_raw'] == len(stamps['front_stamps'])

    out = read_bag(tmp_path / 'outputs')
    paths = out.get('/planner_node/path', [])
    grids = out.get('/planner_node/risk_grid', [])
    markers = out.get('/planner_node/markers', [])
    # Frames with a full odometry history (PAST_S before them) can be planned; a frame the
    # latest-only queue replaced is dropped and counted, so expected = plannable - queue drops.
    plannable = [t for t in stamps['front_stamps'] if t - START_NS >= PAST_S * 1e9]
    last_diag = out['/diagnostics'][-1][1]
    level, _, inputs = diagnostic_status(last_diag, ': inputs')
    _, _, planning = diagnostic_status(last_diag, ': planning')
    queue_drops = int(inputs.get('drops.queue_drop', 0))
    print(f'{len(paths)} paths for {len(plannable)} plannable frames; diagnostics {planning}')
    assert len(paths) == len(plannable) - queue_drops >= 0.8 * len(plannable)
    assert int(planning['plans_published']) == len(paths)
    assert int(inputs['received.front']) == len(stamps['front_stamps'])
    assert planning['backend'] == 'onnxruntime' and planning['precision'] == 'fp32'
    assert float(planning['latency_ms.total.p50']) > 0

    path_stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in paths]
    assert set(path_stamps) <= set(plannable)            # stamped with the camera time
    assert path_stamps == sorted(set(path_stamps))       # each frame once, in order
    for (_, path), (_, grid) in zip(paths, grids):
        assert path.header.frame_id == 'base_link' and len(path.poses) == 20
        assert all(p.header.frame_id == 'base_link' for p in path.poses)
        assert grid.header.stamp == path.header.stamp and grid.header.frame_id == 'base_link'
        assert (grid.info.width, grid.info.height) == (GRID.cols, GRID.rows)
        assert grid.info.resolution == pytest.approx(GRID.resolution)
        assert (grid.info.origin.position.x, grid.info.origin.position.y) == \
            (GRID.origin_x, GRID.origin_y)
        data = np.asarray(grid.data)
        assert data.size == GRID.rows * GRID.cols and data.min() >= 0 and data.max() <= 100
    assert len(grids) == len(paths) == len(markers)
    assert {m.ns for m in markers[0][1].markers} == {'plan', 'risk'}

    # The node's plan equals the plan computed offline from the same bag frame.
    stamp = path_stamps[0]
    plan = expected_plan(tmp_path / 'drive', artifact, stamp)
    got = np.array([[p.pose.position.x, p.pose.position.y] for p in paths[0][1].poses])
    np.testing.assert_allclose(got, plan['waypoints'], atol=1e-4)
    risk = np.asarray(grids[0][1].data, dtype=np.float32).reshape(GRID.rows, GRID.cols) / 100
    np.testing.assert_allclose(risk, plan['risk'], atol=0.0051)
    assert got[-1, 0] > 10.0  # driving on at ~5 m/s for 5 s, not a constant output

    assert 'time jumped back' in node.log
    replayed = [stamp_ns(m) for _, m in read_bag(tmp_path / 'outputs_again')['/planner_node/path']]
    assert again.recorded['/planner_node/path'] == len(replayed) >= 0.8 * len(plannable)
    assert set(replayed) <= set(plannable)


# -- stale inputs (wall time) ---------------------------------------------------------------------
def replay_into_node(node, bag, dataset_cfg, out_dir, active_timeout: float, **replay_kwargs):
    """Wait for ``node`` to be active, replay ``bag`` into it in lockstep (bag time waits for the
    node's answer to each camera set, whatever the machine), stop it; -> (summary, paths, grids)
    as recorded from its outputs."""
    from rsd_drive.ros.replay import replay

    ref_topic = next(c.image_topic for c in dataset_cfg.cameras
                     if c.name == dataset_cfg.reference_camera)
    try:
        node.wait_for(r'active:', timeout=active_timeout)
        summary = replay(bag, record=out_dir, progress=False, lockstep=True,
                         lockstep_timeout_s=60.0, reference_topic=ref_topic,
                         slop_s=dataset_cfg.sync_slop_s, **replay_kwargs)
        assert node.proc.poll() is None, node.log
    finally:
        node.stop()
    print(summary.table())
    out = read_bag(out_dir)
    return summary, out.get('/planner_node/path', []), out.get('/planner_node/risk_grid', [])


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def test_stale_inputs_stop_planning_and_recover(tmp_path, artifact):
    max_age = 0.5
    params = planner_params(tmp_path, artifact, use_info_topics=False, max_input_age_s=max_age,
                            output_frame='odom')
    node = NodeProcess(params)
    peer = Peer()
    streamer = None
    try:
        node.wait_for(r'active:', timeout=90)
        peer.wait_for_node()
        streamer = Streamer(peer)
        t_start = time.monotonic()
        first = peer.wait_until(lambda: peer.paths_since(t_start), PAST_S + 60.0, 'a first path')
        path = first[0]
        assert path.header.frame_id == 'odom' and len(path.poses) == 20
        # in odom, the plan starts next to where the ego is (the first waypoint is ~1.25 m ahead)
        ego_x, ego_y, _, _ = ego_pose((stamp_ns(path) - peer.t0_ns) / 1e9)
        first_wp = path.poses[0].pose.position
        assert math.hypot(ego_x, ego_y) > 10.0  # far from the odom origin by now
        assert math.hypot(first_wp.x - ego_x, first_wp.y - ego_y) < 3.0

        def newest(since, level, text=''):
            """The newest diagnostics array received since ``since`` when its planning status
            has ``level`` and mentions ``text``; else None (waited on, never slept for)."""
            arrays = peer.diagnostics_since(since)
            if not arrays:
                return None
            got = diagnostic_status(arrays[-1], ': planning')
            return arrays[-1] if got and got[0] == level and text in got[1] else None

        peer.wait_until(lambda: newest(time.monotonic() - 0.3, OK), 60.0,
                        'diagnostics OK while planning')

        # A camera stops: ERROR naming it (once it is older than max_age), and no path for
        # frames after it.
        streamer.cameras.discard('front_left')
        off_wall, off_mono = time.time_ns(), time.monotonic()
        array = peer.wait_until(lambda: newest(off_mono, ERROR, 'front_left'), max_age + 60.0,
                                'diagnostics ERROR naming front_left after it stopped')
        late = [p for p in peer.paths_since(off_mono) if stamp_ns(p) > off_wall + 60_000_000]
        assert not late, f'{len(late)} paths planned while front_left was stale'
        in_level, in_message, _ = diagnostic_status(array, ': inputs')
        assert in_level == ERROR and 'front_left' in in_message
        assert 'front (' not in in_message  # only the stale camera is named

        # It comes back: planning resumes by itself.
        streamer.cameras.add('front_left')
        on_wall, on_mono = time.time_ns(), time.monotonic()
        peer.wait_until(lambda: [p for p in peer.paths_since(on_mono) if stamp_ns(p) > on_wall],
                        60.0, 'a path after front_left returned')
        peer.wait_until(lambda: newest(time.monotonic() - 0.3, OK), 60.0,
                        'diagnostics OK after recovery')

        # Odometry stops: ERROR naming it, no path; recovery needs a full past-state history.
        streamer.odometry = False
        off_wall, off_mono = time.time_ns(), time.monotonic()
        peer.wait_until(lambda: newest(off_mono, ERROR, 'odometry'), max_age + 60.0,
                        'diagnostics ERROR naming the odometry after it stopped')
        late = [p for p in peer.paths_since(off_mono) if stamp_ns(p) > off_wall + 60_000_000]
        assert not late, f'{len(late)} paths planned without odometry'
        streamer.odometry = True
        on_mono = time.monotonic()
        peer.wait_until(lambda: peer.paths_since(on_mono), PAST_S + 60.0,
                        'a path after odometry returned')
        assert node.proc.poll() is None
    finally:
        if streamer:
            streamer.stop()
        peer.close()
        code = node.stop()
    assert code == 0, node.log
