"""`quantplan quality`: perplexity, KL divergence and top-1 agreement of a candidate against a baseline,
measured on running engines over the user's own text, with bootstrap intervals and use-case verdicts.

The seed blog's validate_quantized_model done for real. Figures per document are kept in a JSON record
written after every document, so a run that stops can resume where it stopped.

KL divergence over top-k: the engines give only the k most likely tokens at each position. At each
position the vocabulary is split into the tokens whose probability both models gave (the baseline's
top-k that are also in the candidate's top-k, plus the document's own token) and one bucket holding all
other tokens; KL(baseline || candidate) is computed over that partition. Merging tokens into one bucket
never increases KL (the log-sum inequality), so the figure is a lower bound: it under-estimates the
full-vocabulary KL, the more so the smaller k and the flatter the distributions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import QuantplanError
from .quality_engines import Endpoint, Scored, connect, score

RECORD_KIND = "quantplan-quality-record"
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 20240601
SAVE_EVERY_S = 1.0  # rewrite the record at most this often while documents finish
FLOOR = 1e-12  # probability floor for the lumped bucket (rounded logprobs can sum above 1)
KL_NOTE = ("KL(baseline || candidate) over the baseline's top-k tokens that the candidate also returned, the "
           "document's own token, and one bucket for the rest of the vocabulary: a lower bound of the "
           "full-vocabulary KL (lumping tokens never raises KL), so it under-estimates")


# ---- documents --------------------------------------------------------------------------------------

def read_documents(path: str | Path) -> tuple[list[str], str]:
    """Documents and the file's sha256: JSON Lines with a "text" field (.jsonl), else plain text split at
    blank lines."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise QuantplanError(f"--data {path}: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise QuantplanError(f"--data {path}: not UTF-8 (byte {error.start}: {raw[error.start:error.start + 1]!r})") \
            from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        documents = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise QuantplanError(f"--data {path} line {number}: not JSON ({error.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise QuantplanError(f"--data {path} line {number}: expected an object with a \"text\" string")
            documents.append(row["text"])
    else:
        documents = [block.strip() for block in text.replace("\r\n", "\n").split("\n\n")]
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise QuantplanError(f"--data {path}: no text")
    return documents, hashlib.sha256(raw).hexdigest()


# ---- figures per document ---------------------------------------------------------------------------

def lumped_kl(base_top: dict[int, float], cand_top: dict[int, float], token: int, base_lp: float,
              cand_lp: float) -> float:
    """KL(P || Q) over the tokens both models gave plus one bucket for everything else (a lower bound)."""
    known = {t: (lp, cand_top[t]) for t, lp in base_top.items() if t in cand_top}
    known[token] = (base_lp, cand_lp)
    p = np.exp(np.array([v[0] for v in known.values()]))
    q = np.exp(np.array([v[1] for v in known.values()]))
    kl = float(np.sum(p * (np.log(p) - np.log(np.maximum(q, FLOOR)))))
    p_rest, q_rest = 1.0 - float(p.sum()), 1.0 - float(q.sum())
    if p_rest > FLOOR:
        kl += p_rest * (math.log(p_rest) - math.log(max(q_rest, FLOOR)))
    return kl


def top1(top: dict[int, float]) -> int:
    """Most likely token; ties to the lowest id (deterministic)."""
    return min(top, key=lambda t: (-top[t], t))


def document_figures(index: int, base: Scored, cand: Scored) -> dict:
    """Sums over one document's scored tokens: NLL of each model, KL, top-1 agreements."""
    if base.tokens != cand.tokens:
        at = next((i for i, (a, b) in enumerate(zip(base.tokens, cand.tokens)) if a != b),
                  min(len(base.tokens), len(cand.tokens)))
        raise QuantplanError(
            f"baseline and candidate tokenize document {index + 1} differently (from token {at}: "
            f"{base.tokens[at:at + 3]} vs {cand.tokens[at:at + 3]}): perplexity, KL and agreement need one tokenizer")
    own = base.tokens[1:]
    kl = sum(lumped_kl(b, c, t, bl, cl) for b, c, t, bl, cl in zip(base.top, cand.top, own, base.logprobs,
                                                                    cand.logprobs))
    agree = sum(top1(b) == top1(c) for b, c in zip(base.top, cand.top))
    return {"index": index, "tokens": len(own), "nll_baseline": -float(sum(base.logprobs)),
            "nll_candidate": -float(sum(cand.logprobs)), "kl_sum": float(kl), "top1_agree": int(agree)}


