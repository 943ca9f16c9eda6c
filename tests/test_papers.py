"""Tables for papers: p-values corrected for the rows compared, what a non-significant row
could not have shown, comparison.tex compiled, and sweeps compared without training."""

import json
import math
import shutil

import pandas as pd
import pytest
from scipy import stats

from tests.helpers import write_job
from vitsweep.errors import ConfigError
from vitsweep.report import comparison_table, row_from_run, to_markdown
from vitsweep.report.latex import compile_table
from vitsweep.settings import ReportSettings
from vitsweep.stats import adjust, compare

# Four rows against a baseline on seeds 0-2: raw p-values that a correction must move.
ROWS = {
    "softmax": [70.0, 72.0, 71.0],
    "linear": [71.9, 74.3, 72.6],  # a clear gain, every seed
    "performer": [70.4, 72.9, 71.1],  # a small, noisy one
    "nystrom": [71.0, 73.3, 72.2],
    "linformer": [69.2, 71.5, 69.9],  # a small loss, raw p < 0.05 but not after Holm
}


def _runs(rows=ROWS, seeds=(0, 1, 2)) -> pd.DataFrame:
    records = []
    for attention, values in rows.items():
        for seed, value in zip(seeds, values):
            config = {"seed": seed, "choices": {"attention": attention}, "data": {"name": "digits"}}
            summary = {"status": "completed", "best_test_acc": value / 100}
            overrides = [f"attention={attention}", f"seed={seed}"]
            records.append(row_from_run(config, summary, overrides, f"{attention}-{seed}"))
    return pd.DataFrame(records)


@pytest.mark.parametrize("method", ["holm", "bonferroni"])
def test_the_corrections_are_statsmodels(method):
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    raw = [0.01, 0.04, 0.03, 0.2, 0.005, 0.5]
    assert adjust(raw, method) == pytest.approx(list(multipletests(raw, method=method)[1]))
    assert math.isnan(adjust([0.01, math.nan, 0.04], method)[1])  # no test: not counted
    assert adjust([0.01, math.nan, 0.04], method)[::2] == pytest.approx(
        list(multipletests([0.01, 0.04], method=method)[1])
    )


def test_a_tables_p_values_are_adjusted_by_holm_over_the_rows_compared():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    table = comparison_table(_runs()).set_index("label")
    compared = table[~table["baseline"]]
    raw = [
        compare(dict(enumerate(ROWS["softmax"])), dict(enumerate(v))).p
        for k, v in ROWS.items()
        if k != "softmax"
    ]
    assert list(compared["p_value"]) == pytest.approx(raw)
    assert list(compared["p_holm"]) == pytest.approx(list(multipletests(raw, method="holm")[1]))
    assert list(compared["significant"]) == [p < 0.05 for p in compared["p_holm"]]
    # the correction decides the stars: a row significant before it is not after it
    moved = compared[(compared["p_value"] < 0.05) & (compared["p_holm"] >= 0.05)]
    assert len(moved) >= 1
    markdown = to_markdown(comparison_table(_runs()), ["attention"])
    for label in moved.index:
        line = next(row for row in markdown.splitlines() if f"| {label.split('=')[1]} " in row)
        assert " *" not in line and "(paired)" in line
    assert "p (Holm)" in markdown


def test_without_a_correction_the_raw_p_decides_and_says_so():
    table = comparison_table(_runs(), ReportSettings(correction="none"))
    assert "p_holm" not in table and table.attrs["correction"] == "none"
    assert list(table["significant"]) == [p < 0.05 for p in table["p_value"]]
    assert "| p " in to_markdown(table, ["attention"]).replace("  ", " ")
    with pytest.raises(ConfigError, match="report.correction='sidak': expected holm"):
        ReportSettings(correction="sidak")


