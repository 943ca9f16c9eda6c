"""comparison.tex: the headline table for a paper, a booktabs ``table`` to ``\\input``.

The cells are the markdown table's (``table_cells``), so both always say the same; pandas'
``Styler.to_latex`` writes the LaTeX. It needs only ``\\usepackage{booktabs}``: the best mean
of each accuracy column is in bold, the significance mark is explained under the table, and the
caption names the data, the seeds and the command.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from vitsweep.errors import ConfigError, ReportError
from vitsweep.report.columns import TOP1, columns
from vitsweep.report.render import CORRECTION_NAMES, p_heading, table_cells

if TYPE_CHECKING:
    import pandas as pd

# What pdflatex cannot typeset from UTF-8 without more packages, in math mode instead.
SYMBOLS = {"±": r"$\pm$", "Δ": r"$\Delta$", "—": "---", "×": r"$\times$", "≥": r"$\geq$"}
SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


# A paper's table keeps what does not depend on the machine: the model's cost and the
# accuracies; the seconds stay in comparison.md. Its long headings are shortened.
KEPT = ("sweep", "params", "gflops_per_image")
SHORTER = {"Δ best top-1 vs baseline": "Δ vs baseline", "smallest Δ seen": "min. Δ seen"}


def escaped(text: str) -> str:
    """Plain text as LaTeX: its special characters escaped, then its symbols typeset."""
    text = "".join(SPECIAL.get(char, char) for char in text)
    return with_symbols(text)


def with_symbols(text: str) -> str:
    for symbol, latex in SYMBOLS.items():
        text = text.replace(symbol, latex)
    return re.sub(r"(?<![\w.])-(?=\d)", "$-$", text)  # a minus, not a hyphen


def paper_cells(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The headline's cells less the machine's seconds (and the status where all completed),
    with shorter headings."""
    import pandas as pd

    cells = table_cells(table, keys, headline=True)
    p = p_heading(table.attrs["correction"])
    cells[p] = [re.sub(r" \((paired|Welch)\)", "", cell) for cell in cells[p]]  # in the footnote
    dropped = {
        c.heading
        for c in columns()
        if c.name not in KEPT and c.bounds != TOP1 and c.name not in keys
    }
    if (table["status"] == "completed").all():
        dropped.add("status")
    kept = {heading: v for heading, v in cells.items() if heading not in dropped}
    renamed = {}
    for heading, values in kept.items():
        for long, short in SHORTER.items():
            heading = heading.replace(long, short)
        renamed[heading] = values
    return pd.DataFrame(renamed)


def best_rows(table: pd.DataFrame) -> dict[str, list[int]]:
    """For each accuracy column the headline shows (by heading), the rows with its best mean."""
    best = {}
    for column in columns():
        if column.bounds != TOP1 or column.name not in table:
            continue
        means = table[column.name].astype(float)
        if means.notna().any():
            best[column.heading] = list(means.index[means == means.max()])
    return best


def caption(table: pd.DataFrame, runs: pd.DataFrame, command: str | None) -> str:
    """What the table holds, on which data, over which seeds, made by which command."""
    data = ", ".join(sorted({str(d) for d in runs["data"].dropna()})) or "the data recorded"
    seeds = sorted({int(s) for s in runs["seed"].dropna()})
    base = table.loc[table["baseline"], "label"].iloc[0]
    made = f" Made by \\texttt{{{escaped(command)}}}." if command else ""
    return (
        f"Best top-1 (\\%) on {escaped(data)}: mean $\\pm$ standard deviation over seeds "
        f"{', '.join(map(str, seeds)) or '---'}, and each row's difference from "
        f"\\texttt{{{escaped(base)}}}.{made}"
    )


def footnote(table: pd.DataFrame) -> str:
    confidence, correction = table.attrs["confidence"], table.attrs["correction"]
    adjusted = (
        "uncorrected"
        if correction == "none"
        else f"adjusted by {CORRECTION_NAMES[correction]}'s correction over "
        f"{table.attrs['compared']} rows"
    )
    tests = set(table.loc[~table["baseline"], "test"]) - {"n=1"}
    used = {
        frozenset({"paired"}): "paired $t$-tests by seed",
        frozenset({"Welch"}): "Welch's $t$-tests",
    }.get(
        frozenset(tests),
        "paired $t$-tests by seed where a row ran the baseline's seeds, Welch's otherwise",
    )
    return (
        f"* $p < {1 - confidence:.3g}$ ({adjusted}; {used}). Bold: the best mean of each "
        "accuracy column."
    )


