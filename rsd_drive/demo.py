"""``rsd-drive demo`` (``make demo``): the whole job end to end on generated scenario drives.

drives of every scenario family -> teacher labels + training index -> frozen-encoder feature
cache -> the arms over seeds (lambda = 0, lambda > 0, ego-status-only and, when configured, the
frozen random encoder; constant velocity is scored beside them) with paired t-tests -> evaluation
and calibration of the deployed checkpoint -> [closed-loop stage] -> ONNX export -> replay of a
held-out drive through ``planner_node`` over real DDS, outputs recorded -> ``summary.png`` and
``report.md`` (per family and overall).

Every stage calls the same code a user runs (the CLI subcommands and their functions), on the sizes
of config/demo.yaml. Each stage is skipped when its outputs already exist, so an interrupted demo
continues where it stopped.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from rsd_drive import config_file
from rsd_drive.cli import main as cli_main


class Stages:
    """Prints a clear banner per stage with its duration; remembers results in state.json."""

    def __init__(self, out: Path, total: int):
        self.out, self.total, self.index = out, total, 0
        self.state_file = out / 'state.json'
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        self.timings = self.state.setdefault('timings_s', {})

    def run(self, name: str, what: str, fn):
        self.index += 1
        print(f'\n=== [{self.index}/{self.total}] {name}: {what}', flush=True)
        if name in self.state.get('done', {}):
            print(f'    already done (delete {self.state_file} to redo)', flush=True)
            return self.state['done'][name]
        t0 = time.monotonic()
        result = fn()
        self.timings[name] = round(time.monotonic() - t0, 1)
        self.state.setdefault('done', {})[name] = result
        tmp = self.state_file.with_suffix('.tmp')
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_file)
        print(f'    {name} done in {self.timings[name]:.0f} s', flush=True)
        return result


def _check(code: int, what: str) -> None:
    if code:
        raise RuntimeError(f'{what} failed (exit code {code}); see the messages above')


def write_train_config(path: Path, demo: dict, encoder_cfg, indexes: dict, **train_overrides):
    from rsd_drive.train.config import load_config, save_config

    model_cfg, train_cfg = load_config(config_file('train.yaml'))
    h, w = demo['image_size']
    model_cfg = replace(model_cfg, image_height=int(h), image_width=int(w), encoder=encoder_cfg,
                        **demo.get('model', {}))  # replace() re-runs the config's validation
    train_cfg = replace(train_cfg, index=str(indexes['train']), val_index=str(indexes['val']),
                        **train_overrides)
    save_config(path, model_cfg, train_cfg)
    return model_cfg, train_cfg


# -- scenario families ----------------------------------------------------------------------------
def family_support():
    """How this checkout's scenario package takes a family: 'config' (a ScenarioConfig field),
    'argument' (a ``family=`` argument of generate_drives) or None (no families yet)."""
    import inspect
    from dataclasses import fields

    from rsd_drive.scenario import ScenarioConfig, generate_drives

    if 'family' in {f.name for f in fields(ScenarioConfig)}:
        return 'config'
    if 'family' in inspect.signature(generate_drives).parameters:
        return 'argument'
    return None


def generate_family_drives(out_dir: Path, family: str, seed: int, count: int, scen) -> list:
    """``count`` drives of one family (or of the default world where families do not exist)."""
    from rsd_drive.scenario import generate_drives

    how = family_support()
    if how == 'config':
        return generate_drives(out_dir, seed, count, replace(scen, family=family))
    if how == 'argument':
        return generate_drives(out_dir, seed, count, scen, family=family)
    return generate_drives(out_dir, seed, count, scen)


def make_drives(drives: Path, demo: dict) -> dict:
    """Train and held-out drives per family: {'train': [...], 'val': [...], 'family': {bag: f}}.
    Held-out seeds never overlap training seeds; each family gets its own seed block."""
    from rsd_drive.scenario import ScenarioConfig

    scen = ScenarioConfig.from_yaml(config_file('scenario.yaml'))
    scen = replace(scen, duration_s=float(demo['duration_s']), image_hz=float(demo['image_hz']))
    families = list(demo['families']) if family_support() else ['default']
    if not family_support():
        print('    this scenario package has no families yet: one default world', flush=True)
    out = {'train': [], 'val': [], 'family': {}}
    for k, family in enumerate(families):
        for split, seed0, count in (('train', demo['train_seed'], demo['train_drives']),
                                    ('val', demo['val_seed'], demo['val_drives'])):
            bags = generate_family_drives(drives / split / family, family,
                                          int(seed0) + 100 * k, int(count), scen)
            out[split] += [str(b) for b in bags]
            out['family'].update({str(b): family for b in bags})
    return out


def frame_families(index_dir, bag_family: dict) -> list[str]:
    """Family of every frame of an index, from the bag its shard was labelled from."""
    from rsd_drive.data.index import FrameIndex

    index = FrameIndex(index_dir)
    by_name = {str(Path(b).resolve()): f for b, f in bag_family.items()}
    shards = index.manifest['shards']
    out = []
    for i in range(len(index)):
        name, _ = index.locate(i)
        bag = str(Path(shards[name].get('bag', '')).resolve())
        out.append(by_name.get(bag, 'unknown'))
    return out


# -- the closed-loop stage ----------------------------------------------------------------------
def _closed_loop_scenario(cl: dict):
    """config/scenario.yaml with the demo's shorter closed-loop routes (``closed_loop.duration_s``;
    the hazards are triggered on the ego's time to arrival, so a short route still meets them)."""
    from dataclasses import replace

    from rsd_drive.scenario.config import ScenarioConfig, default_config_path

    cfg = ScenarioConfig.from_yaml(default_config_path())
    return replace(cfg, duration_s=float(cl['duration_s'])) if cl.get('duration_s') else cfg


