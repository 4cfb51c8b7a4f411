"""Launch files, the RViz config and config/planner.yaml agree with the code they start.

``launch`` / ``launch_ros`` are not installable without a ROS install (no ``ros-jazzy-launch``,
``ros-jazzy-launch-ros``, ``ros-launch-ros`` or Kilted equivalents on PyPI, checked with pip): the
launch descriptions are built only where they import (skipped with the reason elsewhere); the
static checks (declared arguments, executables, installed files, parameters, topics) and the
planner launch's override logic (executed from the file's own source) run everywhere.
"""
import ast
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from rsd_drive.ros.planner_node import (CAMERA_PARAMETERS, EXTRINSICS_PARAMETERS,
                                        INTRINSICS_PARAMETERS, PARAMETERS)

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((REPO / 'launch').glob('*.launch.py'))
PLANNER_TOPICS = {'/planner_node/path', '/planner_node/risk_grid', '/planner_node/markers'}

try:  # the submodules: the repo's own launch/ folder would import as a namespace 'launch'
    import launch.actions  # noqa: F401
    import launch_ros.actions  # noqa: F401
    LAUNCH_REASON = None
except ImportError as e:
    LAUNCH_REASON = (f'launch/launch_ros not installed ({e}); no wheels on PyPI '
                     f'(ros-jazzy-launch, ros-jazzy-launch-ros, ros-launch-ros: none); they '
                     f'come with a ROS 2 install')


def console_scripts() -> set:
    tree = ast.parse((REPO / 'setup.py').read_text())
    scripts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and ' = ' in node.value:
            scripts.add(node.value.split(' = ')[0].strip())
    return scripts


def planner_yaml() -> dict:
    return yaml.safe_load((REPO / 'config' / 'planner.yaml').read_text())['/**']['ros__parameters']


def string_calls(tree, func_names) -> set:
    """First string argument of every call to one of ``func_names``."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, 'id', getattr(node.func, 'attr', None))
            if name in func_names and node.args and isinstance(node.args[0], ast.Constant):
                found.add(node.args[0].value)
    return found


def declared_arguments(tree) -> dict:
    """The ARGUMENTS table of a launch file: name -> (default node, description)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == 'ARGUMENTS':
            return {k.value: v.elts for k, v in zip(node.value.keys, node.value.values)}
    return {}