# ---- summary, bootstrap, verdicts -------------------------------------------------------------------

def _statistics(nll_b, nll_c, tokens, kl, agree) -> dict[str, np.ndarray]:
    """Corpus figures from (possibly resampled) per-document sums; the last axis is documents."""
    n = tokens.sum(axis=-1)
    ppl_b, ppl_c = np.exp(nll_b.sum(axis=-1) / n), np.exp(nll_c.sum(axis=-1) / n)
    return {"ppl_baseline": ppl_b, "ppl_candidate": ppl_c, "ppl_delta": ppl_c - ppl_b,
            "ppl_delta_pct": (ppl_c / ppl_b - 1.0) * 100.0, "kl_divergence": kl.sum(axis=-1) / n,
            "top1_agreement": agree.sum(axis=-1) / n}


def summarise(documents: list[dict], use_cases: dict, confidence: float = 0.95) -> dict:
    """Point figures over all tokens, percentile-bootstrap intervals over documents (fixed seed)."""
    rows = [d for d in documents if d["tokens"] > 0]
    if not rows:
        raise QuantplanError("no document has two or more tokens: nothing to score")
    columns = [np.array([float(d[key]) for d in rows]) for key in
               ("nll_baseline", "nll_candidate", "tokens", "kl_sum", "top1_agree")]
    point = {k: float(v) for k, v in _statistics(*columns).items()}
    picks = np.random.default_rng(BOOTSTRAP_SEED).integers(0, len(rows), size=(BOOTSTRAP_SAMPLES, len(rows)))
    resampled = _statistics(*(c[picks] for c in columns))
    tail = (1.0 - confidence) / 2.0 * 100.0
    intervals = {k: [float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail))]
                 for k, v in resampled.items()}
    return {"documents": len(rows), "tokens": int(columns[2].sum()), **point,
            "ci": intervals, "ci_level": confidence,
            "ci_method": f"percentile bootstrap over documents, {BOOTSTRAP_SAMPLES} resamples, seed {BOOTSTRAP_SEED}",
            "verdicts": verdicts(point, intervals, use_cases)}


def verdicts(point: dict, intervals: dict, use_cases: dict) -> dict:
    """Per use case: the seed's test (ppl increase < max and KL < max), on the point figures and on the
    upper ends of the intervals."""
    found = {}
    for name, case in sorted(use_cases.items()):
        ppl_ok = point["ppl_delta"] < case.max_ppl_delta
        kl_ok = point["kl_divergence"] < case.max_kl_divergence
        upper_ok = (intervals.get("ppl_delta", [0, math.inf])[1] < case.max_ppl_delta
                    and intervals.get("kl_divergence", [0, math.inf])[1] < case.max_kl_divergence)
        found[name] = {"max_ppl_delta": case.max_ppl_delta, "max_kl_divergence": case.max_kl_divergence,
                       "ppl_pass": bool(ppl_ok), "kl_pass": bool(kl_ok), "pass": bool(ppl_ok and kl_ok),
                       "pass_at_ci_upper": bool(upper_ok)}
    return found


# ---- the record -------------------------------------------------------------------------------------

