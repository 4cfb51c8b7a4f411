"""planner_node on a real surround-camera drive: the DGP scene (6 JPEG cameras at 1936x1216,
calibration from the recording) replayed into the node over DDS; a path and a risk grid for every
synchronised frame."""
import numpy as np
import pytest

from node_helpers import GRID, NodeProcess, make_checkpoint, tiny_config
from rsd_drive.data.bag import BagReader, DatasetConfig
from rsd_drive.geometry import matrix_to_quaternion

from test_planner_node import replay_into_node, stamp_ns


@pytest.fixture(scope='module')
def dgp_frames(dgp_bag, repo_root):
    cfg = DatasetConfig.from_yaml(repo_root / 'config' / 'dgp_dataset.yaml')
    with BagReader(dgp_bag, cfg) as reader:
        frames = list(reader.frames(decode=False))
    return cfg, reader, frames


def test_node_plans_every_synchronised_real_frame(tmp_path, dgp_bag, dgp_frames):
    from rsd_drive.ros.planner_node import write_parameters

    cfg, reader, frames = dgp_frames
    assert len(frames) == 3
    cameras = {}
    for cam in cfg.cameras:
        T = reader.cam_to_ego[cam.name]  # the recording's own calibration (from /tf_static)
        cameras[cam.name] = dict(image_topic=cam.image_topic, compressed=True,
                                 info_topic=cam.info_topic, intrinsics=[1.0, 1.0, 0.0, 0.0],
                                 image_size=[1936, 1216],
                                 extrinsics=[*map(float, T[:3, 3]),
                                             *matrix_to_quaternion(T[:3, :3])])
    ckpt = make_checkpoint(tmp_path / 'ckpt', config=tiny_config(num_cameras=len(cameras)))
    # The scene holds 0.2 s of odometry: plan with the history extrapolated back; the scene is
    # replayed in sim time, so inputs are fresh whatever the machine's speed.
    params = write_parameters(tmp_path / 'dgp.yaml', cameras, model_dir=str(ckpt),
                              backend='onnxruntime', threads=1, intent_topic='',
                              pad_short_history=True, diagnostics_period_s=0.25)
    node = NodeProcess(params, '-p', 'use_sim_time:=true')
    _, paths, grids = replay_into_node(node, dgp_bag, cfg, tmp_path / 'outputs', 90,
                                       wait_s=15.0, tail_s=2.0, rate=0.25)
    expected = [f.stamp_ns for f in frames]
    assert [stamp_ns(m) for _, m in paths] == expected, node.log
    assert [stamp_ns(m) for _, m in grids] == expected
    for (_, path), (_, grid) in zip(paths, grids):
        assert path.header.frame_id == 'base_link' and len(path.poses) == 20
        xy = np.array([[p.pose.position.x, p.pose.position.y] for p in path.poses])
        assert np.all(np.isfinite(xy)) and xy[-1, 0] > 20.0  # ~12.7 m/s: moving ahead
        assert (grid.info.width, grid.info.height) == (GRID.cols, GRID.rows)
