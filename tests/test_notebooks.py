"""Every notebook under notebooks/ is executed, so none can rot; its outputs are then checked."""

import json
import os
import re
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


def outputs(notebook) -> str:
    return json.dumps([cell.get("outputs", []) for cell in notebook.cells])


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.local_models
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
        estimate, usage, details, per_query, second = (r["data"]["text/plain"] for r in results)
        assert "local-chat" in estimate and "smollm2-135m-instruct tokenizer" in estimate
        assert "cost_usd" in usage and "latency_p95_ms" in usage
        assert "finish_reason" in details
        assert re.search(r"^1\s+2\s+CREATE .*\s0\s+40\s*$", per_query, flags=re.M), per_query  # re-run: all hits
        assert second.split()[-2:] == ["40", "40"]
