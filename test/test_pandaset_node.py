"""planner_node on the imported PandaSet drive (6 JPEG cameras at 1920x1080, per-camera stamps,
calibration from the recording): the drive replayed into the node over DDS in lockstep (bag time
waits for each answer), a path and a risk grid for every synchronised frame, with the past
window padded at the start (``pad_short_history``).

The planner's open-loop scores against the logged future (RFS, ADE) and the constant-velocity
baseline are printed for the tiny random model; with ``RSD_PANDASET_CHECKPOINT=<checkpoint dir>``
the same test scores that checkpoint instead (the numbers in the README come from there). Skips
only when ../shared/data is absent."""
import math
import os
from pathlib import Path

import numpy as np
import pytest

from node_helpers import GRID, NodeProcess, make_checkpoint, tiny_config
from rsd_drive.data.bag import BagReader, DatasetConfig
from rsd_drive.geometry import matrix_to_quaternion
from rsd_drive.model.config import ModelConfig

from test_pandaset import CAMERAS, pandaset_bag, seq_dir  # noqa: F401
from test_planner_node import replay_into_node, stamp_ns

FRAMES = 80


@pytest.fixture(scope='module')
def pandaset_frames(pandaset_bag, repo_root):  # noqa: F811
    cfg = DatasetConfig.from_yaml(repo_root / 'config' / 'pandaset_dataset.yaml')
    with BagReader(pandaset_bag, cfg) as reader:
        frames = list(reader.frames(decode=False))
    return cfg, reader, frames


def open_loop_scores(paths: dict, odometry, frequency_hz: float, steps: int) -> dict:
    """RFS (log-only: the logged future is the one rated trajectory) and ADE@3s/5s of the node's
    paths and of constant velocity, over the frames whose logged future covers the horizon."""
    from rsd_drive.data.sync import SyncError
    from rsd_drive.metrics import ade, constant_velocity_baseline
    from rsd_drive.train.evaluate import rfs_against_log

    rows = []
    for t0, path in sorted(paths.items()):
        try:
            future = odometry.future_waypoints(t0, steps, frequency_hz)[None]
        except SyncError:
            continue  # the drive ends before the 5 s horizon
        v0 = np.array([odometry.at(t0).speed])
        cv = constant_velocity_baseline(v0, steps, frequency_hz)
        row = {}
        for name, traj in (('model', path[None]), ('cv', cv)):
            row[name] = (float(rfs_against_log(traj, future, v0, frequency_hz)[0]),
                         float(ade(traj, future, 3.0, frequency_hz)[0]),
                         float(ade(traj, future, 5.0, frequency_hz)[0]))
        rows.append(row)
    out = {'frames': len(rows)}
    for name in ('model', 'cv'):
        vals = np.array([r[name] for r in rows]) if rows else np.full((1, 3), math.nan)
        out[name] = {'rfs': float(vals[:, 0].mean()), 'ade3': float(vals[:, 1].mean()),
                     'ade5': float(vals[:, 2].mean())}
    return out


def test_node_plans_every_frame_of_the_real_drive(tmp_path, pandaset_bag,  # noqa: F811
                                                  pandaset_frames):
    from rsd_drive.ros.planner_node import write_parameters

    cfg, reader, frames = pandaset_frames
    assert len(frames) == FRAMES
    cameras = {}
    for cam in cfg.cameras:
        T = reader.cam_to_ego[cam.name]  # the recording's own calibration (from /tf_static)
        cameras[cam.name] = dict(image_topic=cam.image_topic, compressed=True,
                                 info_topic=cam.info_topic, intrinsics=[1.0, 1.0, 0.0, 0.0],
                                 image_size=[1920, 1080],
                                 extrinsics=[*map(float, T[:3, 3]),
                                             *matrix_to_quaternion(T[:3, :3])])
    trained = os.environ.get('RSD_PANDASET_CHECKPOINT')
    if trained:
        from rsd_drive.deploy.export import export_artifact, training_cameras

        # The node refuses a rig other than the training one (deploy.json's camera order). The
        # model tells its cameras apart only by K and cam_to_ego (no per-camera parameters), so
        # a checkpoint of another rig is exported for PandaSet's cameras here, deliberately.
        print(f'\ntraining rig {training_cameras(trained)}, PandaSet rig {list(cameras)}')
        ckpt = export_artifact(Path(trained), tmp_path / 'deploy', cameras=list(cameras),
                               logger=lambda *_: None).path
        model = ModelConfig.from_yaml(Path(trained) / 'config.yaml')
    else:
        model = tiny_config(num_cameras=len(cameras))
        ckpt = make_checkpoint(tmp_path / 'ckpt', config=model)
    assert model.num_cameras == len(cameras)
    # 8 s of drive: the first frames have less than the model's past window of odometry.
    params = write_parameters(tmp_path / 'pandaset.yaml', cameras, model_dir=str(ckpt),
                              backend='onnxruntime', threads=1, intent_topic='',
                              reference_camera=cfg.reference_camera,
                              sync_slop_s=cfg.sync_slop_s, pad_short_history=True,
                              diagnostics_period_s=0.5)
    node = NodeProcess(params, '-p', 'use_sim_time:=true')
    _, paths, grids = replay_into_node(node, pandaset_bag, cfg, tmp_path / 'outputs',
                                       180, wait_s=30.0, tail_s=1.0, rate=1.0)
    expected = [f.stamp_ns for f in frames]
    assert [stamp_ns(m) for _, m in paths] == expected, node.log
    assert [stamp_ns(m) for _, m in grids] == expected
    waypoints = {}
    for (_, path), (_, grid) in zip(paths, grids):
        assert path.header.frame_id == 'base_link' and len(path.poses) == model.future_steps
        xy = np.array([[p.pose.position.x, p.pose.position.y] for p in path.poses])
        assert np.all(np.isfinite(xy))
        grid_spec = model.grid if trained else GRID
        assert (grid.info.width, grid.info.height) == (grid_spec.cols, grid_spec.rows)
        waypoints[stamp_ns(path)] = xy
    scores = open_loop_scores(waypoints, reader.odometry, model.frequency_hz,
                              model.future_steps)
    print(f'\nopen loop on PandaSet 002 ({"checkpoint " + trained if trained else "tiny random"}'
          f' model), {scores["frames"]} frames with a 5 s logged future:')
    for name in ('model', 'cv'):
        s = scores[name]
        print(f'  {name:<6} RFS {s["rfs"]:.2f}  ADE@3s {s["ade3"]:.2f} m  '
              f'ADE@5s {s["ade5"]:.2f} m')
    assert scores['frames'] >= 25
