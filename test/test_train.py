"""Training: it learns on data the test generates, resumes exactly, runs under torchrun with two
gloo processes, and its configuration and training state round trip."""
import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_index import make_index, tiny_model_config
from safetensors.torch import load_file

from rsd_drive.cli import main as cli_main
from rsd_drive.losses import RISK_LOSS_KINDS
from rsd_drive.train.cache import training_encoder
from rsd_drive.train.config import TrainConfig, load_config, save_config
from rsd_drive.train.trainer import (Trainer, _flatten_state, _unflatten_state, latest_checkpoint,
                                     load_training_state, lr_factor, train)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('train_data')
    return {'train': make_index(root / 'train', 256, seed=1, shard_size=64),
            'val': make_index(root / 'val', 64, seed=2),
            'small': make_index(root / 'small', 48, seed=4, shard_size=16),
            'small_val': make_index(root / 'small_val', 16, seed=5)}


def rows(path):
    with open(path, newline='') as fh:
        return list(csv.DictReader(fh))


def small_config(data, out, **overrides):
    kwargs = dict(lr=1e-3, warmup_steps=3, max_steps=10, batch_size=8, eval_every=4,
                  checkpoint_every=0, index=str(data['small']), val_index=str(data['small_val']),
                  out=str(out))
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


# Observed on this machine (2-core x86, torch 2.13 CPU) for the configuration below, training
# seeds 0-2 x torch threads 1 and 2 (six runs, OMP_WAIT_POLICY=PASSIVE; table in README, Training
# notes): val loss ratio 0.45-0.52, plan loss ratio 0.48-0.57, RFS - RFS(CV) +1.42..+1.85,
# ADE@5s 3.26-3.86 m vs CV 4.46 m, risk Pearson 0.41-0.55 (untrained: -0.13..0.06), top-5 %
# recall 0.31-0.48 (untrained 0.00-0.06). Every threshold below keeps a clear margin from the
# worst of them (another CPU rounds differently: with the old MSE loss an AMD EPYC got Pearson
# 0.158). RSD_DRIVE_TEST_SEED reruns the test with another training seed.
LEARNING_SEED = int(os.environ.get('RSD_DRIVE_TEST_SEED', '0'))


def test_training_lowers_validation_loss_and_beats_constant_velocity(data, tmp_path):
    cfg = TrainConfig(lr=2e-3, warmup_steps=50, max_steps=500, batch_size=16, eval_every=250,
                      checkpoint_every=100, keep_checkpoints=2, risk_loss='focal',
                      risk_weight=1.0, seed=LEARNING_SEED, index=str(data['train']),
                      val_index=str(data['val']), out=str(tmp_path / 'run'))
    summary = train(tiny_model_config(), cfg, progress=False)
    before, after = summary['first_validation'], summary['last_validation']
    print('validation before:', before, '\nvalidation after:', after)
    assert before['step'] == 0 and after['step'] == 500
    # Untrained, the GRU decodes the constant-velocity plan exactly (zero-initialised head).
    assert before['rfs'] == pytest.approx(before['rfs_cv'])
    assert after['val_loss'] < 0.7 * before['val_loss']
    assert after['val_plan_loss'] < 0.8 * before['val_plan_loss']
    # Relative to the constant-velocity plan scored on the same frames in the same run.
    assert after['rfs'] > after['rfs_cv'] + 0.75
    assert after['ade_5s'] < after['ade_5s_cv']
    # The RiskHead learned where the teacher's risk is, and (focal loss) on its scale.
    assert after['risk_pearson'] > 0.25
    assert after['risk_pearson'] > before['risk_pearson'] + 0.15
    assert after['risk_topk_recall'] > before['risk_topk_recall']

    run = tmp_path / 'run'
    log = rows(run / 'train_log.csv')
    assert [int(r['step']) for r in log] == list(range(1, 501))
    assert [int(r['step']) for r in rows(run / 'val_log.csv')] == [0, 250, 500]
    ckpts = sorted(p.name for p in (run / 'checkpoints').iterdir())
    assert ckpts == ['step-00000400', 'step-00000500']  # keep_checkpoints=2
    best = json.loads((run / 'best' / 'metrics.json').read_text())
    assert best['rfs'] == pytest.approx(summary['best_rfs'])
    assert best['rfs'] >= after['rfs'] - 1e-9
    assert any(p.name.startswith('events.out.tfevents') for p in (run / 'tensorboard').iterdir())
    info = json.loads((run / 'run_info.json').read_text())
    assert info['world_size'] == 1 and info['features'] == 'cache'


