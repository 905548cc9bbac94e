"""Measure one GPU's ceilings and a Llama-shaped step in plain PyTorch: the figures quantplan's roofline rests on.

Run on a machine with an NVIDIA GPU and PyTorch (nothing else is needed; no model is downloaded, weights are
random). Writes one JSON file and prints a short table:

    python benchmarks/device_microbench.py --out results.json [--quick]

Sections, each timed with CUDA graphs replayed after warm-up (median of several replays), inputs rotated
across enough copies to defeat the L2 cache:

1. copy: device-to-device copy of a 4 GiB tensor (bytes read + written) and a read-only reduction.
2. gemm: Y = X W^T for the linear layers of Llama-3.1-8B and of one tensor-parallel rank of Llama-3.1-70B
   (TP 1), tokens M from 1 to 8192, in BF16, FP16, FP8 E4M3 (torch._scaled_mm, per-tensor scales, fast
   accumulation, and per-row scales) and INT8 (torch._int_mm). Reports TFLOP/s and the weight-read rate.
3. decode: one decode step of a whole Llama-3.1-8B (random BF16 weights, 32 layers, GQA 32/8, lm_head 128,256)
   holding b sequences at context L, captured as one CUDA graph: RMSNorm, QKV, attention over the KV cache
   (scaled_dot_product_attention with the query group as the query length), O, gated MLP, lm_head.
4. prefill: one sequence of P prompt tokens through the same model, causal attention, eager.

quantplan does not import this file; its figures enter the catalogs by hand, each with this script as source.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import traceback

import torch
import torch.nn.functional as F

LLAMA_8B = dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, head_dim=128, vocab=128256)
# One rank of Llama-3.1-70B at tensor parallelism 8: 64/8 query heads, 8/8 KV heads, 28672/8 MLP, 128256/8 vocab
# (the all-reduces, two per layer, are not in a one-GPU run).
LLAMA_70B_TP8_RANK = dict(hidden=8192, intermediate=3584, layers=80, heads=8, kv_heads=1, head_dim=128, vocab=16032)
# Linear layers as (name, out_features N, in_features K).
SHAPES = {
    "llama-3.1-8b": [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)],
    "llama-3.1-70b": [("qkv", 10240, 8192), ("o", 8192, 8192), ("gate_up", 57344, 8192), ("down", 8192, 28672)],
}
ROTATE_BYTES = 1 << 30  # weights rotated per timed graph: well past the 50-60 MB L2


def median_ms(fn, replays: int = 7, warmup: int = 2) -> float:
    """Median wall time of fn() in ms, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def graphed(body):
    """Capture body() as a CUDA graph; return a function replaying it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        body()  # warm-up outside the capture: cuBLAS handles, workspaces
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph.replay


def environment() -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0)}
    props = torch.cuda.get_device_properties(0)
    info.update(multiprocessors=props.multi_processor_count, memory_gib=props.total_memory / 2**30,
                capability=f"{props.major}.{props.minor}")
    try:
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,power.limit",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as error:  # noqa: BLE001 - a missing tool is recorded, not fatal
        info["nvidia_smi"] = f"unavailable: {error}"
    return info


def copy_bandwidth() -> dict:
    n = 2 * 2**30  # bf16 elements: 4 GiB
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = median_ms(graphed(lambda: dst.copy_(src)))
    total = torch.empty((), device="cuda", dtype=torch.float32)
    read_ms = median_ms(graphed(lambda: total.copy_(torch.sum(src, dtype=torch.float32))))
    gib = n * 2
    src = dst = None  # free before the next section
    torch.cuda.empty_cache()
    return {"bytes": gib, "copy_ms": copy_ms, "copy_tb_s": 2 * gib / copy_ms / 1e9,
            "read_ms": read_ms, "read_tb_s": gib / read_ms / 1e9}


def _weights(n: int, k: int, make, bytes_per: float) -> list:
    copies = max(1, min(64, int(ROTATE_BYTES // (n * k * bytes_per))))
    return [make() for _ in range(copies)]


def gemm_rates(tokens: list[int], deadline: float) -> list[dict]:
    rows = []
    one = torch.ones((), device="cuda", dtype=torch.float32)
    for model, shapes in SHAPES.items():
        for name, n, k in shapes:
            for kind in ("bf16", "fp16", "fp8-tensor-fast", "fp8-row", "int8"):
                if time.time() > deadline:
                    rows.append({"model": model, "layer": name, "kind": kind, "error": "skipped: section deadline"})
                    continue
                try:
                    if kind in ("bf16", "fp16"):
                        dtype = torch.bfloat16 if kind == "bf16" else torch.float16
                        weights = _weights(n, k, lambda: torch.randn(n, k, device="cuda", dtype=dtype), 2)
                    elif kind.startswith("fp8"):
                        weights = _weights(n, k, lambda: (torch.randn(n, k, device="cuda") * 0.5).to(
                            torch.float8_e4m3fn), 1)
                    else:
                        weights = _weights(n, k, lambda: torch.randint(-64, 64, (n, k), device="cuda",
                                                                       dtype=torch.int8), 1)
                except torch.OutOfMemoryError:
                    continue
                for m in tokens:
                    if kind.startswith("fp8") and m % 16:
                        continue  # _scaled_mm wants dimensions divisible by 16 (engines pad)
                    if kind == "int8" and m <= 16:
                        continue  # torch._int_mm wants more than 16 rows
                    row = {"model": model, "layer": name, "n": n, "k": k, "m": m, "kind": kind}
                    try:
                        if kind in ("bf16", "fp16"):
                            x = torch.randn(m, k, device="cuda", dtype=weights[0].dtype)

                            def body(x=x, weights=weights):
                                for w in weights:
                                    torch.mm(x, w.t())
                        elif kind == "fp8-tensor-fast":
                            x = (torch.randn(m, k, device="cuda") * 0.5).to(torch.float8_e4m3fn)

                            def body(x=x, weights=weights):
                                for w in weights:
                                    torch._scaled_mm(x, w.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                                     use_fast_accum=True)
                        elif kind == "fp8-row":
                            x = (torch.randn(m, k, device="cuda") * 0.5).to(torch.float8_e4m3fn)
                            sa = torch.ones(m, 1, device="cuda", dtype=torch.float32)
                            sb = torch.ones(1, n, device="cuda", dtype=torch.float32)

                            def body(x=x, weights=weights, sa=sa, sb=sb):
                                for w in weights:
                                    torch._scaled_mm(x, w.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
                        else:
                            x = torch.randint(-64, 64, (m, k), device="cuda", dtype=torch.int8)

                            def body(x=x, weights=weights):
                                for w in weights:
                                    torch._int_mm(x, w.t())
                        ms = median_ms(graphed(body)) / len(weights)
                        weight_bytes = n * k * weights[0].element_size()
                        row.update(ms=ms, tflops=2 * m * n * k / ms / 1e9, weight_tb_s=weight_bytes / ms / 1e9)
                    except Exception as error:  # noqa: BLE001 - an unsupported kernel is recorded
                        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                    rows.append(row)
                del weights
                torch.cuda.empty_cache()
    return rows


class Llama:
    """Random-weight Llama-3.1-8B in BF16 (no RoPE: it is elementwise and a few microseconds)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        h, i, d = cfg["hidden"], cfg["intermediate"], cfg["head_dim"]
        q, kv = cfg["heads"] * d, cfg["kv_heads"] * d

        def w(n, k):
            return torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * (1 / math.sqrt(k))

        self.layers = [dict(qkv=w(q + 2 * kv, h), o=w(h, q), gate_up=w(2 * i, h), down=w(h, i),
                            n1=torch.ones(h, device="cuda", dtype=torch.bfloat16),
                            n2=torch.ones(h, device="cuda", dtype=torch.bfloat16)) for _ in range(cfg["layers"])]
        self.norm = torch.ones(h, device="cuda", dtype=torch.bfloat16)
        self.lm_head = w(cfg["vocab"], h)

    def weight_bytes(self) -> int:
        total = self.lm_head.numel() * 2
        for layer in self.layers:
            total += sum(t.numel() * 2 for t in layer.values())
        return total

    def decode(self, x, caches):
        """x: (b, hidden); caches: per layer (k, v) of shape (b, kv_heads, L, head_dim). Returns logits."""
        cfg = self.cfg
        b = x.shape[0]
        d, hq, hkv = cfg["head_dim"], cfg["heads"], cfg["kv_heads"]
        group = hq // hkv
        for layer, (k_cache, v_cache) in zip(self.layers, caches):
            y = F.rms_norm(x, (cfg["hidden"],), layer["n1"])
            qkv = y @ layer["qkv"].t()
            q = qkv[:, : hq * d].view(b, hkv, group, d)  # the query group as the query length
            k_new = qkv[:, hq * d: (hq + hkv) * d].view(b, hkv, 1, d)
            k_cache[:, :, -1:, :].copy_(k_new)
            v_cache[:, :, -1:, :].copy_(qkv[:, (hq + hkv) * d:].view(b, hkv, 1, d))
            attn = F.scaled_dot_product_attention(q, k_cache, v_cache)
            x = x + attn.reshape(b, hq * d) @ layer["o"].t()
            y = F.rms_norm(x, (cfg["hidden"],), layer["n2"])
            gate, up = (y @ layer["gate_up"].t()).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ layer["down"].t()
        return F.rms_norm(x, (cfg["hidden"],), self.norm) @ self.lm_head.t()

    def prefill(self, x):
        """x: (P, hidden), one sequence; causal attention. Returns the last token's logits."""
        cfg = self.cfg
        p = x.shape[0]
        d, hq, hkv = cfg["head_dim"], cfg["heads"], cfg["kv_heads"]
        for layer in self.layers:
            y = F.rms_norm(x, (cfg["hidden"],), layer["n1"])
            qkv = y @ layer["qkv"].t()
            q = qkv[:, : hq * d].view(p, hq, d).transpose(0, 1)
            k = qkv[:, hq * d: (hq + hkv) * d].view(p, hkv, d).transpose(0, 1)
            v = qkv[:, (hq + hkv) * d:].view(p, hkv, d).transpose(0, 1)
            k = k.repeat_interleave(hq // hkv, dim=0)
            v = v.repeat_interleave(hq // hkv, dim=0)
            attn = F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), is_causal=True)
            x = x + attn.squeeze(0).transpose(0, 1).reshape(p, hq * d) @ layer["o"].t()
            y = F.rms_norm(x, (cfg["hidden"],), layer["n2"])
            gate, up = (y @ layer["gate_up"].t()).chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ layer["down"].t()
        return F.rms_norm(x[-1:], (cfg["hidden"],), self.norm) @ self.lm_head.t()


