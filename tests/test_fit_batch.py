"""The fit's fast paths give bit for bit what the plain ones give: batched probe evaluation, the batched
finite-difference map, vectorized row reduction, closed loops without percentile tables, and the
plugins' answers shared between validation rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantplan.solver import fit, serving, validate
from quantplan.solver.probes import Reduction, reduce


@pytest.fixture(scope="module")
def setup():
    return fit.problem()


def _somewhere(setup, seed: int) -> np.ndarray:
    """Trial values drawn inside every parameter's range."""
    low = np.array([p.low for p in setup.parameters])
    high = np.array([p.high for p in setup.parameters])
    return low + (high - low) * np.random.default_rng(seed).uniform(size=len(low))


def test_a_selection_of_probes_evaluates_as_in_the_whole_batch(setup):
    """Shuffled, repeated and partial selections give each probe the value the full pass gives it."""
    values = _somewhere(setup, 1)
    whole = setup.prepared.batch.evaluate(setup.adjustment(values))
    assert np.isfinite(whole).sum() > 0.9 * len(whole)
    select = np.random.default_rng(2).integers(0, len(whole), size=3 * len(whole))
    part = setup.prepared.batch.evaluate(setup.adjustment(values[:, None].repeat(len(select), 1), select), select)
    assert np.array_equal(part, whole[select], equal_nan=True)


def test_probes_alike_share_one_load_model_run_and_read_the_same_figures(setup):
    """Probes that differ only in the metric they read (a TTFT, a TPOT and a throughput row of one
    run) share a run: at the catalog values and at trial values, each reads what a run of its own gives."""
    batch = setup.prepared.batch
    assert len(set(batch.twin_of)) < 0.8 * len(batch.probes)  # ~1,350 runs for ~2,100 probes
    own = np.arange(len(batch.probes))
    assert np.array_equal(batch.evaluate(), batch.evaluate(batch.neutral(), alike=own), equal_nan=True)
    values = _somewhere(setup, 4)
    adjust = setup.adjustment(values)
    assert len(set(setup.labels())) < 0.8 * len(batch.probes)
    assert np.array_equal(batch.evaluate(adjust, alike=setup.labels()), batch.evaluate(adjust, alike=own),
                          equal_nan=True)


def test_the_finite_difference_map_gives_what_full_evaluations_give(setup):
    """One Jacobian's points (each parameter moved alone, as scipy's 2-point scheme moves them), a point
    moving two parameters and one moving all: the batched map's residuals are the full evaluation's."""
    used = list(range(len(setup.parameters)))
    x0 = np.array([p.initial for p in setup.parameters])
    ranges = np.array([p.high - p.low for p in setup.parameters])
    trials = fit.Trials(setup, used, x0, ranges)
    base = _somewhere(setup, 3)
    trials.residuals(base)
    points = []
    for i in used:
        point = base.copy()
        point[i] *= 1 + 1e-4
        points.append(point)
    points += [base.copy(), base * (1 + 1e-3), np.where(np.arange(len(base)) < 2, base * 0.99, base)]
    batched = trials.map(None, points)
    plain = [fit.Trials(setup, used, x0, ranges).residuals(point) for point in points]
    for one, other in zip(batched, plain):
        assert np.array_equal(one, other)


def test_the_touched_rows_cover_every_nonzero_of_the_dense_jacobian(setup):
    """The dense forward-difference Jacobian on the shipped rows (full evaluations) moves a row only
    where one of that parameter's probes belongs to it: the pattern the batched map relies on."""
    values = setup.start.copy()
    base = setup.predictions(values)
    row_of = setup.row_of_probe()
    for index, (mask, _, _) in enumerate(setup.effects):
        moved = values.copy()
        parameter = setup.parameters[index]  # 1% more, or 1% of its range from a value of 0
        moved[index] = values[index] * 1.01 or 0.01 * (parameter.high - parameter.low)
        after = setup.predictions(moved)
        changed = np.nonzero(~((after == base) | (np.isnan(after) & np.isnan(base))))[0]
        assert set(changed) <= set(row_of[mask]), setup.parameters[index].name
        assert len(changed) > 0 or not mask.any()


def test_batched_and_plain_fits_take_the_same_path():
    """llama.cpp's rows (7 parameters): scipy's least_squares with the batched map and with plain
    finite differences ends at the same values, after the same evaluations."""
    rows = [r for r in validate.load_rows(held_out=False) if r.framework == "llama.cpp"]
    setup = fit.problem(rows=rows)
    used = [i for i, (mask, _, _) in enumerate(setup.effects) if mask.any()]
    chosen = [setup.parameters[i] for i in used]
    batched = fit.solve(setup, chosen, used)
    plain = fit.solve(setup, chosen, used, batched=False)
    assert len(used) >= 4 and batched.nfev > 3
    assert np.array_equal(batched.x, plain.x)
    assert (batched.nfev, batched.njev) == (plain.nfev, plain.njev)


def test_reduction_by_hand():
    """Row 0 takes its probe; row 1 the best finite of three (inf and nan skipped); row 2 a ratio 6 / 3;
    row 3 has no probes; row 4's ratio has a zero denominator; row 5 has no finite value."""
    values = np.array([2.0, np.inf, 5.0, np.nan, 6.0, 3.0, 1.0, 0.0, np.inf])
    members = [[0], [1, 2, 3], [4, 5], [], [6, 7], [8, 3]]
    rules = ["one", "max", "ratio", "one", "ratio", "max"]
    found = Reduction(members, rules)(values)
    assert found[:3].tolist() == [2.0, 5.0, 2.0]
    assert all(math.isnan(v) for v in found[3:])
    assert np.array_equal(reduce(values, members, rules), found, equal_nan=True)


def test_closed_loop_without_percentiles_gives_the_same_means():
    world = validate.validation_world()
    row = validate.Row(id="t", model="llama-3.1-8b", gpu="h100-sxm", gpus=1, framework="vllm", method="fp8",
                       kv_cache_dtype="fp16", batch=32, prompt_tokens=1000, output_tokens=200, metric="ttft_ms",
                       value=100.0, unit="ms", mode="concurrency", source="test")
    (probe,), _ = validate.speed_probes(world, row)
    times = serving.Timing(probe.steps, probe.scheduling)
    full = serving.closed_loop(times, 1000, 200, np.array([1.0, 8.0, 32.0, 256.0]))
    means = serving.closed_loop(times, 1000, 200, np.array([1.0, 8.0, 32.0, 256.0]), percentiles=False)
    for name in ("ttft", "tpot", "throughput", "decoding"):
        assert np.array_equal(getattr(full, name), getattr(means, name))
    assert full.ttft_percentiles and not means.ttft_percentiles


def test_sharing_the_plugins_answers_between_rows_changes_no_probe():
    """Every shipped row's probes are the same whether the plugins are asked once per configuration and
    lengths or once per row: neither the step model nor the scheduler depends on the batch or the load."""
    world = validate.validation_world()
    rows = validate.load_rows()
    kept = validate.Shared(world)
    shared = validate.prepare(world, rows, kept)
    fresh = validate.prepare(world, rows, validate.Shared(world, share=False))
    assert shared.members == fresh.members and shared.rules == fresh.rules and shared.fixed == fresh.fixed
    assert len(kept.timings) < len(shared.batch.probes) / 4  # ~300 step models for ~2,100 probes
    for one, other in zip(shared.batch.probes, fresh.batch.probes):
        assert one == other
