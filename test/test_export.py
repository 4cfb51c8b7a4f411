"""ONNX export of the whole planner (frozen encoder included, uint8 images in) against torch, and
the deploy artifact written by `rsd-drive export`."""
import json

import numpy as np
import onnx
import pytest
import torch

from rsd_drive.cli import main as cli_main
from rsd_drive.deploy.export import check_against_torch, export_onnx
from rsd_drive.model import INPUT_NAMES, OUTPUT_NAMES, EncoderConfig, ModelConfig, RiskPlanner


def small_model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(num_cameras=3, image_height=64, image_width=96, d_model=32, num_heads=4,
                      bev_size=8, planner_layers=1,
                      encoder=EncoderConfig(hidden_size=32, num_layers=1, num_heads=2,
                                            patch_size=16))
    model = RiskPlanner(cfg)
    # Trained-looking weights: the zero-initialised waypoint head would hide decoder mismatches.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith('encoder.'):
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    model = small_model()
    path = export_onnx(model, tmp_path_factory.mktemp('export') / 'model.onnx')
    return model, path


def test_onnx_matches_torch(exported):
    model, path = exported
    diff = check_against_torch(model, path)
    print('max abs difference', diff)
    assert set(diff) == set(OUTPUT_NAMES)
    assert diff['waypoints'] <= 1e-4 and diff['risk'] <= 1e-4


def test_graph_has_named_static_io_and_plain_ops(exported):
    model, path = exported
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(INPUT_NAMES)
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    for value in graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        assert all(d > 0 for d in dims), f'{value.name} has a dynamic dimension: {dims}'
    domains = {n.domain for n in graph.node}
    assert domains <= {'', 'ai.onnx'}, f'non-standard operator domains: {domains}'
    images = graph.input[0].type.tensor_type
    assert images.elem_type == onnx.TensorProto.UINT8  # normalisation is inside the graph
    assert [d.dim_value for d in images.shape.dim] == [1, 3, 3, 64, 96]


def test_waypoints_depend_on_intent(exported):
    """The exported graph is not constant: intent and images reach the outputs."""
    import onnxruntime as ort

    from rsd_drive.deploy.artifact import example_feeds

    model, path = exported
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    feeds = example_feeds(model.config)
    straight = sess.run(None, feeds)
    feeds['intent'] = np.array([2], dtype=np.int64)
    left = sess.run(None, feeds)
    assert np.abs(straight[0] - left[0]).max() > 1e-5


def test_export_cli_writes_a_deploy_dir(tmp_path, capsys):
    model = small_model(seed=3)
    model.save_pretrained(tmp_path / 'ckpt')
    out_dir = tmp_path / 'deploy'
    assert cli_main(['export', str(tmp_path / 'ckpt'), '--out', str(out_dir),
                     '--cameras', 'a', 'b', 'c']) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in out_dir.iterdir()) == ['deploy.json', 'model.onnx']
    assert 'max abs difference' in out
    meta = json.loads((out_dir / 'deploy.json').read_text())
    assert meta['cameras']['names'] == ['a', 'b', 'c']
    assert ModelConfig.from_dict(meta['model_config']) == \
        ModelConfig.from_yaml(tmp_path / 'ckpt' / 'config.yaml')
    assert not list(tmp_path.glob('.deploy*')) and not list(out_dir.glob('*.tmp'))
    # Exported again over it: replaced as a whole.
    assert cli_main(['export', str(tmp_path / 'ckpt'), '--out', str(out_dir), '--no-check']) == 0
    assert json.loads((out_dir / 'deploy.json').read_text())['check_against_torch'] is None
    with pytest.raises(ValueError, match='2 camera names'):
        cli_main(['export', str(tmp_path / 'ckpt'), '--out', str(out_dir), '--cameras', 'a', 'b'])


