"""Budgets in milliseconds on a measured latency table: protocol, cache, peak/average solves, drift."""
from __future__ import annotations

import dataclasses
import json

import pytest

from deer_ros.budget.calibration import CalibrationData
from deer_ros.budget.caps import Budget, exit_cap, exit_costs
from deer_ros.budget.exit_criterion import first_exits
from deer_ros.budget.latency import LatencyCache, LatencyKey, LatencyTable, measure_latency
from deer_ros.budget.latency_budget import (
    check_latency_table,
    latency_cap,
    realised_average,
    solve_average_ms,
    tighter_average,
)
from deer_ros.budget.latency_drift import LatencyWatch, RealisedLatency
from deer_ros.budget.solver import BudgetError, solve_average_budget

KEY = LatencyKey(device='cpu: Test CPU (2 cpus)', checkpoint='ab' * 32, threads=1, torch_version='2.0.0')
# Six exits like the cost_table fixture: ~9 ms of cameras + head, ~1.5 ms per exit group.
P50 = (10.0, 11.5, 13.0, 14.5, 16.0, 17.5)
P99 = (12.0, 13.8, 15.6, 17.4, 19.2, 21.0)


def table_of(p50=P50, p99=P99, mean=None, key=KEY) -> LatencyTable:
    return LatencyTable(key=key, exit_layers=tuple(range(2, 2 * len(p50) + 1, 2)), mean_ms=mean or p50,
                        p50_ms=p50, p99_ms=p99, repetitions=20,
                        measured_at='2025-01-01T00:00:00+00:00')


@pytest.fixture
def calibration(make_values, cost_table) -> CalibrationData:
    return CalibrationData(make_values('converging', 3000, cost_table.num_exits, seed=5), 'rms',
                           cost_table.exit_layers)


# ---- measurement protocol and table
def test_rounds_visit_every_exit_alternating_and_drop_the_warm_up():
    calls: list[int] = []

    def step_at(exit_index: int) -> float:
        calls.append(exit_index)
        return 100.0 * len(calls)  # the call number: shows which calls were kept

    samples = measure_latency(step_at, 3, repetitions=2, warmup=1, rest=0.0)
    assert calls == [0, 1, 2, 2, 1, 0, 0, 1, 2]
    assert samples == [[600.0, 700.0], [500.0, 800.0], [400.0, 900.0]]


