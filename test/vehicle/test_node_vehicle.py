"""The deployment tests of the main profile, run again in the vehicle profile (ROS 2 Jazzy wheels,
numpy < 2, no torch) on the artifact the main profile exported: the node over DDS on a replayed
bag (its plans equal the offline ONNX Runtime plans), stale inputs, fuzzing, build_only.

Imported, not copied: the same test code runs in both environments.
"""
import test_node_fuzz
from test_planner_node import (test_build_only_prepares_and_exits,  # noqa: F401
                               test_replayed_bag_gives_paths_and_risk_grids,
                               test_stale_inputs_stop_planning_and_recover)

test_malformed_messages_are_dropped_counted_and_the_node_keeps_planning = \
    test_node_fuzz.test_malformed_messages_are_dropped_counted_and_the_node_keeps_planning

__all__ = ['test_malformed_messages_are_dropped_counted_and_the_node_keeps_planning',
           'test_build_only_prepares_and_exits', 'test_replayed_bag_gives_paths_and_risk_grids',
           'test_stale_inputs_stop_planning_and_recover']
