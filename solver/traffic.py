"""Traffic classes from a request log (the checklist's step 1: profile production traffic).

A log is JSONL or CSV, one request per line, with its prompt and output token counts and its time:
OpenAI-compatible fields (`usage.prompt_tokens`, `usage.completion_tokens`, `created`) or flat
columns (`prompt_tokens`, `output_tokens` or `completion_tokens`, `timestamp` or `time`; seconds or
milliseconds since the epoch, or ISO 8601). Requests are clustered by length (k-means on log2 prompt and output tokens,
deterministic), and each cluster becomes a class with its arrival rate and burstiness.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from .errors import QuantplanError

PROMPT_FIELDS = ("prompt_tokens", "input_tokens", "prompt_len", "input_len")
OUTPUT_FIELDS = ("completion_tokens", "output_tokens", "output_len", "generated_tokens")
TIME_FIELDS = ("timestamp", "created", "time", "arrival_time", "start_time")
# Times above this are epoch milliseconds: as seconds they would fall after the year 5000, while every
# epoch-millisecond time since March 1973 is above it.
EPOCH_MILLISECONDS = 1e11
MAX_CLASSES = 4
SPLIT_GAIN = 0.5  # one more class only when it removes at least half the remaining spread in log2 lengths
MIN_SEPARATION = 1.0  # ... and its clusters' mean lengths differ at least 2x (1 in log2) in prompt or output
PEAK_WINDOW_S = 60.0


class Request(BaseModel):
    model_config = ConfigDict(frozen=True)

    prompt_tokens: int
    output_tokens: int
    time_s: float


class ClassProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    requests: int
    share: float
    prompt_tokens: int  # mean
    output_tokens: int  # mean
    prompt_p90: int
    output_p90: int
    rate_per_s: float  # mean over the log's span
    peak_rate_per_s: float  # busiest PEAK_WINDOW_S window
    interarrival_cv: float  # 1 for Poisson arrivals, above 1 bursty


def read_log(path: str) -> list[Request]:
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise QuantplanError(f"{path}: cannot read: {error.__class__.__name__}") from None
    stripped = text.lstrip()
    rows = _jsonl(path, text) if stripped.startswith("{") else _csv(path, text)
    if len(rows) < 2:
        raise QuantplanError(f"{path}: {len(rows)} request(s); a log needs at least 2 to give a rate")
    if min(r.time_s for r in rows) > EPOCH_MILLISECONDS:  # epoch milliseconds, as many loggers write them
        rows = [r.model_copy(update={"time_s": r.time_s / 1000.0}) for r in rows]
    return sorted(rows, key=lambda r: r.time_s)


def _jsonl(path: str, text: str) -> list[Request]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise QuantplanError(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise QuantplanError(f"{path}:{number}: not a JSON object")
        flat = {**record, **(record.get("usage") or {})} if isinstance(record.get("usage"), dict) else record
        rows.append(_request(path, number, flat))
    return rows


def _csv(path: str, text: str) -> list[Request]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise QuantplanError(f"{path}: empty CSV")
    return [_request(path, number, row) for number, row in enumerate(reader, start=2)]


def _request(path: str, number: int, record: dict) -> Request:
    def field(names, what):
        name = next((n for n in names if record.get(n) not in (None, "")), None)
        if name is None:
            raise QuantplanError(f"{path}:{number}: no {what} field (one of {', '.join(names)})")
        return name, record[name]

    values = []
    for names, what in ((PROMPT_FIELDS, "prompt token"), (OUTPUT_FIELDS, "output token")):
        name, value = field(names, what)
        try:
            count = int(float(value))
        except (TypeError, ValueError):
            raise QuantplanError(f"{path}:{number}: {name} {value!r} is not a number") from None
        if count < 0 or (what == "output token" and count == 0) or count > 2_000_000:
            raise QuantplanError(f"{path}:{number}: {name} {value!r} is out of range")
        values.append(count)
    name, value = field(TIME_FIELDS, "timestamp")
    return Request(prompt_tokens=max(values[0], 1), output_tokens=values[1], time_s=_seconds(path, number, name, value))


def _seconds(path: str, number: int, name: str, value) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        try:
            seconds = datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise QuantplanError(f"{path}:{number}: {name} {value!r} is neither seconds nor ISO 8601") from None
    if not math.isfinite(seconds):
        raise QuantplanError(f"{path}:{number}: {name} {value!r} is not finite")
    return seconds


def profile(requests: list[Request]) -> list[ClassProfile]:
    """Length clusters with their rates, shortest prompts first."""
    points = np.log2(np.array([[r.prompt_tokens, r.output_tokens] for r in requests], dtype=float))
    labels = clusters(points)
    span = requests[-1].time_s - requests[0].time_s
    if span <= 0:
        raise QuantplanError("the log's requests all have the same time: no rate can be measured")
    found = []
    for label in sorted(set(labels), key=lambda k: points[labels == k, 0].mean()):
        members = [r for r, k in zip(requests, labels) if k == label]
        found.append(_class(members, len(requests), span))
    names = [f"p{c.prompt_tokens}-o{c.output_tokens}" for c in found]
    return [c.model_copy(update={"name": n}) for c, n in zip(found, names)]


def clusters(points: np.ndarray) -> np.ndarray:
    """k-means labels for 1..MAX_CLASSES clusters; the smallest k after which one more cluster removes
    less than SPLIT_GAIN of the remaining within-cluster spread, or gives two clusters whose mean
    lengths are within 2x of each other (one class to plan for)."""
    best = np.zeros(len(points), dtype=int)
    spread = _spread(points, best)
    for k in range(2, min(MAX_CLASSES, len(np.unique(points, axis=0))) + 1):
        labels = _kmeans(points, k)
        new = _spread(points, labels)
        if spread <= 0 or (spread - new) / spread < SPLIT_GAIN or _separation(points, labels) < MIN_SEPARATION:
            break
        best, spread = labels, new
    return best


def _separation(points: np.ndarray, labels: np.ndarray) -> float:
    """The smallest distance between two clusters' centres, in the larger of the log2 length axes."""
    centers = np.array([points[labels == k].mean(axis=0) for k in sorted(set(labels))])
    gaps = np.abs(centers[:, None, :] - centers[None, :, :]).max(axis=2)
    return float(gaps[~np.eye(len(centers), dtype=bool)].min()) if len(centers) > 1 else math.inf


