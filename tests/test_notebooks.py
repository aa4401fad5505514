"""Every notebook under notebooks/ is executed, so none can rot; its outputs are then checked."""

import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CANARY_KEY = "sk-canary-7f3a9c1e5b"


def execute(path: Path, env_key: str) -> dict:
    nbclient = pytest.importorskip("nbclient", reason="executing notebooks needs: pip install -e '.[test]'")
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute(env={**os.environ, "OPENAI_API_KEY": env_key})
    return notebook


class _Cells(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None


def table(result: dict) -> list[dict[str, str]]:
    """A data frame's rows as the notebook shows them (its HTML form: no line wrapping, whatever
    the display width), each a dict of column name to text."""
    parser = _Cells()
    parser.feed(result["data"]["text/html"])
    header, *rows = [row for row in parser.rows if row]
    return [dict(zip(header[1:], row[1:])) for row in rows]  # the first column is the frame's index


def outputs(notebook) -> str:
    return json.dumps([cell.get("outputs", []) for cell in notebook.cells])


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.local_models
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_shows_results(path):
    pytest.importorskip("llama_cpp", reason="the built-in models need: pip install -e '.[local]'")
    notebook = execute(path, CANARY_KEY)
    text = outputs(notebook)
    assert '"output_type": "error"' not in text
    assert CANARY_KEY not in text, "a key reached a notebook output"
    if path.name == "quickstart.ipynb":
        assert "accuracy" in text and "image/png" in text  # the table and the plot
        assert "local-chat:" in text and "completion tokens" in text
    if path.name == "usage_and_cost.ipynb":
        results = [o for cell in notebook.cells for o in cell.get("outputs", []) if o["output_type"] == "execute_result"]
        estimate, usage, details, per_query, second = (table(r) for r in results)
        assert estimate[0]["endpoint"] == "local-chat"
        assert estimate[0]["token_count"] == "smollm2-135m-instruct tokenizer"
        assert {"cost_usd", "latency_p95_ms"} <= set(usage[0])
        assert "finish_reason" in details[0]
        first_run, rerun = per_query
        assert first_run["requests"] == "40" and first_run["cache_hits"] == "0"
        assert rerun["requests"] == "0" and rerun["cache_hits"] == "40"  # the re-run: all from the cache
        assert second == [{"cached": "40", "rows": "40"}]
        # The progress widgets (tqdm's notebook form) in their final state: both runs done, the re-run from the cache.
        state = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"].values()
        texts = [m["state"]["value"].replace("\u2007", " ") for m in state if m["model_name"] == "HTMLModel"]
        bars = [m["state"] for m in state if m["model_name"] == "FloatProgressModel"]
        assert sum(" 40/40 " in t and "requests=40 cached=0" in t for t in texts) == 1, texts
        assert sum(" 40/40 " in t and "requests=0 cached=40" in t for t in texts) == 1, texts
        assert [b["bar_style"] for b in bars] == ["success", "success"] and all(b["value"] == b["max"] == 40 for b in bars)
