"""Cascades: ai_filter_cascade and ai_classify_cascade send the user's endpoint only the rows a cheap
proxy is not sure of.

For each query (and each call of the function in it):
1. A sample of the rows (`sample`, default 100: the distinct texts with the lowest hash, so a re-run
   picks the same ones) is sent to the endpoint, as ai_filter / ai_classify would send it.
2. The proxy, a softmax regression on the proxy endpoint's embeddings (the built-in all-MiniLM-L6-v2
   by default), is trained on those answers. Its cross-validated answers on the sample give, for
   each confidence threshold, the agreement with the endpoint that answering every row above it by
   the proxy (and the others by the endpoint) would have had on the sample. The lowest threshold
   whose agreement reaches `target` is taken: the proxy answers the most rows the target allows.
3. Every other row is embedded; rows whose proxy confidence reaches the threshold take the proxy's
   answer, and the rest are sent to the endpoint.
A sample in which the endpoint gave fewer than two answers at least MIN_PER_ANSWER times each
trains no proxy, and every row goes to the endpoint. The first DuckDB batch of the query calibrates;
later batches (and other threads) use its proxy and threshold. The measured agreement, threshold
and rows answered by each are in aiquery_plans() (`figures`).

Agreement is accuracy against the endpoint, over all rows: a condition true of 2% of the rows is
met by a proxy that answers false everywhere. Ask for a high target for rare conditions.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ._errors import AIQueryError, ArgumentError, OutputError
from ._rank import embed_all
from ._steps import ManyRow, Step, answer_value, as_json

MIN_PER_ANSWER = 3  # sample answers of each of two kinds needed to train a proxy
FOLDS = 5
CALIBRATIONS_KEPT = 64


@dataclass
class _Calibration:
    classes: list[Any]
    weights: np.ndarray | None  # None: no proxy (every row goes to the endpoint)
    bias: np.ndarray | None
    threshold: float
    agreement: float | None
    sample: set[str]


def fit_softmax(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-3, steps: int = 500,
                rate: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by gradient descent: enough for a few hundred embeddings."""
    weights = np.zeros((x.shape[1], classes))
    bias = np.zeros(classes)
    onehot = np.eye(classes)[y]
    for _ in range(steps):
        p = probabilities(x, weights, bias)
        grad = p - onehot
        weights -= rate * (x.T @ grad / len(y) + l2 * weights)
        bias -= rate * grad.mean(axis=0)
    return weights, bias


