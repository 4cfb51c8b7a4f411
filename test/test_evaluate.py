"""Evaluation and ablation: reported numbers match an independent computation, the PNGs are
written, per-intent groups add up, and the ablation table is the mean/spread of its runs."""
import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from helpers_index import make_index, tiny_model_config

from rsd_drive import INTENTS, metrics
from rsd_drive.cli import main as cli_main
from rsd_drive.data.index import FrameIndex
from rsd_drive.data.preprocess import model_inputs
from rsd_drive.model import RiskPlanner
from rsd_drive.train.ablate import METRICS, run_ablation, variants
from rsd_drive.train.config import TrainConfig
from rsd_drive.train.evaluate import evaluate_checkpoint
from rsd_drive.train.trainer import train


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('evaluate')
    train_dir = make_index(root / 'train', 64, seed=11)
    val_dir = make_index(root / 'val', 24, seed=12)
    cfg = TrainConfig(lr=2e-3, warmup_steps=5, max_steps=40, batch_size=16, eval_every=20,
                      checkpoint_every=20, risk_loss='kl', index=str(train_dir),
                      val_index=str(val_dir), out=str(root / 'run'))
    summary = train(tiny_model_config(), cfg, progress=False)
    return {'root': root, 'train': train_dir, 'val': val_dir, 'cfg': cfg,
            'checkpoint': summary['checkpoint']}


def independent_numbers(checkpoint, index_dir):
    """Run the checkpoint on every frame through the plain model forward (images in) and score
    it with rsd_drive.metrics directly."""
    model = RiskPlanner.from_pretrained(checkpoint).eval()
    index = FrameIndex(index_dir)
    frames = [index[i] for i in range(len(index))]
    inputs = model_inputs(*(np.stack([f[k] for f in frames]) for k in
                            ('images', 'intrinsics', 'cam_to_ego', 'past_states', 'intent')))
    with torch.no_grad():
        waypoints, risk = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    future = np.stack([f['future'] for f in frames]).astype(np.float64)
    speed = np.array([float(f['init_speed']) for f in frames])
    intent = np.array([int(f['intent']) for f in frames])
    teacher = np.stack([f['risk'] for f in frames]).astype(np.float64)
    wp = waypoints.numpy().astype(np.float64)

    def rfs(trajs):
        return metrics.rater_feedback_score(trajs[:, None], np.ones((len(trajs), 1)),
                                            [[f] for f in future], [[10.0]] * len(future), speed)

    cv = metrics.constant_velocity_baseline(speed, 20, 4.0)
    return {'rfs': rfs(wp), 'rfs_cv': rfs(cv), 'ade_5s': metrics.ade(wp, future, 5.0),
            'fde_cv': metrics.fde(cv, future), 'cc': metrics.risk_pearson(risk.numpy(), teacher),
            'intent': intent}


