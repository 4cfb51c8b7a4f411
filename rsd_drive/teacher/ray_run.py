"""Labeling on a Ray cluster: one Ray task per bag, each running the job's per-bag function
(``teacher.job.label_bag_safe``, handed in by ``job.run_job``, so this module does not import the
job back).

The tasks commit their results exactly as the process pool does (``label_bag``'s atomic,
resumable chunks: an index shard + chunk files per ``chunk_frames`` frames), so a task that Ray
retries after its worker died, or a whole rerun after the driver was killed, skips the chunks
that are done and redoes the rest: every frame lands in the index once.

What travels through Ray: the :class:`JobSpec` (configs as plain data), bag *paths*, progress
events and each bag's result dict; never images or labels. What must be shared storage (the same
path on every node): the bags (read), the output directory (index, work, labels, previews) and the
teacher's model directories.

``address``: ``local`` starts a private single-machine cluster bound to 127.0.0.1 only (no
dashboard, no usage statistics, no cloud-metadata lookups: ``no_egress_for_started_processes``);
``auto`` joins the cluster that ``ray start`` runs on this machine; ``HOST:PORT`` joins that
cluster's head. If this process is already connected to Ray (``ray.is_initialized()``), that
connection is used and left open.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import replace

from rsd_drive.teacher.served import share_concurrency

# Set before Ray is imported (the driver) and in every worker (runtime_env).
RAY_ENV = {'RAY_USAGE_STATS_ENABLED': '0'}
# With Ray's "cluster" mode off, a local cluster takes 127.0.0.1 as its node address and binds
# every server (GCS, raylet, workers, runtime-env agent) there instead of on all interfaces.
# Ray starts its workers at niceness 15 (RAY_worker_niceness): on a busy machine (a training run
# beside the labeler) they then get a few percent of a core, and a labeling job crawls. The work
# of a labeling job is in its workers, so a local cluster runs them at the driver's priority.
LOCAL_ONLY_ENV = {'RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER': '0', 'RAY_worker_niceness': '0'}
# Ray's head starts its usage-statistics module even without a dashboard and with usage statistics
# off, and that module asks the cloud metadata services (HTTP to 169.254.169.254, DNS for
# metadata.google.internal) which cloud it runs on. A local cluster's own processes (GCS, raylet,
# dashboard) are started with HTTP(S) pointed at a closed port on 127.0.0.1 (9, discard), so the
# check fails at once without a packet leaving; Ray's gRPC between them is exempt (no_proxy), and
# the workers get the driver's own proxy settings back (runtime_env), for a served VLM elsewhere.
PROXY_KEYS = ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'no_proxy', 'NO_PROXY')
NO_EGRESS_PROXY = 'http://127.0.0.1:9'
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 ** 2  # only small dicts go through the object store
PROGRESS_PERIOD_S = 0.25                      # a task reports its frame count at most this often
FINAL_STATES = ('done', 'failed', 'already_done')
# The progress calls (a task's put, at most every PROGRESS_PERIOD_S; the driver's drain, every
# 0.2 s) record no task events: with them, the GCS kept one per call and grew ~2 MB a minute
# through a whole labeling job (measured by ``rsd-drive bench label_soak --runner ray``).
QUIET = {'enable_task_events': False}


def import_ray(address: str | None = None):
    """``ray``, with usage statistics off (and local-only binding for ``local``)."""
    os.environ.update(RAY_ENV)
    if address == 'local':
        os.environ.update(LOCAL_ONLY_ENV)
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("--ray-address needs the 'ray' package, which is not installed "
                           '(pip install ray==2.60.0, see requirements.txt); without it, use '
                           '--workers N for a local process pool') from exc
    return ray


def connect(address: str, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Connect this process to Ray (see the module docstring). Returns True if it connected (the
    caller shuts down), False if an existing connection is reused."""
    ray = import_ray(address)
    if ray.is_initialized():
        return False
    common = dict(runtime_env={'env_vars': dict(RAY_ENV)}, log_to_driver=False,
                  configure_logging=False)
    if address == 'local':
        with no_egress_for_started_processes() as mine:
            common['runtime_env']['env_vars'].update(mine)
            ray.init(address='local', num_cpus=num_cpus, num_gpus=num_gpus,
                     _node_ip_address='127.0.0.1', include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
        node_ip = ray.util.get_node_ip_address()
        if node_ip != '127.0.0.1':  # e.g. ray was imported before LOCAL_ONLY_ENV was set
            ray.shutdown()
            raise RuntimeError(f'the local Ray cluster took node address {node_ip}, not '
                               f'127.0.0.1; start the job in a fresh process')
    else:
        ray.init(address=address, **common)
    return True


@contextmanager
def no_egress_for_started_processes():
    """Inside: processes started from here send HTTP(S) to a closed port on 127.0.0.1, except to
    127.0.0.1 / localhost (see ``PROXY_KEYS``). Yields this process's own settings ('' where
    unset), for the workers; restores them on exit."""
    saved = {k: os.environ.get(k) for k in PROXY_KEYS}
    os.environ.update({k: NO_EGRESS_PROXY for k in PROXY_KEYS[:4]})
    os.environ.update({k: '127.0.0.1,localhost' for k in PROXY_KEYS[4:]})
    try:
        yield {k: v or '' for k, v in saved.items()}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ProgressRelay:
    """A Ray actor the tasks report to (fire and forget); the driver drains it while it waits."""

    def __init__(self):
        self.events = []

    def put(self, event: dict) -> None:
        self.events.append(event)

    def drain(self) -> list:
        events, self.events = self.events, []
        return events


def ray_task(bag: str, spec, bag_id: str, relay, label_fn) -> dict:
    """What one Ray task runs: label one bag with ``label_fn(bag, spec, bag_id, progress=...)``,
    reporting progress to ``relay``."""
    import ray

    pid, last, sent = os.getpid(), [0.0], []

    def progress(event: dict) -> None:
        now = time.monotonic()
        if event.get('state') == 'running' and now - last[0] < PROGRESS_PERIOD_S \
                and event.get('frames_done', 0) < event.get('frames_total', 0):
            return
        last[0] = now
        sent[:] = [relay.put.options(**QUIET).remote({**event, 'pid': pid})]

    result = label_fn(bag, spec, bag_id, progress=progress)
    if sent:  # one caller's actor calls run in order: after this one, all are in the relay
        ray.get(sent[0])
    return result


def _died(bag: str, bag_id: str, exc: Exception, attempts: int) -> dict:
    first_line = str(exc).splitlines()[0] if str(exc) else ''
    return {'bag': bag, 'bag_id': bag_id, 'status': 'failed', 'frames_labelled': 0,
            'error': f'{bag}: its Ray task failed {attempts} times (worker died or was lost; '
                     f'last: {type(exc).__name__}: {first_line})'}


def run_ray(bags, ids, spec, address, board, *, label_fn, gpus_per_task: float = 0.0,
            max_retries: int = 2, num_cpus: int | None = None) -> list:
    """Label ``bags`` as Ray tasks, each running ``label_fn`` (``teacher.job.label_bag_safe``);
    results in the order of ``bags`` (failures reported, never raised). ``num_cpus`` sizes a
    ``local`` cluster (default: this machine's CPUs)."""
    ray = import_ray(address)
    owns = connect(address, num_cpus=num_cpus)
    try:
        # Tasks run at once: one per CPU; together they keep served.cluster_concurrency.
        running = min(len(bags), max(1, int(ray.cluster_resources().get('CPU', 1))))
        spec = replace(spec, teacher=share_concurrency(spec.teacher, running))
        relay = ray.remote(num_cpus=0)(ProgressRelay).remote()
        task = ray.remote(ray_task).options(num_cpus=1, num_gpus=gpus_per_task,
                                            max_retries=max_retries, retry_exceptions=False)
        refs = {task.remote(b, spec, ids[b], relay, label_fn): b for b in bags}
        results, pending = {}, list(refs)

        def relay_events():
            for event in ray.get(relay.drain.options(**QUIET).remote()):
                if event.get('state') not in FINAL_STATES:  # final states come from results
                    board.update(event)

        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)
            relay_events()
            for ref in ready:
                bag = refs[ref]
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - retries spent: report the bag by name
                    res = _died(bag, ids[bag], exc, max_retries + 1)
                results[bag] = res
                state = res['status'] if res['status'] in ('failed', 'already_done') else 'done'
                board.update({'bag_id': res['bag_id'], 'state': state,
                              'error': res.get('error')})
        return [results[b] for b in bags]
    finally:
        if owns:
            ray.shutdown()
