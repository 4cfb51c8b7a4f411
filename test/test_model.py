"""Model core: the frozen encoder stays frozen, the rest learns, configs and checkpoints round
trip, and broken checkpoints fail with a message that names the problem."""
import numpy as np
import pytest
import torch
from helpers_index import make_frame, tiny_model_config
from safetensors.torch import load_file, save_file

from rsd_drive.data.preprocess import model_inputs
from rsd_drive.losses import rfs_surrogate_loss, risk_distillation_loss, total_loss
from rsd_drive.model import ModelConfig, RiskPlanner


@pytest.fixture(scope='module')
def batch():
    """A fixed batch of 8 frames from the test generator, as model inputs and targets."""
    rng = np.random.default_rng(3)
    frames = [make_frame(rng) for _ in range(8)]
    inputs = model_inputs(*(np.stack([f[k] for f in frames]) for k in
                            ('images', 'intrinsics', 'cam_to_ego', 'past_states', 'intent')))
    inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
    targets = {k: torch.from_numpy(np.stack([f[k] for f in frames]).astype(np.float32))
               for k in ('future', 'init_speed', 'risk')}
    return inputs, targets


def loss_of(model, inputs, targets):
    waypoints, risk = model(**inputs)
    plan = rfs_surrogate_loss(waypoints, targets['future'], targets['init_speed'])
    return total_loss(plan, risk_distillation_loss(risk, targets['risk'], 'l1'), 1.0)


def new_model(seed=0):
    torch.manual_seed(seed)
    return RiskPlanner(tiny_model_config())


def test_outputs_have_documented_shapes(batch):
    model = new_model().eval()
    cfg = model.config
    with torch.no_grad():
        waypoints, risk = model(**batch[0])
    assert waypoints.shape == (8, cfg.future_steps, 2)
    assert risk.shape == (8, cfg.grid.rows, cfg.grid.cols)
    assert float(risk.min()) >= 0.0 and float(risk.max()) <= 1.0


def test_gradients_reach_every_trainable_parameter_and_never_the_encoder(batch):
    model = new_model()
    model.train()
    assert not model.encoder.training, 'the frozen encoder must stay in eval mode'
    assert all(not p.requires_grad for p in model.encoder.parameters())
    # The GRU head starts at zero (the plan starts as constant velocity), which blocks the
    # planning gradient to everything before it on the very first step; one step opens it.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_of(model, *batch).backward()
    optimizer.step()
    optimizer.zero_grad()
    loss_of(model, *batch).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith('encoder.') for n in trainable)
    no_grad = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == [], f'parameters without gradient: {no_grad}'
    assert all(p.grad is None for p in model.encoder.parameters())
    assert not model.encoder.training


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(batch):
    model = new_model()
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(30):
        loss = loss_of(model, *batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k]), f'frozen encoder tensor {k} changed'


def test_config_yaml_round_trip(tmp_path):
    cfg = tiny_model_config(planner_layers=3, ray_depths=(1.0, 7.5))
    cfg.save_yaml(tmp_path / 'model.yaml')
    back = ModelConfig.from_yaml(tmp_path / 'model.yaml')
    assert back == cfg
    assert back.to_dict() == cfg.to_dict()
    (tmp_path / 'bad.yaml').write_text('model:\n  num_cameras: 2\n  wings: 3\n')
    with pytest.raises(ValueError, match='wings'):
        ModelConfig.from_yaml(tmp_path / 'bad.yaml')


def test_save_and_load_pretrained_give_identical_outputs(batch, tmp_path):
    model = new_model(seed=5).eval()
    with torch.no_grad():
        model.risk_head.out.bias.fill_(0.3)  # differ from the initial values on purpose
        expected = model(**batch[0])
    model.save_pretrained(tmp_path / 'ckpt')
    torch.manual_seed(123)  # a different init everywhere: everything must come from the files
    loaded = RiskPlanner.from_pretrained(tmp_path / 'ckpt').eval()
    with torch.no_grad():
        got = loaded(**batch[0])
    for e, g in zip(expected, got):
        assert torch.equal(e, g)


def test_wrong_shaped_tensor_is_named(tmp_path):
    model = new_model()
    model.save_pretrained(tmp_path / 'ckpt')
    weights = tmp_path / 'ckpt' / 'model.safetensors'
    tensors = load_file(str(weights))
    tensors['risk_head.conv1.weight'] = torch.zeros(3, 3, 3, 3)
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match=r'risk_head\.conv1\.weight.*shape \(3, 3, 3, 3\)'):
        RiskPlanner.from_pretrained(tmp_path / 'ckpt')


def test_missing_tensor_is_named(tmp_path):
    model = new_model()
    model.save_pretrained(tmp_path / 'ckpt')
    weights = tmp_path / 'ckpt' / 'model.safetensors'
    tensors = load_file(str(weights))
    del tensors['plan_pos']
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match="'plan_pos' missing"):
        RiskPlanner.from_pretrained(tmp_path / 'ckpt')


@pytest.mark.parametrize('content', [b'', b'not a safetensors file at all',
                                     b'\x80\x04\x95 pickle-looking bytes'])
def test_corrupt_or_foreign_weights_file_gives_a_clear_error(tmp_path, content):
    model = new_model()
    model.save_pretrained(tmp_path / 'ckpt')
    weights = tmp_path / 'ckpt' / 'model.safetensors'
    weights.write_bytes(content)
    with pytest.raises(ValueError, match='cannot read safetensors weights'):
        RiskPlanner.from_pretrained(tmp_path / 'ckpt')


def test_truncated_weights_file_gives_a_clear_error(tmp_path):
    model = new_model()
    model.save_pretrained(tmp_path / 'ckpt')
    weights = tmp_path / 'ckpt' / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match='model.safetensors'):
        RiskPlanner.from_pretrained(tmp_path / 'ckpt')


def test_training_attention_is_the_inference_attention(batch):
    """Training runs the fused scaled_dot_product_attention, inference and export the plain
    matmuls: one function, so the same weights give the same plan in both modes."""
    model = new_model()
    with torch.no_grad():
        train_wp, train_risk = model.train()(**batch[0])
        eval_wp, eval_risk = model.eval()(**batch[0])
    assert torch.allclose(train_wp, eval_wp, atol=1e-5)
    assert torch.allclose(train_risk, eval_risk, atol=1e-6)


def test_from_pretrained_returns_the_inference_mode(tmp_path):
    """As transformers' from_pretrained: a loaded checkpoint plans in inference mode (the plain
    attention export uses) until someone calls .train()."""
    new_model().save_pretrained(tmp_path / 'ckpt')
    loaded = RiskPlanner.from_pretrained(tmp_path / 'ckpt')
    assert not loaded.training and not any(m.training for m in loaded.modules())