def test_model_config_and_names_import_without_torch():
    """The vehicle reads the model config and the I/O names; neither may pull in torch."""
    import subprocess
    import sys

    code = ('import sys\n'
            'import rsd_drive.model.config, rsd_drive.model.spec, rsd_drive.deploy.artifact\n'
            'from rsd_drive.model import ModelConfig, INPUT_NAMES\n'
            'heavy = ("torch", "transformers")\n'
            'print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]', out.stdout


def test_model_never_imports_deploy():
    """Imports flow one way: deploy uses model; the graph surgery lives in deploy/onnx_merge.py."""
    import ast
    from pathlib import Path

    import rsd_drive.model

    for path in Path(rsd_drive.model.__file__).parent.glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.startswith('rsd_drive.deploy')], path.name


def test_training_cameras_follow_a_relative_index_from_another_directory(tmp_path,
                                                                         monkeypatch):
    """train.yaml names the index as the trainer was given it (relative to its working
    directory). Exported from elsewhere (the node exports a checkpoint on first use), the camera
    order is still found, so the artifact records it and a miswired rig is refused."""
    import yaml

    from rsd_drive.data.index import MANIFEST
    from rsd_drive.deploy.export import training_cameras

    run = tmp_path / 'work'
    index = run / 'out' / 'labels' / 'index'
    index.mkdir(parents=True)
    (index / MANIFEST).write_text(json.dumps({'cameras': ['front', 'back', 'left']}))
    ckpt = run / 'out' / 'runs' / 'seed0' / 'checkpoints' / 'step-1'
    ckpt.mkdir(parents=True)
    (ckpt / 'train.yaml').write_text(yaml.safe_dump({'train': {'index': 'out/labels/index'}}))
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert training_cameras(ckpt) == ['front', 'back', 'left']
    (ckpt / 'train.yaml').write_text(yaml.safe_dump({'train': {'index': 'missing/index'}}))
    assert training_cameras(ckpt) is None


def test_route_input_exports_with_torch_parity_and_a_plain_graph(tmp_path):
    """A model with the route input exports seven named inputs; ONNX Runtime matches torch with
    the mask on and off, the route reaches the waypoints only when the mask is on, and the
    in-graph route interpolation stays in the standard operator set (TensorRT, no plugins)."""
    import onnxruntime as ort

    from rsd_drive.deploy.artifact import example_feeds
    from rsd_drive.deploy.graph_check import assert_plain_graph
    from rsd_drive.model.spec import ROUTE_INPUT_NAMES, input_names

    torch.manual_seed(3)
    cfg = ModelConfig(num_cameras=2, image_height=32, image_width=64, d_model=32, num_heads=4,
                      bev_size=4, planner_layers=1, route_points=16,
                      encoder=EncoderConfig(hidden_size=32, num_layers=1, num_heads=2,
                                            patch_size=16))
    model = RiskPlanner(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith('encoder.'):
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    path = export_onnx(model, tmp_path / 'model.onnx')
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(input_names(cfg))
    assert list(input_names(cfg)[-2:]) == list(ROUTE_INPUT_NAMES)
    assert_plain_graph(path)
    diff = check_against_torch(model, path)
    assert diff['waypoints'] <= 1e-4 and diff['risk'] <= 1e-4, diff
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    feeds = example_feeds(cfg)
    on = sess.run(None, feeds)[0]
    feeds_off = {**feeds, 'route_valid': np.zeros(1, np.float32)}
    off = sess.run(None, feeds_off)[0]
    with torch.no_grad():
        t = {k: torch.from_numpy(v) for k, v in feeds_off.items()}
        t['images'] = t['images'].float() / 255.0
        expected_off = model(*(t[k] for k in input_names(cfg)))[0].numpy()
    np.testing.assert_allclose(off, expected_off, atol=1e-4)
    # the example route bends left: with the mask on the plan follows it, off it does not
    assert on[0, -1, 1] > off[0, -1, 1] + 1.0
    moved = {**feeds_off, 'route': feeds['route'] + np.float32(3.0)}
    np.testing.assert_allclose(sess.run(None, moved)[0], off, atol=1e-6)