def test_resume_continues_exactly(data, tmp_path):
    cfg = small_config(data, tmp_path / 'straight')
    train(tiny_model_config(), cfg, progress=False)
    interrupted = replace(cfg, out=str(tmp_path / 'interrupted'))
    train(tiny_model_config(), interrupted, progress=False, stop_after=6)
    assert latest_checkpoint(tmp_path / 'interrupted').name == 'step-00000006'
    assert len(rows(tmp_path / 'interrupted' / 'train_log.csv')) == 6
    # The interrupted run left extra log rows after its checkpoint (as a crash would): resume
    # must drop them instead of duplicating steps.
    with open(tmp_path / 'interrupted' / 'train_log.csv', 'a') as fh:
        fh.write('7,0,0,99,99,99,0,0,0\n')
    summary = train(tiny_model_config(), interrupted, progress=False, resume=True)
    assert summary['steps_this_run'] == 4

    a = rows(tmp_path / 'straight' / 'train_log.csv')
    b = rows(tmp_path / 'interrupted' / 'train_log.csv')
    assert [r['step'] for r in b] == [str(s) for s in range(1, 11)]
    assert [(r['loss'], r['lr']) for r in a] == [(r['loss'], r['lr']) for r in b]
    assert rows(tmp_path / 'straight' / 'val_log.csv') == \
        rows(tmp_path / 'interrupted' / 'val_log.csv')
    wa = load_file(str(latest_checkpoint(tmp_path / 'straight') / 'model.safetensors'))
    wb = load_file(str(latest_checkpoint(tmp_path / 'interrupted') / 'model.safetensors'))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_resume_and_fresh_start_guards(data, tmp_path):
    cfg = small_config(data, tmp_path / 'run', max_steps=4, eval_every=0)
    with pytest.raises(FileNotFoundError, match='no checkpoint to resume'):
        Trainer(tiny_model_config(), cfg, resume=True, progress=False)
    train(tiny_model_config(), cfg, progress=False)
    with pytest.raises(FileExistsError, match='--resume'):
        Trainer(tiny_model_config(), cfg, progress=False)


def test_resume_refuses_a_changed_frozen_encoder(data, tmp_path):
    """A run on a pretrained encoder directory whose weights were replaced cannot resume."""
    base = tiny_model_config()
    training_encoder(base, encoder_seed=0).save_pretrained(tmp_path / 'encoder')
    cfg = replace(base, encoder=replace(base.encoder, source='pretrained',
                                        path=str(tmp_path / 'encoder')))
    run = small_config(data, tmp_path / 'run', max_steps=4, eval_every=0)
    train(cfg, run, progress=False)
    training_encoder(base, encoder_seed=1).save_pretrained(tmp_path / 'encoder')
    with pytest.raises(ValueError, match='frozen encoder differs'):
        Trainer(cfg, run, resume=True, progress=False)


def test_index_that_does_not_fit_the_model_is_refused(data, tmp_path):
    cfg = small_config(data, tmp_path / 'run')
    with pytest.raises(ValueError, match=r'small.*images has shape \(2, 32, 32, 3\)'):
        Trainer(tiny_model_config(num_cameras=3), cfg, progress=False)


def test_encoder_in_the_loop_matches_cached_features(data, tmp_path):
    cached = small_config(data, tmp_path / 'cached', max_steps=3, eval_every=0)
    in_loop = replace(cached, out=str(tmp_path / 'in_loop'))
    train(tiny_model_config(), cached, progress=False)
    summary = train(tiny_model_config(), in_loop, progress=False, encoder_in_loop=True)
    assert json.loads((tmp_path / 'in_loop' / 'run_info.json').read_text())['features'] == \
        'encoder in loop'
    assert summary['steps'] == 3
    a = [float(r['loss']) for r in rows(tmp_path / 'cached' / 'train_log.csv')]
    b = [float(r['loss']) for r in rows(tmp_path / 'in_loop' / 'train_log.csv')]
    # Same frames, same order, same init; only the float16 rounding of cached tokens differs.
    np.testing.assert_allclose(a, b, rtol=2e-2)


