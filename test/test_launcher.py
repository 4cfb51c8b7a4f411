"""ros.launcher.PlannerNodeProcess without ROS: a stand-in "python" (a shell script) that prints
the node's ``active:`` line and then reacts to signals as told; stop() escalates SIGINT ->
SIGTERM -> SIGKILL with its timeouts."""
import signal
import stat
import time

import pytest

from rsd_drive.ros.launcher import PlannerNodeProcess


def stand_in(tmp_path, traps: str):
    script = tmp_path / 'python'
    script.write_text('#!/bin/sh\n'
                      f'{traps}\n'
                      'echo "args: $*"\n'
                      'echo "[INFO] [planner_node]: active: 1 cameras"\n'
                      'while true; do sleep 0.05; done\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.parametrize('to_log', [False, True])
def test_sigint_stops_a_node_that_honours_it(tmp_path, to_log):
    python = stand_in(tmp_path, "trap 'echo bye; exit 0' INT")
    log = tmp_path / 'node.log' if to_log else None
    with PlannerNodeProcess('params.yaml', python=python, log_path=log, sim_time=True) as node:
        assert node.wait_active(timeout=20) >= 0.0
        assert 'use_sim_time:=true' in node.lines()[0]
        assert '--params-file params.yaml' in node.lines()[0]
    assert node.returncode() == 0
    assert node.lines()[-1] == 'bye'
    if to_log:
        assert 'active: 1 cameras' in log.read_text()


def test_escalates_to_sigterm_then_sigkill(tmp_path):
    node = PlannerNodeProcess('p.yaml', python=stand_in(tmp_path, "trap '' INT")).start()
    node.wait_active(timeout=20)
    t0 = time.monotonic()
    assert node.stop(sigint_timeout_s=0.3, sigterm_timeout_s=5.0) == -signal.SIGTERM
    assert time.monotonic() - t0 >= 0.3
    stubborn = PlannerNodeProcess('p.yaml', python=stand_in(tmp_path, "trap '' INT TERM"))
    stubborn.start().wait_active(timeout=20)
    assert stubborn.stop(sigint_timeout_s=0.2, sigterm_timeout_s=0.2) == -signal.SIGKILL
    assert stubborn.stop() == -signal.SIGKILL  # idempotent


def test_wait_active_names_a_node_that_exits(tmp_path):
    script = tmp_path / 'python'
    script.write_text('#!/bin/sh\necho "planner_node cannot start: bad artifact"\nexit 1\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    node = PlannerNodeProcess('p.yaml', python=str(script)).start()
    with pytest.raises(RuntimeError, match='bad artifact'):
        node.wait_active(timeout=20)
    assert node.stop() == 1
    assert not PlannerNodeProcess('p.yaml', python=str(script)).start().wait_for_log(
        'active:', timeout=20)
