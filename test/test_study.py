"""`rsd-drive study --quick`: the whole experiment (noise-injected drives with routes, labels,
features, arms x seeds, a DAgger round, closed loop with intent-only mode, the claims as paired
tests, report) end to end on a tiny configuration, and a rerun that redoes nothing."""
import json
from pathlib import Path

import pytest

from rsd_drive.cli import main as cli_main
from rsd_drive.data.index import FrameIndex
from rsd_drive.model import RiskPlanner
from rsd_drive.study import (CLAIMS, check_seed_blocks, dagger_offset, dagger_seeds,
                             deployed_policy, load_study_config)

pytestmark = pytest.mark.timeout(900)


def test_quick_config_is_the_full_one_with_its_overrides():
    full, quick = load_study_config(), load_study_config(quick=True)
    assert 'quick' not in full and 'quick' not in quick
    assert quick['train']['max_steps'] < full['train']['max_steps']
    assert quick['train']['route_dropout'] == full['train']['route_dropout']  # merged, kept
    assert full['noise']['enabled'] and full['model']['route_points'] > 0
    assert len(full['closed_loop']['families']) == 7
    assert full['dagger']['rounds'] >= 1 and quick['dagger']['drives'] == 1


def test_dagger_seeds_are_new_training_seeds_of_each_family():
    study = load_study_config()
    check_seed_blocks(study)
    k = len(study['families'])
    train = {study['train_seed'] + 100 * f + i for f in range(k)
             for i in range(study['train_drives'])}
    held_out = {study['val_seed'] + 100 * f + i for f in range(k)
                for i in range(study['val_drives'])}
    dagger = [s for f in range(k) for r in range(1, study['dagger']['rounds'] + 1)
              for s in dagger_seeds(study, f, r)]
    assert len(set(dagger)) == len(dagger) == k * study['dagger']['rounds'] * \
        study['dagger']['drives']
    assert not set(dagger) & (train | held_out) and max(dagger) < study['val_seed']
    with pytest.raises(ValueError, match='dagger.drives'):
        check_seed_blocks(dict(study, dagger={'rounds': 1, 'drives': 11}))
    with pytest.raises(ValueError, match='train_drives'):
        check_seed_blocks(dict(study, train_drives=dagger_offset(study) + 1))
    # a wider block per round: more training drives, DAgger seeds moved past them
    wide = dict(study, train_drives=30, dagger={'rounds': 2, 'drives': 4, 'seed_offset': 30})
    check_seed_blocks(wide)
    assert dagger_seeds(wide, 1, 1) == [study['train_seed'] + 130 + i for i in range(4)]
    assert dagger_seeds(wide, 1, 2)[0] == study['train_seed'] + 160
    with pytest.raises(ValueError, match='dagger.rounds 3'):
        check_seed_blocks(dict(wide, dagger={'rounds': 3, 'drives': 4, 'seed_offset': 30}))


def test_study_quick_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / 'study'
    assert cli_main(['study', '--quick', '--out', str(out)]) == 0
    state = json.loads((out / 'state.json').read_text())
    done = state['done']
    assert set(done) == {'drives', 'labels', 'features', 'probe', 'train', 'dagger_r1',
                         'dagger_labels_r1', 'dagger_features_r1', 'train_r1', 'closedloop'}
    labels = done['labels']
    assert labels['frames']['train'] > 0 and labels['frames']['val'] > 0
    # round 1: round 0's lambda > 0 checkpoint of the first seed drove one drive per family on
    # new seeds; its frames joined the training index, and round 1's arms trained on them
    dagger = done['dagger_r1']
    assert dagger['checkpoint'] == done['train']['arms']['lambda>0']['0']
    first = dagger_offset(load_study_config(quick=True))  # round 1 starts one offset in
    assert [Path(b).name for b in dagger['bags']] == [f'drive_{first:04d}',
                                                      f'drive_{100 + first:04d}']
    added = done['dagger_labels_r1']
    assert added['frames_added'] > 0
    assert added['frames'] == labels['frames']['train'] + added['frames_added'] == \
        len(FrameIndex(out / 'labels' / 'train' / 'index'))
    assert (out / 'ablation_r1' / 'ablation.json').is_file()
    # the closed loop drives round 1's checkpoints
    assert done['closedloop']['policies'][2][0] == 'lambdagt0-s0'  # the deployed arm first
    assert done['closedloop']['checkpoints']['lambdagt0-s0'] == \
        done['train_r1']['arms']['lambda>0']['0'] != dagger['checkpoint']
    assert (out / 'closedloop' / 'routes').is_dir()
    report = (out / 'report.md').read_text()
    for heading in ('## Stage times', '## Do the frozen features', '## Open loop',
                    '## DAgger round 1', '## Open loop (held-out drives), after DAgger round 1',
                    '## Closed loop', '## The claims'):
        assert heading in report
    study = json.loads((out / 'study.json').read_text())
    claims = {(c['a'], c['b'], c.get('metric')): c for c in study['claims']}
    for a, b, _ in CLAIMS[:1] + CLAIMS[2:]:  # quick has no random-encoder arm
        c = claims[(a, b, 'driving_score')]
        assert c['n_seeds'] == 2 and c['routes'] == 1, c
        assert 0.0 <= c['a_value'] <= 1.0 and c['by_seed']['n'] == 2
    intent = claims[('lambda>0', 'lambda>0 intent', 'driving_score')]
    assert intent['routes'] == 1
    routes = sorted((out / 'closedloop' / 'routes').glob('*/*.json'))
    # expert, constant velocity, 3 arms x 2 seeds, lambda>0 x 2 seeds intent-only: 1 route each
    assert len(routes) == 2 + 6 + 2
    assert (out / 'closedloop' / 'report.md').is_file()
    assert list((out / 'closedloop' / 'rollouts').glob('*.gif'))
    mtimes = {p: p.stat().st_mtime_ns for p in routes}
    capsys.readouterr()
    shipped = tmp_path / 'models' / 'study'
    assert cli_main(['study', '--quick', '--out', str(out), '--ship', str(shipped)]) == 0
    printed = capsys.readouterr().out
    assert printed.count('already done') == 10
    assert {p: p.stat().st_mtime_ns for p in routes} == mtimes
    # --ship: the deployed checkpoint (round 1's lambda > 0, first seed), heads only, with its
    # closed-loop numbers; it loads on its own
    checkpoint = Path(done['train_r1']['arms']['lambda>0']['0'])
    provenance = json.loads((shipped / 'provenance.json').read_text())
    assert provenance['source_checkpoint'] == str(checkpoint.resolve())
    deployed = deployed_policy(load_study_config(quick=True))
    assert provenance['closed_loop'][deployed]['all']['routes'] == 1
    assert (shipped / 'model.safetensors').read_bytes() == \
        (checkpoint / 'model.safetensors').read_bytes()
    RiskPlanner.from_pretrained(shipped)