def parameter_arguments(tree) -> dict:
    """The PARAMETER_ARGUMENTS table (launch arguments that override parameters), if any."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and \
                getattr(node.targets[0], 'id', '') == 'PARAMETER_ARGUMENTS':
            return {k.value: v.id for k, v in zip(node.value.keys, node.value.values)}
    return {}


def planner_overrides_function():
    """``overrides`` of planner.launch.py, executed from its source without importing launch."""
    tree = ast.parse((REPO / 'launch' / 'planner.launch.py').read_text())
    keep = [n for n in tree.body
            if (isinstance(n, ast.Assign) and n.targets[0].id == 'PARAMETER_ARGUMENTS')
            or (isinstance(n, ast.FunctionDef) and n.name == 'overrides')]
    namespace = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), 'planner.launch.py', 'exec'), namespace)
    return namespace['overrides']


def test_launch_files_exist():
    names = {p.name for p in LAUNCH_FILES}
    assert names == {'planner.launch.py', 'replay.launch.py', 'label.launch.py'}


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_every_used_argument_is_declared_with_a_description(path):
    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == 'generate_launch_description'
               for n in tree.body)
    declared = declared_arguments(tree)
    assert declared, f'{path.name}: no ARGUMENTS table'
    for name, (_, description) in declared.items():
        assert isinstance(description, ast.Constant) and len(description.value) > 10, name
    used = string_calls(tree, {'LaunchConfiguration', 'arg'}) | set(parameter_arguments(tree))
    assert used <= set(declared), f'{path.name}: undeclared arguments {used - set(declared)}'
    assert set(declared) <= used, f'{path.name}: unused arguments {set(declared) - used}'


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_executables_and_share_files_exist(path):
    text = path.read_text()
    for executable in re.findall(r"executable='([^']+)'", text):
        if executable != 'rviz2':
            assert executable in console_scripts(), f'{executable} is not a console script'
    tree = ast.parse(text)
    for node in ast.walk(tree):  # PathJoinSubstitution([SHARE, 'config', 'planner.yaml'])
        if isinstance(node, ast.List) and len(node.elts) == 3 and all(
                isinstance(e, ast.Constant) for e in node.elts[1:]):
            folder, name = node.elts[1].value, node.elts[2].value
            assert (REPO / folder / name).is_file(), f'{path.name} refers to {folder}/{name}'
            assert f"glob('{folder}/" in (REPO / 'setup.py').read_text(), \
                f'setup.py does not install {folder}/'


def test_planner_launch_overrides_only_what_is_given():
    """The params file is the source of truth: no parameter argument has a default, and only
    the arguments a user gives become overrides (typed)."""
    tree = ast.parse((REPO / 'launch' / 'planner.launch.py').read_text())
    params = parameter_arguments(tree)
    assert set(params) - {'use_sim_time'} <= set(PARAMETERS)
    assert {'backend', 'precision', 'build_only', 'model_dir', 'autostart'} <= set(params)
    declared = declared_arguments(tree)
    for name in params:
        default = declared[name][0]
        assert isinstance(default, ast.Constant) and default.value == '', name
    overrides = planner_overrides_function()
    assert overrides({}) == {} and overrides({name: '' for name in params}) == {}
    assert overrides({'backend': 'tensorrt', 'precision': ''}) == {'backend': 'tensorrt'}
    assert overrides({'build_only': 'True', 'autostart': 'false'}) == \
        {'build_only': True, 'autostart': False}
    with pytest.raises(ValueError, match='build_only:=yes'):
        overrides({'build_only': 'yes'})


def test_default_launch_runs_on_a_cpu_machine():
    """Nothing forces tensorrt/fp16: the shipped params file says onnxruntime fp32 on the CPU."""
    params = planner_yaml()
    assert (params['backend'], params['precision']) == ('onnxruntime', 'fp32')
    for path in LAUNCH_FILES:
        text = path.read_text()
        assert "'tensorrt', '" not in text and "('fp16'" not in text, path.name


def test_replay_starts_when_the_planner_is_active_not_after_a_delay():
    tree = ast.parse((REPO / 'launch' / 'replay.launch.py').read_text())
    calls = {getattr(n.func, 'id', getattr(n.func, 'attr', None)): n for n in ast.walk(tree)
             if isinstance(n, ast.Call)}
    assert 'TimerAction' not in calls and 'start_delay' not in declared_arguments(tree)
    handler = calls['OnStateTransition']
    kwargs = {k.arg: k.value for k in handler.keywords}
    assert kwargs['goal_state'].value == 'active' and kwargs['handle_once'].value is True
    assert 'play' in {e.id for e in kwargs['entities'].elts if isinstance(e, ast.Name)}
    assert 'LifecycleNode' in (REPO / 'launch' / 'planner.launch.py').read_text()


def test_planner_yaml_sets_exactly_the_declared_parameters():
    params = planner_yaml()
    top = {k for k in params if k != 'cameras'}
    assert top == set(PARAMETERS), (top ^ set(PARAMETERS))
    assert list(params['cameras']) == params['camera_names']
    per_camera = set(CAMERA_PARAMETERS) | set(INTRINSICS_PARAMETERS) | set(EXTRINSICS_PARAMETERS)
    for cam, cfg in params['cameras'].items():
        assert set(cfg) == per_camera, cam
        assert len(cfg['intrinsics']) == 4 and len(cfg['extrinsics']) == 5


def test_planner_yaml_cameras_match_the_dataset():
    dataset = yaml.safe_load((REPO / 'config' / 'dataset.yaml').read_text())['dataset']
    params = planner_yaml()
    assert params['camera_names'] == [c['name'] for c in dataset['cameras']]
    assert params['reference_camera'] == dataset['reference_camera']
    assert params['odom_topic'] == dataset['odom_topic']
    for cam in dataset['cameras']:
        cfg = params['cameras'][cam['name']]
        assert cfg['image_topic'] == cam['image_topic'] and cfg['info_topic'] == cam['info_topic']
        assert cfg['compressed'] == cam['compressed']


def test_rviz_shows_camera_path_grid_and_markers():
    rviz = yaml.safe_load((REPO / 'rviz' / 'rsd_drive.rviz').read_text())
    manager = rviz['Visualization Manager']
    displays = {d['Class'].split('/')[-1]: d for d in manager['Displays']}
    assert {'Image', 'Path', 'Map', 'MarkerArray'} <= set(displays)
    assert displays['Path']['Topic']['Value'] == '/planner_node/path'
    assert displays['Map']['Topic']['Value'] == '/planner_node/risk_grid'
    assert displays['MarkerArray']['Topic']['Value'] == '/planner_node/markers'
    params = planner_yaml()
    reference = params['cameras'][params['reference_camera']]['image_topic']
    assert displays['Image']['Topic']['Value'] == reference
    assert displays['Image']['Topic']['Reliability Policy'] == 'Best Effort'  # sensor QoS
    assert manager['Global Options']['Fixed Frame'] == params['base_frame']
    topics = {d['Topic']['Value'] for d in manager['Displays'] if 'Topic' in d}
    assert PLANNER_TOPICS <= topics


@pytest.mark.skipif(LAUNCH_REASON is not None, reason=LAUNCH_REASON or '')
@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_descriptions_build(path):
    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location(path.stem.replace('.', '_'), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    args = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    assert {a.name for a in args} == set(module.ARGUMENTS)
    assert all(a.description for a in args)
