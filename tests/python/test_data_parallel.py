#!/usr/bin/python3
"""The data-parallel protocol through the binding (efl.h "data parallel"): compute(),
read_statistics(), a sum over the ranks, apply_statistics().

The ranks are simulated in one process: one loss per rank, each stepping its own rows, with the
statistics summed by numpy as an all-reduce would (torch.distributed.all_reduce in a real run).
- after every step every rank's state is bitwise the same;
- after several steps it equals, within 1e-12 relative, one loss that saw all the rows in one
  batch. That needs both sides to make the same float partial sums per row block, so the rows
  per block are fixed (EFL_TUNE, set before the library reads it) and each rank gets whole
  blocks; only the float64 order of the sums differs;
- compute() gives each rank the same loss and gradient as step() would on its rows;
- a rank whose batch is refused raises, flags the refusal in its statistics, and every rank
  skips the update (ERROR_REFUSED_BY_PEER on the others); collect() does the same for gradients
  of the caller's own.
Exit: 0 all passed, 1 a test failed, 77 skipped (no OpenCL device).
"""
import os
import sys

os.environ["EFL_TUNE"] = "rows=64"  # read at each loss's creation

import numpy as np  # noqa: E402

import efl  # noqa: E402
from _common import run_tests  # noqa: E402  (this folder is on sys.path: the script's own)

C, ROWS, RANKS, STEPS = 23, 128, 3, 4  # 128 rows per rank: two blocks of 64


def batch(step):
    rng = np.random.default_rng(100 + step)
    x = rng.normal(-3.0, 2.5, size=(ROWS * RANKS, C)).astype(np.float32)
    y = np.where(rng.random(ROWS * RANKS) < 0.2, rng.integers(1, C + 1, ROWS * RANKS), 0).astype(np.int32)
    return x, y


def shard(a, r):
    return a[r * ROWS:(r + 1) * ROWS]


def states(losses):
    return [np.concatenate([l.pos_grad, l.neg_grad, l.pos_neg]) for l in losses]


def test_ranks_agree_and_match_one_process():
    ranks = [efl.EqualizedFocalLoss(C) for _ in range(RANKS)]
    one = efl.EqualizedFocalLoss(C)
    alone = efl.EqualizedFocalLoss(C)
    for step in range(STEPS):
        x, y = batch(step)
        stats = []
        for r, loss in enumerate(ranks):
            alone.load_state(*np.split(states([loss])[0], 3))
            want_l, want_g = alone.step(shard(x, r), shard(y, r), normalizer=9.0)
            got_l, got_g = loss.compute(shard(x, r), shard(y, r), normalizer=9.0)
            assert got_l == want_l and np.array_equal(got_g, want_g), "compute() differs from step()"
            stats.append(loss.read_statistics())
        total = np.sum(stats, axis=0)
        assert total[-1] == 0.0
        for loss in ranks:
            loss.apply_statistics(total)
        one.step(x, y, normalizer=9.0)
        s = states(ranks)
        for r in range(1, RANKS):
            assert np.array_equal(s[r], s[0]), "step %d: rank %d's state differs from rank 0's" % (step, r)
    ref = states([one])[0]
    rel = np.max(np.abs(s[0] - ref) / np.maximum(np.abs(ref), 1e-300))
    assert rel <= 1e-12, "ranks vs one process: %.3g relative" % rel


def test_a_refused_rank_stops_every_rank():
    ranks = [efl.EqualizedFocalLoss(C) for _ in range(RANKS)]
    x, y = batch(0)
    y = y.copy()
    y[ROWS + 5] = C + 4  # rank 1's rows: a label outside the convention
    stats = []
    for r, loss in enumerate(ranks):
        try:
            loss.compute(shard(x, r), shard(y, r))
            assert r != 1, "the invalid label was not refused"
        except efl.EflError as exc:
            assert r == 1 and exc.status == efl.Status.ERROR_INVALID_LABEL, exc
        stats.append(loss.read_statistics())
    assert [s[-1] for s in stats] == [0.0, 1.0, 0.0]
    before = states(ranks)
    total = np.sum(stats, axis=0)
    for r, loss in enumerate(ranks):
        try:
            loss.apply_statistics(total)
            raise AssertionError("rank %d applied a refused step" % r)
        except efl.EflError as exc:
            want = efl.Status.ERROR_INVALID_LABEL if r == 1 else efl.Status.ERROR_REFUSED_BY_PEER
            assert exc.status == want, exc
    after = states(ranks)
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), "a refused step changed a state"
    assert all(loss.skipped_steps == 1 for loss in ranks)


def test_collect_matches_accumulate():
    ranks = [efl.EqualizedFocalLoss(C) for _ in range(RANKS)]
    one = efl.EqualizedFocalLoss(C)
    rng = np.random.default_rng(7)
    g = (rng.normal(size=(ROWS * RANKS, C)) * 1e-3).astype(np.float32)
    _, y = batch(1)
    stats = []
    for r, loss in enumerate(ranks):
        loss.collect(shard(g, r), shard(y, r), grad_scale=4.0)
        stats.append(loss.read_statistics())
    total = np.sum(stats, axis=0)
    for loss in ranks:
        loss.apply_statistics(total)
    one.accumulate(g, y, grad_scale=4.0)
    s, ref = states(ranks)[0], states([one])[0]
    assert np.max(np.abs(s - ref) / np.maximum(np.abs(ref), 1e-300)) <= 1e-12


def test_bad_statistics_are_refused():
    loss = efl.EqualizedFocalLoss(C)
    before = states([loss])[0]
    for bad in (np.full(2 * C + 1, -1.0), np.full(2 * C + 1, np.nan)):
        try:
            loss.apply_statistics(bad)
            raise AssertionError("bad statistics applied")
        except efl.EflError as exc:
            assert exc.status == efl.Status.ERROR_INVALID_STATE, exc
    assert np.array_equal(states([loss])[0], before)


if __name__ == "__main__":
    sys.exit(run_tests([test_ranks_agree_and_match_one_process, test_a_refused_rank_stops_every_rank,
                        test_collect_matches_accumulate, test_bad_statistics_are_refused], sys.argv))
