"""The table's statistics against answers known in advance."""

import math

import pandas as pd
import pytest
from scipy import stats

from vitsweep.errors import ConfigError
from vitsweep.report import comparison_table, pick_baseline, row_from_run, to_markdown
from vitsweep.settings import ReportSettings
from vitsweep.stats import compare, mean_interval


def test_the_interval_is_students_t_over_seeds():
    interval = mean_interval([70.0, 72.0, 74.0])
    assert (interval.mean, interval.std, interval.n) == (72.0, 2.0, 3)
    half = 4.302652729911275 * 2.0 / math.sqrt(3)  # t(0.975, 2 dof) * s / sqrt(n)
    assert interval.low == pytest.approx(72.0 - half) and interval.high == pytest.approx(72 + half)


def test_one_seed_has_no_interval():
    interval = mean_interval([70.0])
    assert interval.mean == 70.0 and interval.n == 1
    assert math.isnan(interval.std) and math.isnan(interval.low) and math.isnan(interval.high)


def test_identical_rows_differ_by_nothing_and_are_not_significant():
    same = {0: 70.0, 1: 71.5, 2: 69.0}
    difference = compare(same, dict(same))
    assert difference.test == "paired" and difference.diff == 0.0
    assert difference.low == difference.high == 0.0
    assert math.isnan(difference.p)  # no spread: no test, and nothing marked significant


def test_a_clear_shift_on_the_same_seeds_is_significant_and_paired():
    baseline = {0: 70.0, 1: 75.0, 2: 65.0, 3: 72.0}
    shifted = {s: v + 3.0 + 0.1 * s for s, v in baseline.items()}  # +3.0 .. +3.3, every seed
    difference = compare(baseline, shifted)
    expected = stats.ttest_rel(list(shifted.values()), list(baseline.values()))
    assert difference.test == "paired"
    assert difference.diff == pytest.approx(3.15)
    assert difference.p == pytest.approx(expected.pvalue) and difference.p < 0.001
    assert difference.low < 3.15 < difference.high and difference.low > 0


def test_pairing_is_what_makes_a_small_shift_visible():
    """Seeds differ a lot from each other, the rows by about +1 on every seed: paired, the
    shift is clear; the same numbers without shared seeds are not."""
    baseline = {0: 60.0, 1: 70.0, 2: 80.0, 3: 65.0}
    shifted = {s: v + 1.0 + 0.05 * (s % 2) for s, v in baseline.items()}
    paired = compare(baseline, shifted)
    unpaired = compare(baseline, {s + 10: v for s, v in shifted.items()})
    assert paired.test == "paired" and paired.p < 0.001
    assert unpaired.test == "Welch" and unpaired.p > 0.5


def test_rows_on_other_seeds_are_compared_with_welchs_test():
    baseline = {0: 70.0, 1: 71.0, 2: 72.0}
    other = {3: 75.0, 4: 79.0, 5: 77.0, 6: 76.0}
    difference = compare(baseline, other)
    expected = stats.ttest_ind(list(other.values()), list(baseline.values()), equal_var=False)
    assert difference.test == "Welch"
    assert difference.p == pytest.approx(expected.pvalue)
    assert difference.diff == pytest.approx(76.75 - 71.0)


def test_a_single_seed_compares_means_and_says_n_1():
    difference = compare({0: 70.0}, {0: 75.0, 1: 76.0})
    assert difference.test == "n=1" and difference.diff == pytest.approx(5.5)
    assert math.isnan(difference.p) and math.isnan(difference.low)


def _runs(rows):
    """Records of (attention, seed, best accuracy)."""
    records = []
    for i, (attention, seed, acc) in enumerate(rows):
        config = {"seed": seed, "choices": {"attention": attention}, "model": {}}
        summary = {"status": "completed", "best_test_acc": acc, "train_s_per_epoch": 1.0}
        overrides = [f"attention={attention}", f"seed={seed}"]
        records.append(row_from_run(config, summary, overrides, run_id=str(i)))
    return pd.DataFrame(records)


def test_the_table_compares_every_row_with_the_baseline():
    noise = [0.0, 0.001, -0.001]  # a little seed-to-seed spread in every difference
    runs = _runs(
        [("softmax", s, 0.70 + 0.01 * s) for s in range(3)]
        + [("linear", s, 0.60 + 0.01 * s + noise[s]) for s in range(3)]
        + [("performer", s, 0.70 + 0.01 * s + noise[s]) for s in range(3)]
    )
    table = comparison_table(runs).set_index("label")
    assert list(table["baseline"]) == [True, False, False]
    linear, performer = table.loc["attention=linear"], table.loc["attention=performer"]
    assert linear["diff_best_top1"] == pytest.approx(-10.0) and linear["significant"]
    assert linear["test"] == "paired"
    assert performer["diff_best_top1"] == pytest.approx(0.0) and not performer["significant"]
    assert table.loc["attention=softmax", "n"] == 3
    markdown = to_markdown(table.reset_index(), ["attention"], headline=True)
    assert "baseline" in markdown and "-10.00 [" in markdown
    assert "<0.001 (paired) *" in markdown  # a p-value is never printed as 0


def test_the_baseline_can_be_any_row():
    runs = _runs(
        [("softmax", 0, 0.7), ("linear", 0, 0.6), ("softmax", 1, 0.72), ("linear", 1, 0.61)]
    )
    for spec in (2, "linear", "attention=linear"):
        table = comparison_table(runs, ReportSettings(baseline=spec))
        assert list(table["baseline"]) == [False, True], spec
    with pytest.raises(ConfigError, match="matches no row"):
        pick_baseline(["attention=softmax", "attention=linear"], "performer")
    with pytest.raises(ConfigError, match="there are 2 rows"):
        pick_baseline(["attention=softmax", "attention=linear"], 3)


@pytest.mark.parametrize(("spec", "why"), [("performer", "matches no row"), (3, "there are 2")])
def test_a_baseline_that_names_no_row_at_the_end_is_the_first_row_and_the_table_says_why(spec, why):
    runs = _runs([("softmax", 0, 0.7), ("linear", 0, 0.6)])
    table = comparison_table(runs, ReportSettings(baseline=spec))
    assert list(table["baseline"]) == [True, False]
    assert any(
        why in note and "compared with the first row instead" in note
        for note in table.attrs["notes"]
    )


def test_a_table_of_single_runs_says_n_1():
    runs = _runs([("softmax", 0, 0.7), ("linear", 0, 0.6)])
    markdown = to_markdown(comparison_table(runs), ["attention"], headline=True)
    assert markdown.count("n=1") == 3  # both intervals, and the linear row's p