SHIPPED_POLICY = 'study-shipped'
SHIPPED_ARM = 'models/study (shipped)'


def shipped_checkpoint() -> tuple[Path | None, str]:
    """(``models/study``, '') when the repository's shipped checkpoint is there and its encoder
    resolves with the recorded hash, else (None, why not)."""
    from rsd_drive import share_path
    from rsd_drive.model.config import ModelConfig

    path = share_path('models', 'study')
    if not (path / 'config.yaml').is_file():
        return None, f'no shipped checkpoint at {path}'
    try:
        ModelConfig.from_yaml(path / 'config.yaml').encoder.resolve_path(path)
    except (OSError, ValueError) as e:
        return None, f'{path}: {e}'
    return path, ''


def closed_loop_stage(out: Path, demo: dict, checkpoints: dict) -> dict:
    """CLOSED-LOOP STAGE: ``rsd_drive.closedloop.run_closed_loop`` drives expert, constant
    velocity, the trained arms (each training seed's checkpoint, torch backend: the export
    stage comes later) and the study's shipped checkpoint (``models/study``) on held-out seeds
    in process; report.md gets the arms as mean ± sd over the training seeds, and per policy and
    family. Skipped, with the reason in the report, when disabled or when the closed-loop package
    is absent."""
    cl = demo.get('closed_loop') or {}
    if not cl.get('enabled', False):
        return {'skipped': 'closed_loop.enabled is false in config/demo.yaml'}
    try:
        from rsd_drive.closedloop import format_family_table, format_summary_table
        from rsd_drive.closedloop import run_closed_loop
        from rsd_drive.closedloop.report import format_arms_table
    except ImportError as e:
        return {'skipped': f'rsd_drive.closedloop is not available ({e})'}
    policies = {'expert': 'expert', 'constant-velocity': 'constant-velocity'}
    arms = {'expert': ['expert'], 'constant velocity': ['constant-velocity']}
    for arm, by_seed in checkpoints.items():
        if arm == 'random encoder':
            continue
        names = []
        for seed, path in sorted(by_seed.items()):
            name = f"{arm.replace(' ', '_').replace('=', '')}-s{seed}"
            policies[name] = str(path)
            names.append(name)
        arms[arm] = names
    shipped, why_not = shipped_checkpoint()
    if shipped is not None:
        policies[SHIPPED_POLICY], arms[SHIPPED_ARM] = str(shipped), [SHIPPED_POLICY]
    else:
        print(f'    the shipped checkpoint is not scored: {why_not}', flush=True)
    families, seeds = list(cl['families']), ','.join(str(s) for s in cl['seeds'])
    scenario_cfg = _closed_loop_scenario(cl)
    summary = {}
    for name, spec in policies.items():
        summary = run_closed_loop(spec, families, seeds, out / 'closedloop', backend='torch',
                                  name=name, progress=True, scenario_cfg=scenario_cfg)
    table = format_arms_table(summary, arms)
    print(table)
    return {'table': table + '\n\n' + format_family_table(summary) + '\n\n' +
            format_summary_table(summary),
            'report': str(out / 'closedloop' / 'report.md'), 'families': families,
            'seeds': list(cl['seeds']), 'shipped': str(shipped) if shipped else why_not}


