"""The ego-status-only planner, BEV queries over non-square grids, and the frozen tower's input
normalisation read from a saved transformers image processor (SigLIP, CLIP)."""
import json

import numpy as np
import pytest
import torch
from helpers_index import make_frame, tiny_model_config

from rsd_drive.data.preprocess import model_inputs
from rsd_drive.geometry import GridSpec
from rsd_drive.model import ModelConfig, RiskPlanner
from rsd_drive.model.config import EncoderConfig, read_preprocessor_normalisation
from rsd_drive.model.encoder import FrozenEncoder

SIGLIP_MEAN, SIGLIP_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope='module')
def inputs():
    rng = np.random.default_rng(7)
    frames = [make_frame(rng) for _ in range(4)]
    arrays = model_inputs(*(np.stack([f[k] for f in frames]) for k in
                            ('images', 'intrinsics', 'cam_to_ego', 'past_states', 'intent')))
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


def test_ego_status_only_ignores_every_camera_input(inputs):
    torch.manual_seed(0)
    model = RiskPlanner(tiny_model_config(use_cameras=False)).eval()
    assert not any(n.startswith(('token_proj', 'ray_embed', 'adapter'))
                   for n, _ in model.named_parameters())
    with torch.no_grad():
        wp, risk = model(**inputs)
        other = dict(inputs, images=torch.rand_like(inputs['images']),
                     intrinsics=inputs['intrinsics'] * 1.3,
                     cam_to_ego=inputs['cam_to_ego'].flip(1))
        wp2, risk2 = model(**other)
        # The ego status does matter.
        wp3, _ = model(**dict(inputs, past_states=inputs['past_states'] * 0.5))
    assert torch.equal(wp, wp2) and torch.equal(risk, risk2)
    assert not torch.allclose(wp, wp3)
    # With cameras the same change of the images changes the plan.
    torch.manual_seed(0)
    full = RiskPlanner(tiny_model_config()).eval()
    with torch.no_grad():
        full.decoder.head.weight.normal_()  # the zero-initialised head hides everything else
        a, _ = full(**inputs)
        b, _ = full(**dict(inputs, images=torch.rand_like(inputs['images'])))
    assert not torch.allclose(a, b)


def test_ego_status_only_round_trips_and_exports_with_all_five_inputs(inputs, tmp_path):
    import onnx

    from rsd_drive.deploy.export import check_against_torch, export_onnx
    from rsd_drive.model import INPUT_NAMES

    torch.manual_seed(1)
    model = RiskPlanner(tiny_model_config(use_cameras=False)).eval()
    model.save_pretrained(tmp_path / 'ckpt')
    loaded = RiskPlanner.from_pretrained(tmp_path / 'ckpt').eval()
    assert loaded.config.use_cameras is False
    with torch.no_grad():
        for e, g in zip(model(**inputs), loaded(**inputs)):
            assert torch.equal(e, g)
    path = export_onnx(loaded, tmp_path / 'model.onnx')
    assert [i.name for i in onnx.load(str(path)).graph.input] == list(INPUT_NAMES)
    diffs = check_against_torch(loaded, path)
    assert max(diffs.values()) < 1e-4, diffs


def test_bev_queries_cover_a_non_square_grid():
    grid = GridSpec(rows=8, cols=24, resolution=1.0, origin_x=-4.0, origin_y=-4.0)
    model = RiskPlanner(tiny_model_config(grid=grid, bev_size=4))
    xy = model.bev_xy.numpy() * 40.0  # POSITION_SCALE
    # 4 x 4 queries over x in [-4, 20], y in [-4, 4]: centres 3 m apart in x, 1 m in y.
    np.testing.assert_allclose(np.unique(xy[:, 0].round(4)), [-1.0, 5.0, 11.0, 17.0], atol=1e-4)
    np.testing.assert_allclose(np.unique(xy[:, 1].round(4)), [-3.0, -1.0, 1.0, 3.0], atol=1e-4)
    xs, ys = grid.resampled_centers(4, 4)
    assert xs.shape == (4, 4) and xs.min() > grid.origin_x and xs.max() < grid.x_max
    assert ys.min() > grid.origin_y and ys.max() < grid.y_max
    with torch.no_grad():
        assert model.risk_head(torch.zeros(1, 32, 4, 4)).shape == (1, 8, 24)


