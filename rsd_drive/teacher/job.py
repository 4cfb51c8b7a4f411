"""The labeling job: bags in; per bag a label bag, shards of the training index, a preview PNG.

One function, :func:`label_bag`, does the per-bag work; :func:`run_job` runs it over many bags
in-process, in a local process pool, or as Ray tasks (``ray_address``, rsd_drive.teacher.ray_run:
the bags and OUT must then be shared storage). Output layout::

    OUT/index/                 training index (rsd_drive.data.index): manifest + shards
    OUT/labels/<bag_id>/       label bag (rosbag2, MCAP): risk grid, markers, answers, path
    OUT/previews/<bag_id>.png  the riskiest frame of the bag: camera with boxes + BEV grid
    OUT/work/<bag_id>/         resume state: chunk-NNNNN.{npz,json}, done.json
    OUT/summary.json           the last run's per-bag results

Resume: frames are labelled in chunks of ``chunk_frames`` synchronised sets. A chunk is done when
its index shard is in the manifest *and* its chunk files exist; each is written atomically
(temp + rename), the shard first. A run killed at any point (kill -9) and started again skips
done chunks and redoes the rest, re-committing a chunk's shard under the same name, so every
frame ends up in the index exactly once. The label bag is assembled from the chunk files when the
whole bag is done.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from rsd_drive.atomic import remove_stale_temp_files, write_atomic, write_json_atomic
from rsd_drive.data.bag import (BagError, BagReader, DatasetConfig, MissingTopicsError,
                                SkippedFrame)
from rsd_drive.data.index import ShardWriter, read_manifest
from rsd_drive.data.route import route_in_base_link
from rsd_drive.data.targets import TargetConfig, TargetError, build_targets, index_frame
from rsd_drive.geometry import GridSpec
from rsd_drive.teacher.base import FrameContext, TeacherUnavailable
from rsd_drive.teacher.config import TeacherConfig
from rsd_drive.teacher.factory import build_teacher
from rsd_drive.teacher.labelbag import LabelRecord, write_label_bag
from rsd_drive.teacher.projection import teacher_grid
from rsd_drive.teacher.served import (prefetched, share_concurrency, stats_since,
                                      teacher_stats)


@dataclass
class JobSpec:
    """Everything a worker needs, as plain data (pickles to pool workers and Ray tasks)."""

    out_dir: str
    teacher: dict
    dataset: dict
    grid: dict
    image_hw: tuple
    targets: dict
    chunk_frames: int = 32

    @property
    def teacher_config(self) -> TeacherConfig:
        return TeacherConfig(**self.teacher)

    @property
    def grid_spec(self) -> GridSpec:
        return GridSpec(**self.grid)


def make_spec(out_dir, teacher: TeacherConfig, dataset: DatasetConfig, model_config=None,
              image_hw=None, chunk_frames: int = 32) -> JobSpec:
    """A JobSpec whose grid, image size and target horizon are the model's (``model_config``: a
    :class:`rsd_drive.model.ModelConfig`, default ``ModelConfig()``); ``image_hw`` overrides the
    image size."""
    from rsd_drive.model.config import ModelConfig

    model = model_config or ModelConfig()
    if model_config is not None and model.num_cameras != len(dataset.cameras):
        raise ValueError(f'the model expects {model.num_cameras} cameras, the dataset config '
                         f'lists {len(dataset.cameras)}')
    hw = tuple(int(v) for v in (image_hw or (model.image_height, model.image_width)))
    targets = asdict(teacher.targets)
    targets.update(past_steps=model.past_steps, future_steps=model.future_steps,
                   frequency_hz=model.frequency_hz)
    if model.route_points:  # the index holds the route input the model takes
        targets.update(route_points=model.route_points, route_spacing_m=model.route_spacing_m)
    teacher_dict = teacher.to_dict()
    if teacher.runtime == 'served' and not teacher.served.cache_dir:  # answers: OUT/answers
        teacher_dict['served']['cache_dir'] = str(Path(out_dir).resolve() / 'answers')
    return JobSpec(out_dir=str(out_dir), teacher=teacher_dict, dataset=dataset.to_dict(),
                   grid=model.grid.to_dict(), image_hw=hw, targets=targets,
                   chunk_frames=int(chunk_frames))


def bag_ids(bags) -> dict:
    """A readable, unique id per bag: its name, plus a path hash where names collide."""
    names = {}
    for b in bags:
        p = Path(b)
        names[str(b)] = p.name[:-len(''.join(p.suffixes))] if p.suffixes and p.is_file() \
            else p.name
    counts = Counter(names.values())
    return {b: (n if counts[n] == 1 else
                f'{n}-{hashlib.sha1(str(Path(b).resolve()).encode()).hexdigest()[:8]}')
            for b, n in names.items()}


def _bag_identity(bag: Path) -> dict:
    files = [bag] if bag.is_file() else sorted(p for p in bag.rglob('*') if p.is_file())
    return {'path': str(bag), 'bytes': sum(p.stat().st_size for p in files)}


def _save_npz(tmp, **arrays) -> None:
    with open(tmp, 'wb') as fh:
        np.savez(fh, **arrays)


_TEACHERS: dict = {}


def get_teacher(spec: JobSpec):
    """The process's teacher for this configuration (models load once per worker)."""
    key = json.dumps(spec.teacher, sort_keys=True)
    if key not in _TEACHERS:
        _TEACHERS.clear()
        _TEACHERS[key] = build_teacher(spec.teacher_config)
    return _TEACHERS[key]