def test_report_matches_an_independent_computation(trained, tmp_path):
    report = evaluate_checkpoint(trained['checkpoint'], trained['val'], tmp_path / 'eval',
                                 features='images', num_samples=3, worst=5, progress=False)
    ref = independent_numbers(trained['checkpoint'], trained['val'])
    overall = report['overall']
    assert report['frames'] == 24 and report['features'] == 'images'
    assert overall['model']['rfs'] == pytest.approx(ref['rfs'].mean(), abs=1e-5)
    assert overall['cv']['rfs'] == pytest.approx(ref['rfs_cv'].mean(), abs=1e-9)
    assert overall['model']['ade_5s'] == pytest.approx(ref['ade_5s'].mean(), abs=1e-5)
    assert overall['cv']['fde'] == pytest.approx(ref['fde_cv'].mean(), abs=1e-6)
    assert overall['model']['risk_pearson'] == pytest.approx(ref['cc'].mean(), abs=1e-5)
    # Per intent: the groups partition the frames and each mean is its own frames' mean.
    assert sum(g['frames'] for g in report['per_intent'].values()) == 24
    for name, group in report['per_intent'].items():
        mask = ref['intent'] == INTENTS.index(name)
        assert group['frames'] == mask.sum()
        assert group['model']['rfs'] == pytest.approx(ref['rfs'][mask].mean(), abs=1e-5)
    # The worst gallery lists the lowest-RFS frames first.
    worst = report['worst_frames']
    assert len(worst) == 5
    assert [round(ref['rfs'][i], 4) for i in worst] == sorted(round(ref['rfs'][i], 4)
                                                              for i in worst)
    assert ref['rfs'][worst[0]] == pytest.approx(ref['rfs'].min(), abs=1e-5)

    # Calibration: the same ECE and marker threshold as the metric functions on the raw maps.
    model = RiskPlanner.from_pretrained(trained['checkpoint']).eval()
    index = FrameIndex(trained['val'])
    frames = [index[i] for i in range(len(index))]
    inputs = model_inputs(*(np.stack([f[k] for f in frames]) for k in
                            ('images', 'intrinsics', 'cam_to_ego', 'past_states', 'intent')))
    with torch.no_grad():
        _, risk = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    teacher = np.stack([f['risk'] for f in frames]).astype(np.float32)
    cal = report['calibration']
    assert cal['ece'] == pytest.approx(
        metrics.expected_calibration_error(risk.numpy(), teacher), abs=1e-5)
    assert cal['marker_threshold']['threshold'] == pytest.approx(
        metrics.best_marker_threshold(risk.numpy(), teacher)['threshold'])
    assert sum(cal['reliability']['count']) == teacher.size
    assert report['per_frame']['frame'] == list(range(24))
    assert np.mean(report['per_frame']['model.rfs']) == pytest.approx(overall['model']['rfs'])

    saved = json.loads((tmp_path / 'eval' / 'report.json').read_text())
    assert saved['overall'] == report['overall']
    pngs = report['files']['samples'] + [report['files']['worst'],
                                         report['files']['training_curves'],
                                         report['files']['reliability']]
    assert len(report['files']['samples']) == 3
    for png in pngs:
        image = mpimg.imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_cached_features_give_the_same_report(trained):
    """The run cached the validation features: 'auto' uses them, and they agree with images."""
    from_images = evaluate_checkpoint(trained['checkpoint'], trained['val'], features='images',
                                      progress=False)
    from_cache = evaluate_checkpoint(trained['checkpoint'], trained['val'], features='auto',
                                     progress=False)
    assert from_cache['features'] == 'cache'
    for key in ('rfs', 'ade_5s', 'fde', 'risk_pearson'):
        assert from_cache['overall']['model'][key] == pytest.approx(
            from_images['overall']['model'][key], rel=2e-2, abs=2e-2)


def test_eval_command_line(trained, tmp_path, capsys):
    code = cli_main(['eval', trained['checkpoint'], str(trained['val']), '--out',
                     str(tmp_path / 'cli'), '--num-samples', '1', '--no-progress'])
    assert code == 0
    out = capsys.readouterr().out
    assert '| overall | 24 |' in out
    assert (tmp_path / 'cli' / 'report.json').is_file()
    assert (tmp_path / 'cli' / 'worst_samples.png').is_file()
    code = cli_main(['eval', str(tmp_path / 'missing'), str(trained['val']), '--out',
                     str(tmp_path / 'x'), '--no-progress'])
    assert code == 2 and 'missing' in capsys.readouterr().err


