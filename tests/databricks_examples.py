"""Databricks-style SQL jobs, written for these tests, that aiquery's Databricks dialect must run.

Each example is what a Databricks user would bring: the ai_query and AI Functions idioms (double
quoted strings, array(), named_struct(), the legacy returnType pair, read_files, materialized
views, Unity Catalog names, the newer ai_classify / ai_extract forms) over small tables. Used by
tests/test_dialect.py (rows and request bodies asserted) and benchmarks/dialect.py (how many run
verbatim, through sqlglot alone, and through aiquery's dialect).

`setup(con, images)` creates the tables (in DuckDB SQL) and `endpoints(server)` the endpoints, named
as on Databricks, all on the fake server (tests/fakeserver.py), which echoes prompts, predicts a
custom model's input back and answers a JSON schema with its first allowed values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
LLAMA = "databricks-meta-llama-3-3-70b-instruct"
GTE = "databricks-gte-large-en"


def endpoints(server) -> dict:
    """Databricks serving endpoints (host and token from DATABRICKS_HOST / DATABRICKS_TOKEN)."""
    return {
        LLAMA: {"provider": "databricks", "task": "chat", "model": LLAMA},
        GTE: {"provider": "databricks", "task": "embeddings", "model": GTE},
        "sentiment-analysis": {"provider": "databricks", "task": "custom", "model": "sentiment-analysis"},
        "house-prices": {"provider": "databricks", "task": "custom", "model": "house-prices"},
        "vision-model": {"provider": "databricks", "task": "chat", "model": "vision-model"},
    }


DEFAULTS = {"default_chat_endpoint": LLAMA, "default_embedding_endpoint": GTE}


def setup(con, images: Path) -> None:
    for name in ("a.png", "b.png"):
        (images / name).write_bytes(PNG)
    (images / "notes.txt").write_text("not an image")
    con.execute("CREATE TABLE reviews AS SELECT * FROM (VALUES (1, 'A warm and funny film.'), "
                "(2, 'Dull, long, badly acted.')) v(id, text)")
    con.execute("CREATE TABLE tickets AS SELECT * FROM (VALUES (1, 'My invoice is wrong'), "
                "(2, 'The app crashes on start')) v(id, body)")
    con.execute("CREATE TABLE houses AS SELECT * FROM (VALUES (1, 3, 'Oslo'), (2, 5, 'Bergen')) v(id, rooms, city)")


def _schema(body: dict) -> dict:
    return body["response_format"]["json_schema"]["schema"]


def _system(body: dict) -> str:
    return body["messages"][0]["content"]


@dataclass
class Example:
    name: str
    cases: str            # which of the cases (1-8) or newer forms (v2) it covers
    sql: str              # Databricks SQL; {images} is the folder of images
    rows: list            # the rows of its last statement
    check: Callable[[list], None] | None = None  # asserts on the bodies the server received
    requests: int | None = None  # how many requests the server must have received


def _bodies_equal(expected: list[dict]) -> Callable[[list], None]:
    def check(bodies: list) -> None:
        assert sorted(bodies, key=json.dumps) == sorted(expected, key=json.dumps), bodies
    return check


def _every(predicate: Callable[[dict], bool]) -> Callable[[list], None]:
    def check(bodies: list) -> None:
        assert bodies and all(predicate(b) for b in bodies), bodies
    return check


REVIEW_1, REVIEW_2 = "A warm and funny film.", "Dull, long, badly acted."

EXAMPLES = [
    Example("custom model, endpoint in double quotes", "1 4",
            'SELECT id, ai_query("sentiment-analysis", text) AS sentiment FROM reviews ORDER BY id',
            [(1, REVIEW_1), (2, REVIEW_2)],
            _bodies_equal([{"inputs": [REVIEW_1]}, {"inputs": [REVIEW_2]}])),
    Example("custom model, one column and returnType", "4",
            "SELECT id, ai_query('sentiment-analysis', text, returnType => 'STRING') FROM reviews ORDER BY id",
            [(1, REVIEW_1), (2, REVIEW_2)],
            _bodies_equal([{"inputs": [REVIEW_1]}, {"inputs": [REVIEW_2]}])),
    Example("prompt built from double-quoted strings", "1",
            f'SELECT id, ai_query("{LLAMA}", "Summarize: " || text) FROM reviews ORDER BY id',
            [(1, f"echo: Summarize: {REVIEW_1}"), (2, f"echo: Summarize: {REVIEW_2}")],
            _every(lambda b: b["messages"][0]["content"].startswith("Summarize: "))),
    Example("a double-quoted string holding a quote", "1",
            """SELECT ai_gen("Write a tagline that doesn't rhyme")""",
            [("echo: Write a tagline that doesn't rhyme",)]),
    Example("labels from array()", "2",
            "SELECT id, ai_classify(text, ARRAY('positive', 'negative')) FROM reviews ORDER BY id",
            [(1, "positive"), (2, "positive")],
            _every(lambda b: _schema(b)["properties"]["label"]["enum"] == ["positive", "negative"])),
    Example("labels from array() of double-quoted strings", "1 2",
            'SELECT id, ai_classify(body, array("urgent", "not urgent")) FROM tickets ORDER BY id',
            [(1, "urgent"), (2, "urgent")],
            _every(lambda b: _schema(b)["properties"]["label"]["enum"] == ["urgent", "not urgent"])),
    Example("modelParameters from named_struct()", "3",
            f"SELECT id, ai_query('{LLAMA}', text, modelParameters => named_struct('max_tokens', 100, "
            "'temperature', 0.1)) FROM reviews ORDER BY id",
            [(1, f"echo: {REVIEW_1}"), (2, f"echo: {REVIEW_2}")],
            _every(lambda b: b["max_tokens"] == 100 and b["temperature"] == 0.1)),
    Example("custom model request from named_struct()", "3",
            "SELECT id, ai_query('house-prices', named_struct('rooms', rooms, 'city', city), "
            "returnType => 'STRUCT<rooms: INT, city: STRING>') AS p FROM houses ORDER BY id",
            [(1, {"rooms": 3, "city": "Oslo"}), (2, {"rooms": 5, "city": "Bergen"})],
            _bodies_equal([{"dataframe_records": [{"rooms": 3, "city": "Oslo"}]},
                           {"dataframe_records": [{"rooms": 5, "city": "Bergen"}]}])),
    Example("the legacy returnType pair, struct request", "5",
            "SELECT id, ai_query('house-prices', named_struct('rooms', rooms), 'returnType', 'STRUCT<rooms: INT>') "
            "FROM houses ORDER BY id",
            [(1, {"rooms": 3}), (2, {"rooms": 5})]),
    Example("the legacy returnType pair, one column", "4 5",
            "SELECT id, ai_query('sentiment-analysis', text, 'returnType', 'STRING') FROM reviews ORDER BY id",
            [(1, REVIEW_1), (2, REVIEW_2)]),
    Example("images from read_files binaryFile into files =>", "6",
            "SELECT regexp_extract(path, '([^/]+)$', 1) AS name, length, ai_query('vision-model', "
            "'Describe the image', files => content) AS description "
            "FROM read_files('{images}/', format => 'binaryFile', pathGlobFilter => '*.png') ORDER BY name",
            [("a.png", 24, "echo: Describe the image +1 image(s)"), ("b.png", 24, "echo: Describe the image +1 image(s)")],
            _every(lambda b: b["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,"))),
    Example("read_files of a folder", "6",
            "SELECT count(*) AS files, sum(length) AS bytes FROM read_files('{images}/', format => 'binaryFile')",
            [(3, 60)], requests=0),
    Example("a materialized view is computed once", "6",
            "CREATE MATERIALIZED VIEW review_moods AS SELECT id, ai_analyze_sentiment(text) AS mood FROM reviews;\n"
            "SELECT * FROM review_moods ORDER BY id;\nSELECT * FROM review_moods ORDER BY id;\n"
            "SELECT table_type, (SELECT list(mood ORDER BY id) FROM review_moods) FROM information_schema.tables "
            "WHERE table_name = 'review_moods'",
            [("BASE TABLE", ["positive", "positive"])], requests=2),
    Example("CREATE OR REFRESH MATERIALIZED VIEW", "6",
            "CREATE OR REFRESH MATERIALIZED VIEW short AS SELECT id, ai_summarize(text, 5) AS s FROM reviews;\n"
            "CREATE OR REFRESH MATERIALIZED VIEW short AS SELECT id, ai_summarize(text, 5) AS s FROM reviews;\n"
            "SELECT id, s FROM short ORDER BY id",
            [(1, f"echo: {REVIEW_1}"), (2, f"echo: {REVIEW_2}")], requests=2),  # the second run: from the cache
    Example("Unity Catalog three-part names", "6",
            "CREATE TABLE main.default.scored AS SELECT id, ai_summarize(text, 5) AS s FROM main.default.reviews;\n"
            "SELECT id, s FROM main.default.scored ORDER BY id",
            [(1, f"echo: {REVIEW_1}"), (2, f"echo: {REVIEW_2}")],
            _every(lambda b: _system(b) == "Summarize the text in at most 5 words. Answer with the summary only.")),
    Example("USE CATALOG and USE SCHEMA", "6",
            "USE CATALOG main;\nUSE SCHEMA default;\nSELECT count(*) FROM reviews",
            [(2,)], requests=0),
    Example("a reason-first STRUCT keeps its order on the wire", "7",
            f"SELECT r.answer FROM (SELECT id, ai_query('{LLAMA}', text, responseFormat => "
            "'STRUCT<reasoning: STRING, answer: STRING>') AS r FROM reviews) ORDER BY id",
            [("sample",), ("sample",)],
            _every(lambda b: list(_schema(b)["properties"]) == ["reasoning", "answer"])),
    Example("ai_extract labels keep their order", "7",
            "SELECT ai_extract('Ann met Bob in Oslo on Monday', array('person', 'location', 'date')) AS e",
            [({"person": "sample", "location": "sample", "date": "sample"},)],
            _every(lambda b: list(_schema(b)["properties"]) == ["person", "location", "date"])),
    Example("task functions without an endpoint use the connection's default", "8",
            "SELECT ai_gen('Name a colour') AS colour, round(ai_similarity('a cat', 'a cat'), 3) AS same",
            [("echo: Name a colour", 1.0)]),
    Example("embeddings from ai_query, with size()", "8",
            f"SELECT id, size(ai_query('{GTE}', text)) AS dims FROM reviews ORDER BY id",
            [(1, 8), (2, 8)]),
    Example("failOnError => false", "misc",
            f"SELECT id, r.response, r.errorMessage FROM (SELECT id, ai_query('{LLAMA}', text || "
            "CASE WHEN id = 2 THEN ' [[status=400]]' ELSE '' END, failOnError => false) AS r FROM reviews) ORDER BY id",
            None),  # rows checked in the test: the error text names the endpoint
    Example("ai_classify with label descriptions", "v2",
            "SELECT id, ai_classify(body, '{\"billing\": \"invoices and payments\", \"bug\": \"the product "
            "misbehaves\"}') AS kind FROM tickets ORDER BY id",
            [(1, "billing"), (2, "billing")],
            _every(lambda b: _system(b) == "Classify the text with one of these labels:\n"
                   "- billing: invoices and payments\n- bug: the product misbehaves")),
    Example("ai_classify options: multilabel and instructions", "v2",
            "SELECT id, ai_classify(body, array('billing', 'bug', 'account'), '{\"multilabel\": true, "
            "\"instructions\": \"Support tickets of a web shop.\"}') AS kinds FROM tickets ORDER BY id",
            [(1, ["billing"]), (2, ["billing"])],
            _every(lambda b: _system(b).startswith("Support tickets of a web shop.\n\nWhich of these labels"))),
    Example("ai_classify options from map(): confidence and rationale", "v2",
            "SELECT id, ai_classify(body, array('billing', 'bug'), map('confidence', 'true', 'rationale', 'true')) "
            "AS r FROM tickets ORDER BY id",
            [(1, {"label": "billing", "confidence": 0.951229424500714, "rationale": "sample"}),
             (2, {"label": "billing", "confidence": 0.951229424500714, "rationale": "sample"})],
            _every(lambda b: b["logprobs"] is True and list(_schema(b)["properties"]) == ["rationale", "label"])),
    Example("ai_extract with a typed schema", "v2",
            "SELECT ai_extract('Invoice 17 from Acme: 99.50, paid', '{\"number\": {\"type\": \"integer\"}, "
            "\"vendor\": {\"type\": \"string\", \"description\": \"who sent it\"}, \"total\": {\"type\": "
            "\"number\"}, \"paid\": {\"type\": \"boolean\"}, \"state\": {\"type\": \"enum\", \"labels\": "
            "[\"draft\", \"sent\"]}}') AS invoice",
            [({"number": 1, "vendor": "sample", "total": 1.5, "paid": True, "state": "draft"},)],
            _every(lambda b: list(_schema(b)["properties"]) == ["number", "vendor", "total", "paid", "state"])),
    Example("ai_extract options: citations and confidence", "v2",
            "SELECT ai_extract(text, array('mood'), named_struct('citations', true, 'confidence', true)) AS e "
            "FROM reviews WHERE id = 1",
            [({"mood": {"value": "sample", "confidence": 0.951229424500714, "citation": "sample"}},)]),
    Example("from_json over a responseFormat answer", "misc",
            f"SELECT id, from_json(ai_query('{LLAMA}', text, responseFormat => 'STRUCT<label: STRING>'), "
            "'label STRING').label AS label FROM reviews ORDER BY id",
            [(1, "sample"), (2, "sample")]),
    Example("collect_list, sort_array and array_join into ai_summarize", "misc",
            "SELECT ai_summarize(array_join(sort_array(collect_list(text)), ' '), 30) AS digest FROM reviews",
            [(f"echo: {REVIEW_1} {REVIEW_2}",)]),
    Example("SELECT * EXCEPT and ai_translate", "misc",
            "SELECT * EXCEPT (text), ai_translate(text, 'es') AS es FROM reviews ORDER BY id",
            [(1, f"echo: {REVIEW_1}"), (2, f"echo: {REVIEW_2}")]),
    Example("CREATE TABLE USING DELTA AS", "misc",
            "CREATE OR REPLACE TABLE fixed USING DELTA TBLPROPERTIES ('delta.appendOnly' = 'true') AS "
            "SELECT id, ai_fix_grammar(text) AS t FROM reviews;\nSELECT * FROM fixed ORDER BY id",
            [(1, f"echo: {REVIEW_1}"), (2, f"echo: {REVIEW_2}")]),
    Example("INSERT INTO a STRING table with ai_mask", "misc",
            "CREATE TABLE masked (id INT, t STRING);\n"
            "INSERT INTO masked SELECT id, ai_mask(body, array('person', 'email')) FROM tickets;\n"
            "SELECT * FROM masked ORDER BY id",
            [(1, "echo: My invoice is wrong"), (2, "echo: The app crashes on start")]),
    Example("LATERAL VIEW explode over multi-label answers", "misc",
            "SELECT id, label FROM (SELECT id, ai_classify(body, array('billing', 'bug'), '{\"multilabel\": true}') "
            "AS labels FROM tickets) LATERAL VIEW explode(labels) t AS label ORDER BY id",
            [(1, "billing"), (2, "billing")]),
    Example("a JSON answer read with the : path operator", "misc",
            f"SELECT id, ai_query('{LLAMA}', text, responseFormat => '{{\"type\": \"json_object\"}}'):echo::string "
            "AS echoed FROM reviews ORDER BY id",
            [(1, REVIEW_1), (2, REVIEW_2)]),
]