def decode_steps(model: Llama, grid: list[tuple[int, int]], deadline: float) -> list[dict]:
    cfg = model.cfg
    rows = []
    for b, length in grid:
        if time.time() > deadline:
            rows.append({"b": b, "context": length, "error": "skipped: section deadline"})
            continue
        row = {"b": b, "context": length}
        try:
            caches = [(torch.randn(b, cfg["kv_heads"], length, cfg["head_dim"], device="cuda", dtype=torch.bfloat16),
                       torch.randn(b, cfg["kv_heads"], length, cfg["head_dim"], device="cuda", dtype=torch.bfloat16))
                      for _ in range(cfg["layers"])]
            x = torch.randn(b, cfg["hidden"], device="cuda", dtype=torch.bfloat16)
            with torch.no_grad():
                ms = median_ms(graphed(lambda: model.decode(x, caches)), replays=9)
            kv_bytes = 2 * cfg["layers"] * cfg["kv_heads"] * cfg["head_dim"] * 2 * length * b
            row.update(ms=ms, weight_bytes=model.weight_bytes(), kv_bytes=kv_bytes,
                       tb_s=(model.weight_bytes() + kv_bytes) / ms / 1e9)
            caches = x = None  # free before the next point allocates its cache
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        torch.cuda.empty_cache()
        rows.append(row)
    return rows


