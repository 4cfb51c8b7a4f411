"""``rsd-drive``: the offline command line (scenario drives, labeling, caching, training,
evaluation, export, replay, benchmarks, demo).

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand runs, so
``rsd-drive --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    'scenario': ('rsd_drive.scenario.cli', 'generate synthetic scenario drives as rosbag2 (MCAP)'),
    'import': ('rsd_drive.importers.cli', 'convert a public dataset scene into a rosbag2'),
    'label': ('rsd_drive.teacher.cli', 'label bags with the VLM teacher; build the index'),
    'teacher': ('rsd_drive.teacher.agree', 'teacher tools: agree (two label sets, per frame)'),
    'cache': ('rsd_drive.train.cache', 'run the frozen encoder once per frame; cache features'),
    'train': ('rsd_drive.train.cli', 'train adapter, planner, GRU decoder and RiskHead'),
    'eval': ('rsd_drive.train.evaluate', 'evaluate a checkpoint: RFS, ADE/FDE, risk agreement'),
    'probe': ('rsd_drive.train.probe', 'linear probe: do the frozen features see the risk cells'),
    'ablate': ('rsd_drive.train.ablate', 'lambda=0 vs lambda>0 (and loss choices) over seeds'),
    'export': ('rsd_drive.deploy.export', 'export a checkpoint: model.onnx + deploy.json'),
    'replay': ('rsd_drive.ros.replay', 'play a bag into ROS 2 topics with /clock; record outputs'),
    'bench': ('rsd_drive.bench.cli', 'benchmarks: model | node | label | label_soak | train | '
                                     'served | soak | precision'),
    'closedloop': ('rsd_drive.closedloop.cli', 'closed-loop driving in the scenario world'),
    'dagger': ('rsd_drive.closedloop.dagger',
               'DAgger drives: the checkpoint drives, the expert rollouts are the targets'),
    'demo': ('rsd_drive.demo', 'the end-to-end default: drives -> labels -> train -> node'),
    'study': ('rsd_drive.study', 'the whole experiment: arms x seeds, closed loop, claims'),
}


def build_parser(argv) -> tuple[argparse.ArgumentParser, object]:
    parser = argparse.ArgumentParser(prog='rsd-drive', description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    module = None
    wanted = next((a for a in argv if not a.startswith('-')), None)
    for name, (mod_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            module = importlib.import_module(mod_name)
            module.add_arguments(p)
    return parser, module


def main(argv=None) -> int:
    from rsd_drive.ros.dds import confine_dds_to_host

    # Every subcommand that starts nodes (replay, bench, closedloop, demo, study) keeps DDS on this
    # host, with shared memory large enough for a camera set, unless FASTDDS_DEFAULT_PROFILES_FILE
    # names another profile. (Without it, on Fast DDS's defaults, `rsd-drive bench soak` run from
    # a shell lost whole camera sets in some runs and the lockstep waited 60 s on each.)
    confine_dds_to_host()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    return int(module.run(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
