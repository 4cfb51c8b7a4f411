"""Checkpoints written before issue 18's renames (RiskPlanner.planner -> ego_blocks) still load:
load_trainable maps the old state_dict keys, and the loaded model computes the same outputs."""
import numpy as np
import torch
from helpers_index import make_frame, tiny_model_config
from safetensors.torch import load_file, save_file

from rsd_drive.data.preprocess import model_inputs
from rsd_drive.model import RiskPlanner
from rsd_drive.model.planner import rename_legacy_keys


def test_checkpoint_with_the_old_planner_keys_loads_into_ego_blocks(tmp_path):
    torch.manual_seed(0)
    model = RiskPlanner(tiny_model_config()).eval()
    with torch.no_grad():  # non-trivial ego-block weights, so a wrong mapping would show
        for p in model.ego_blocks.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / 'new')
    weights = load_file(str(tmp_path / 'new' / 'model.safetensors'))
    assert any(k.startswith('ego_blocks.') for k in weights)
    old = {('planner.' + k[len('ego_blocks.'):] if k.startswith('ego_blocks.') else k): v
           for k, v in weights.items()}
    assert not any(k.startswith('ego_blocks.') for k in old)
    assert rename_legacy_keys(old).keys() == weights.keys()
    save_file(old, str(tmp_path / 'new' / 'model.safetensors'))  # as an old run wrote it

    loaded = RiskPlanner.from_pretrained(tmp_path / 'new').eval()
    for key, value in model.trainable_state_dict().items():
        assert torch.equal(loaded.trainable_state_dict()[key], value), key
    frame = make_frame(np.random.default_rng(3))
    inputs = model_inputs(*(np.stack([frame[k]]) for k in
                            ('images', 'intrinsics', 'cam_to_ego', 'past_states', 'intent')))
    inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        for a, b in zip(model(**inputs), loaded(**inputs)):
            assert torch.equal(a, b)
