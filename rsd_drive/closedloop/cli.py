"""``rsd-drive closedloop POLICY --family F [--family ...] --seeds A-B --out DIR [--backend B]
[--ros]``: the policy drives the scenario world closed loop; writes DIR/report.json, report.md,
a BEV PNG per route and the best/worst rollout GIFs.

``python -m rsd_drive.closedloop.cli POLICY ...`` runs the same without the ``rsd-drive`` CLI.
"""
from __future__ import annotations

import sys

from rsd_drive.deploy.backends import BACKENDS


def add_arguments(parser) -> None:
    parser.add_argument('policy', help="'expert', 'constant-velocity', a checkpoint directory "
                                       'or an exported model.onnx inside one')
    parser.add_argument('--family', action='append', required=True,
                        help='scenario family (repeatable), e.g. lead_brake')
    parser.add_argument('--seeds', default='0-4', help="'A-B' (inclusive) or '1,3,7'")
    parser.add_argument('--out', required=True, help='output directory (resumable)')
    parser.add_argument('--backend', default='onnxruntime', choices=BACKENDS,
                        help='inference backend of a model policy')
    parser.add_argument('--device', default='cpu', help='auto | cpu | cuda')
    parser.add_argument('--ros', action='store_true',
                        help='the world as a ROS 2 node, planner_node in its own process')
    parser.add_argument('--name', help='policy name in the report (default: the directory)')
    parser.add_argument('--config', help='closed-loop config (default config/closedloop.yaml)')
    parser.add_argument('--scenario-config', help='scenario config (default '
                                                  'config/scenario.yaml)')


def run(args) -> int:
    from rsd_drive.closedloop import ClosedLoopConfig, format_summary_table, run_closed_loop
    from rsd_drive.scenario.config import ScenarioConfig

    cfg = ClosedLoopConfig.from_yaml(args.config)
    scenario_cfg = ScenarioConfig.from_yaml(args.scenario_config) if args.scenario_config \
        else None
    if args.ros:
        from rsd_drive.ros.dds import confine_dds_to_host

        confine_dds_to_host()
    summary = run_closed_loop(args.policy, args.family, args.seeds, args.out, args.backend,
                              args.ros, cfg, scenario_cfg, args.name, args.device)
    print(format_summary_table(summary))
    print(f'report: {args.out}/report.md')
    return 0


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog='python -m rsd_drive.closedloop.cli',
                                     description=__doc__.split('\n\n')[0])
    add_arguments(parser)
    return int(run(parser.parse_args(sys.argv[1:] if argv is None else argv)) or 0)


if __name__ == '__main__':
    sys.exit(main())
