"""The many-row functions against the naive plan, in one run: requests sent and agreement with a reference.

    python benchmarks/manyrow.py [--rows 1000]

The reference endpoint is tests/fakeserver.py answering from the Rotten Tomatoes labels (a fair
stand-in for a model that is always right): "the review praises the film" is true of fresh reviews,
ai_classify(['fresh', 'rotten']) answers the label, a review and a plot summary match when they are
of the same film, and a reranker puts fresh reviews first. Embeddings (join blocking, ranking, the
cascade's proxy) come from the built-in all-MiniLM-L6-v2 (`local-embed`), so their quality is real.

1. Cascades: ai_filter_cascade and ai_classify_cascade (targets 0.9 and 0.8) against ai_filter /
   ai_classify on every row: chat requests, and agreement with the reference over all rows (and the
   agreement the cascade measured on its sample, from aiquery_plans()).
2. Semantic join: reviews (one per film) x plot summaries, "the review is about the film the plot
   summary describes": the naive `JOIN ... ON ai_filter(...)` against ai_join; requests, precision
   and recall against the films.
3. ai_top_k(text, 'the review praises the film', 10) against ai_filter on every row.
4. ai_agg on a group 20 times the endpoint's context_tokens: its requests and levels, and whether
   the combined answer accounts for every row (the reference answers each step with the rows it saw).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import aiquery  # noqa: E402
from fakeserver import FakeServer  # noqa: E402

NUMBERED = re.compile(r"(?:^|\n)\[\d+\] ")
SEPARATOR = " || "


def numbered(text: str) -> list[str]:
    return NUMBERED.split(text)[1:]


class Reference:
    """Answers the requests of ai_filter, ai_classify, ai_join, ai_top_k and ai_agg from labels."""

    def __init__(self, label: dict[str, str], film: dict[str, str]):
        self.label, self.film = label, film

    def __call__(self, body: dict) -> str | None:
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if system.startswith("Is this true of the text"):
            if SEPARATOR in user:  # the naive join: review || plot
                review, plot = user.split(SEPARATOR, 1)
                return json.dumps({"result": self.film[review] == self.film[plot]})
            return json.dumps({"result": self.label[user] == "fresh"})
        if system.startswith("Classify the text"):
            return json.dumps({"label": self.label[user]})
        if system.startswith("The user message holds a left text"):
            left, rest = user.split("Left text: ", 1)[1].split("\n\nCandidates:\n", 1)
            return json.dumps({"matches": [i for i, c in enumerate(numbered(rest), 1)
                                           if self.film[left] == self.film[c]]})
        if system.startswith("Is this true of the left text"):
            left, right = user.split("Left text: ", 1)[1].split("\n\nRight text: ", 1)
            return json.dumps({"result": self.film[left] == self.film[right]})
        if system.startswith("Rank the numbered texts"):
            texts = numbered(user)
            k = body["response_format"]["json_schema"]["schema"]["properties"]["ranking"]["maxItems"]
            order = sorted(range(len(texts)), key=lambda i: self.label[texts[i]] != "fresh")
            return json.dumps({"ranking": [i + 1 for i in order[:k]]})
        if system.startswith("Each numbered answer"):
            return f"rows={sum(int(t.split('=')[1]) for t in numbered(user))}"
        if system.startswith("Answer the instruction below"):
            return f"rows={len(numbered(user))}"
        raise ValueError(f"the reference does not know this request: {system[:80]!r}")


def chat_requests(server: FakeServer) -> int:
    return len(server.bodies("/chat/completions"))


def cascades(con, server, out: list[str]) -> None:
    out.append("### 1. Cascades\n")
    out.append("| plan | chat requests | agreement with the reference, all rows | agreement measured on the sample |")
    out.append("| --- | --- | --- | --- |")
    for name, naive, cascade, truth in [
        ("ai_filter", "ai_filter(text, 'the review praises the film', endpoint => 'ref')",
         "ai_filter_cascade(text, 'the review praises the film', target => {t}, endpoint => 'ref')",
         "label = 'fresh'"),
        ("ai_classify", "ai_classify(text, ['fresh', 'rotten'], endpoint => 'ref')",
         "ai_classify_cascade(text, ['fresh', 'rotten'], target => {t}, endpoint => 'ref')", "label")]:
        for target in (None, 0.9, 0.8):
            server.reset()
            call = naive if target is None else cascade.format(t=target)
            (agreement,), = con.sql(f"SELECT avg(CASE WHEN {call} = ({truth}) THEN 1 ELSE 0 END) "
                                    "FROM reviews").fetchall()
            sent = chat_requests(server)
            measured = "-"
            if target is not None:
                (figures,), = con.sql("SELECT figures FROM aiquery_plans() ORDER BY query_id DESC LIMIT 1").fetchall()
                measured = f"{figures['agreement']:.3f} (threshold {figures['threshold']:.2f})"
            label = f"{name} on every row (naive)" if target is None else f"{name}_cascade, target {target}"
            out.append(f"| {label} | {sent:,} | {agreement:.3f} | {measured} |")
    out.append("")


def join(con, server, out: list[str]) -> None:
    out.append("### 2. Semantic join: reviews x plot summaries of the same film\n")
    (left, right), = con.sql("SELECT (SELECT count(*) FROM film_reviews), (SELECT count(*) FROM plots)").fetchall()
    truth = set(con.sql("SELECT r.id, p.id FROM film_reviews r JOIN plots p USING (movie)").fetchall())
    out.append(f"{left} reviews (one per film) x {right} plot summaries; {len(truth)} true pairs.\n")
    out.append("| plan | chat requests | embedding requests | precision | recall | seconds (the reference answers "
               "at once; the embeddings run here) |")
    out.append("| --- | --- | --- | --- | --- | --- |")
    condition = "the review is about the film the plot summary describes"
    plans = [
        ("naive: JOIN ... ON ai_filter(review joined to plot)",
         f"SELECT r.id, p.id FROM film_reviews r JOIN plots p ON ai_filter(r.text || '{SEPARATOR}' || p.text, "
         f"'{condition}', endpoint => 'ref')"),
        *[(f"ai_join, k => {k}" + (", per_pair => true" if per_pair else ""),
           f"SELECT id, id_1 FROM ai_join('film_reviews', 'text', 'plots', 'text', '{condition}', k => {k}, "
           f"per_pair => {str(per_pair).lower()}, endpoint => 'ref')")
          for k, per_pair in ((5, False), (10, False), (20, False), (5, True), ("NULL", False))]]
    # k => NULL (the default) chose to list every plot: four requests per review fit them all
    for label, sql in plans:
        server.reset()
        if label.startswith("ai_join"):
            estimate = {e.endpoint: e for e in aiquery.estimate(con, sql)}["ref"]
        embeds_before = con.sql("SELECT coalesce(sum(requests), 0) FROM aiquery_usage() "
                                "WHERE endpoint = 'local-embed'").fetchall()[0][0]
        started = time.perf_counter()
        found = set(con.sql(sql).fetchall())
        seconds = time.perf_counter() - started
        embeds = con.sql("SELECT coalesce(sum(requests), 0) FROM aiquery_usage() "
                         "WHERE endpoint = 'local-embed'").fetchall()[0][0] - embeds_before
        sent = chat_requests(server)
        precision = len(found & truth) / len(found) if found else 0.0
        note = f" (estimated beforehand: {estimate.requests_to_send:,})" if label.startswith("ai_join") else ""
        out.append(f"| {label} | {sent:,}{note} | {embeds:,} | {precision:.3f} | {len(found & truth) / len(truth):.3f} "
                   f"| {seconds:.1f} |")
    out.append("")


def top_k(con, server, out: list[str]) -> None:
    out.append("### 3. ai_top_k: the 10 reviews that most praise the film\n")
    out.append("| plan | chat requests | fresh among the 10 |")
    out.append("| --- | --- | --- |")
    server.reset()
    (naive,), = con.sql("SELECT count(*) FROM (SELECT text FROM reviews WHERE ai_filter(text, "
                        "'the review praises the film', endpoint => 'ref') LIMIT 10) t "
                        "JOIN reviews USING (text) WHERE label = 'fresh'").fetchall()
    out.append(f"| ai_filter on every row, then 10 of those kept | {chat_requests(server):,} | {naive} |")
    for rerank in (False, True):
        server.reset()
        (top,), = con.sql(f"SELECT ai_top_k(text, 'the review praises the film', 10, rerank => {str(rerank).lower()}, "
                          "endpoint => 'ref') FROM reviews").fetchall()
        fresh = con.execute("SELECT count(*) FROM reviews WHERE list_contains(?, text) AND label = 'fresh'",
                            [top]).fetchall()[0][0]
        label = "ai_top_k, embedding similarity only" if not rerank else "ai_top_k, 20 candidates reranked"
        out.append(f"| {label} | {chat_requests(server):,} | {fresh} |")
    out.append("")


def agg(con, server, out: list[str]) -> None:
    context = 2048
    out.append(f"### 4. ai_agg on a group 20 times the context ({context} tokens)\n")
    con.execute(f"""CREATE TABLE big_group AS SELECT text FROM reviews_all
                    QUALIFY sum(ceil(length(text) / 4)) OVER (ORDER BY id) <= 21 * {context}""")
    (rows, tokens), = con.sql("SELECT count(*), sum(ceil(length(text) / 4)) FROM big_group").fetchall()
    server.reset()
    (answer,), = con.sql("SELECT ai_agg(text, 'What do the reviewers say?', endpoint => 'ref-small') "
                         "FROM big_group").fetchall()
    (requests, levels), = con.sql("SELECT requests, figures['max_levels'] FROM aiquery_plans() "
                                  "WHERE function = 'ai_agg' ORDER BY query_id DESC LIMIT 1").fetchall()
    out.append(f"- {rows:,} reviews, about {tokens:,.0f} tokens ({tokens / context:.1f} x the context), "
               f"max_tokens 256 per answer")
    out.append(f"- {requests} requests ({chat_requests(server)} at the server) in {levels:.0f} levels; the final "
               f"answer counts `{answer}` (every row reached it exactly once: {answer == f'rows={rows}'})\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000, help="reviews for the cascades and ai_top_k")
    parser.add_argument("--only", nargs="*", choices=("cascades", "join", "top_k", "agg"),
                        help="run these parts only")
    args = parser.parse_args()
    con0 = aiquery.connect(endpoints={}, cache=False, progress=False)
    path = con0.sql("SELECT aiquery_dataset('rotten_tomatoes')").fetchall()[0][0]
    texts = con0.sql(f"SELECT text, label, movie FROM '{path}'").fetchall()
    con0.close()
    reference = Reference({t: lab for t, lab, _ in texts}, {t: m for t, _, m in texts})
    out: list[str] = []
    started = time.perf_counter()
    with FakeServer(reply=reference) as server:
        ref = {"base_url": server.openai_base, "model": "reference", "max_concurrency": 64}
        con = aiquery.connect(endpoints={"ref": ref, "ref-small": {**ref, "context_tokens": 2048,
                                                                      "model_parameters": {"max_tokens": 256}}},
                              cache=False, progress=False)
        con.execute(f"CREATE TABLE reviews_all AS SELECT id, label, movie, text FROM '{path}' "
                    "WHERE label IN ('fresh', 'rotten')")
        con.execute(f"""CREATE TABLE reviews AS SELECT * FROM reviews_all
                        QUALIFY row_number() OVER (PARTITION BY label ORDER BY hash(id)) <= {args.rows // 2}""")
        con.execute(f"CREATE TABLE plots AS SELECT id, movie, text FROM '{path}' WHERE label = 'plot' "
                    "AND movie IN (SELECT movie FROM reviews_all)")
        con.execute("""CREATE TABLE film_reviews AS SELECT id, movie, text FROM reviews_all
                       WHERE movie IN (SELECT movie FROM plots)
                       QUALIFY row_number() OVER (PARTITION BY movie ORDER BY hash(id)) = 1
                       ORDER BY hash(movie) LIMIT 100""")
        print(f"""## Many-row functions against the naive plan

Command: `python benchmarks/manyrow.py --rows {args.rows}` (no response cache).
The reference endpoint answers from the Rotten Tomatoes labels (tests/fakeserver.py with a `reply`
function); embeddings come from the built-in all-MiniLM-L6-v2. {args.rows} reviews, half fresh and half
rotten, for the cascades and ai_top_k.
""", flush=True)
        for name, part in (("cascades", cascades), ("join", join), ("top_k", top_k), ("agg", agg)):
            if args.only and name not in args.only:
                continue
            out.clear()
            part(con, server, out)
            print("\n".join(out), flush=True)
    print(f"Run time: {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