def test_table_summarises_samples_and_its_solver_costs_never_decrease():
    samples = [[10.0] * 19 + [30.0], [12.0] * 20, [11.0] * 20]  # exit 2 measured faster than exit 1: noise
    table = LatencyTable.from_samples(KEY, (1, 2, 3), samples)
    assert table.repetitions == 20 and table.num_exits == 3
    assert table.p50_ms == (10.0, 12.0, 11.0)
    assert table.mean_ms[0] == pytest.approx(11.0)
    assert 20.0 < table.p99_ms[0] < 30.0
    assert table.peak_costs().tolist() == [table.p99_ms[0]] * 3  # exit 0's slow tail bounds every deeper exit
    assert table.average_costs().tolist() == [11.0, 12.0, 12.0]
    with pytest.raises(ValueError, match='same number of samples'):
        LatencyTable.from_samples(KEY, (1, 2), [[1.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match='finite and > 0'):
        table_of(p50=(1.0, float('nan')), p99=(1.0, 2.0))


# ---- cache
def test_second_start_reuses_the_cached_table(tmp_path):
    cache = LatencyCache(tmp_path)
    measured_steps = 0

    def measure(key: LatencyKey = KEY) -> LatencyTable:
        def step_at(exit_index: int) -> float:
            nonlocal measured_steps
            measured_steps += 1
            return 10.0 + exit_index
        return LatencyTable.from_samples(key, (1, 2, 3), measure_latency(step_at, 3, repetitions=4))

    first, reused = cache.get_or_measure(KEY, measure)
    assert not reused and measured_steps == 3 * 6 and cache.path(KEY).is_file()
    stored = cache.path(KEY).read_text()
    second, reused = LatencyCache(tmp_path).get_or_measure(KEY, measure)  # a new process: a new cache object
    assert reused and second == first and measured_steps == 18
    assert cache.path(KEY).read_text() == stored
    again, reused = cache.get_or_measure(KEY, measure, refresh=True)
    assert not reused and measured_steps == 36


@pytest.mark.parametrize('field, value', [('device', 'cuda: Other GPU'), ('checkpoint', 'cd' * 32),
                                          ('threads', 2), ('torch_version', '2.1.0')])
def test_any_other_key_field_is_measured_again(tmp_path, field, value):
    cache = LatencyCache(tmp_path)
    cache.save(table_of())
    other = dataclasses.replace(KEY, **{field: value})
    assert cache.load(other) is None
    table, reused = cache.get_or_measure(other, lambda: table_of(key=other))
    assert not reused and table.key == other
    assert cache.load(KEY) == table_of()  # the other key's table is its own file


def test_unreadable_or_foreign_cache_file_is_measured_again(tmp_path):
    cache = LatencyCache(tmp_path)
    cache.path(KEY).write_text('{"format_version": 1, "key": ')
    assert cache.load(KEY) is None
    foreign = table_of(key=dataclasses.replace(KEY, threads=8)).to_dict()
    cache.path(KEY).write_text(json.dumps(foreign))  # a file whose content names another key
    assert cache.load(KEY) is None
    with pytest.raises(ValueError, match='asked for'):
        cache.get_or_measure(KEY, lambda: table_of(key=dataclasses.replace(KEY, threads=8)))


def test_json_round_trip(tmp_path):
    table = table_of()
    assert LatencyTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table
    with pytest.raises(ValueError, match='format'):
        LatencyTable.from_dict({**table.to_dict(), 'format_version': 99})


# ---- peak_ms
def test_peak_ms_picks_the_deepest_exit_whose_p99_fits():
    table = table_of()
    assert latency_cap(table, 17.4) == 3
    assert latency_cap(table, 17.39) == 2
    assert latency_cap(table, 33.0) == 5
    assert latency_cap(table, 12.0) == 0
    noisy = table_of(p99=(12.0, 16.0, 15.0, 17.0, 19.0, 21.0))  # exit 2's p99 below exit 1's: not trusted
    assert latency_cap(noisy, 15.5) == 0


def test_impossible_peak_ms_is_rejected_with_the_feasible_range():
    with pytest.raises(BudgetError, match=r'peak_ms limit 5 is below .* feasible peak_ms limits are >= 12; '
                                          r'from 21 every exit fits .*cpu: Test CPU \(2 cpus\), 1 thread'):
        latency_cap(table_of(), 5.0)
    for bad in (0.0, -1.0, float('inf'), float('nan'), True, '20'):
        with pytest.raises(BudgetError, match='peak_ms must be'):
            latency_cap(table_of(), bad)


def test_peak_ms_combines_with_gflops_and_memory_caps(cost_table):
    table = table_of()
    llm = exit_costs(cost_table)
    by_gflops = exit_cap(Budget(peak_gflops=float(llm[2])), cost_table)
    assert min(by_gflops, latency_cap(table, 33.0)) == 2  # GFLOPs binds
    assert min(exit_cap(Budget(peak_gflops=float(llm[4])), cost_table), latency_cap(table, 15.6)) == 2  # ms binds
    check_latency_table(table, cost_table.exit_layers)
    with pytest.raises(BudgetError, match='re-measure'):
        check_latency_table(table, cost_table.exit_layers[:-1])


# ---- avg_ms
def test_avg_ms_meets_the_average_on_the_calibration_values(calibration):
    table = table_of(mean=(9.5, 11.0, 12.6, 14.0, 15.9, 17.0))
    costs = table.average_costs()
    for avg_ms in (11.5, 13.0, 15.0, 16.5):
        result = solve_average_ms(calibration.values, table, avg_ms)
        exits = first_exits(calibration.values, result.thresholds)
        assert abs(costs[exits].mean() - avg_ms) <= 0.02 * avg_ms
        assert result.realised_cost == pytest.approx(costs[exits].mean())


def test_avg_ms_under_a_cap_and_its_feasible_range(calibration):
    table = table_of()
    result = solve_average_ms(calibration.values, table, 13.5, cap=3)
    assert result.thresholds.size == 4
    assert first_exits(calibration.values[:, :4], result.thresholds).max() <= 3
    with pytest.raises(BudgetError, match=r'avg_ms: average budget 9 is infeasible: the feasible range is '
                                          r'\[11.5, 17.5\] .*measured mean step ms'):
        solve_average_ms(calibration.values, table, 9.0)
    with pytest.raises(BudgetError, match=r'\[11.5, 14.5\] .*capped at exit 4'):
        solve_average_ms(calibration.values, table, 16.0, cap=3)


def test_two_averages_the_tighter_solve_meets_both(calibration, cost_table):
    table = table_of()
    gflops = exit_costs(cost_table)
    by_gflops = solve_average_budget(calibration.values, gflops, float(gflops[2]))
    by_ms = solve_average_ms(calibration.values, table, 12.5)
    chosen = tighter_average([by_gflops, by_ms])
    assert chosen is (by_ms if by_ms.q < by_gflops.q else by_gflops)
    assert realised_average(chosen, gflops) <= 1.02 * gflops[2]
    assert realised_average(chosen, table.average_costs()) <= 1.02 * 12.5
    assert realised_average(by_ms, table.average_costs()) == pytest.approx(by_ms.realised_cost)


# ---- drift
def test_drift_when_the_median_of_a_full_window_is_slower():
    watch = LatencyWatch(table_of(), window=50, factor=1.5)
    for _ in range(49):
        assert watch.record(2, 1.6 * P50[2]) is None  # window not full yet
    drift = watch.record(2, 1.6 * P50[2])
    assert drift is not None and drift.direction == 'slower' and drift.ratio == pytest.approx(1.6)
    assert '1.60x' in str(drift) and '50 steps' in str(drift)
    assert all(watch.record(2, 1.6 * P50[2]) is None for _ in range(49))  # one report per window
    assert watch.record(2, 1.6 * P50[2]) is not None


def test_no_drift_at_the_table_speed_or_with_rare_slow_steps():
    watch = LatencyWatch(table_of(), window=50)
    for step in range(500):
        exit_index = step % 6  # steps at every exit pool into one ratio
        slow = step % 10 == 0  # 10 % of the steps 3x slower: the tail, not a drift
        assert watch.record(exit_index, P50[exit_index] * (3.0 if slow else 1.05)) is None


def test_drift_pools_exits_and_reports_faster():
    watch = LatencyWatch(table_of(), window=4, factor=1.5)
    assert [watch.record(k, 0.5 * P50[k]) for k in (0, 5, 2)] == [None] * 3
    drift = watch.record(4, 0.5 * P50[4])
    assert drift is not None and drift.direction == 'faster' and drift.ratio == pytest.approx(0.5)
    watch.reset(table_of(p50=tuple(0.5 * value for value in P50)))  # re-measured
    assert [watch.record(k, 0.5 * P50[k]) for k in range(4)] == [None] * 4  # at the new table's speed
    with pytest.raises(ValueError, match='not in the latency table'):
        watch.record(-1, 1.0)


def test_realised_figures_and_whether_the_budget_holds():
    watch = LatencyWatch(table_of(), window=10)
    assert watch.realised() is None
    for milliseconds in [10.0] * 15 + [20.0]:
        watch.record(0, milliseconds)
    realised = watch.realised()
    assert realised == RealisedLatency(steps=16, mean_ms=pytest.approx(170.0 / 16), p99_ms=pytest.approx(19.1),
                                       max_ms=20.0, last_ms=20.0)
    assert realised.meets(peak_ms=20.0, avg_ms=10.5)
    assert not realised.meets(peak_ms=19.0)
    assert not realised.meets(avg_ms=10.0)
    assert realised.meets()