def test_the_smallest_difference_seen_is_where_significance_begins():
    table = comparison_table(_runs(), ReportSettings(correction="none")).set_index("label")
    for label, row in table[~table["baseline"]].iterrows():
        deltas = [b - a for a, b in zip(ROWS["softmax"], ROWS[label.split("=")[1]])]
        se = stats.tstd(deltas) / math.sqrt(3)
        assert row["detectable_diff"] == pytest.approx(stats.t.ppf(0.975, 2) * se)
        # a difference beyond what the seeds could show is exactly a significant one
        assert (abs(row["diff_best_top1"]) > row["detectable_diff"]) == (row["p_value"] < 0.05)
    bonferroni = comparison_table(_runs(), ReportSettings(correction="bonferroni"))
    wider = bonferroni.set_index("label")["detectable_diff"].dropna()
    assert (wider > table["detectable_diff"].dropna()).all()  # tested at 0.05 / 4
    # Holm tests the row with the k-th smallest of m p-values at 0.05 / (m - k + 1)
    holm = comparison_table(_runs()).set_index("label").dropna(subset=["detectable_diff"])
    ranked = holm.sort_values("p_value")
    for k, (_, row) in enumerate(ranked.iterrows()):
        level = 0.05 / (len(ranked) - k)
        assert (abs(row["diff_best_top1"]) > row["detectable_diff"]) == (row["p_value"] < level)


def test_comparison_md_says_the_correction_and_what_was_not_seen(tmp_path):
    from vitsweep.report import write_report

    table = write_report(_runs(), pd.DataFrame(), tmp_path, tmp_path)
    text = (tmp_path / "comparison.md").read_text()
    assert "adjusted for the 4 rows compared by Holm's step-down correction" in text
    quiet = table[~table["baseline"] & ~table["significant"]]
    assert len(quiet)
    for _, row in quiet.iterrows():
        unseen = (
            f"a difference under {row['detectable_diff']:.2f} points could not have been seen "
            "with 3 seeds"
        )
        stopped = "but Holm's correction stops at the first row that is not significant"
        line = next(line for line in text.splitlines() if f"`{row['label']}`: not sig" in line)
        assert (unseen in line) == (abs(row["diff_best_top1"]) < row["detectable_diff"])
        assert (stopped in line) != (unseen in line)
    csv = pd.read_csv(tmp_path / "comparison.csv")
    assert {"p_value", "p_holm", "detectable_diff"} <= set(csv.columns)


def test_rows_with_fewer_than_three_seeds_are_said():
    two = comparison_table(_runs({k: v[:2] for k, v in ROWS.items()}, seeds=(0, 1)))
    assert any("fewer than 3 seeds in every row (n=2)" in note for note in two.attrs["notes"])
    three = comparison_table(_runs())
    assert not any("fewer than 3 seeds" in note for note in three.attrs["notes"])


