"""Time synchronisation shared by the live planner node and the offline bag tools.

Semantics follow message_filters' ApproximateTimeSynchronizer, specialised for driving: sets are
anchored on a reference camera; every other camera must have a message within ``slop`` of the
reference stamp; odometry is interpolated at the reference stamp. Nothing here knows about ROS:
callers feed ``(camera, stamp_ns, payload)`` and get complete sets back, and every frame that can't
be synchronised is counted under a reason.
"""
from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from rsd_drive.data.convert import EgoState


class SyncError(LookupError):
    """Odometry can't answer for a stamp; ``reason`` is a counter key."""

    def __init__(self, reason: str, detail: str = ''):
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


class OdometryHistory:
    """Time-ordered ego states with interpolation; bounded to ``horizon_ns`` of history."""

    def __init__(self, max_gap_ns: int = 200_000_000, horizon_ns: int | None = None):
        self.max_gap_ns = int(max_gap_ns)
        self.horizon_ns = horizon_ns
        self._t: list[int] = []
        self._s: list[EgoState] = []

    def __len__(self) -> int:
        return len(self._t)

    @property
    def latest(self) -> EgoState | None:
        return self._s[-1] if self._s else None

    def add(self, state: EgoState) -> None:
        i = bisect.bisect_left(self._t, state.stamp_ns)
        if i < len(self._t) and self._t[i] == state.stamp_ns:
            return  # duplicate stamp: keep the first
        self._t.insert(i, state.stamp_ns)
        self._s.insert(i, state)
        if self.horizon_ns is not None:
            cut = bisect.bisect_left(self._t, self._t[-1] - self.horizon_ns)
            if cut:
                del self._t[:cut], self._s[:cut]

    def clear(self) -> None:
        self._t.clear()
        self._s.clear()

    def at(self, t_ns: int) -> EgoState:
        """Linear interpolation (yaw on the circle) of the state at ``t_ns``."""
        if not self._t:
            raise SyncError('no_odometry')
        if t_ns < self._t[0]:
            raise SyncError('odom_before_start', f'{(self._t[0] - t_ns) / 1e9:.3f} s early')
        if t_ns > self._t[-1]:
            raise SyncError('odom_after_end', f'{(t_ns - self._t[-1]) / 1e9:.3f} s late')
        i = bisect.bisect_left(self._t, t_ns)
        if self._t[i] == t_ns:
            return self._s[i]
        a, b = self._s[i - 1], self._s[i]
        if b.stamp_ns - a.stamp_ns > self.max_gap_ns:
            raise SyncError('odom_gap',
                            f'{(b.stamp_ns - a.stamp_ns) / 1e9:.3f} s without odometry')
        w = (t_ns - a.stamp_ns) / (b.stamp_ns - a.stamp_ns)
        return EgoState(t_ns, a.x + w * (b.x - a.x), a.y + w * (b.y - a.y),
                        _wrap(a.yaw + w * _wrap(b.yaw - a.yaw)), a.speed + w * (b.speed - a.speed))

    def sample_in_frame(self, t0_ns: int, offsets_s, extrapolate_start: bool = False):
        """States at t0 + offsets, expressed in base_link at t0: [len, 4] (x, y, yaw, speed).

        extrapolate_start: times before the first state are extrapolated back from it at constant
        velocity along its heading (instead of raising ``odom_before_start``).
        """
        ref = self.at(t0_ns)
        c, s = math.cos(ref.yaw), math.sin(ref.yaw)
        out = np.empty((len(offsets_s), 4), dtype=np.float32)
        for k, dt in enumerate(offsets_s):
            t = t0_ns + int(round(dt * 1e9))
            if extrapolate_start and t < self._t[0]:
                first = self._s[0]
                back = (t - first.stamp_ns) / 1e9 * first.speed
                st = EgoState(t, first.x + back * math.cos(first.yaw),
                              first.y + back * math.sin(first.yaw), first.yaw, first.speed)
            else:
                st = self.at(t)
            dx, dy = st.x - ref.x, st.y - ref.y
            out[k] = (c * dx + s * dy, -s * dx + c * dy, _wrap(st.yaw - ref.yaw), st.speed)
        return out

    def past_states(self, t0_ns: int, steps: int = 16, frequency_hz: float = 4.0,
                    extrapolate_start: bool = False) -> np.ndarray:
        """[steps, 4] past states, oldest first, the last row is t0 (0, 0, 0, v0)."""
        return self.sample_in_frame(t0_ns, [-(steps - 1 - k) / frequency_hz for k in range(steps)],
                                    extrapolate_start)

    def future_waypoints(self, t0_ns: int, steps: int = 20, frequency_hz: float = 4.0):
        """[steps, 2] logged future positions in base_link at t0 (the planning target)."""
        return self.sample_in_frame(t0_ns, [(k + 1) / frequency_hz for k in range(steps)])[:, :2]


@dataclass
class SyncedSet:
    """One synchronised set: reference stamp and the payload of every camera, in camera order."""

    stamp_ns: int
    stamps_ns: list
    payloads: list


