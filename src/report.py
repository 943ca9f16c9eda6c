"""Rebuild a sweep's comparison table and plots, from local run records or from W&B.

    python src/report.py multirun/my_sweep                        # -> results/my_sweep/
    python src/report.py --wandb ENTITY/PROJECT --group GROUP     # -> results/GROUP/
    python src/report.py --reproduce results/my_sweep [--rows 1,2] [--seeds 0,1] [--name NAME]
                                                    # -> results/my_sweep-reproduced/ (or NAME)
    python src/report.py --compare results/A results/B [--name C] [--baseline ROW]
                                                    # -> results/A+B/ (or C), nothing trained
    python src/report.py --latex-png results/my_sweep  # comparison.tex -> comparison_tex.png

The first two write comparison.md, comparison.csv, manifest.json and the plots, from one
schema; the results folder is named after the sweep's ``sweep_name`` (kept in its records), as
at the end of the sweep. ``--reproduce`` trains the rows again from the manifest and writes
reproduction.md beside the new table; it is named after the folder reproduced, never
overwrites an earlier reproduction (``--name`` starts another, ``--resume`` finishes a stopped
one). ``--compare`` puts the rows of two or more sweeps into one table, without training,
when their data and recipe agree.
"""

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from vitsweep.errors import ConfigError, ReportError, exit_code_of
from vitsweep.report import load_sweep, load_wandb, sweep_name, write_report
from vitsweep.report.compare import compare_sweeps
from vitsweep.report.latex import compile_table
from vitsweep.report.reproduce import reproduce as rerun
from vitsweep.settings import ReportSettings, check_sweep_name
from vitsweep.stats import CORRECTIONS


def read_runs(args: argparse.Namespace) -> tuple[Any, Any, str, str]:
    """The runs and curves, the results folder's name (one folder name: never a path that
    leaves --results) and where they came from; a ConfigError says why not."""
    if args.wandb:
        try:
            runs, curves = load_wandb(args.wandb, args.group)
        except Exception as err:  # network, credentials, unknown project: one line
            raise ConfigError(f"could not read W&B runs of {args.wandb}: {err}") from None
        name, source = check_sweep_name(args.name or args.group), f"W&B {args.wandb}, group "
        return runs, curves, name, source + args.group
    runs, curves = load_sweep(args.sweep_dir)
    if runs.empty and (
        inside := sorted(p.parent.name for p in args.sweep_dir.glob("*/sweep.yaml"))
    ):
        raise ConfigError(
            f"{args.sweep_dir} holds sweeps, not jobs: give one sweep's directory "
            f"({', '.join(inside[:5])})"
        )
    name = check_sweep_name(args.name) if args.name else sweep_name(args.sweep_dir, runs)
    return runs, curves, name, str(args.sweep_dir)


def numbers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text}") from None


def reproduce(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out_dir = rerun(args.reproduce, args.rows, args.seeds, args.results, args.resume, args.name)
    except ConfigError as err:
        return exit_code_of(err)
    print((out_dir / "reproduction.md").read_text())
    return 0


def report_settings(args: argparse.Namespace) -> ReportSettings:
    """The ``report:`` settings given on the command line (checked as a sweep's are)."""
    given = {k: getattr(args, k) for k in ("baseline", "confidence", "correction")}
    return ReportSettings(**{k: v for k, v in given.items() if v is not None})


def build_table(runs: Any, curves: Any, out_dir: Path, source: str, args: Any) -> Any:
    """The results folder written; whatever stops it is a table that could not be built."""
    try:
        return write_report(runs, curves, out_dir, source, report_settings(args))
    except ConfigError:
        raise
    except Exception as err:
        raise ReportError(f"the table could not be built: {type(err).__name__}: {err}") from None


def compare(args: argparse.Namespace) -> int:
    """One table of two or more sweeps' rows, nothing trained."""
    try:
        table, out_dir = compare_sweeps(
            args.compare, args.results, args.name, report_settings(args)
        )
    except ConfigError as err:
        return exit_code_of(err)
    except Exception as err:
        return exit_code_of(
            ReportError(f"the table could not be built: {type(err).__name__}: {err}")
        )
    return shown(table, f"Comparison of {len(args.compare)} sweeps in {out_dir}/")


def shown(table: Any, line: str) -> int:
    """The headline and ``line`` printed, the notes beside them; exit 0."""
    print(f"{table.attrs['headline']}\n{line}")
    for note in table.attrs["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", nargs="?", type=Path, help="a multirun directory")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B instead")
    parser.add_argument("--group", help="the W&B group (the sweep's name)")
    parser.add_argument(
        "--name",
        help="the results folder's name (default: the sweep's); with --reproduce, the "
        "reproduction's (default: <folder>-reproduced)",
    )
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--baseline", help="the row to compare with: its number or choices")
    parser.add_argument(
        "--confidence", type=float, help=f"of the intervals (default {ReportSettings.confidence})"
    )
    parser.add_argument(
        "--correction",
        choices=CORRECTIONS,
        help=f"of the p-values, for the rows compared (default {ReportSettings.correction})",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        metavar="RESULTS_DIR",
        help="one table of these sweeps' rows (results/A results/B), nothing trained",
    )
    parser.add_argument(
        "--latex-png",
        type=Path,
        metavar="RESULTS_DIR",
        help="compile its comparison.tex (pdflatex) into comparison_tex.png (pdftoppm)",
    )
    parser.add_argument(
        "--reproduce",
        type=Path,
        metavar="RESULTS_DIR",
        help="train the rows of results/<sweep> again and judge them",
    )
    parser.add_argument("--rows", type=numbers, help="with --reproduce: row numbers, e.g. 1,3")
    parser.add_argument("--seeds", type=numbers, help="with --reproduce: seeds, e.g. 0,1")
    parser.add_argument(
        "--resume", action="store_true", help="with --reproduce: finish a stopped reproduction"
    )
    return parser


def rebuild(args: argparse.Namespace) -> int:
    """A sweep's results folder written again, from its records or from W&B."""
    try:
        runs, curves, name, source = read_runs(args)
        if runs.empty:
            raise ConfigError(f"no runs found in {source}")
        out_dir = args.results / name
        table = build_table(runs, curves, out_dir, source, args)
    except (ConfigError, ReportError) as err:
        return exit_code_of(err)
    return shown(table, f"Comparison of {len(runs)} runs in {out_dir}/")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.reproduce:
        return reproduce(args)
    if args.latex_png:
        try:
            print(compile_table(args.latex_png))
        except (ConfigError, ReportError) as err:
            return exit_code_of(err)
        return 0
    if args.compare:
        if args.sweep_dir or args.wandb:
            parser.error("--compare takes results folders, not a sweep directory or --wandb")
        return compare(args)
    for flag, given in (("--rows", args.rows), ("--seeds", args.seeds), ("--resume", args.resume)):
        if given:  # never ignored in silence: a table rebuilt is not a reproduction
            parser.error(f"{flag} goes with --reproduce RESULTS_DIR")

    if args.wandb and not args.group:
        parser.error("--wandb needs --group (the sweep's name, which is its W&B group)")
    if not args.wandb and (args.sweep_dir is None or not args.sweep_dir.is_dir()):
        parser.error(f"sweep directory not found: {args.sweep_dir}")
    return rebuild(args)


if __name__ == "__main__":
    sys.exit(main())