def read_outputs(bag: Path) -> dict:
    """Paths, risk grids and the last diagnostics the node published, from the recorded bag."""
    from rosbags.highlevel import AnyReader

    from rsd_drive.data.convert import occupancy_to_risk, stamp_to_ns

    out = {'paths': {}, 'grids': {}, 'diagnostics': {}}
    with AnyReader([bag]) as reader:
        for conn, _, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic.endswith('/path'):
                out['paths'][stamp_to_ns(msg.header.stamp)] = np.array(
                    [[p.pose.position.x, p.pose.position.y] for p in msg.poses])
            elif conn.topic.endswith('/risk_grid'):
                out['grids'][stamp_to_ns(msg.header.stamp)] = occupancy_to_risk(
                    msg.data, msg.info.height, msg.info.width)
            elif conn.topic == '/diagnostics':
                for status in msg.status:
                    out['diagnostics'][status.name] = {kv.key: kv.value for kv in status.values}
    return out


def run_node_on_bag(out: Path, checkpoint: Path, bag: Path, rate: float,
                    threads: int | None = None) -> dict:
    """planner_node in its own process, the bag replayed into it with /clock, outputs recorded.
    The replay runs in lockstep with the node (bag time waits for each set's plan), so the stage
    passes however slow the machine is; ``threads``: ONNX Runtime threads (None: planner.yaml)."""
    from rsd_drive.ros.launcher import PlannerNodeProcess
    from rsd_drive.ros.planner_params import write_parameters
    from rsd_drive.ros.replay import replay

    extra = {} if threads is None else {'threads': int(threads)}
    # the scenario drives record their navigation route on /route (config/dataset.yaml)
    params = write_parameters(out / 'planner_demo.yaml', model_dir=str(checkpoint),
                              backend='onnxruntime', route_topic='/route', **extra)
    (out / 'planner_node.log').unlink(missing_ok=True)
    record = out / 'node_outputs'
    with PlannerNodeProcess(params, log_path=out / 'planner_node.log', sim_time=True):
        summary = replay(bag, rate=rate, record=record, wait_s=60.0, tail_s=2.0, lockstep=True,
                         lockstep_timeout_s=60.0)
        print(summary.table())
    outputs = read_outputs(record)
    print(f'    node published {len(outputs["paths"])} paths and {len(outputs["grids"])} risk '
          f'grids; log: {out / "planner_node.log"}')
    if not outputs['paths']:
        raise RuntimeError(f'planner_node published no path; see {out / "planner_node.log"}')
    return {'record': str(record), 'paths': len(outputs['paths']),
            'grids': len(outputs['grids'])}


def add_arguments(parser) -> None:
    parser.add_argument('--out', default='demo_out', help='output directory (resumable)')
    parser.add_argument('--config', help='demo config (default: config/demo.yaml)')


def _train_arms(out: Path, demo: dict, model_cfg, train_cfg, encoder_cfg) -> dict:
    from rsd_drive.train.ablate import run_ablation

    arms = ['ego-status']
    if demo['compare_random_encoder'] and encoder_cfg.source != 'config':
        arms.append('random-encoder')
    result = run_ablation(model_cfg, train_cfg, out / 'ablation',
                          risk_weights=(0.0, float(demo['risk_weight'])),
                          kinds=(train_cfg.risk_loss,), seeds=demo['seeds'], arms=arms,
                          arm_weight=float(demo['risk_weight']))
    print(result['table'])
    print(result['paired_table'])
    deployed = next(r for r in result['runs'] if r['variant'].startswith('lambda=')
                    and r['risk_weight'] > 0 and r['seed'] == demo['seeds'][0])
    by_seed = {}  # arm -> {seed: checkpoint}, every training seed (closed loop: mean ± sd)
    for r in result['runs']:
        by_seed.setdefault(r['variant'], {})[str(r['seed'])] = r['checkpoint']
    return {'ablation': str(out / 'ablation' / 'ablation.json'),
            'checkpoint': deployed['checkpoint'], 'arm_checkpoints': by_seed}


def _label(bags: dict, labels: Path, index: dict, train_yaml: Path) -> dict:
    """Stage 'labels': scene-oracle label bags and the training index of both splits."""
    for split in ('train', 'val'):
        _check(cli_main(['label', *bags[split], '--out', str(labels / split),
                         '--backend', 'scene-oracle', '--model-config', str(train_yaml),
                         '--workers', '2']), f'labeling {split}')
    from rsd_drive.data.index import FrameIndex
    return {s: len(FrameIndex(index[s])) for s in ('train', 'val')}


def _cache_features(index: dict, train_yaml: Path) -> bool:
    """Stage 'features': the frozen encoder once per frame of both splits."""
    for split in ('train', 'val'):
        _check(cli_main(['cache', str(index[split]), '--config', str(train_yaml)]),
               f'feature cache {split}')
    return True