def test_grid_resize_keeps_square_cells_or_refuses():
    grid = GridSpec(rows=8, cols=24, resolution=1.0, origin_x=-4.0, origin_y=-4.0)
    half = grid.resized(4, 12)
    assert half.resolution == 2.0 and (half.x_max, half.y_max) == (grid.x_max, grid.y_max)
    with pytest.raises(ValueError, match='square'):
        grid.resized(4, 4)
    square = GridSpec()
    assert square.resized(16, 16).resolution == pytest.approx(3.0)


def _save_tower(kind: str, path, mean, std):
    """A tiny SigLIP or CLIP vision tower and its image processor, saved as a user would."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel,
                              SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel)

    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 intermediate_size=64, patch_size=8, image_size=32)
    torch.manual_seed(0)
    if kind == 'siglip':
        model = SiglipVisionModel(SiglipVisionConfig(**sizes))
        processor = SiglipImageProcessor(image_mean=list(mean), image_std=list(std))
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**sizes))
        processor = CLIPImageProcessor(image_mean=list(mean), image_std=list(std))
    model.save_pretrained(str(path))
    processor.save_pretrained(str(path))
    return path


@pytest.mark.parametrize('kind,mean,std', [('siglip', SIGLIP_MEAN, SIGLIP_STD),
                                           ('clip', CLIP_MEAN, CLIP_STD)])
def test_tower_normalisation_comes_from_its_preprocessor_config(kind, mean, std, tmp_path):
    path = _save_tower(kind, tmp_path / kind, mean, std)
    read_mean, read_std = read_preprocessor_normalisation(path)
    assert read_mean == pytest.approx(mean) and read_std == pytest.approx(std)
    cfg = tiny_model_config(encoder=EncoderConfig(source='pretrained', path=str(path)))
    assert cfg.encoder.image_mean == (0.485, 0.456, 0.406)  # the ImageNet default, not used
    model = RiskPlanner(cfg).eval()
    assert model.encoder.image_mean == pytest.approx(mean)
    assert model.encoder.image_std == pytest.approx(std)
    assert model.config.encoder.image_mean == pytest.approx(mean)  # recorded in the checkpoint
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.encoder(images)
        x = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        expected = model.encoder.vision_model(pixel_values=x).last_hidden_state
    torch.testing.assert_close(tokens, expected[:, -16:], rtol=0, atol=0)
    model.save_pretrained(tmp_path / 'ckpt')
    saved = ModelConfig.from_yaml(tmp_path / 'ckpt' / 'config.yaml')
    assert saved.encoder.image_mean == pytest.approx(mean)
    # normalisation: config keeps the configured values whatever the directory says.
    fixed = EncoderConfig(source='pretrained', path=str(path), normalisation='config')
    assert FrozenEncoder.from_pretrained(path, fixed).image_mean == (0.485, 0.456, 0.406)


def test_broken_preprocessor_config_names_the_file(tmp_path):
    path = _save_tower('siglip', tmp_path / 'siglip', SIGLIP_MEAN, SIGLIP_STD)
    (path / 'preprocessor_config.json').write_text(json.dumps({'image_mean': [0.5, 0.5]}))
    with pytest.raises(ValueError, match='preprocessor_config.json'):
        FrozenEncoder.from_pretrained(path, EncoderConfig(source='pretrained', path=str(path)))
    (path / 'preprocessor_config.json').unlink()  # no file: the configured values apply
    enc = FrozenEncoder.from_pretrained(path, EncoderConfig(source='pretrained', path=str(path)))
    assert enc.image_mean == (0.485, 0.456, 0.406)
    with pytest.raises(ValueError, match='normalisation'):
        EncoderConfig(normalisation='imagenet')