def _spread(points: np.ndarray, labels: np.ndarray) -> float:
    return float(sum(((points[labels == k] - points[labels == k].mean(axis=0)) ** 2).sum() for k in set(labels)))


def _kmeans(points: np.ndarray, k: int, rounds: int = 50) -> np.ndarray:
    order = np.argsort(points[:, 0] + points[:, 1], kind="stable")
    centers = points[order[np.linspace(0, len(points) - 1, k).round().astype(int)]]  # spread over the sizes
    labels = np.zeros(len(points), dtype=int)
    for _ in range(rounds):
        labels = ((points[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)
        moved = np.array([points[labels == j].mean(axis=0) if (labels == j).any() else centers[j] for j in range(k)])
        if np.allclose(moved, centers):
            break
        centers = moved
    return labels


def _class(members: list[Request], total: int, span: float) -> ClassProfile:
    prompts = np.array([r.prompt_tokens for r in members])
    outputs = np.array([r.output_tokens for r in members])
    times = np.array([r.time_s for r in members])
    gaps = np.diff(times)
    cv = float(gaps.std() / gaps.mean()) if len(gaps) > 1 and gaps.mean() > 0 else 0.0
    windows = np.searchsorted(times, times + PEAK_WINDOW_S, side="left") - np.arange(len(times))
    peak = float(windows.max()) / min(PEAK_WINDOW_S, span)
    return ClassProfile(name="", requests=len(members), share=len(members) / total,
                        prompt_tokens=round(prompts.mean()), output_tokens=round(outputs.mean()),
                        prompt_p90=int(np.percentile(prompts, 90)), output_p90=int(np.percentile(outputs, 90)),
                        rate_per_s=len(members) / span, peak_rate_per_s=peak, interarrival_cv=cv)


def scenario_toml(classes: list[ClassProfile], source: str, model: str | None, peak: bool) -> str:
    """A scenario file with one [[class]] per profile; SLOs left for the user to fill in."""
    lines = [f"# Traffic classes from {source} (quantplan traffic): lengths are each cluster's means,",
             f"# rates {'the busiest ' + str(int(PEAK_WINDOW_S)) + ' s' if peak else 'the mean over the log'}. "
             "Fill in the SLOs and the quality floor.",
             f'model = "{model}"' if model else '# model = "..."   # give the model (quantplan list models)', ""]
    for c in classes:
        rate = c.peak_rate_per_s if peak else c.rate_per_s
        lines += ["[[class]]", f'name = "{c.name}"', f"prompt_tokens = {c.prompt_tokens}  # p90 {c.prompt_p90}",
                  f"output_tokens = {c.output_tokens}  # p90 {c.output_p90}",
                  f"rate_per_s = {rate:.4g}  # {c.requests} requests ({c.share:.0%}); mean {c.rate_per_s:.4g}/s, "
                  f"busiest {int(PEAK_WINDOW_S)} s {c.peak_rate_per_s:.4g}/s; inter-arrival CV {c.interarrival_cv:.2f}"
                  f" (Poisson = 1)", "# ttft_ms = ...", "# tpot_ms = ...", "# use_case = \"chat_general\"", ""]
    return "\n".join(lines)