def to_latex(table: pd.DataFrame, runs: pd.DataFrame, command: str | None) -> str:
    """The headline table as a booktabs ``table`` environment."""
    keys = list(table.attrs["keys"])
    cells = paper_cells(table, keys)
    bold = best_rows(table)

    def marked(column: pd.Series) -> list[str]:
        rows = bold.get(str(column.name), [])
        return ["textbf:--rwrap;" if i in rows else "" for i in range(len(column))]

    styler = (
        cells.style.hide(axis="index")
        .format(with_symbols, escape="latex")
        .format_index(with_symbols, escape="latex", axis=1)
        .apply(marked, axis=0)
    )
    text = styler.to_latex(
        hrules=True,
        caption=caption(table, runs, command),
        label="tab:" + re.sub(r"[^A-Za-z0-9]+", "-", str(table.attrs.get("name", "comparison"))),
        position="htbp",
        position_float="centering",
        column_format="l" * len(keys) + "r" * (cells.shape[1] - len(keys)),
    )
    # Compact, as tables in papers are; the footnote under the tabular, inside the float.
    text = text.replace("\\centering\n", "\\centering\n\\small\\setlength{\\tabcolsep}{4pt}\n", 1)
    note = f"\\par\\smallskip\\footnotesize {footnote(table)}\n"
    return text.replace("\\end{tabular}\n", "\\end{tabular}\n" + note)


def document(tex_name: str) -> str:
    """A one-page document around comparison.tex, as a paper would ``\\input`` it (a page
    wide enough for the whole table: for a check, or a picture)."""
    return (
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\pagestyle{empty}\n"
        "\\usepackage[paperwidth=24cm,paperheight=14cm,margin=8mm]{geometry}\n"
        f"\\begin{{document}}\n\\input{{{tex_name}}}\n\\end{{document}}\n"
    )


def compile_table(results: Path, png: bool = True) -> Path:
    """comparison.tex of a results folder compiled with pdflatex (and drawn into
    comparison_tex.png with pdftoppm, its margins trimmed); returns the PDF's or the PNG's
    path. A missing tool, or LaTeX's error, is one line."""
    tex = results / "comparison.tex"
    if not tex.is_file():
        raise ConfigError(f"{results} holds no comparison.tex: rebuild it with src/report.py")
    tools = ["pdflatex", "pdftoppm"] if png else ["pdflatex"]
    if lacking := [tool for tool in tools if shutil.which(tool) is None]:
        raise ConfigError(
            f"{' and '.join(lacking)} not found: install TeX Live's LaTeX and poppler "
            "(Debian: apt-get install texlive-latex-base texlive-latex-recommended poppler-utils)"
        )
    with tempfile.TemporaryDirectory() as work:
        shutil.copy(tex, Path(work) / "comparison.tex")
        (Path(work) / "page.tex").write_text(document("comparison.tex"))
        done = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "page.tex"],
            cwd=work,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            error = next((line for line in done.stdout.splitlines() if line.startswith("!")), "")
            raise ReportError(f"pdflatex could not compile {tex}: {error or 'see its log'}")
        if not png:
            return Path(shutil.copy(Path(work) / "page.pdf", results / "comparison.pdf"))
        subprocess.run(
            ["pdftoppm", "-png", "-r", "200", "-singlefile", "page.pdf", "page"],
            cwd=work,
            check=True,
            capture_output=True,
        )
        return trimmed(Path(work) / "page.png", results / "comparison_tex.png")


def trimmed(page: Path, out: Path, margin: int = 12) -> Path:
    """The page's picture cut to what is printed on it, with a small white margin."""
    from PIL import Image, ImageOps

    with Image.open(page) as image:
        box = ImageOps.invert(image.convert("L")).getbbox()
        if box:
            left, top, right, bottom = box
            width, height = image.size
            image = image.crop(
                (
                    max(left - margin, 0),
                    max(top - margin, 0),
                    min(right + margin, width),
                    min(bottom + margin, height),
                )
            )
        image.save(out)
    return out