def test_ablation_table_is_the_mean_and_spread_of_its_runs(trained, tmp_path):
    cfg = TrainConfig(lr=2e-3, warmup_steps=5, max_steps=12, batch_size=16, eval_every=0,
                      checkpoint_every=0, index=str(trained['train']),
                      val_index=str(trained['val']))
    result = run_ablation(tiny_model_config(), cfg, tmp_path / 'ablation',
                          risk_weights=(0.0, 1.0), kinds=('kl',), seeds=(0, 1), progress=False,
                          arms=('ego-status',))
    assert [v['name'] for v in variants((0.0, 1.0), ('kl',))] == ['lambda=0', 'lambda=1 kl']
    assert len(result['runs']) == 6
    ego = [r for r in result['runs'] if r['variant'] == 'ego-status-only']
    assert len(ego) == 2 and ego[0]['risk_weight'] == 1.0
    ego_cfg = RiskPlanner.from_pretrained(ego[0]['checkpoint']).config
    assert ego_cfg.use_cameras is False
    # Paired tests: every arm against lambda = 0 by seed, the same numbers as paired_t_test.
    ref = {r['seed']: r for r in result['runs'] if r['variant'] == 'lambda=0'}
    for name in ('lambda=1 kl', 'ego-status-only'):
        mine = {r['seed']: r for r in result['runs'] if r['variant'] == name}
        test = result['paired'][name]['vs lambda=0']['rfs']
        expected = metrics.paired_t_test([mine[s]['metrics']['rfs'] for s in (0, 1)],
                                         [ref[s]['metrics']['rfs'] for s in (0, 1)])
        assert test['n'] == 2 and test['mean_diff'] == pytest.approx(expected['mean_diff'])
        assert test['p'] == pytest.approx(expected['p'], nan_ok=True)
    assert 'Paired comparisons' in (tmp_path / 'ablation' / 'ablation.md').read_text()
    for name, stats in result['summary'].items():
        mine = [r for r in result['runs'] if r['variant'] == name]
        assert len(mine) == 2
        for key, _, _ in METRICS:
            values = np.array([r['metrics'][key] for r in mine])
            assert stats[key]['mean'] == pytest.approx(values.mean())
            assert stats[key]['std'] == pytest.approx(values.std(ddof=1))
    # Seeds differ, so runs differ; lambda = 0 never trains the RiskHead, lambda > 0 does.
    rfs = [r['metrics']['rfs'] for r in result['runs']]
    assert len(set(np.round(rfs, 6))) > 1 or len(set(r['metrics']['ade_5s']
                                                     for r in result['runs'])) > 1
    table = (tmp_path / 'ablation' / 'ablation.md').read_text()
    assert '| lambda=0 | 2 |' in table and '| lambda=1 kl | 2 |' in table and '±' in table
    assert 'constant velocity' in table
    assert mpimg.imread(tmp_path / 'ablation' / 'ablation.png').shape[0] > 100
    saved = json.loads((tmp_path / 'ablation' / 'ablation.json').read_text())
    assert saved['summary'] == json.loads(json.dumps(result['summary']))
    # Run again: finished runs are reused, not retrained.
    results = (tmp_path / 'ablation' / 'runs').glob('*/result.json')
    stamps = {p: p.stat().st_mtime_ns for p in results}
    again = run_ablation(tiny_model_config(), cfg, tmp_path / 'ablation',
                         risk_weights=(0.0, 1.0), kinds=('kl',), seeds=(0, 1), progress=False,
                         arms=('ego-status',))
    assert again['summary'] == result['summary']
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_ablation_runs_in_parallel_processes_like_one_after_the_other(trained, tmp_path):
    """jobs=2: the runs train in two spawned processes (one torch thread each) and score as
    the same runs trained here with one thread, up to float summation order."""
    import torch

    cfg = TrainConfig(lr=2e-3, warmup_steps=5, max_steps=8, batch_size=16, eval_every=0,
                      checkpoint_every=0, index=str(trained['train']),
                      val_index=str(trained['val']))
    kwargs = dict(risk_weights=(0.0, 1.0), kinds=('kl',), seeds=(0,), progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_ablation(tiny_model_config(), cfg, tmp_path / 'serial', **kwargs)
    finally:
        torch.set_num_threads(threads)
    parallel = run_ablation(tiny_model_config(), cfg, tmp_path / 'parallel', jobs=2, **kwargs)
    assert [r['variant'] for r in parallel['runs']] == [r['variant'] for r in serial['runs']]
    for a, b in zip(parallel['runs'], serial['runs']):
        assert Path(a['checkpoint']).is_relative_to(tmp_path / 'parallel')
        for key in ('rfs', 'ade_5s', 'risk_pearson'):
            assert a['metrics'][key] == pytest.approx(b['metrics'][key], rel=1e-4, abs=1e-5)
    assert len(list((tmp_path / 'parallel' / 'runs').glob('*/result.json'))) == 2


def test_train_benchmark_measures_both_modes(trained, tmp_path):
    from rsd_drive.bench.train import format_table, measure

    cfg = TrainConfig(batch_size=16, epochs=2)
    result = measure(tiny_model_config(), cfg, trained['train'], 2, tmp_path, progress=False)
    assert result['frames'] == 64 and len(result['cached_epoch_times']) == 1  # first dropped
    assert result['cached_epoch_s'] > 0 and result['in_loop_epoch_s'] > 0
    table = format_table(result)
    assert 'encoder in the loop' in table and 'ratio' in table