class _Chunk:
    """Frames of one chunk being labelled."""

    def __init__(self, k: int, spec: JobSpec, bag: Path, bag_id: str, identity: dict):
        self.k, self.spec, self.bag_id = k, spec, bag_id
        c = spec.chunk_frames
        self.seq_start, self.seq_end = k * c, (k + 1) * c
        self.writer = ShardWriter(Path(spec.out_dir) / 'index', f'{bag_id}-{k:05d}',
                                  meta={'bag': str(bag), 'bag_id': bag_id, 'chunk': k,
                                        'seq_start': self.seq_start, 'seq_end': self.seq_end})
        self.identity = identity
        self.skipped, self.rejected = Counter(), Counter()
        self.records, self.stamps, self.risk, self.future = [], [], [], []
        self.errors = []
        self.failed = []  # frames the teacher could not answer (TeacherUnavailable): next run

    def commit(self, work: Path, cameras, backend: str) -> dict:
        spec = self.spec
        npz = work / f'chunk-{self.k:05d}.npz'
        grid = spec.grid_spec
        risk = np.stack(self.risk).astype(np.float16) if self.risk else \
            np.zeros((0, grid.rows, grid.cols), np.float16)
        future = np.stack(self.future).astype(np.float32) if self.future else \
            np.zeros((0, 0, 2), np.float32)
        write_atomic(npz, lambda tmp: _save_npz(tmp, stamps=np.array(self.stamps, np.int64),
                                                risk=risk, future=future))
        self.writer.meta['rejected'] = dict(self.rejected)
        targets = TargetConfig(**spec.targets)
        self.writer.commit(skipped=dict(self.skipped), grid=spec.grid, cameras=list(cameras),
                           image_hw=list(spec.image_hw), teacher=backend,
                           route={'points': targets.route_points,
                                  'spacing_m': targets.route_spacing_m})
        info = {'chunk': self.k, 'shard': self.writer.name, 'identity': self.identity,
                'backend': backend, 'seq_start': self.seq_start, 'seq_end': self.seq_end,
                'frames': len(self.stamps), 'skipped': dict(self.skipped),
                'rejected': dict(self.rejected), 'errors': self.errors[:3],
                'failed': self.failed, 'records': self.records}
        write_json_atomic(work / f'chunk-{self.k:05d}.json', info)
        return info


