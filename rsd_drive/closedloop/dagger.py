"""``rsd-drive dagger CKPT --family F [F ...] --seeds A-B --out DIR [--beta 0.3]``: DAgger with the
privileged expert (Ross et al. 2011; "learning by cheating", Chen et al. 2019).

The checkpoint drives the scenario world the way the closed loop drives it (the same
:class:`~rsd_drive.closedloop.loop.RouteRunner` observes, plans and follows the plan, on the
world's own simulation), except that each planning period the expert drives instead with
probability ``beta`` (a random stream of the drive's seed). The states the mixture visits are
recorded as an ordinary scenario bag (``rsd-drive scenario``'s topics, no injected noise), plus
``/expert/future``: per camera frame the expert's rollout from the visited state, in a deep copy
of the whole world stepped under expert control for the model's horizon (5 s at 4 Hz: 20
waypoints in base_link at the frame time). ``rsd-drive label`` takes that as the frame's target
(``dataset.target_topic``); its past states stay the visited odometry. ``beta = 1`` records the
expert's own drive.

Drives go to ``OUT/<family>/drive_<seed>`` (written atomically; existing bags are skipped, so a
run resumes).
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np

from rsd_drive.closedloop.config import ClosedLoopConfig
from rsd_drive.closedloop.loop import RouteRunner, odometry_state
from rsd_drive.closedloop.run import parse_seeds, safe_label

# the stream of the per-period expert/model draws: [seed, BETA_STREAM] (apart from the world's)
BETA_STREAM = 0xDA66E2


def expert_future(sim, steps: int, frequency_hz: float) -> np.ndarray:
    """[steps, 2] the expert's future from the current state of ``sim``: a deep copy of the whole
    world (agents, scripts, random streams) stepped with ``step(None)`` for steps / frequency_hz
    seconds, the ego at (k + 1) / frequency_hz (linear between world steps), in base_link now.
    ``sim`` itself is not touched."""
    world = copy.deepcopy(sim)
    horizon_s = steps / float(frequency_hz)
    n = int(math.ceil(horizon_s / world.dt - 1e-9))
    xy = np.empty((n + 1, 2))
    xy[0] = (world.ego.x, world.ego.y)
    for i in range(1, n + 1):
        world.step(None)
        xy[i] = (world.ego.x, world.ego.y)
    t = np.arange(n + 1) * world.dt
    want = np.arange(1, steps + 1) / float(frequency_hz)
    d = np.stack([np.interp(want, t, xy[:, 0]), np.interp(want, t, xy[:, 1])], -1) - xy[0]
    c, s = math.cos(sim.ego.yaw), math.sin(sim.ego.yaw)
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=-1)


class DaggerDriver:
    """A :class:`~rsd_drive.scenario.world.World` driver: the policy (a ModelPolicy) through the
    closed loop's RouteRunner, or, per planning period with probability ``beta``, the expert;
    at every camera frame time the expert's rollout from the visited state.

    After the drive: ``controls`` (the EgoControl executed at every world step),
    ``expert_futures`` ({world step of a frame: [T, 2]}), ``expert_hz``, ``info()``.
    """

    def __init__(self, policy, seed: int, cfg: ClosedLoopConfig, scenario_cfg, beta: float,
                 progress: bool = False, desc: str = 'drive'):
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f'beta must be in [0, 1], got {beta}')
        self.policy, self.seed, self.cfg, self.scenario_cfg = policy, int(seed), cfg, scenario_cfg
        self.beta = float(beta)
        self.rng = np.random.default_rng(np.random.SeedSequence([self.seed, BETA_STREAM]))
        self.steps, self.expert_hz = int(policy.steps), float(policy.frequency_hz)
        self.expert_futures, self.controls = {}, []
        self.periods, self.expert_periods, self.expert_turn = 0, 0, True
        self.progress, self.desc = progress, desc
        self.runner = self.bar = None

    def begin(self, sim) -> None:
        from tqdm import tqdm

        cfg = self.scenario_cfg
        self.runner = RouteRunner(self.policy, sim.requested_family, self.seed, self.cfg, cfg,
                                  keep_frames=False, sim=sim)
        period = 1.0 / (cfg.image_hz * sim.dt)
        self.frame_every = int(round(period))
        if abs(period - self.frame_every) > 1e-6 or self.frame_every < 1:
            raise ValueError(f'image_hz {cfg.image_hz} is not a whole number of world steps of '
                             f'{sim.dt} s: frames need a world state of their own')
        self.n_frames = cfg.n_frames
        self.bar = tqdm(total=self.n_frames, desc=self.desc, unit='frame',
                        disable=not self.progress, leave=False)

    def control(self, sim):
        """The control of world step ``round(t / dt)`` (called once per step, in order)."""
        r, step = self.runner, int(round(sim.t / sim.dt))
        if step != len(self.controls):
            raise RuntimeError(f'DaggerDriver called at step {step}, expected '
                               f'{len(self.controls)}')
        stamp_ns = step * r.dt_ns
        if step % r.odom_every == 0:  # what planner_node's OdometryHistory gets from /odom
            r.history.add(odometry_state(stamp_ns, sim.ego))
        if step % self.frame_every == 0 and step // self.frame_every < self.n_frames:
            self.expert_futures[step] = expert_future(sim, self.steps, self.expert_hz)
            self.bar.update(1)
            if len(self.expert_futures) == self.n_frames:
                self.bar.close()
        if step % r.plan_every == 0:
            self.expert_turn = bool(self.rng.random() < self.beta)
            self.periods += 1
            self.expert_periods += self.expert_turn
            if not self.expert_turn:
                r.plan_step(step, stamp_ns)
        # the expert's control every step: sim.expert_leader / expert_interaction (recorded by
        # the World) say what the expert would brake for in the visited state
        expert = sim.expert_control()
        if self.expert_turn:
            control = expert
            # the controller takes over from the control the ego actually had (its jerk and
            # curvature-rate limits start there)
            r.controller.last_accel, r.controller.last_curvature = expert.accel, expert.curvature
        else:
            control = r.follow()
        self.controls.append(control)
        return control

    def info(self) -> dict:
        """What ``/scenario/info`` records about this driver."""
        return {'kind': 'dagger', 'policy': self.policy.name, 'beta': self.beta,
                'plan_periods': self.periods, 'expert_periods': self.expert_periods,
                'model_plans': self.runner.plans if self.runner else 0,
                'expert_future': {'steps': self.steps, 'frequency_hz': self.expert_hz}}


def dagger_drive(policy, family: str, seed: int, out_path, beta: float, cfg: ClosedLoopConfig,
                 scenario_cfg, progress: bool = True):
    """Record one DAgger drive into the bag ``out_path`` (atomically). Returns (DriveSummary,
    driver)."""
    from rsd_drive.scenario.record import generate_drive

    driver = DaggerDriver(policy, seed, cfg, scenario_cfg, beta, progress,
                          desc=f'{Path(out_path).name} driving')
    summary = generate_drive(out_path, seed, scenario_cfg, progress, family, driver)
    return summary, driver


def drive_path(out, family: str, seed: int) -> Path:
    from rsd_drive.scenario.record import drive_name

    return Path(out) / safe_label(family) / drive_name(seed)


def run_dagger(checkpoint, families, seeds, out, beta: float = 0.3,
               cfg: ClosedLoopConfig | None = None, scenario_cfg=None,
               backend: str = 'onnxruntime', device: str = 'cpu', progress: bool = True,
               policy=None) -> list:
    """DAgger drives of ``checkpoint`` (or the Policy ``policy``) on every (family, seed) into
    ``out``; bags already there are kept. Returns the paths of every drive."""
    from tqdm import tqdm

    from rsd_drive.closedloop.policies import ModelPolicy
    from rsd_drive.scenario.config import ScenarioConfig, default_config_path

    cfg = cfg or ClosedLoopConfig.from_yaml()
    if scenario_cfg is None:
        path = default_config_path()
        scenario_cfg = ScenarioConfig.from_yaml(path) if path else ScenarioConfig()
    jobs = [(f, s) for f in families for s in parse_seeds(seeds)]
    todo = [(f, s) for f, s in jobs if not drive_path(out, f, s).exists()]
    if len(todo) < len(jobs):
        tqdm.write(f'{len(jobs) - len(todo)} drives already in {out}: skipped')
    if not todo:
        return [drive_path(out, f, s) for f, s in jobs]
    pol = policy or ModelPolicy(checkpoint, backend, device, cfg.ros.threads)
    bar = tqdm(todo, desc=f'dagger {pol.name} beta {beta:g}', unit='drive',
               disable=not progress)
    try:
        for family, seed in bar:
            t0 = time.perf_counter()
            summary, driver = dagger_drive(pol, family, seed, drive_path(out, family, seed),
                                           beta, cfg, scenario_cfg, progress)
            bar.write(f'wrote {summary.path}: {summary.family}, {summary.frames} frames, '
                      f'expert {driver.expert_periods}/{driver.periods} periods, '
                      f'{len(summary.collisions)} collisions, '
                      f'{time.perf_counter() - t0:.1f} s')
    finally:
        if policy is None:
            pol.close()
    return [drive_path(out, f, s) for f, s in jobs]


def add_arguments(parser) -> None:
    from rsd_drive.deploy.backends import BACKENDS

    parser.add_argument('checkpoint', help='a checkpoint directory (or its exported model.onnx)')
    parser.add_argument('--family', nargs='+', action='extend', required=True,
                        help='scenario families, e.g. lead_brake ped_crossing')
    parser.add_argument('--seeds', default='0-4', help="'A-B' (inclusive) or '1,3,7'")
    parser.add_argument('--out', required=True, type=Path,
                        help='output directory: OUT/<family>/drive_<seed> (resumable)')
    parser.add_argument('--beta', type=float, default=0.3,
                        help='probability that the expert drives a planning period (1: the '
                             "expert's own drive)")
    parser.add_argument('--backend', default='onnxruntime', choices=BACKENDS)
    parser.add_argument('--device', default='cpu', help='auto | cpu | cuda')
    parser.add_argument('--config', help='closed-loop config (default config/closedloop.yaml)')
    parser.add_argument('--scenario-config', help='scenario config (default '
                                                  'config/scenario.yaml)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')


def run(args) -> int:
    from rsd_drive.scenario.config import ScenarioConfig

    cfg = ClosedLoopConfig.from_yaml(args.config)
    scenario_cfg = ScenarioConfig.from_yaml(args.scenario_config) if args.scenario_config \
        else None
    paths = run_dagger(args.checkpoint, args.family, args.seeds, args.out, args.beta, cfg,
                       scenario_cfg, args.backend, args.device, not args.no_progress)
    print(f'{len(paths)} DAgger drives in {args.out}')
    return 0
