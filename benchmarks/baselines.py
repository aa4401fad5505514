"""What aiquery is compared with: the code people write by hand to do the same job.

Each function runs in a fresh process (see clients.isolated), sends one chat request per row to an
OpenAI-compatible base URL, and returns {"seconds", "rows", "ok_rows"} where ok_rows counts answers
equal to `expect(row)` (None: any 200 answer counts).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import workloads
from workloads import MODEL


def raw_aiohttp(base_url: str, rows: int, workers: int) -> dict:
    """The minimal client: one aiohttp ClientSession, `workers` tasks pulling rows, post and read the body."""
    import aiohttp

    async def main() -> dict:
        next_row = iter(range(rows))
        ok = 0
        # Pool as large as the workers, so the pool never limits what the workers keep in flight.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=workers)) as session:
            async def worker() -> None:
                nonlocal ok
                for row in next_row:  # a shared iterator: each row is taken by exactly one worker
                    body = {"model": MODEL, "messages": [{"role": "user", "content": workloads.prompt(row)}]}
                    async with session.post(f"{base_url}/chat/completions", json=body) as resp:
                        await resp.read()
                        ok += resp.status == 200
            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(workers)))
            return {"seconds": time.perf_counter() - start, "rows": rows, "ok_rows": ok}

    return asyncio.run(main())


def openai_gather(base_url: str, rows: int, concurrency: int, expect: bool) -> dict:
    """The usual hand-written script: AsyncOpenAI, a Semaphore and asyncio.gather over every row."""
    import openai

    async def main() -> dict:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        limit = asyncio.Semaphore(concurrency)

        async def ask(row: int) -> bool:
            async with limit:
                reply = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": workloads.prompt(row)}])
            return not expect or reply.choices[0].message.content == workloads.expected_answer(row)

        start = time.perf_counter()
        answers = await asyncio.gather(*(ask(row) for row in range(rows)))
        seconds = time.perf_counter() - start
        await client.close()
        return {"seconds": seconds, "rows": rows, "ok_rows": sum(answers)}

    return asyncio.run(main())


def naive_udf(base_url: str, rows: int, request_timeout: float) -> dict:
    """A DuckDB native Python UDF doing one blocking urllib request per row."""
    import duckdb

    def ask(text: str) -> str:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]}).encode()
        request = urllib.request.Request(f"{base_url}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=request_timeout) as resp:
            return json.loads(resp.read())["choices"][0]["message"]["content"]

    con = duckdb.connect()
    con.create_function("ask", ask, ["VARCHAR"], "VARCHAR", type="native", side_effects=True)
    con.execute("CREATE TABLE prompts AS SELECT range AS id, 'row ' || range AS prompt FROM range(?)", [rows])
    start = time.perf_counter()
    con.execute("CREATE TABLE scored AS SELECT id, ask(prompt) AS answer FROM prompts")
    seconds = time.perf_counter() - start
    ok = con.execute("SELECT count(*) FROM scored WHERE answer = 'echo: row ' || id").fetchone()[0]
    con.close()
    return {"seconds": seconds, "rows": rows, "ok_rows": ok}