def _done_chunks(work: Path, index_dir: Path, identity: dict, backend: str) -> dict:
    shards = read_manifest(index_dir).get('shards', {})
    done = {}
    for path in sorted(work.glob('chunk-*.json')):
        try:
            info = json.loads(path.read_text())
        except ValueError:
            continue  # can't happen with atomic writes; a hand-edited file: redo the chunk
        if info.get('identity') != identity:
            # Frames of another version of the bag are in the index: mixing them is not safe.
            raise BagError(identity['path'], f'changed since it was labelled into '
                                             f'{index_dir.parent} ({info.get("identity")}); '
                                             f'label it into a fresh output directory')
        if info.get('backend') == backend and info.get('shard') in shards \
                and path.with_suffix('.npz').is_file() and not info.get('failed'):
            done[int(info['chunk'])] = info
    return done


def _worth_asking(item, reader, target_cfg: TargetConfig, C: int, done) -> bool:
    """Whether label_bag will ask the teacher about ``item``, for asking ahead: a wrong guess
    costs one request (or a wasted one), never a label."""
    if isinstance(item, SkippedFrame) or item.seq // C in done:
        return False
    t0 = item.stamp_ns
    if reader.noise_between(t0, t0 + int(target_cfg.future_steps / target_cfg.frequency_hz
                                         * 1e9)):
        return False
    try:
        build_targets(reader.odometry, t0, target_cfg, reader.intent_at(t0))
    except TargetError:
        return False
    return True


def _preview(path: Path, frame, risk, objects, future, grid: GridSpec, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cam = next((o['camera'] for o in objects if o.get('camera') in frame.cameras),
               frame.cameras[0])
    i = frame.cameras.index(cam)
    fig, (ax_img, ax_bev) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax_img.imshow(frame.images[i])
    for o in objects:
        if o.get('camera') == cam and o.get('box'):
            x1, y1, x2, y2 = o['box']
            ax_img.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color='red'))
            ax_img.text(x1, y1, f'{o["label"]} {o["risk"]:.2f}', color='yellow', fontsize=7)
    ax_img.set_title(f'{cam} camera')
    ax_img.axis('off')
    # base_link x forward drawn upward, y left drawn leftward.
    ax_bev.imshow(np.asarray(risk, np.float32).T[::-1, ::-1], cmap='magma', vmin=0, vmax=1,
                  extent=(grid.y_max, grid.origin_y, grid.origin_x, grid.x_max))
    ax_bev.plot(np.r_[0, future[:, 1]], np.r_[0, future[:, 0]], 'c.-', label='logged future')
    ax_bev.plot([0], [0], 'w^', markersize=8)
    ax_bev.set_xlim(grid.y_max, grid.origin_y)
    ax_bev.set_xlabel('y left (m)')
    ax_bev.set_ylabel('x forward (m)')
    ax_bev.set_title('teacher risk grid (base_link)')
    ax_bev.legend(loc='lower right', fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format='png', dpi=90))
    plt.close(fig)


def _already_done(bag: Path, out: Path, bag_id: str, identity: dict, backend: str,
                  label_path: Path, progress) -> dict | None:
    """The resume check: the result of an earlier run of this bag into ``out`` when it is
    complete and current (None: label it); a different or changed bag is an error."""
    done_file = out / 'work' / bag_id / 'done.json'
    if not done_file.is_file():
        return None
    info = json.loads(done_file.read_text())
    if info.get('identity', {}).get('path') != identity['path']:
        raise BagError(bag, f'{out} already holds labels named {bag_id} of '
                            f'{info.get("identity", {}).get("path")}; use another --out')
    if info.get('identity') != identity:
        raise BagError(bag, f'changed since it was labelled into {out}; label it into a '
                            f'fresh output directory')
    if info.get('backend') != backend or not label_path.exists() or info.get('failed_frames'):
        return None
    info['status'], info['seconds'], info['teacher_stats'] = 'already_done', 0.0, {}
    if progress:
        progress({'bag_id': bag_id, 'state': 'already_done',
                  'frames_done': info.get('frames_seen', 0),
                  'frames_total': info.get('frames_seen', 0)})
    return info