def test_two_gloo_processes_under_torchrun(data, tmp_path):
    save_config(tmp_path / 'train.yaml', tiny_model_config(),
                TrainConfig(lr=2e-3, warmup_steps=2, max_steps=24, batch_size=8, eval_every=12,
                            checkpoint_every=12))
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'rsd_drive.cli', 'train', '--config', str(tmp_path / 'train.yaml'),
           '--index', str(data['small']), '--val-index', str(data['small_val']),
           '--out', str(out), '--device', 'cpu', '--no-progress']
    proc = subprocess.run(cmd, env=dict(os.environ), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads((out / 'run_info.json').read_text())
    assert info['world_size'] == 2 and info['backend'] == 'gloo'
    # 48 frames split over 2 processes, 8 per step each: 3 steps per epoch, 8 epochs.
    assert info['steps_per_epoch'] == 3
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['steps'] == 24 and summary['replicas_in_sync'] is True
    assert summary['last_validation']['val_loss'] < summary['first_validation']['val_loss']
    losses = [float(r['loss']) for r in rows(out / 'train_log.csv')]
    assert len(losses) == 24 and np.mean(losses[-6:]) < np.mean(losses[:6])
    assert latest_checkpoint(out).name == 'step-00000024'


def test_train_command_line(data, tmp_path, capsys):
    save_config(tmp_path / 'train.yaml', tiny_model_config(),
                small_config(data, 'unused', max_steps=4, eval_every=2))
    args = ['train', '--config', str(tmp_path / 'train.yaml'), '--index', str(data['small']),
            '--val-index', str(data['small_val']), '--out', str(tmp_path / 'run'),
            '--no-progress']
    assert cli_main(args) == 0
    assert '"steps": 4' in capsys.readouterr().out
    assert cli_main(args) == 2  # the run exists: refuse to overwrite it
    assert '--resume' in capsys.readouterr().err
    assert cli_main(args + ['--resume', '--max-steps', '6']) == 0  # the checkpoint's config rules
    assert 'max_steps' in capsys.readouterr().err
    assert latest_checkpoint(tmp_path / 'run').name == 'step-00000004'


def test_config_yaml_round_trip_and_repository_config(tmp_path):
    model_cfg = tiny_model_config()
    train_cfg = TrainConfig(lr=5e-4, risk_loss='mse', risk_weight=0.5, betas=(0.8, 0.95),
                            index='/data/idx')
    save_config(tmp_path / 'train.yaml', model_cfg, train_cfg)
    assert load_config(tmp_path / 'train.yaml') == (model_cfg, train_cfg)
    m, t = load_config(REPO / 'config' / 'train.yaml')
    assert m.num_cameras == 6 and t.risk_loss in RISK_LOSS_KINDS and m.use_cameras
    (tmp_path / 'bad.yaml').write_text('model: {}\ntrain: {risk_loss: huber}\n')
    with pytest.raises(ValueError, match='bad.yaml.*risk_loss'):
        load_config(tmp_path / 'bad.yaml')
    (tmp_path / 'bad2.yaml').write_text('model: {}\ntrain: {learning_rate: 1}\n')
    with pytest.raises(ValueError, match='learning_rate'):
        load_config(tmp_path / 'bad2.yaml')


def test_training_state_round_trip_without_pickle(tmp_path):
    state = {'step': 7, 'best': -float('inf'), 'rng': (3, (1, 2, 2 ** 32 - 1), None),
             'np': ('MT19937', np.arange(5, dtype=np.uint32), 2, 0, 0.0),
             'opt': {0: {'exp_avg': torch.randn(3, 2)}, 1: {'step': torch.tensor(4.0)}},
             'groups': [{'betas': (0.9, 0.99), 'params': [0, 1]}]}
    tensors = {}
    back = _unflatten_state(json.loads(json.dumps(_flatten_state(state, tensors))), tensors)
    assert back['step'] == 7 and back['best'] == -float('inf') and back['rng'] == state['rng']
    assert back['np'][0] == 'MT19937' and back['np'][1].dtype == np.uint32
    np.testing.assert_array_equal(back['np'][1], state['np'][1])
    assert set(back['opt']) == {0, 1}
    assert torch.equal(back['opt'][0]['exp_avg'], state['opt'][0]['exp_avg'])
    assert back['groups'][0]['betas'] == (0.9, 0.99)
    (tmp_path / 'training_state.json').write_text('{}')
    (tmp_path / 'training_state.safetensors').write_bytes(b'garbage')
    with pytest.raises(ValueError, match='cannot read the training state'):
        load_training_state(tmp_path)


def test_learning_rate_schedule():
    factors = [lr_factor(s, warmup=10, total=110, min_ratio=0.1) for s in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert factors[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
