"""Turn device_microbench.py's JSON runs into catalogs/kernel_measurements.csv (one row per measured point,
each run's figure in its own column, the source on every row).

    python benchmarks/microbench_csv.py benchmarks/results/h200-2026-12-04 --device h200 > catalogs/kernel_measurements.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

COLUMNS = ["id", "device", "section", "shape", "layer", "n", "k", "tokens", "sequences", "context", "kind", "metric",
           "run1", "run2", "unit", "source"]


def _points(run: dict):
    """(key, fields, metric, value, unit) for every measured point of one run."""
    yield ("copy", "read"), {"section": "bandwidth", "kind": "read"}, "tb_s", run["copy"]["read_tb_s"], "TB/s"
    for row in run.get("gemm", []):
        if "ms" not in row:
            continue
        key = ("gemm", row["model"], row["layer"], row["kind"], row["m"])
        fields = {"section": "gemm", "shape": row["model"], "layer": row["layer"], "n": row["n"], "k": row["k"],
                  "tokens": row["m"], "kind": row["kind"]}
        yield key, fields, "tflops", row["tflops"], "TFLOP/s"
    for section, shape in (("decode", "llama-3.1-8b"), ("decode_70b_tp8_rank", "llama-3.1-70b-tp8-rank")):
        for row in run.get(section, []):
            if "ms" in row:
                fields = {"section": "decode", "shape": shape, "sequences": row["b"], "context": row["context"],
                          "kind": "bf16"}
                yield (section, row["b"], row["context"]), fields, "step_ms", row["ms"], "ms"
    for row in run.get("prefill", []):
        if "ms" in row:
            fields = {"section": "prefill", "shape": "llama-3.1-8b", "tokens": row["prompt"], "kind": "bf16"}
            yield ("prefill", row["prompt"]), fields, "step_ms", row["ms"], "ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder holding run1.json and run2.json")
    parser.add_argument("--device", required=True, help="the catalog's id of the measured GPU")
    args = parser.parse_args()
    runs = [json.loads((args.folder / name).read_text()) for name in ("run1.json", "run2.json")]
    env = runs[0]["environment"]
    source = (f"quantplan benchmarks/device_microbench.py on one {env['device']} (compute capability "
              f"{env['capability']}, {env['multiprocessors']} SMs; nvidia-smi: {env['nvidia_smi']}), PyTorch "
              f"{env['torch']} (CUDA {env['cuda']}: cuBLAS/cuBLASLt GEMMs, torch._scaled_mm for FP8, torch._int_mm "
              f"for INT8, scaled_dot_product_attention), {runs[0]['started']}; random inputs, CUDA-graph replays, "
              f"median of 7 (decode 9, prefill 5 eager), weights rotated over >= 1 GiB; two runs back to back; raw "
              f"JSON {args.folder.as_posix()}/run1.json and run2.json")
    second = {key: value for key, _, _, value, _ in _points(runs[1])}
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(COLUMNS)
    for number, (key, fields, metric, value, unit) in enumerate(_points(runs[0]), start=1):
        row = {column: "" for column in COLUMNS}
        row.update(fields, id=f"k{number}", device=args.device, metric=metric, run1=f"{value:.4g}",
                   run2=f"{second[key]:.4g}" if key in second else "", unit=unit,
                   source=source if number == 1 else "as k1")
        writer.writerow([row[column] for column in COLUMNS])
    return 0


if __name__ == "__main__":
    sys.exit(main())
