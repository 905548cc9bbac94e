"""How much of one device fold's error comes from parameters no row of the other devices can pin.

`quantplan fit --cross-validate device` fits every parameter on the other devices' rows and predicts the held-out
device's; a parameter that no remaining row touches keeps the fit's fixed starting value. This script refits one
fold (by default the H100's, which holds most latency-under-load rows), then prints the held-out rows' errors by
metric and engine three ways: as the fold predicts them; with the parameters the fold could not pin set to the
catalog's values (a leak: the catalog fitted them on the held-out rows, so this decomposes the error and is no
out-of-sample figure); and with the catalog's values throughout (in sample).

Run: python benchmarks/fold_decomposition.py [--device h100-sxm]   (about 15 s)
"""

from __future__ import annotations

import argparse

import numpy as np

from quantplan.solver import fit


def errors(setup, values, held, rows) -> dict:
    """By metric: (rows, median, p90, {engine: (rows, median)}) of |predicted / measured - 1| (fit._stats)."""
    predicted = setup.predictions(values)
    found = {}
    for metric in ("tpot_ms", "ttft_ms"):
        chosen = [i for i in held if rows[i].metric == metric and np.isfinite(predicted[i])]
        if not chosen:
            continue
        pooled = fit._stats(setup, predicted, chosen)
        engines = {}
        for name in sorted({rows[i].framework for i in chosen}):
            one = fit._stats(setup, predicted, [i for i in chosen if rows[i].framework == name])
            engines[name] = (one["rows"], one["median"])
        found[metric] = (pooled["rows"], pooled["median"], pooled["p90"], engines)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="h100-sxm")
    device = parser.parse_args().device
    setup = fit.problem(fit.DEFAULT_PARAMETERS)
    rows, every = setup.prepared.rows, setup.fitted_rows
    held = [i for i in every if rows[i].gpu == device]
    if not held:
        parser.error(f"--device {device}: no fitted speed rows on it (devices with rows: "
                     f"{', '.join(sorted({rows[i].gpu for i in every}))})")
    setup.fitted_rows = np.array([i for i in every if rows[i].gpu != device])
    _, values, report = fit.fit(fit.DEFAULT_PARAMETERS, setup=setup, cold=True)  # as the fold fits
    unpinned = [i for i, entry in enumerate(report) if not entry["rows"]]
    leaked = values.copy()
    leaked[unpinned] = setup.start[unpinned]
    print(f"{device} fold: {len(held)} held-out rows; parameters no other device's row touches: "
          f"{', '.join(fit.DEFAULT_PARAMETERS[i].name for i in unpinned) or 'none'}")
    for label, chosen in (("as the fold predicts (out of sample)", values),
                          ("those parameters at the catalog's values (a leak)", leaked),
                          ("the catalog (in sample)", setup.start)):
        print(label)
        for metric, (count, median, p90, engines) in errors(setup, chosen, held, rows).items():
            shown = ", ".join(f"{name} {m:.1%} ({n})" for name, (n, m) in engines.items())
            print(f"  {metric}: {median:.1%} / {p90:.1%} ({count} rows); by engine (median): {shown}")


if __name__ == "__main__":
    main()
