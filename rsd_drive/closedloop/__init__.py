"""Closed-loop evaluation: the planner drives the reactive scenario world, in process or through
``planner_node`` over ROS 2, scored with the CARLA leaderboard / Bench2Drive definitions.

``run_closed_loop(policy, families, seeds, out, backend=...)`` -> summary dict;
``format_summary_table(summary)``, ``format_family_table(summary, metric)`` and
``format_arms_table(summary, {label: [policy names of its training seeds]})`` -> markdown tables
(for the demo's report).
"""
from rsd_drive.closedloop.config import ClosedLoopConfig
from rsd_drive.closedloop.report import (format_arms_table, format_family_table,
                                         format_summary_table)
from rsd_drive.closedloop.run import parse_seeds, run_closed_loop

__all__ = ['ClosedLoopConfig', 'format_arms_table', 'format_family_table', 'format_summary_table',
           'parse_seeds', 'run_closed_loop']
