"""`rsd-drive study --quick`: the whole experiment (noise-injected drives with routes, labels,
features, arms x seeds, closed loop with intent-only mode, the claims as paired tests, report)
end to end on a tiny configuration, and a rerun that redoes nothing."""
import json

import pytest

from rsd_drive.cli import main as cli_main
from rsd_drive.study import CLAIMS, load_study_config

pytestmark = pytest.mark.timeout(900)


def test_quick_config_is_the_full_one_with_its_overrides():
    full, quick = load_study_config(), load_study_config(quick=True)
    assert 'quick' not in full and 'quick' not in quick
    assert quick['train']['max_steps'] < full['train']['max_steps']
    assert quick['train']['route_dropout'] == full['train']['route_dropout']  # merged, kept
    assert full['noise']['enabled'] and full['model']['route_points'] > 0
    assert len(full['closed_loop']['families']) == 7


def test_study_quick_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / 'study'
    assert cli_main(['study', '--quick', '--out', str(out)]) == 0
    state = json.loads((out / 'state.json').read_text())
    assert set(state['done']) == {'drives', 'labels', 'features', 'probe', 'train',
                                  'closedloop'}
    labels = state['done']['labels']
    assert labels['frames']['train'] > 0 and labels['frames']['val'] > 0
    report = (out / 'report.md').read_text()
    for heading in ('## Stage times', '## Do the frozen features', '## Open loop',
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
    assert cli_main(['study', '--quick', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count('already done') == 6
    assert {p: p.stat().st_mtime_ns for p in routes} == mtimes