def prefill_steps(model: Llama, prompts: list[int]) -> list[dict]:
    cfg = model.cfg
    rows = []
    for p in prompts:
        row = {"prompt": p}
        try:
            x = torch.randn(p, cfg["hidden"], device="cuda", dtype=torch.bfloat16)
            with torch.no_grad():
                ms = median_ms(lambda: model.prefill(x), replays=5)
            h, i, d = cfg["hidden"], cfg["intermediate"], cfg["head_dim"]
            linear = 2 * p * cfg["layers"] * h * ((cfg["heads"] + 2 * cfg["kv_heads"]) * d + cfg["heads"] * d
                                                    + 3 * i)
            attention = 2 * cfg["layers"] * cfg["heads"] * d * p * p  # QK^T and PV, causal half of 4 * P^2 * d
            row.update(ms=ms, linear_flops=linear, attention_flops=attention,
                       tflops=(linear + attention) / ms / 1e9)
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        torch.cuda.empty_cache()
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="fewer sizes (a smoke run)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="stop starting new decode points after this")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("device_microbench: no CUDA device", file=sys.stderr)
        return 2
    start = time.time()
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}

    def save():
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)

    def section(name, fn):
        t0 = time.time()
        try:
            results[name] = fn()
        except Exception:  # noqa: BLE001 - one section's failure keeps the others
            results[name + "_error"] = traceback.format_exc()[-2000:]
            print(f"[{name}] failed:\n{results[name + '_error']}", flush=True)
        print(f"[{name}] {time.time() - t0:.1f} s", flush=True)
        save()

    section("environment", environment)
    section("copy", copy_bandwidth)
    tokens = [1, 16, 64, 256, 2048] if args.quick else [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    section("gemm", lambda: gemm_rates(tokens, start + 0.45 * args.budget_s))
    model = None
    try:
        torch.manual_seed(0)
        model = Llama(LLAMA_8B)
    except Exception:  # noqa: BLE001
        results["model_error"] = traceback.format_exc()[-2000:]
    if model is not None:
        grid = [(1, 1024), (64, 1024)] if args.quick else [
            (1, 512), (1, 2048), (1, 8192), (8, 2048), (16, 2048), (32, 512), (32, 2048), (32, 8192),
            (64, 512), (64, 2048), (64, 8192), (128, 512), (128, 2048), (256, 512), (256, 2048)]
        section("decode", lambda: decode_steps(model, grid, start + args.budget_s))
        section("prefill", lambda: prefill_steps(model, [512, 2048] if args.quick else [128, 512, 2048, 8192]))
        del model
        torch.cuda.empty_cache()
        try:
            rank = Llama(LLAMA_70B_TP8_RANK)
            grid = [(b, 1024) for b in (1, 8, 16, 32, 64, 100, 128, 256)] + [(16, 4096), (64, 4096)]
            section("decode_70b_tp8_rank", lambda: decode_steps(rank, grid, start + 1.5 * args.budget_s))
        except Exception:  # noqa: BLE001
            results["rank_error"] = traceback.format_exc()[-2000:]
    results["seconds"] = time.time() - start
    save()
    copy = results.get("copy", {})
    print(f"copy {copy.get('copy_tb_s', float('nan')):.2f} TB/s, read {copy.get('read_tb_s', float('nan')):.2f} TB/s")
    for row in results.get("gemm", []):
        if row.get("layer") in ("gate_up",) and "ms" in row:
            print(f"gemm {row['model']:>14} {row['layer']:>7} {row['kind']:>15} m={row['m']:>5} "
                  f"{row['tflops']:7.1f} TFLOP/s {row['weight_tb_s']:5.2f} TB/s")
    for row in results.get("decode", []):
        print("decode", row)
    for row in results.get("decode_70b_tp8_rank", []):
        print("decode 70b rank", row)
    for row in results.get("prefill", []):
        print("prefill", row)
    errors = [r for r in results.get("gemm", []) if "error" in r]
    print(f"gemm errors: {len(errors)}", errors[:3])
    print(f"total {results['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