def probabilities(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    z = x @ weights + bias
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> tuple[float, float]:
    """The lowest threshold at which the proxy answering the rows at or above it keeps the agreement
    (over every row, the rest answered by the endpoint) at least `target`; and that agreement."""
    n = len(confidence)
    best = (float("inf"), 1.0)
    for t in sorted(set(confidence.tolist()), reverse=True):
        wrong = int(np.sum((confidence >= t) & ~correct))
        agreement = 1 - wrong / n
        if agreement >= target:
            best = (t, agreement)
    return best


def calibrate(x: np.ndarray, answers: list[Any], classes: list[Any], target: float) -> _Calibration | None:
    """A proxy and threshold from the sample's embeddings and the endpoint's answers; None without one."""
    index = {orjson.dumps(c): i for i, c in enumerate(classes)}
    y = np.array([index[orjson.dumps(a)] for a in answers])
    counts = np.bincount(y, minlength=len(classes))
    if np.sum(counts >= MIN_PER_ANSWER) < 2:
        return None
    folds = np.arange(len(y)) % FOLDS
    confidence, correct = np.zeros(len(y)), np.zeros(len(y), dtype=bool)
    for fold in range(FOLDS):
        held = folds == fold
        if held.all() or not held.any():
            continue
        weights, bias = fit_softmax(x[~held], y[~held], len(classes))
        p = probabilities(x[held], weights, bias)
        confidence[held], correct[held] = p.max(axis=1), p.argmax(axis=1) == y[held]
    threshold, agreement = choose_threshold(confidence, correct, target)
    weights, bias = fit_softmax(x, y, len(classes))
    return _Calibration(classes, weights, bias, threshold, agreement, set())


class Cascades:
    """The calibrations of running queries (the most recent CALIBRATIONS_KEPT)."""

    def __init__(self, manyrow: ManyRow) -> None:
        self.manyrow = manyrow
        self._calibrations: collections.OrderedDict[tuple, _Calibration] = collections.OrderedDict()
        self._locks: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    def _lock_for(self, key: tuple) -> threading.Lock:
        with self._lock:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
                if len(self._locks) > CALIBRATIONS_KEPT:
                    self._locks.pop(next(iter(self._locks)))
            return lock

    def run(self, step: Step, endpoint_name: Any, texts: Sequence[str | None], requests: Sequence[str | None],
            options: Sequence[str], args: Sequence[str]) -> list[str | None]:
        out: list[str | None] = [None] * len(texts)
        if not texts:
            return out
        if any(a != args[0] for a in args) or any(o != options[0] for o in options):
            raise ArgumentError("cascade: target, sample, proxy, endpoint and the other arguments must be constants")
        arg = orjson.loads(args[0])
        function, field, classes = arg["function"], arg["field"], arg["choices"]
        target, sample = arg.get("target"), arg.get("sample")
        if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < target <= 1:
            raise ArgumentError(f"{function}: target must be an agreement between 0 and 1, got {target!r}")
        if not isinstance(sample, int) or isinstance(sample, bool) or sample < 2 * MIN_PER_ANSWER:
            raise ArgumentError(f"{function}: sample must be an integer of at least {2 * MIN_PER_ANSWER} (rows sent to "
                                f"the endpoint to train the proxy), got {sample!r}")
        if not isinstance(classes, list) or len(set(map(orjson.dumps, classes))) < 2:
            raise ArgumentError(f"{function}: labels must be a list of at least two different labels, got {classes!r}")
        endpoint = step.endpoint(endpoint_name, "chat", function)
        proxy = step.endpoint(arg.get("proxy"), "embeddings", function)
        fail_on_error = orjson.loads(options[0]).get("failOnError", True)
        rows = [i for i, (t, r) in enumerate(zip(texts, requests)) if t is not None and r is not None]
        record = step.record(function, endpoint, f"proxy: softmax regression on {proxy.name} embeddings, "
                                                 f"target agreement {target:g}, sample {sample}")
        record.rows += len(rows)
        record.groups += 1
        record.naive_requests += len(rows)
        if not rows:
            return out
        calls = {}
        for i in rows:
            opts, call = step.call(endpoint, orjson.loads(requests[i]), options[0])
            calls[i] = (opts, call)
        if step.estimating:  # at most every row goes to the endpoint
            step.registration.estimator.note(endpoint.name, f"{function}: at most every row is sent to "
                                             f"{endpoint.name}: the proxy's share is known after its sample")
            step.run([calls[i][1] for i in rows], fail_fast=False)
            embed_all(step, proxy, sorted({texts[i] for i in rows}))
            record.requests += len(rows)
            return out
        distinct = sorted({texts[i] for i in rows})
        vectors = dict(zip(distinct, embed_all(step, proxy, distinct)))
        key = (step.current_query().number, endpoint.name, options[0], args[0])
        results: dict[int, tuple[Any, AIQueryError | None]] = {}
        with self._lock_for(key):
            calibration = self._calibrations.get(key)
            if calibration is None:
                calibration = self._calibrate(step, endpoint, rows, texts, calls, vectors, classes, field, target,
                                              sample, fail_on_error, results, record)
                self._calibrations[key] = calibration
                if len(self._calibrations) > CALIBRATIONS_KEPT:
                    self._calibrations.popitem(last=False)
        rest = [i for i in rows if i not in results]
        to_send = rest
        if calibration.weights is not None and rest:
            p = probabilities(np.array([vectors[texts[i]] for i in rest]), calibration.weights, calibration.bias)
            sure = p.max(axis=1) >= calibration.threshold
            for i, ok, best in zip(rest, sure, p.argmax(axis=1)):
                if ok:
                    results[i] = (calibration.classes[best], None)
            to_send = [i for i, ok in zip(rest, sure) if not ok]
            record.figures["proxy_rows"] = record.figures.get("proxy_rows", 0) + int(sure.sum())
        self._ask(step, endpoint, to_send, calls, field, fail_on_error, results, record)
        record.figures["endpoint_rows"] = record.figures.get("endpoint_rows", 0) + len(to_send)
        for i, (value, error) in results.items():
            out[i] = as_json(value, fail_on_error, error)
        return out

    def _ask(self, step: Step, endpoint: Any, rows: list[int], calls: dict, field: str, fail_on_error: bool,
             results: dict, record: Any) -> None:
        answers = step.send([calls[i][1] for i in rows], fail_on_error, record)
        for i, answer in zip(rows, answers):
            try:
                value = answer_value(endpoint, answer, calls[i][0])
                if not isinstance(value, dict) or field not in value:
                    raise OutputError(f"endpoint {endpoint.name!r}: the answer {orjson.dumps(value).decode()[:200]} "
                                      f"has no {field!r}")
                results[i] = (value[field], None)
            except AIQueryError as exc:
                if fail_on_error:
                    raise
                results[i] = (None, exc)

    def _calibrate(self, step: Step, endpoint: Any, rows: list[int], texts: Sequence[str | None], calls: dict,
                   vectors: dict, classes: list[Any], field: str, target: float, sample: int, fail_on_error: bool,
                   results: dict, record: Any) -> _Calibration:
        by_hash = sorted({texts[i] for i in rows}, key=lambda t: hashlib.blake2b(t.encode(), digest_size=8).digest())
        chosen = set(by_hash[:sample])
        sampled = [i for i in rows if texts[i] in chosen]
        self._ask(step, endpoint, sampled, calls, field, fail_on_error, results, record)
        record.figures["endpoint_rows"] = record.figures.get("endpoint_rows", 0) + len(sampled)
        answered = {texts[i]: results[i][0] for i in sampled if results[i][1] is None}
        known = [t for t in sorted(answered) if any(orjson.dumps(answered[t]) == orjson.dumps(c) for c in classes)]
        calibration = None
        if known:
            calibration = calibrate(np.array([vectors[t] for t in known]), [answered[t] for t in known], classes,
                                    target)
        if calibration is None:
            calibration = _Calibration(classes, None, None, float("inf"), None, chosen)
        record.figures.update({"sample_rows": len(sampled), "target": target,
                               "threshold": min(calibration.threshold, 1.0) if calibration.weights is not None
                               else 1.0,
                               "agreement": calibration.agreement if calibration.agreement is not None else 1.0,
                               "proxy_trained": float(calibration.weights is not None)})
        return calibration
