"""FrameSynchronizer and OdometryHistory (rsd_drive/data/sync.py), without ROS."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rsd_drive.data.convert import EgoState
from rsd_drive.data.sync import FrameSynchronizer, OdometryHistory, SyncError

MS = 1_000_000
CAMS = ['front', 'left', 'right']


def feed(sync, events):
    """events: (camera, stamp_ns) in arrival order; payload = (camera, stamp). Returns sets."""
    out = []
    for cam, t in events:
        out += sync.add(cam, t, (cam, t))
    return out + sync.flush()


def frames(n, period=100 * MS, offsets=None):
    offsets = offsets or {}
    ev = []
    for k in range(n):
        for c in CAMS:
            ev.append((c, k * period + offsets.get(c, 0)))
    return ev


def test_exact_stamps_give_one_set_per_reference_in_order():
    sync = FrameSynchronizer(CAMS, 'front')
    sets = feed(sync, frames(5))
    assert [s.stamp_ns for s in sets] == [k * 100 * MS for k in range(5)]
    for s in sets:
        assert s.stamps_ns == [s.stamp_ns] * 3
        assert [p[0] for p in s.payloads] == CAMS  # camera order, not arrival order
    assert sync.dropped == {}
    assert sync.emitted == 5


def test_within_slop_matches_and_beyond_slop_is_counted_missing():
    sync = FrameSynchronizer(CAMS, 'front', slop_ns=50 * MS)
    sets = feed(sync, frames(4, offsets={'left': 30 * MS, 'right': -20 * MS}))
    assert len(sets) == 4 and all(s.stamps_ns[1] - s.stamp_ns == 30 * MS for s in sets)
    sync = FrameSynchronizer(CAMS, 'front', slop_ns=50 * MS)
    sets = feed(sync, frames(4, period=200 * MS, offsets={'left': 70 * MS}))
    assert sets == []
    assert sync.dropped['missing:left'] == 4


def test_a_missing_image_drops_that_frame_only():
    sync = FrameSynchronizer(CAMS, 'front')
    events = [e for e in frames(6) if e != ('right', 200 * MS)]
    sets = feed(sync, events)
    assert [s.stamp_ns // (100 * MS) for s in sets] == [0, 1, 3, 4, 5]
    assert sync.dropped == {'missing:right': 1}


def test_a_dead_camera_is_counted_as_missing_not_as_overflow():
    sync = FrameSynchronizer(CAMS, 'front', queue_size=4)
    events = [e for e in frames(10) if e[0] != 'left']
    sets = feed(sync, events)
    assert sets == []
    assert sync.dropped['missing:left'] == 10
    assert 'queue_overflow' not in sync.dropped


def test_nearest_candidate_wins():
    sync = FrameSynchronizer(['a', 'b'], 'a', slop_ns=50 * MS)
    out = feed(sync, [('b', 60 * MS), ('b', 95 * MS), ('b', 130 * MS), ('a', 100 * MS)])
    assert len(out) == 1 and out[0].stamps_ns == [100 * MS, 95 * MS]


def test_out_of_order_messages_are_dropped_even_after_their_successors_were_used():
    sync = FrameSynchronizer(['a', 'b'], 'a')
    out = feed(sync, [('a', 100 * MS), ('b', 100 * MS), ('a', 200 * MS), ('b', 200 * MS),
                      # arrives late, after the 200 ms set consumed both queues
                      ('a', 150 * MS), ('b', 150 * MS), ('a', 300 * MS), ('b', 300 * MS)])
    assert [s.stamp_ns for s in out] == [100 * MS, 200 * MS, 300 * MS]
    assert sync.dropped == {'out_of_order:a': 1, 'out_of_order:b': 1}


def test_unknown_camera_and_bad_reference():
    sync = FrameSynchronizer(CAMS, 'front')
    assert sync.add('rear', 0, None) == []
    assert sync.dropped == {'unknown_camera:rear': 1}
    with pytest.raises(ValueError, match='reference'):
        FrameSynchronizer(CAMS, 'rear')


def test_flush_emits_complete_sets_and_counts_incomplete_ones():
    sync = FrameSynchronizer(CAMS, 'front', slop_ns=50 * MS)
    # left at -30 ms (earlier than the reference, no period known yet) could still be beaten by
    # a closer message: the set waits for more input.
    assert sync.add('front', 0, None) == [] and sync.add('left', -30 * MS, None) == []
    assert sync.add('right', 5 * MS, None) == [] and sync.add('front', 100 * MS, None) == []
    out = sync.flush()
    assert [s.stamp_ns for s in out] == [0]
    assert sync.dropped == {'missing:left': 1}  # the 100 ms reference has no partners


def test_a_candidate_later_than_the_reference_is_final_at_once():
    """Stamps are monotonic per camera: a message at or after the reference stamp proves that no
    closer one can come, so the set is emitted by that message, not one camera period later."""
    sync = FrameSynchronizer(CAMS, 'front', slop_ns=50 * MS)
    assert sync.add('front', 0, None) == [] and sync.add('right', 5 * MS, None) == []
    out = sync.add('left', 30 * MS, None)  # beyond the early-accept window (10 ms), but final
    assert [s.stamps_ns for s in out] == [[0, 30 * MS, 5 * MS]]
    # Only candidates after the window: the reference is hopeless as soon as one is seen.
    sync = FrameSynchronizer(['a', 'b'], 'a', slop_ns=50 * MS)
    assert sync.add('a', 0, None) == [] and sync.add('b', 60 * MS, None) == []
    assert sync.dropped == {'missing:b': 1}


def test_the_camera_period_makes_an_earlier_candidate_final():
    sync = FrameSynchronizer(['a', 'b'], 'a', slop_ns=50 * MS)
    for k in range(3):  # b runs 30 ms ahead of a at 10 Hz
        sync.add('b', k * 100 * MS - 30 * MS, None)
        out = sync.add('a', k * 100 * MS, None)
        # Once b's period is known (two steps), its next message (at +70 ms) can't be closer.
        assert len(out) == (1 if k >= 2 else 0)
    without = FrameSynchronizer(['a', 'b'], 'a', slop_ns=50 * MS, expect_period=False)
    for k in range(3):
        without.add('b', k * 100 * MS - 30 * MS, None)
        assert without.add('a', k * 100 * MS, None) == []  # waits for the next b message
    assert without.emitted == 2


def _arrivals(data, cams, max_frames=12):
    """Free-running monotonic streams per camera, merged in a random arrival order."""
    streams = {}
    for c in cams:
        steps = data.draw(st.lists(st.integers(1, 150), min_size=1, max_size=max_frames))
        start = data.draw(st.integers(0, 100))
        streams[c] = list(np.cumsum([start] + steps[:-1]) * MS)
    pos = {c: 0 for c in cams}
    events = []
    while any(pos[c] < len(streams[c]) for c in cams):
        c = data.draw(st.sampled_from([c for c in cams if pos[c] < len(streams[c])]))
        events.append((c, int(streams[c][pos[c]])))
        pos[c] += 1
    return events


@settings(max_examples=150, deadline=None)
@given(st.data(), st.integers(5, 80), st.booleans())
def test_liveness_a_set_is_decided_by_the_message_that_proves_it(data, slop_ms, period):
    """Liveness, not just safety: a reference is emitted (or given up) no later than the first
    message after which its set is provably final, i.e. every other camera has a message stamped
    at or after the reference that no earlier set used (messages are used once, and a set uses
    up everything older than its pick)."""
    events = _arrivals(data, CAMS)
    sync = FrameSynchronizer(CAMS, 'front', slop_ns=slop_ms * MS, queue_size=100,
                             expect_period=period)
    latest = {c: None for c in CAMS}
    used_upto = {c: -1 for c in CAMS}
    arrived = []
    for cam, t in events:
        for s in sync.add(cam, t, (cam, t)):
            for c, stamp in zip(CAMS, s.stamps_ns):
                used_upto[c] = max(used_upto[c], stamp)
        latest[cam] = t
        if cam == 'front':
            arrived.append(t)
        pending = {s for s, _ in sync._queues['front']}
        for ref in arrived:
            proven = all(latest[c] is not None and latest[c] >= ref and latest[c] > used_upto[c]
                         for c in CAMS)
            if proven:
                assert ref not in pending, f'reference {ref} still pending after its proof'


def test_free_running_cameras_emit_on_the_last_message_of_each_set():
    """Cameras at 10 Hz with fixed phase offsets and stamp-order arrival: with the period known,
    every set is emitted by its own last message (no camera period of waiting)."""
    rng = np.random.default_rng(0)
    offsets = {'front': 0, 'left': int(rng.integers(-45, 45)) * MS,
               'right': int(rng.integers(-45, 45)) * MS}
    events = sorted(((c, k * 100 * MS + offsets[c]) for k in range(30) for c in CAMS),
                    key=lambda e: e[1])
    sync = FrameSynchronizer(CAMS, 'front', slop_ns=50 * MS)
    late = []
    for cam, t in events:
        for s in sync.add(cam, t, (cam, t)):
            late.append(t - max(s.stamps_ns))  # emission (this arrival) - last message of set
    assert len(late) >= 27 and max(late[2:]) == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(CAMS), st.integers(0, 2000)), max_size=80),
       st.integers(1, 80))
def test_emitted_sets_always_respect_slop_order_and_single_use(events, slop_ms):
    sync = FrameSynchronizer(CAMS, 'front', slop_ns=slop_ms * MS, queue_size=5)
    sets = feed(sync, [(c, t * MS) for c, t in events])
    refs = [s.stamp_ns for s in sets]
    assert refs == sorted(set(refs))
    used = set()
    for s in sets:
        for cam, t, payload in zip(CAMS, s.stamps_ns, s.payloads):
            assert abs(t - s.stamp_ns) <= slop_ms * MS
            assert payload == (cam, t) and payload not in used
            used.add(payload)


# -- odometry ------------------------------------------------------------------------------------
def history(states, **kw):
    h = OdometryHistory(**kw)
    for s in states:
        h.add(s)
    return h


def test_interpolation_and_exact_stamps():
    h = history([EgoState(0, 0.0, 0.0, 0.0, 2.0), EgoState(100 * MS, 1.0, 2.0, 0.2, 4.0)])
    mid = h.at(25 * MS)
    assert (mid.x, mid.y, mid.speed) == pytest.approx((0.25, 0.5, 2.5))
    assert mid.yaw == pytest.approx(0.05)
    assert h.at(100 * MS).x == 1.0


def test_yaw_interpolates_across_the_wrap():
    h = history([EgoState(0, 0, 0, math.pi - 0.1, 1), EgoState(100 * MS, 0, 0, -math.pi + 0.1, 1)])
    yaw = h.at(50 * MS).yaw
    assert abs(abs(yaw) - math.pi) < 1e-9  # through pi, not through 0
    assert h.at(25 * MS).yaw == pytest.approx(math.pi - 0.05)


def test_gaps_and_ranges_raise_with_reasons():
    h = history([EgoState(0, 0, 0, 0, 1), EgoState(500 * MS, 1, 0, 0, 1)], max_gap_ns=200 * MS)
    with pytest.raises(SyncError) as e:
        h.at(250 * MS)
    assert e.value.reason == 'odom_gap'
    with pytest.raises(SyncError) as e:
        h.at(-1)
    assert e.value.reason == 'odom_before_start'
    with pytest.raises(SyncError) as e:
        h.at(501 * MS)
    assert e.value.reason == 'odom_after_end'
    with pytest.raises(SyncError) as e:
        OdometryHistory().at(0)
    assert e.value.reason == 'no_odometry'


def test_out_of_order_adds_are_sorted_duplicates_ignored_and_horizon_trims():
    h = OdometryHistory(horizon_ns=300 * MS)
    for t in (200, 0, 100, 100, 400, 300):
        h.add(EgoState(t * MS, float(t), 0, 0, 1))
    assert len(h) == 4  # 0 is older than 400 - 300: trimmed; duplicate 100 ignored
    assert h.at(150 * MS).x == pytest.approx(150.0)
    assert h.latest.stamp_ns == 400 * MS


def test_past_and_future_are_in_base_link_at_t0():
    # Ego heading +y (yaw 90 deg) at 2 m/s: forward in base_link is +y in odom.
    states = [EgoState(k * 50 * MS, 5.0, 1.0 + 0.1 * k, math.pi / 2, 2.0) for k in range(400)]
    h = history(states)
    t0 = 200 * 50 * MS
    past = h.past_states(t0, steps=16, frequency_hz=4.0)
    assert past.shape == (16, 4)
    np.testing.assert_allclose(past[-1], [0, 0, 0, 2.0], atol=1e-6)
    np.testing.assert_allclose(past[0, :2], [-2.0 * 15 / 4, 0.0], atol=1e-5)
    fut = h.future_waypoints(t0, steps=20, frequency_hz=4.0)
    np.testing.assert_allclose(fut[:, 0], 2.0 * np.arange(1, 21) / 4, atol=1e-5)
    np.testing.assert_allclose(fut[:, 1], 0.0, atol=1e-5)
    with pytest.raises(SyncError):
        h.future_waypoints(states[-10].stamp_ns)