class _FrameLabeller:
    """Labels one synchronised frame of a bag into its chunk: targets, route input, teacher,
    BEV projection, index frame; keeps the riskiest frame for the preview."""

    def __init__(self, spec: JobSpec, reader, teacher):
        self.spec, self.reader, self.teacher = spec, reader, teacher
        self.tcfg = spec.teacher_config
        self.target_cfg = TargetConfig(**spec.targets)
        self.horizon_ns = int(self.target_cfg.future_steps / self.target_cfg.frequency_hz * 1e9)
        self.best = None

    def _targets(self, t0: int):
        reader, cfg = self.reader, self.target_cfg
        intent = reader.intent_at(t0)
        # DAgger drives (rsd-drive dagger): the target is the expert's rollout from the visited
        # state recorded at this stamp (dataset.target_topic), not the logged future; the past
        # states stay the visited odometry. None: the logged future.
        expert = reader.target_at(t0, cfg.future_steps, cfg.frequency_hz)
        return build_targets(reader.odometry, t0, cfg, intent, expert)

    def _context(self, t0: int, targets):
        reader, cfg = self.reader, self.target_cfg
        ego = reader.odometry.at(t0)
        route = route_in_base_link(reader.route_at(t0), (ego.x, ego.y, ego.yaw),
                                   cfg.route_points, cfg.route_spacing_m)
        ctx = FrameContext(
            t0, (ego.x, ego.y, ego.yaw), targets.future, targets.init_speed, cfg.frequency_hz,
            odometry=reader.odometry,
            objects=reader.objects_at(t0, int(self.tcfg.oracle.max_age_s * 1e9))
            if self.teacher.needs_objects else None)
        return ctx, route

    def label(self, item, chunk: '_Chunk') -> None:
        t0 = item.stamp_ns
        if self.reader.noise_between(t0, t0 + self.horizon_ns):
            chunk.skipped['targets:injected_noise'] += 1  # not the expert's own correction
            return
        try:
            targets = self._targets(t0)
        except TargetError as exc:
            chunk.skipped[f'targets:{exc.reason}'] += 1
            return
        ctx, route = self._context(t0, targets)
        try:
            output = self.teacher.label(item, ctx)
        except TeacherUnavailable as exc:  # may pass (server down): the next run labels it
            chunk.failed.append({'seq': item.seq, 'stamp_ns': t0, 'reason': exc.reason})
            return
        except Exception as exc:  # noqa: BLE001 - a model failure on one frame: count it
            chunk.skipped['teacher:error'] += 1
            chunk.errors.append(f'frame {item.seq} ({t0}): {type(exc).__name__}: {exc}')
            return
        self._keep(item, chunk, output, targets, route)

    def _keep(self, item, chunk: '_Chunk', output, targets, route) -> None:
        t0, spec = item.stamp_ns, self.spec
        chunk.rejected.update(output.rejected)
        if not output.parsed and self.tcfg.unparsable_answer == 'skip':
            chunk.skipped['teacher:unparsable'] += 1
            chunk.records.append({'stamp_ns': t0, 'seq': item.seq, 'labelled': False,
                                  'answer': output.answer, 'objects': []})
            return
        risk, kept, rejected = teacher_grid(output, item, spec.grid_spec, self.tcfg.projection)
        chunk.rejected.update(rejected)
        chunk.writer.add(**index_frame(item, targets, risk, spec.image_hw, route))
        objects = [o.to_dict() for o in kept]
        chunk.records.append({'stamp_ns': t0, 'seq': item.seq, 'labelled': True,
                              'answer': output.answer, 'objects': objects})
        chunk.stamps.append(t0)
        chunk.risk.append(risk)
        chunk.future.append(targets.future)
        score = float(risk.sum())
        if self.best is None or score > self.best[0]:
            self.best = (score, item, risk, objects, targets.future)


