"""Result lines, the table, the machine description and RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("name", "measured", "ideal / baseline", "ratio", "target", "met?")


@dataclass
class Line:
    """One row of the table. `met` is None for a reference figure that has no target."""

    name: str
    measured: str
    reference: str
    ratio: float | None
    target: str = "-"
    met: bool | None = None


@dataclass
class Section:
    """One benchmark: its lines and the notes that back them (checks, server load, errors)."""

    title: str
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def met_text(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: "n/a"}[met]


def cells(line: Line) -> tuple[str, ...]:
    ratio = "-" if line.ratio is None else f"{line.ratio:.2f}"
    return line.name, line.measured, line.reference, ratio, line.target, met_text(line.met)


def text_table(sections: list[Section]) -> str:
    """A fixed-width table for the terminal, one block per benchmark."""
    rows = [cells(line) for s in sections for line in s.lines]
    widths = [max(len(c) for c in column) for column in zip(COLUMNS, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*COLUMNS), fmt.format(*("-" * w for w in widths))]
    for s in sections:
        out.append(f"[{s.title}]")
        out += [fmt.format(*cells(line)) for line in s.lines]
    return "\n".join(out)


def _md_row(values) -> str:
    return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"


def markdown(sections: list[Section], machine: dict[str, str], command: str, total_s: float,
             title: str = "Benchmark results", script: str = "benchmarks/run.py") -> str:
    out = [f"# {title}", "",
           f"Written by `{script}`; see `benchmarks/README.md` for what each figure means. "
           "Ratios are measured within this one run; absolute timings depend on the machine and its load.", "",
           "## Machine", ""]
    out += [f"- {key}: {value}" for key, value in machine.items()]
    out += ["", "## Command", "", "```", command, "```", "",
            f"Total runtime: {total_s:.0f} s.", "", "## Results", "",
            _md_row(COLUMNS), _md_row("---" for _ in COLUMNS)]
    for s in sections:
        out.append(_md_row([f"**{s.title}**", "", "", "", "", ""]))
        out += [_md_row(cells(line)) for line in s.lines]
    out += ["", "## Notes", ""]
    for s in sections:
        out += [f"### {s.title} ({s.seconds:.0f} s)", ""]
        out += [f"- {note}" for note in s.notes] or ["- (none)"]
        out.append("")
    return "\n".join(out)


OWN_HEADINGS = ("## Machine", "## Command", "## Results", "## Notes")


def other_scripts_sections(text: str) -> str:
    """The sections of a RESULTS file that other scripts wrote (benchmarks/eval_functions.py,
    benchmarks/manyrow.py): from the first `## ` heading after this script's own, kept as they are."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## ") and not line.startswith(OWN_HEADINGS):
            return "\n" + "\n".join(lines[i:]) + "\n"
    return ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict[str, str]:
    """What the figures were measured on; aiquery is described by version and working-tree commit."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    nginx = shutil.which("nginx")
    nginx_version = "not installed"
    if nginx:
        nginx_version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = " plus uncommitted changes" if _git("status", "--porcelain", "--", "aiquery") else ""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "CPU": cpu,
        "load average at start (1, 5, 15 min)": load,
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "duckdb": _version("duckdb"),
        "aiohttp": _version("aiohttp"),
        "aiquery": f"{_version('aiquery')} (commit {commit or '?'}{dirty})",
        "openai (baseline)": _version("openai"),
        "pandas": _version("pandas"),
        "nginx": nginx_version,
    }
