"""Evaluates the task functions (aiquery/sql/functions.sql) on the built-in models.

    python benchmarks/eval_functions.py [--rows 100]

- ai_analyze_sentiment and ai_classify(text, ['fresh', 'rotten']) with local-chat on Rotten Tomatoes
  snippets, half fresh and half rotten: accuracy against the labels, and the fraction of answers that
  are one of the allowed values (errors count as invalid; it must be 1.0).
- ai_similarity with local-embed: for each of a few sentences, whether its paraphrase scores above
  every unrelated sentence.

Prints a Markdown section for benchmarks/RESULTS.md. No cache: every answer is computed.
"""

from __future__ import annotations

import argparse
import time

import aiquery

PARAMS = "{'temperature': 0.0, 'max_tokens': 32}"  # the grammar ends the answer well before

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100, help="reviews, half fresh and half rotten")
    args = parser.parse_args()
    con = aiquery.connect(endpoints={}, cache=False, progress=False)
    con.execute(f"""CREATE TABLE reviews AS
                    SELECT id, label, text FROM read_parquet(aiquery_dataset('rotten_tomatoes'))
                    WHERE label IN ('fresh', 'rotten')
                    QUALIFY row_number() OVER (PARTITION BY label ORDER BY hash(id)) <= {args.rows // 2}""")

    started = time.perf_counter()
    con.execute(f"""CREATE TABLE sentiment AS
                    SELECT id, label, ai_analyze_sentiment(text, modelParameters => {PARAMS},
                                                           failOnError => false) AS r FROM reviews""")
    sentiment_s = time.perf_counter() - started
    started = time.perf_counter()
    con.execute(f"""CREATE TABLE classified AS
                    SELECT id, label, ai_classify(text, ['fresh', 'rotten'], modelParameters => {PARAMS},
                                                  failOnError => false) AS r FROM reviews""")
    classify_s = time.perf_counter() - started

    rows, s_acc, s_valid, s_pn = con.sql("""
        SELECT count(*),
               avg(CASE WHEN r.response = CASE label WHEN 'fresh' THEN 'positive' ELSE 'negative' END
                        THEN 1 ELSE 0 END),
               avg(CASE WHEN r.response IN ('positive', 'negative', 'neutral', 'mixed') THEN 1 ELSE 0 END),
               avg(CASE WHEN r.response = CASE label WHEN 'fresh' THEN 'positive' ELSE 'negative' END
                        THEN 1 ELSE 0 END) FILTER (r.response IN ('positive', 'negative'))
        FROM sentiment""").fetchall()[0]
    spread = dict(con.sql("SELECT coalesce(r.response, 'error'), count(*) FROM sentiment GROUP BY ALL").fetchall())
    c_acc, c_valid = con.sql("""
        SELECT avg(CASE WHEN r.response = label THEN 1 ELSE 0 END),
               avg(CASE WHEN r.response IN ('fresh', 'rotten') THEN 1 ELSE 0 END)
        FROM classified""").fetchall()[0]
    c_spread = dict(con.sql("SELECT coalesce(r.response, 'error'), count(*) FROM classified GROUP BY ALL").fetchall())

    sentences = [s for pair in PARAPHRASES for s in pair]
    con.execute("CREATE TABLE sentences AS SELECT * FROM (SELECT unnest(?) AS s, generate_subscripts(?, 1) AS i)",
                [sentences, sentences])
    ranked, para, unrelated = con.sql("""
        WITH scored AS (
            SELECT a.i, b.i AS j, ai_similarity(a.s, b.s) AS sim,
                   (a.i + 1) // 2 = (b.i + 1) // 2 AS paraphrase
            FROM sentences a, sentences b WHERE a.i <> b.i)
        SELECT avg(CASE WHEN best_para > best_other THEN 1 ELSE 0 END), avg(best_para), avg(mean_other)
        FROM (SELECT i, max(sim) FILTER (paraphrase) AS best_para, max(sim) FILTER (NOT paraphrase) AS best_other,
                     avg(sim) FILTER (NOT paraphrase) AS mean_other
              FROM scored GROUP BY i)""").fetchall()[0]

    print(f"""## Task functions on the built-in models

Command: `python benchmarks/eval_functions.py --rows {args.rows}` (no response cache; temperature 0,
max_tokens 32). {rows} Rotten Tomatoes snippets, half fresh and half rotten, sampled as in
`sql/quickstart.sql`; `local-chat` is SmolLM2-135M-Instruct, `local-embed` all-MiniLM-L6-v2.

| measure | value |
| --- | --- |
| ai_analyze_sentiment accuracy (positive = fresh, negative = rotten; neutral/mixed count as wrong) | {s_acc:.2f} |
| ai_analyze_sentiment accuracy on the rows it answered positive or negative | {(s_pn or 0):.2f} |
| ai_analyze_sentiment answers that are one of its four values | {s_valid:.2f} |
| ai_analyze_sentiment answers | {', '.join(f'{k} {v}' for k, v in sorted(spread.items()))} |
| ai_classify(text, ['fresh', 'rotten']) accuracy | {c_acc:.2f} |
| ai_classify answers that are one of the labels | {c_valid:.2f} |
| ai_classify answers | {', '.join(f'{k} {v}' for k, v in sorted(c_spread.items()))} |
| time: ai_analyze_sentiment / ai_classify, {rows} rows | {sentiment_s:.0f} s / {classify_s:.0f} s |
| ai_similarity: sentences whose paraphrase beats every unrelated sentence ({len(sentences)} sentences) | {ranked:.2f} |
| ai_similarity: mean paraphrase score / mean unrelated score | {para:.2f} / {unrelated:.2f} |
""")


if __name__ == "__main__":
    main()