def _evaluate(checkpoint: Path, val_index: Path, out: Path) -> str:
    """Stage 'evaluate': the deployed checkpoint on the held-out drives."""
    from rsd_drive.train.evaluate import evaluate_checkpoint, format_report
    report = evaluate_checkpoint(checkpoint, val_index, out=out / 'eval')
    print(format_report(report))
    return str(out / 'eval' / 'report.json')


def _export(checkpoint: Path) -> str:
    """Stage 'export': one ONNX graph, checked against torch."""
    _check(cli_main(['export', str(checkpoint)]), 'export')
    return str(checkpoint / 'deploy' / 'model.onnx')


def _summarise(out: Path, stages: Stages, demo: dict, encoder_desc: str, index: dict, bags: dict,
               val_bag: Path, node_result: dict, grid, t_start: float) -> dict:
    """Stage 'summary': summary.png and report.md from the recorded node outputs."""
    from rsd_drive.demo_report import write_report, write_summary_png

    outputs = read_outputs(Path(node_result['record']))
    png = write_summary_png(out / 'summary.png', index['val'], val_bag.name, outputs, grid)
    stages.timings['total_so_far'] = round(time.monotonic() - t_start, 1)
    families = frame_families(index['val'], bags['family'])
    md = write_report(out / 'report.md', out, stages.state, demo, encoder_desc, outputs,
                      families)
    return {'png': str(png), 'report': str(md)}


def run(args) -> int:
    """``make demo``: the stages in order (each resumable, see :class:`Stages`)."""
    from rsd_drive.model.pretrained import choose_encoder

    from rsd_drive.ros.dds import confine_dds_to_host

    confine_dds_to_host()  # the replay stage starts nodes: DDS stays on this host
    t_start = time.monotonic()
    demo = yaml.safe_load(Path(args.config or config_file('demo.yaml')).read_text())['demo']
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, total=9)
    drives, labels = out / 'drives', out / 'labels'
    # `rsd-drive label --out DIR` writes DIR/index (training index) and DIR/labels (label bags).
    index = {split: labels / split / 'index' for split in ('train', 'val')}
    encoder_cfg, encoder_desc = choose_encoder(demo['encoder'])
    train_yaml = out / 'train.yaml'
    steps = dict(demo.get('train', {}), risk_weight=float(demo['risk_weight']))
    steps['eval_every'] = int(steps['max_steps'])  # runs are scored once, by the final checkpoint
    model_cfg, train_cfg = write_train_config(train_yaml, demo, encoder_cfg, index, **steps)
    print(f'rsd_drive demo -> {out}/  (frozen encoder: {encoder_desc})')

    bags = stages.run('drives', 'scenario drives per family (rosbag2 MCAP, 6 cameras)',
                      lambda: make_drives(drives, demo))
    frames = stages.run('labels', 'teacher (scene-oracle) risk grids, label bags, training index',
                        lambda: _label(bags, labels, index, train_yaml))
    print(f'    frames: {frames}')
    stages.run('features', 'frozen encoder once per frame (fp16 feature cache)',
               lambda: _cache_features(index, train_yaml))
    trained = stages.run(
        'train', f'arms over seeds {demo["seeds"]}: lambda=0, lambda={demo["risk_weight"]}, '
                 f'ego-status-only'
                 + (', frozen random encoder' if demo['compare_random_encoder'] else '')
                 + '; paired t-tests',
        lambda: _train_arms(out, demo, model_cfg, train_cfg, encoder_cfg))
    checkpoint = Path(trained['checkpoint'])
    stages.run('evaluate', f'the deployed checkpoint (lambda={demo["risk_weight"]}, seed '
                           f'{demo["seeds"][0]}) on held-out drives: RFS, ADE, risk calibration',
               lambda: _evaluate(checkpoint, index['val'], out))
    stages.run('closedloop', 'closed loop on held-out seeds (hook: rsd_drive.closedloop)',
               lambda: closed_loop_stage(out, demo, trained['arm_checkpoints']))
    stages.run('export', 'one ONNX graph, checked against torch', lambda: _export(checkpoint))
    val_bag = Path(bags['val'][int(demo['replay_drive'])])
    node_result = stages.run(
        'replay', f'replay {val_bag.name} through planner_node over DDS (ONNX Runtime), '
                  f'record its outputs', lambda: run_node_on_bag(out, checkpoint, val_bag,
                                                                 float(demo['replay_rate'])))
    result = stages.run('summary', 'summary.png and report.md',
                        lambda: _summarise(out, stages, demo, encoder_desc, index, bags, val_bag,
                                           node_result, model_cfg.grid, t_start))
    print(f'\nDone in {time.monotonic() - t_start:.0f} s: {result["png"]}, {result["report"]}')
    return 0
