"""Prompt log-probabilities from running engines (vLLM, llama.cpp llama-server, SGLang) over plain HTTP.

Each client turns one document into a `Scored`: its token ids and, for every token after the first,
the log-probability the model gave it and the model's top-k log-probabilities at that position.

- vLLM: POST /tokenize, then POST /v1/completions with the token ids as prompt, `max_tokens` 1 and
  `prompt_logprobs` k; `choices[0].prompt_logprobs[i]` maps token id -> {logprob, rank} and always holds
  the prompt's own token (vLLM docs, "Extra parameters for completions API", prompt_logprobs; k is
  capped by the server's --max-logprobs, default 20).
- llama.cpp `llama-server` returns probabilities for generated tokens only (tools/server/README.md,
  POST /completion, `n_probs`: "the probabilities of top N tokens for each generated token"), not for
  the prompt. So each position i is scored by one request: prompt = token ids [0, i), `n_predict` 1,
  `n_probs` k, `cache_prompt` true (only the new token is evaluated), and the sampler forced onto the
  document's own token i (`logit_bias` +1e4, `top_k` 1). The README states the returned probabilities
  are "a simple softmax of the logits without considering any other sampler settings", so the forced
  token's `logprob` is the model's own. Tokens come from POST /tokenize with `add_special` true.
- SGLang: POST /generate with `return_logprob`, `logprob_start_len` 0, `top_logprobs_num` k and
  `max_new_tokens` 1 (docs.sglang.io/basic_usage/sampling_params.html); `meta_info.input_token_logprobs`
  holds [logprob, token id, text] per prompt token, `input_top_logprobs` the top k per position.

Only the standard library speaks HTTP (urllib). Every failure becomes a QuantplanError (one line).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass

from .errors import QuantplanError

ENGINES = ("vllm", "llama.cpp", "sglang")
OWNED_BY = {"vllm": "vllm", "llamacpp": "llama.cpp", "sglang": "sglang"}  # /v1/models `owned_by` per engine
FORCE_BIAS = 1e4
TIMEOUT_S = 600.0


class ServerError(QuantplanError):
    """A server stopped answering or answered nonsense mid-run (the finished part is kept)."""


@dataclass(frozen=True)
class Scored:
    """One document as a model saw it: token ids; for tokens 1.. their logprob and the top-k at that position."""

    tokens: list[int]
    logprobs: list[float]  # logprobs[j] = log p(tokens[j + 1] | tokens[: j + 1])
    top: list[dict[int, float]]  # top[j]: token id -> logprob, the k most likely at that position


@dataclass(frozen=True)
class Endpoint:
    url: str
    model: str
    engine: str

    def describe(self) -> str:
        return f"{self.engine} at {self.url} ({self.model})"


def _request(url: str, body: dict | None = None, timeout: float = TIMEOUT_S) -> dict | list:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", errors="replace")[:200].replace("\n", " ")
        raise ServerError(f"{url} answered HTTP {error.code}: {detail or error.reason}") from None
    except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerError(f"cannot reach {url}: {reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ServerError(f"{url} did not answer JSON: {text[:80]!r}") from None


def parse_target(text: str) -> tuple[str, str | None]:
    """URL[#MODEL] -> (base URL without a trailing /v1, model or None)."""
    url, _, model = text.partition("#")
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise QuantplanError(f"{text!r}: expected an http:// or https:// URL, optionally #MODEL")
    if url.endswith("/v1"):
        url = url[:-3]
    return url, (model.strip() or None)


def connect(text: str, engine: str = "auto", role: str = "server") -> Endpoint:
    """Ask GET /v1/models what the server serves; check the model name; tell the engine from `owned_by`."""
    url, model = parse_target(text)
    try:
        listing = _request(f"{url}/v1/models", timeout=30.0)
    except ServerError as error:
        raise QuantplanError(f"{role}: {error}") from None
    served = [m for m in (listing.get("data") or []) if isinstance(m, dict) and "id" in m] \
        if isinstance(listing, dict) else []
    if not served:
        raise QuantplanError(f"{role}: {url}/v1/models lists no model")
    ids = [m["id"] for m in served]
    if model is None:
        if len(ids) > 1:
            raise QuantplanError(f"{role}: {url} serves {len(ids)} models ({', '.join(ids)}): name one as URL#MODEL")
        model = ids[0]
    elif model not in ids:
        raise QuantplanError(f"{role}: model {model!r} is not served at {url}; it serves: {', '.join(ids)}")
    if engine == "auto":
        owner = next(str(m.get("owned_by", "")) for m in served if m["id"] == model).lower()
        engine = OWNED_BY.get(owner, "")
        if not engine:
            raise QuantplanError(f"{role}: cannot tell the engine at {url} (owned_by {owner!r}): "
                                 f"give --engine {'|'.join(ENGINES)}")
    return Endpoint(url, model, engine)


def score(endpoint: Endpoint, text: str, top_k: int, max_tokens: int | None) -> Scored:
    """The document's tokens, each token's logprob and the top-k at each position, from this endpoint."""
    scorer = {"vllm": _score_vllm, "llama.cpp": _score_llama_cpp, "sglang": _score_sglang}[endpoint.engine]
    return scorer(endpoint, text, top_k, max_tokens)


def _no_logprobs(endpoint: Endpoint, what: str) -> ServerError:
    return ServerError(f"{endpoint.describe()} returned no {what}: this engine version does not give prompt "
                       f"log-probabilities, or they are disabled")


def _score_vllm(endpoint: Endpoint, text: str, top_k: int, max_tokens: int | None) -> Scored:
    found = _request(f"{endpoint.url}/tokenize", {"model": endpoint.model, "prompt": text})
    tokens = [int(t) for t in (found.get("tokens") or [])] if isinstance(found, dict) else []
    tokens = tokens[:max_tokens] if max_tokens else tokens
    if len(tokens) < 2:
        return Scored(tokens, [], [])
    answer = _request(f"{endpoint.url}/v1/completions",
                      {"model": endpoint.model, "prompt": tokens, "max_tokens": 1, "temperature": 0,
                       "prompt_logprobs": top_k})
    choices = answer.get("choices") if isinstance(answer, dict) else None
    positions = (choices[0] or {}).get("prompt_logprobs") if choices else None
    if not positions or len(positions) != len(tokens):
        raise _no_logprobs(endpoint, "prompt_logprobs")
    logprobs, top = [], []
    for token, entry in zip(tokens[1:], positions[1:]):
        if not entry or str(token) not in entry:
            raise _no_logprobs(endpoint, f"logprob for prompt token {token}")
        logprobs.append(float(entry[str(token)]["logprob"]))
        ranked = {int(k): v for k, v in entry.items() if v.get("rank") is None or v["rank"] <= top_k}
        top.append({k: float(v["logprob"]) for k, v in ranked.items()})
    return Scored(tokens, logprobs, top)


def _score_llama_cpp(endpoint: Endpoint, text: str, top_k: int, max_tokens: int | None) -> Scored:
    found = _request(f"{endpoint.url}/tokenize", {"content": text, "add_special": True})
    tokens = [int(t["id"] if isinstance(t, dict) else t) for t in (found.get("tokens") or [])] \
        if isinstance(found, dict) else []
    tokens = tokens[:max_tokens] if max_tokens else tokens
    logprobs, top = [], []
    for i in range(1, len(tokens)):
        answer = _request(f"{endpoint.url}/completion",
                          {"prompt": tokens[:i], "n_predict": 1, "n_probs": top_k, "cache_prompt": True,
                           "top_k": 1, "logit_bias": [[tokens[i], FORCE_BIAS]], "samplers": ["top_k"]})
        probs = (answer.get("completion_probabilities") or answer.get("probs")) if isinstance(answer, dict) else None
        if not probs or "top_logprobs" not in probs[0]:
            raise _no_logprobs(endpoint, "completion_probabilities (n_probs)")
        first = probs[0]
        if int(first.get("id", -1)) != tokens[i]:
            raise ServerError(f"{endpoint.describe()} did not score the document's own token {tokens[i]} "
                              f"(it returned {first.get('id')}): logit_bias is not honoured")
        logprobs.append(float(first["logprob"]))
        top.append({int(t["id"]): float(t["logprob"]) for t in first["top_logprobs"][:top_k]})
    return Scored(tokens, logprobs, top)


def _score_sglang(endpoint: Endpoint, text: str, top_k: int, max_tokens: int | None) -> Scored:
    answer = _request(f"{endpoint.url}/generate",
                      {"text": text, "sampling_params": {"max_new_tokens": 1, "temperature": 0},
                       "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": top_k})
    meta = answer.get("meta_info") if isinstance(answer, dict) else None
    given = (meta or {}).get("input_token_logprobs")
    tops = (meta or {}).get("input_top_logprobs")
    if not given or tops is None or len(tops) != len(given):
        raise _no_logprobs(endpoint, "input_token_logprobs / input_top_logprobs")
    if max_tokens:
        given, tops = given[:max_tokens], tops[:max_tokens]
    tokens = [int(entry[1]) for entry in given]
    logprobs = [float(entry[0]) for entry in given[1:]]
    top = [{int(t[1]): float(t[0]) for t in (entries or [])[:top_k]} for entries in tops[1:]]
    if any(not t for t in top):
        raise _no_logprobs(endpoint, "top logprobs for every prompt position")
    return Scored(tokens, logprobs, top)