def _merge_chunks(work: Path, done: dict) -> dict:
    """Every finished chunk of a bag, in order: label records (risk and future from the chunk's
    arrays) and the counters."""
    merged = {'records': [], 'skipped': Counter(), 'rejected': Counter(), 'errors': [],
              'labelled': 0, 'failed': []}
    for k in sorted(done):
        info = done[k]
        arrays = np.load(work / f'chunk-{k:05d}.npz', allow_pickle=False)
        by_stamp = {int(t): j for j, t in enumerate(arrays['stamps'])}
        for rec in info['records']:
            j = by_stamp.get(int(rec['stamp_ns'])) if rec['labelled'] else None
            merged['records'].append(LabelRecord(
                rec['stamp_ns'], rec['answer'], rec['objects'],
                None if j is None else arrays['risk'][j].astype(np.float32),
                None if j is None else arrays['future'][j]))
        merged['skipped'].update(info['skipped'])
        merged['rejected'].update(info['rejected'])
        merged['errors'].extend(info.get('errors', []))
        merged['failed'].extend(info.get('failed', []))
        merged['labelled'] += int(info['frames'])
    return merged


def _label_chunks(bag, spec: JobSpec, bag_id: str, identity: dict, work: Path, reader,
                  teacher, report) -> tuple[dict, int, '_FrameLabeller']:
    """The per-frame loop over a bag: chunks already done are counted and passed over, the
    others labelled frame by frame and committed one chunk at a time. -> (done chunks, frames
    seen, the labeller)."""
    tcfg, dataset = spec.teacher_config, DatasetConfig.from_dict(spec.dataset)
    done = _done_chunks(work, Path(spec.out_dir) / 'index', identity, tcfg.backend)
    C, labeller = spec.chunk_frames, _FrameLabeller(spec, reader, teacher)
    chunk, seen = None, 0

    def finish(c):
        done[c.k] = c.commit(work, dataset.camera_names, tcfg.backend)

    frames = reader.frames(decode=lambda seq: seq // C not in done, include_skipped=True)
    for item in prefetched(teacher, frames,
                           lambda f: _worth_asking(f, reader, labeller.target_cfg, C, done)):
        k = item.seq // C
        if k in done:
            if item.stamp_ns >= 0:
                seen += 1
                report(seen)
            continue
        if chunk is None or chunk.k != k:
            if chunk is not None:
                finish(chunk)
            chunk = _Chunk(k, spec, bag, bag_id, identity)
        if item.stamp_ns >= 0:  # sync drops carry no stamp: they are not frames seen
            seen += 1
            report(seen)
        if isinstance(item, SkippedFrame):
            chunk.skipped[item.reason] += 1
            continue
        labeller.label(item, chunk)
    if chunk is not None:
        finish(chunk)
    return done, seen, labeller


def label_bag(bag, spec: JobSpec, bag_id: str | None = None, progress=None) -> dict:
    """Label one bag (resuming finished chunks). Returns the bag's result dict; raises BagError
    for unreadable bags and MissingTopicsError for bags without the needed topics."""
    t_start = time.monotonic()
    bag = Path(bag).resolve()
    bag_id = bag_id or bag_ids([bag])[str(bag)]
    out = Path(spec.out_dir)
    work, label_path = out / 'work' / bag_id, out / 'labels' / bag_id
    backend = spec.teacher_config.backend
    if not bag.exists():
        raise BagError(bag, 'no such bag')
    identity = _bag_identity(bag)
    info = _already_done(bag, out, bag_id, identity, backend, label_path, progress)
    if info is not None:
        return info
    work.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(work)  # one labeler per bag: leftovers of a killed one
    dataset = DatasetConfig.from_dict(spec.dataset)
    teacher = get_teacher(spec)
    stats_before = teacher_stats(teacher)
    with BagReader(bag, dataset) as reader:
        if teacher.needs_objects and not reader.objects:
            raise MissingTopicsError(
                bag, f'the {backend} teacher needs ground-truth objects on '
                     f'{dataset.objects_topic or "(objects_topic unset)"}; the bag has: '
                     f'{reader.describe_topics()}')
        total = reader.expected_frames

        def report(seen, state='running'):
            if progress:
                progress({'bag_id': bag_id, 'state': state, 'frames_done': seen,
                          'frames_total': max(total, seen)})

        done, seen, labeller = _label_chunks(bag, spec, bag_id, identity, work, reader,
                                             teacher, report)
        bag_level = {k: v for k, v in reader.bad_messages.items()}
        extrinsics = dict(reader.extrinsics_source)
    merged = _merge_chunks(work, done)
    write_label_bag(label_path, merged['records'], spec.grid_spec,
                    labeller.target_cfg.frequency_hz)
    best = labeller.best
    if best is not None:
        _preview(out / 'previews' / f'{bag_id}.png', best[1], best[2], best[3], best[4],
                 spec.grid_spec, f'{bag_id}: frame {best[1].seq} @ {best[1].stamp_ns} ns, '
                                 f'teacher {backend}')
    result = {
        'bag': str(bag), 'bag_id': bag_id, 'status': 'ok', 'identity': identity,
        'backend': backend, 'frames_seen': seen, 'frames_labelled': merged['labelled'],
        'expected_frames': total, 'skipped': dict(merged['skipped']), 'bad_messages': bag_level,
        'rejected': dict(merged['rejected']), 'errors': merged['errors'][:5],
        'extrinsics': extrinsics, 'label_bag': str(label_path), 'chunks': len(done),
        'failed_frames': merged['failed'],
        'teacher_stats': stats_since(stats_before, teacher_stats(teacher)),
        'seconds': round(time.monotonic() - t_start, 3),
    }
    write_json_atomic(work / 'done.json', result)
    report(seen, 'done')
    return result


def label_bag_safe(bag, spec: JobSpec, bag_id: str, progress=None) -> dict:
    """:func:`label_bag` that reports failure in its result instead of raising: the one
    function a pool worker or a Ray task runs."""
    t_start = time.monotonic()
    try:
        return label_bag(bag, spec, bag_id, progress)
    except BagError as exc:
        error, tb = str(exc), None
    except Exception as exc:  # noqa: BLE001 - other bags must still finish; report everything
        error, tb = f'{bag}: {type(exc).__name__}: {exc}', traceback.format_exc()
    if progress:
        progress({'bag_id': bag_id, 'state': 'failed', 'error': error})
    result = {'bag': str(bag), 'bag_id': bag_id, 'status': 'failed', 'error': error,
              'frames_labelled': 0, 'seconds': round(time.monotonic() - t_start, 3)}
    if tb:
        result['traceback'] = tb
    return result


# -- running many bags ---------------------------------------------------------------------------
class ProgressBoard:
    """tqdm bars: one over bags, one per bag over its frames (drawn by the parent process)."""

    def __init__(self, n_bags: int, enabled: bool = True, on_event=None):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.enabled = enabled
        self.on_event = on_event
        self.bags = tqdm(total=n_bags, desc='bags', unit='bag', position=0,
                         disable=not enabled, dynamic_ncols=True)
        self.frames = {}
        self.free_positions = []
        self.next_position = 1

    def update(self, event: dict) -> None:
        if self.on_event:
            self.on_event(event)
        bag_id, state = event.get('bag_id'), event.get('state')
        bar = self.frames.get(bag_id)
        if bar is None and state == 'running' and self.enabled:
            pos = self.free_positions.pop(0) if self.free_positions else self.next_position
            self.next_position = max(self.next_position, pos + 1)
            bar = self._tqdm(total=event.get('frames_total') or None, desc=bag_id,
                             unit='frame', position=pos, leave=False, dynamic_ncols=True)
            bar.position_ = pos
            self.frames[bag_id] = bar
        if bar is not None and 'frames_done' in event:
            if event.get('frames_total') and bar.total != event['frames_total']:
                bar.total = event['frames_total']
            bar.update(max(0, event['frames_done'] - bar.n))
        if state in ('done', 'failed', 'already_done'):
            if bar is not None:
                bar.close()
                self.free_positions.append(bar.position_)
                del self.frames[bag_id]
            self.bags.update(1)
            if state == 'failed':
                self.bags.write(f'FAILED {event.get("error")}')

    def close(self) -> None:
        for bar in self.frames.values():
            bar.close()
        self.bags.close()


def _worker_init(threads: int) -> None:
    # Share the cores between workers; torch reads these at import (only model backends use it).
    for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
        os.environ[var] = str(max(1, threads))


def _pool_task(bag, spec, bag_id, queue):
    return label_bag_safe(bag, spec, bag_id, progress=queue.put if queue is not None else None)


def _run_pool(bags, ids, spec, workers, board):
    import multiprocessing as mp
    import threading
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context('spawn')  # no fork: torch/ROS threads in the parent must not be cloned
    manager = ctx.Manager()
    queue = manager.Queue()

    def drain():
        while True:
            event = queue.get()
            if event is None:  # end of the run
                return
            board.update(event)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    threads = max(1, (os.cpu_count() or 1) // workers)
    results = {}
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_pool_task, str(b), spec, ids[str(b)], queue): b
                       for b in bags}
            for fut, b in futures.items():
                try:
                    results[str(b)] = fut.result()
                except Exception as exc:  # noqa: BLE001 - a worker died (OOM kill, segfault)
                    results[str(b)] = {'bag': str(b), 'bag_id': ids[str(b)],
                                       'status': 'failed', 'frames_labelled': 0,
                                       'error': f'{b}: worker died: {exc}'}
                    board.update({'bag_id': ids[str(b)], 'state': 'failed',
                                  'error': results[str(b)]['error']})
    finally:
        queue.put(None)
        drainer.join(timeout=5)
        manager.shutdown()
    return [results[str(b)] for b in bags]