def test_comparison_tex_is_a_booktabs_table_that_compiles(tmp_path):
    from vitsweep.report import write_report

    sweep = {"command": "python src/run.py -m attention=softmax,linear seed=0,1,2"}
    write_report(_runs(), pd.DataFrame(), tmp_path, tmp_path, sweep=sweep)
    tex = (tmp_path / "comparison.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\textbf{72.93 $\\pm$ 1.23}" in tex  # linear's mean, the best
    assert tex.count("\\textbf") == 1
    assert "on digits" in tex and "seeds 0, 1, 2" in tex
    assert "\\texttt{python src/run.py -m attention=softmax,linear seed=0,1,2}" in tex
    assert "adjusted by Holm's correction over 4 rows" in tex and "* $p < 0.05$" in tex
    assert "s/epoch" not in tex  # a paper's table holds no machine's seconds
    if shutil.which("pdflatex") is None or shutil.which("pdftoppm") is None:
        pytest.skip("pdflatex or pdftoppm not installed (.ci/run installs TeX Live and poppler)")
    png = compile_table(tmp_path)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_table_that_does_not_compile_is_one_line(tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (.ci/run installs TeX Live)")
    (tmp_path / "comparison.tex").write_text("\\begin{tabular}{l}\\undefinedmacro\\end{tabular}")
    with pytest.raises(Exception, match="pdflatex could not compile .*Undefined control"):
        compile_table(tmp_path, png=False)
    with pytest.raises(ConfigError, match="holds no comparison.tex"):
        compile_table(tmp_path / "elsewhere")


# --- report.py --compare: sweeps of hand-made records, compared without training --------------


def _sweep(root, name, rows, seeds, lr=0.001, fingerprint="abc", subset=64):
    """A sweep's directory of completed jobs, and its results folder (report.py's)."""
    from report import main as report_main

    job = 0
    for attention, accuracy in rows.items():
        for seed in seeds:
            config = {
                "seed": seed,
                "sweep_name": name,
                "choices": {"attention": attention, "embedding": "patch"},
                "data": {"name": "digits", "subset": subset},
                "trainer": {"epochs": 2},
                "optim": {"lr": lr},
                "overrides": [f"attention={attention}", f"seed={seed}"]
                + ([f"data.subset={subset}"] if subset != 64 else []),
            }
            summary = {
                "status": "completed",
                "best_test_acc": accuracy + 0.003 * seed,
                "epochs_done": 2,
                "data_fingerprint": fingerprint,
            }
            write_job(root / "multirun" / name / str(job), config, summary)
            job += 1
    sweep_dir = root / "multirun" / name
    assert report_main([str(sweep_dir), "--results", str(root / "results")]) == 0
    return root / "results" / name


def test_two_sweeps_are_one_table_without_training(tmp_path, capsys):
    from report import main as report_main

    grid = _sweep(tmp_path, "grid", {"softmax": 0.70, "linear": 0.68}, [0, 1, 2])
    new = _sweep(tmp_path, "performer", {"performer": 0.72}, [0, 1, 2])
    more = _sweep(tmp_path, "more_seeds", {"softmax": 0.70}, [3, 4])
    argv = ["--compare", str(grid), str(new), str(more), "--results", str(tmp_path / "results")]
    assert report_main([*argv, "--baseline", "softmax"]) == 0
    out = tmp_path / "results" / "grid+performer+more_seeds"
    table = pd.read_csv(out / "comparison.csv").set_index("label")
    assert list(table.index) == ["attention=softmax", "attention=linear", "attention=performer"]
    assert table.loc["attention=softmax", "n"] == 5  # its seeds from both sweeps
    assert table.loc["attention=softmax", "sweep"] == "grid; more_seeds"
    assert table.loc["attention=performer", "sweep"] == "performer"
    for name in ("comparison.md", "comparison.tex", "manifest.json", "pareto.png"):
        assert (out / name).is_file()
    assert "| sweep " in (out / "comparison.md").read_text()
    assert "Comparison of 3 sweeps" in capsys.readouterr().out


def test_sweeps_on_other_data_or_with_another_recipe_are_refused(tmp_path, capsys):
    from report import main as report_main

    grid = _sweep(tmp_path, "grid", {"softmax": 0.70, "linear": 0.68}, [0, 1, 2])
    other_data = _sweep(tmp_path, "other_data", {"performer": 0.7}, [0, 1, 2], fingerprint="def")
    other_lr = _sweep(tmp_path, "other_lr", {"performer": 0.7}, [0, 1, 2], lr=0.01)
    twice = _sweep(tmp_path, "twice", {"softmax": 0.71}, [2, 3])
    results = ["--results", str(tmp_path / "results")]
    cases = [
        (other_data, "trained on other data (data fingerprints abc and def)"),
        (other_lr, "differ in optim.lr (0.001 -> 0.01)"),
        (twice, "row 'attention=softmax' ran seed 2 in both grid and twice"),
    ]
    for other, why in cases:
        capsys.readouterr()
        assert report_main(["--compare", str(grid), str(other), *results]) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and len(err.splitlines()) == 1
    assert not (tmp_path / "results" / "grid+other_lr").exists()  # nothing written


def test_compare_takes_a_failed_seed_run_again_and_rows_over_other_subsets(tmp_path):
    from report import main as report_main

    grid = _sweep(tmp_path, "grid", {"softmax": 0.70, "linear": 0.68}, [0, 1, 2])
    failed = tmp_path / "multirun" / "grid" / "0" / "summary.json"  # softmax, seed 0
    failed.write_text(json.dumps({"status": "failed", "error": "a bug"}))
    assert (
        report_main([str(tmp_path / "multirun/grid"), "--results", str(tmp_path / "results")]) == 0
    )
    again = _sweep(tmp_path, "again", {"softmax": 0.70}, [0])
    bigger = _sweep(tmp_path, "bigger", {"performer": 0.7}, [0, 1], fingerprint="def", subset=128)
    results = ["--results", str(tmp_path / "results")]
    assert report_main(["--compare", str(grid), str(again), str(bigger), *results]) == 0
    table = pd.read_csv(tmp_path / "results/grid+again+bigger/comparison.csv").set_index("label")
    assert table.loc["attention=softmax data.subset=64", "n"] == 3  # seed 0 from "again"
    assert "attention=performer data.subset=128" in table.index