def write_record(path: Path, record: dict) -> None:
    """Replace the record atomically: a run killed mid-write leaves the previous version whole."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(temporary, path)


def read_record(path: str | Path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except OSError as error:
        raise QuantplanError(f"{path}: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise QuantplanError(f"{path}: not a quality record (not JSON)") from None
    if not isinstance(record, dict) or record.get("kind") != RECORD_KIND:
        raise QuantplanError(f"{path}: not a quality record (kind is not {RECORD_KIND!r})")
    return record


@dataclass(frozen=True)
class Run:
    """What one `quantplan quality` run measures."""

    baseline: Endpoint
    candidate: Endpoint
    data: Path
    top_k: int
    max_tokens: int | None
    model: str | None = None
    method: str | None = None
    kv_cache_dtype: str = "fp16"


def new_record(run: Run, documents: int, digest: str) -> dict:
    return {"kind": RECORD_KIND, "version": 1, "source": "quantplan quality", "model": run.model,
            "method": run.method, "kv_cache_dtype": run.kv_cache_dtype,
            "baseline": vars(run.baseline), "candidate": vars(run.candidate),
            "data": {"path": str(run.data.resolve()), "sha256": digest, "documents": documents},
            "top_k": run.top_k, "max_tokens_per_doc": run.max_tokens, "kl_estimator": KL_NOTE,
            "complete": False, "results": [], "summary": None}


class Interrupted(QuantplanError):
    """Ctrl-C during a run: the finished documents are saved."""

    exit_code = 130


def measure(run: Run, record_path: Path, use_cases: dict, resume: dict | None = None, tick=None) -> dict:
    """Score every document not yet in the record on both servers, saving as they finish; summarise at the end.

    The record is rewritten at most every SAVE_EVERY_S seconds, and always when the run stops: a server
    that stops answering, a tokenizer mismatch or Ctrl-C leave every finished document saved, and the
    message says how to resume.
    """
    texts, digest = read_documents(run.data)
    record = resume or new_record(run, len(texts), digest)
    if resume is not None and resume["data"]["sha256"] != digest:
        raise QuantplanError(f"--data {run.data} changed since the record was started (sha256 differs): "
                             f"start a new record")
    done = {r["index"] for r in record["results"]}
    write_record(record_path, record)
    saved_at = time.monotonic()
    resume_hint = (f"{{}} of {len(texts)} documents saved in {record_path}: resume with "
                   f"quantplan quality --resume {record_path}")
    try:
        for index, text in enumerate(texts):
            if index in done:
                continue
            base = score(run.baseline, text, run.top_k, run.max_tokens)
            cand = score(run.candidate, text, run.top_k, run.max_tokens)
            record["results"].append(document_figures(index, base, cand))
            if time.monotonic() - saved_at >= SAVE_EVERY_S:
                write_record(record_path, record)
                saved_at = time.monotonic()
            if tick:
                tick(len(record["results"]), len(texts))
    except QuantplanError as error:
        write_record(record_path, record)
        raise type(error)(f"{error}; {resume_hint.format(len(record['results']))}") from None
    except KeyboardInterrupt:
        write_record(record_path, record)
        raise Interrupted(f"interrupted; {resume_hint.format(len(record['results']))}") from None
    record["results"].sort(key=lambda r: r["index"])
    record["summary"] = summarise(record["results"], use_cases)
    record["complete"] = True
    write_record(record_path, record)
    return record


def resume_run(record: dict, data: str | None, baseline: str | None, candidate: str | None, engine: str) -> Run:
    """The run a record was started with; a server that moved can be given again (same model names)."""
    if record.get("source") != "quantplan quality":
        raise QuantplanError(f"--resume: the record came from {record.get('source')!r}: nothing to resume")
    try:
        ends = []
        for role, given in (("baseline", baseline), ("candidate", candidate)):
            saved = record[role]
            if given is None:
                ends.append(connect(f"{saved['url']}#{saved['model']}", saved["engine"], role))
            else:
                ends.append(connect(given, engine, role))
        return Run(ends[0], ends[1], Path(data or record["data"]["path"]), int(record["top_k"]),
                   record.get("max_tokens_per_doc"), record.get("model"), record.get("method"),
                   record.get("kv_cache_dtype", "fp16"))
    except (KeyError, TypeError, ValueError) as error:
        raise QuantplanError(f"--resume: the record lacks {error} (edited by hand?): start a new one") from None


# ---- llama-perplexity --kl-divergence logs ----------------------------------------------------------

# The summary llama-perplexity prints after a --kl-divergence run (tools/perplexity/perplexity.cpp,
# kl_divergence(), ggml-org/llama.cpp commit 050fc7f): "Mean PPL(Q)   : %10.6lf ± %10.6lf",
# "Mean PPL(base) : ...", "Mean PPL(Q)-PPL(base) : ...", "Mean    KLD: %10.6lf ± %10.6lf",
# "Same top p: %6.3lf ± %5.3lf %%"; the ± figures are standard errors. It prints no summary under 100 tokens.
LOG_FIELDS = {"ppl_candidate": "Mean PPL(Q)", "ppl_baseline": "Mean PPL(base)",
              "ppl_delta": "Mean PPL(Q)-PPL(base)", "kl_divergence": "Mean    KLD", "top1_agreement": "Same top p"}


def _log_value(line: str) -> tuple[float, float | None]:
    figures = line.split(":", 1)[1].replace("%", " ").replace("+/-", "±").split("±")
    value = float(figures[0])
    spread = float(figures[1]) if len(figures) > 1 and figures[1].strip() not in ("", "-nan", "nan") else None
    return value, spread


def from_llama_perplexity(path: str | Path, use_cases: dict, confidence: float = 0.95) -> dict:
    """Figures from a `llama-perplexity --kl-divergence` log, intervals as value ± 1.96 standard errors."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise QuantplanError(f"--from-llama-perplexity {path}: {error.strerror or error}") from None
    lines = raw.decode("utf-8", errors="replace").splitlines()
    found: dict[str, tuple[float, float | None]] = {}
    for line in lines:
        stripped = line.strip()
        for key, label in LOG_FIELDS.items():
            head = stripped.split(":", 1)[0].rstrip()
            if head == label and key not in found:
                try:
                    found[key] = _log_value(stripped)
                except (ValueError, IndexError):
                    raise QuantplanError(f"--from-llama-perplexity {path}: cannot read {stripped!r}") from None
    missing = [LOG_FIELDS[k] for k in ("ppl_candidate", "ppl_baseline", "kl_divergence") if k not in found]
    if missing:
        raise QuantplanError(f"--from-llama-perplexity {path}: no {' / '.join(missing)} line: not the log of a "
                             f"finished llama-perplexity --kl-divergence run (it prints its summary only over "
                             f"100 tokens or more)")
    z = 1.959963984540054
    point = {k: v for k, (v, _) in found.items()}
    if "top1_agreement" in point:
        point["top1_agreement"] /= 100.0
        found["top1_agreement"] = (point["top1_agreement"], (found["top1_agreement"][1] or 0.0) / 100.0)
    point.setdefault("ppl_delta", point["ppl_candidate"] - point["ppl_baseline"])
    point["ppl_delta_pct"] = (point["ppl_candidate"] / point["ppl_baseline"] - 1.0) * 100.0
    intervals = {k: [v - z * s, v + z * s] for k, (v, s) in found.items() if s is not None}
    summary = {"documents": None, "tokens": None, **point, "ci": intervals, "ci_level": confidence,
               "ci_method": "llama-perplexity's standard errors x 1.96 (normal approximation)",
               "verdicts": verdicts(point, intervals, use_cases)}
    return summary


def record_from_log(path: str | Path, summary: dict, model: str | None, method: str | None,
                    kv_cache_dtype: str) -> dict:
    return {"kind": RECORD_KIND, "version": 1, "source": "llama-perplexity --kl-divergence", "model": model,
            "method": method, "kv_cache_dtype": kv_cache_dtype, "log": str(path),
            "kl_estimator": "llama-perplexity: full-vocabulary KL(base || Q) per token, mean over tokens",
            "complete": True, "results": [], "summary": summary}