@dataclass
class JobSummary:
    bags: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list:
        return [b for b in self.bags if b['status'] == 'failed']

    @property
    def frames_labelled(self) -> int:
        return sum(int(b.get('frames_labelled', 0)) for b in self.bags)

    def to_dict(self) -> dict:
        return {'bags': self.bags, 'seconds': self.seconds, 'failed': len(self.failed),
                'frames_labelled': self.frames_labelled}


def run_job(bags, spec: JobSpec, workers: int = 1, ray_address: str | None = None,
            show_progress: bool = True, on_progress=None, gpus_per_task: float = 0.0,
            max_retries: int = 2) -> JobSummary:
    """Label ``bags``; failures are reported per bag in the summary, never raised.

    With ``ray_address`` the bags run as Ray tasks (rsd_drive.teacher.ray_run): ``workers`` sizes
    a ``local`` cluster, each task asks for ``gpus_per_task`` GPUs, and a task whose worker dies
    is retried ``max_retries`` times."""
    t_start = time.monotonic()
    bags = [str(b) for b in bags]
    ids = bag_ids(bags)
    board = ProgressBoard(len(bags), enabled=show_progress, on_event=on_progress)
    try:
        if ray_address:
            from rsd_drive.teacher.ray_run import run_ray

            results = run_ray(bags, ids, spec, ray_address, board, label_fn=label_bag_safe,
                              gpus_per_task=gpus_per_task, max_retries=max_retries,
                              num_cpus=workers)
        elif workers <= 1 or len(bags) == 1:
            results = [label_bag_safe(b, spec, ids[b], progress=board.update) for b in bags]
        else:
            n = min(workers, len(bags))
            spec = replace(spec, teacher=share_concurrency(spec.teacher, n))
            results = _run_pool(bags, ids, spec, n, board)
    finally:
        board.close()
    summary = JobSummary(results, round(time.monotonic() - t_start, 3))
    write_json_atomic(Path(spec.out_dir) / 'summary.json', summary.to_dict())
    return summary
