"""The one way the package's tools start ``planner_node`` as a subprocess (the demo's replay
stage, ``closedloop --ros``, ``bench node``, ``bench node --bag``, ``bench startup``).

:class:`PlannerNodeProcess` runs ``PYTHON -m rsd_drive.ros.planner_node --ros-args --params-file
PARAMS [-p use_sim_time:=true] [ARGS]``, its output (unbuffered) either into a log file (the
file is the record of the run) or, without one, into memory through a reader thread.
``wait_for_log`` waits for a line (``wait_active``: the node's ``active:`` line) while the
process lives; ``stop`` asks politely, then firmly: SIGINT (the node's shutdown transition frees
the backend), then SIGTERM, then SIGKILL, each with its own named timeout, and returns the exit
status. Only this one process is signalled, never its group.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

# Seconds to wait after each signal of stop() before the next one.
SIGINT_TIMEOUT_S = 20.0   # the node's clean shutdown (lifecycle shutdown, backend freed)
SIGTERM_TIMEOUT_S = 5.0   # rclpy's SIGTERM handler: shutdown without the lifecycle transition
SIGKILL_TIMEOUT_S = 5.0   # the kernel reaps it
ACTIVE_LINE = 'active:'   # PlannerNode._activate's log line: configured, warmed up, subscribed


def node_environment(base=None, **extra) -> dict:
    """``base`` (default: this process's environment) with unbuffered Python and ROS logging, so
    a log line is readable the moment it is written."""
    env = dict(os.environ if base is None else base)
    env.update(PYTHONUNBUFFERED='1', RCUTILS_LOGGING_BUFFERED_STREAM='0', **extra)
    return env


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default. A tool started in the background
    of a non-interactive shell (``cmd &``, as a CI runner may start it) inherits SIGINT ignored,
    and a process that starts with SIGINT ignored can never be stopped by it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class PlannerNodeProcess:
    """``planner_node`` in its own process; see the module docstring."""

    def __init__(self, params_file, *, log_path=None, sim_time: bool = False, args=(),
                 python: str | None = None, cwd=None, env=None):
        self.command = [python or sys.executable, '-m', 'rsd_drive.ros.planner_node',
                        '--ros-args', '--params-file', str(params_file)]
        if sim_time:
            self.command += ['-p', 'use_sim_time:=true']
        self.command += list(args)
        self.log_path = Path(log_path) if log_path is not None else None
        self.cwd = cwd
        self.env = node_environment() if env is None else dict(env)
        self.proc = None
        self.started_at = None     # time.monotonic() at spawn
        self._log = None
        self._lines = []           # without a log file: the output, line by line
        self._cond = threading.Condition()

    # -- start --------------------------------------------------------------------------------
    def start(self) -> 'PlannerNodeProcess':
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, 'a')
            out = self._log
        else:
            out = subprocess.PIPE
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=_default_sigint)
        if self._log is None:
            self._reader = threading.Thread(target=self._read, name='planner_node_output',
                                            daemon=True)
            self._reader.start()
        return self

    def _output_complete(self, timeout: float = 5.0) -> None:
        """After the process exited: wait until its last output lines have been read (the
        reader thread ends at EOF), so an error message shows what it printed."""
        reader = getattr(self, '_reader', None)
        if reader is not None and self.proc.poll() is not None:
            reader.join(timeout)

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self._lines.append(line.rstrip())
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> 'PlannerNodeProcess':
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state --------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.proc.pid

    def returncode(self):
        """None while running, else the exit status."""
        return self.proc.poll()

    def lines(self) -> list:
        """The output so far (from the log file when there is one)."""
        if self.log_path is not None:
            try:
                return self.log_path.read_text(errors='replace').splitlines()
            except OSError:
                return []
        with self._cond:
            return list(self._lines)

    def tail(self, n: int = 8, sep: str = ' | ') -> str:
        return sep.join(line.strip() for line in self.lines()[-n:])

    # -- waiting ------------------------------------------------------------------------------
    def wait_for_log(self, text: str, timeout: float) -> bool:
        """True once a line holding ``text`` was written; False when the process exited first
        or ``timeout`` (seconds) passed."""
        deadline = time.monotonic() + timeout
        while True:
            if any(text in line for line in self.lines()):
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self._output_complete()
                return any(text in line for line in self.lines())
            with self._cond:
                self._cond.wait(min(left, 0.05))

    def wait_active(self, timeout: float) -> float:
        """Wait for the node's ``active:`` line -> seconds since spawn; RuntimeError with the
        log's end when it exits or times out first."""
        if not self.wait_for_log(ACTIVE_LINE, timeout) or self.proc.poll() is not None:
            self._output_complete()
            raise RuntimeError(f'planner_node did not start ({" ".join(self.command)}):\n'
                               + self.tail(30, '\n'))
        return time.monotonic() - self.started_at

    # -- stop ---------------------------------------------------------------------------------
    def stop(self, sigint_timeout_s: float = SIGINT_TIMEOUT_S,
             sigterm_timeout_s: float = SIGTERM_TIMEOUT_S,
             sigkill_timeout_s: float = SIGKILL_TIMEOUT_S):
        """SIGINT, then SIGTERM, then SIGKILL, each after the previous one's timeout -> the exit
        status (None if even SIGKILL did not reap it in time). Idempotent."""
        if self.proc is None:
            return None
        for sig, timeout in ((signal.SIGINT, sigint_timeout_s),
                             (signal.SIGTERM, sigterm_timeout_s),
                             (signal.SIGKILL, sigkill_timeout_s)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        if self._log is not None:
            self._log.close()
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL now (a hung node), then :meth:`stop` reaps it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