class FrameSynchronizer:
    """Reference-anchored approximate-time synchroniser over N camera streams.

    Messages of one camera are assumed to arrive in stamp order (true for a bag and for a live
    driver); out-of-order messages are dropped and counted as ``out_of_order:<camera>``.

    A set is emitted as soon as no better match can arrive. Stamps are monotonic per camera, so
    once a camera has a message stamped at or after the reference, no later message can be closer:
    its nearest candidate is final (or, with none within ``slop``, the reference is dropped as
    ``missing:<camera>``). A candidate earlier than the reference is final when it is within a
    fifth of the slop (trigger jitter) or, with ``expect_period``, when even the soonest next
    message (the newest stamp plus the camera's shortest recent stamp step) would be farther away:
    free-running cameras then never wait a camera period for the message that proves it.
    """

    def __init__(self, cameras, reference: str, slop_ns: int = 50_000_000, queue_size: int = 10,
                 expect_period: bool = True):
        self.cameras = list(cameras)
        if reference not in self.cameras:
            raise ValueError(f'reference camera {reference!r} not in {self.cameras}')
        self.reference = reference
        self.slop_ns = int(slop_ns)
        self.queue_size = int(queue_size)
        self._queues = {c: deque() for c in self.cameras}
        # Newest stamp ever accepted per camera: the queue alone forgets consumed messages, so an
        # old message arriving after its successors were matched would slip through as "new".
        self._last_stamp = {c: None for c in self.cameras}
        # Recent stamp steps per camera: the shortest is the soonest its next message can be
        # stamped (``expect_period``), so a match earlier than the reference can be final too.
        self.expect_period = bool(expect_period)
        self._steps = {c: deque(maxlen=16) for c in self.cameras}
        self.dropped = Counter()
        self.emitted = 0

    def add(self, camera: str, stamp_ns: int, payload) -> list[SyncedSet]:
        q = self._queues.get(camera)
        if q is None:
            self.dropped[f'unknown_camera:{camera}'] += 1
            return []
        last = self._last_stamp[camera]
        if last is not None and stamp_ns <= last:
            self.dropped[f'out_of_order:{camera}'] += 1
            return []
        if last is not None:
            self._steps[camera].append(int(stamp_ns) - last)
        self._last_stamp[camera] = int(stamp_ns)
        q.append((int(stamp_ns), payload))
        if len(q) > self.queue_size:
            t, _ = q.popleft()
            if camera == self.reference:
                # Name the camera that held this reference back when there is one.
                blocking = [c for c in self.cameras
                            if c != self.reference and self._nearest(c, t) is None]
                self.dropped[f'missing:{blocking[0]}' if blocking else 'queue_overflow'] += 1
        return self._match()

    def flush(self) -> list[SyncedSet]:
        """End of input: emit the pending sets that are complete, count the rest."""
        out = []
        ref_q = self._queues[self.reference]
        while ref_q:
            t, _ = ref_q[0]
            picks = {c: self._nearest(c, t) for c in self.cameras if c != self.reference}
            missing = [c for c, i in picks.items() if i is None]
            if missing:
                ref_q.popleft()
                self.dropped[f'missing:{missing[0]}'] += 1
            else:
                out.append(self._emit(picks))
        for q in self._queues.values():
            q.clear()
        return out

    def _nearest(self, camera: str, t: int):
        best = None
        for i, (s, _) in enumerate(self._queues[camera]):
            if abs(s - t) <= self.slop_ns and (best is None or abs(s - t) < best[1]):
                best = (i, abs(s - t))
        return None if best is None else best[0]

    def _decide(self, camera: str, t: int):
        """-> ('take', index) | ('wait', None) | ('drop', None) for ``camera`` at reference t."""
        q = self._queues[camera]
        if not q:
            return 'wait', None
        i, newest = self._nearest(camera, t), q[-1][0]
        if newest >= t:
            # Every later message is stamped after ``newest``, hence farther from t: final.
            return ('take', i) if i is not None else ('drop', None)
        if i is None:
            return 'wait', None  # all candidates so far are too early: one may still come
        error = t - q[i][0]  # every queued stamp is before t
        if error <= self.slop_ns // 5:
            return 'take', i  # as close as trigger jitter: not worth a camera period
        steps = self._steps[camera]
        if self.expect_period and len(steps) >= 2 and newest + min(steps) - t >= error:
            return 'take', i  # even the soonest next message would be farther away
        return 'wait', None

    def _match(self) -> list[SyncedSet]:
        out = []
        ref_q = self._queues[self.reference]
        while ref_q:
            t, _ = ref_q[0]
            picks, waiting, hopeless = {}, False, None
            for c in self.cameras:
                if c == self.reference:
                    continue
                verdict, i = self._decide(c, t)
                if verdict == 'drop':
                    hopeless = c
                    break
                if verdict == 'wait':
                    waiting = True
                else:
                    picks[c] = i
            if hopeless is not None:
                ref_q.popleft()
                self.dropped[f'missing:{hopeless}'] += 1
                continue
            if waiting:
                break
            out.append(self._emit(picks))
        return out

    def _emit(self, picks: dict) -> SyncedSet:
        t, ref_payload = self._queues[self.reference].popleft()
        stamps, payloads = [], []
        for c in self.cameras:
            if c == self.reference:
                stamps.append(t)
                payloads.append(ref_payload)
                continue
            q = self._queues[c]
            s, p = q[picks[c]]
            for _ in range(picks[c] + 1):
                q.popleft()  # consumed, and anything older can't match a later reference
            stamps.append(s)
            payloads.append(p)
        self.emitted += 1
        return SyncedSet(t, stamps, payloads)
