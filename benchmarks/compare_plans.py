"""Check that a change to the candidate space leaves every plan bit-identical.

Run once before the change with `--write DIR`, once after with `--check DIR`:

    python benchmarks/compare_plans.py --write /tmp/plans-before
    python benchmarks/compare_plans.py --check /tmp/plans-before

Recorded per case: `quantplan solve ... --json` on every shipped example scenario (in process, through
the command line's own code) and on the benchmark's 1- and 3-class scenarios with alternatives (the
10-class one with --slow: about a minute, settling which classes may share a replica);
for the benchmark scenarios also a digest of the whole candidate space (every option's repr, floats
exact) and of its diagnostics, so a change that moves a figure of a candidate no plan picks is caught.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_solver import ONE_CLASS, THREE_CLASSES, scenario_toml, ten_classes  # noqa: E402

from quantplan.cli import cli  # noqa: E402
from quantplan.solver.registry import load_world  # noqa: E402
from quantplan.solver.scenario import make_scenario  # noqa: E402
from quantplan.solver.space import build_space  # noqa: E402

NOT_SCENARIOS = {"my-gpus.toml"}  # a user catalog, not a scenario


def bench_scenarios() -> dict[str, dict]:
    return {f"bench-{len(c)}-classes": {"model": "llama-3.1-70b", "classes": c}
            for c in (ONE_CLASS, THREE_CLASSES, ten_classes())}


def example_paths() -> list[Path]:
    return [p for p in sorted((ROOT / "examples").glob("*.toml")) if p.name not in NOT_SCENARIOS]


TIMING = re.compile(r'"solve_seconds": [0-9.e+-]+')  # wall time of the solver: the one field that may differ


def solve_json(argv: list[str]) -> str:
    result = CliRunner().invoke(cli, ["solve", *argv, "--json"], catch_exceptions=False)
    return TIMING.sub('"solve_seconds": "(not compared)"', f"exit {result.exit_code}\n{result.output}")


def space_digest(fields: dict) -> str:
    world = load_world()
    scenario = make_scenario({**fields, "alternatives": False})
    space = build_space(world, scenario, world.with_prices({}))
    text = "\n".join(repr(o) for o in space.options)
    text += f"\n{sorted(space.incompatible.items())}\n{space.per_class!r}\n{space.configurations}"
    return hashlib.sha256(text.encode()).hexdigest() + f" ({len(space.options)} options)\n"


def cases(slow: bool = False):
    for path in example_paths():
        yield f"example-{path.stem}.json", lambda p=path: solve_json([str(p)])
    for name, fields in bench_scenarios().items():
        yield f"{name}.space", lambda f=fields: space_digest(f)
        if slow or len(fields["classes"]) < 10:  # the 10-class solve settles shared replicas for a minute
            yield f"{name}.json", lambda f=fields, n=name: _bench_solve(n, f)


def _bench_solve(name: str, fields: dict) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.toml"
        path.write_text(scenario_toml(fields["model"], fields["classes"]))
        return solve_json([str(path)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, help="Record every case into this folder.")
    group.add_argument("--check", type=Path, help="Compare every case with this folder's records.")
    parser.add_argument("--slow", action="store_true", help="Also solve the 10-class scenario (minutes).")
    parser.add_argument("--only", help="Only cases whose name contains this text.")
    args = parser.parse_args()
    different = 0
    for name, make in cases(args.slow):
        if args.only and args.only not in name:
            continue
        text = make()
        if args.write:
            args.write.mkdir(parents=True, exist_ok=True)
            (args.write / name).write_text(text)
            print(f"wrote {name}")
            continue
        before = (args.check / name).read_text()
        same = before == text
        different += not same
        print(f"{'same' if same else 'DIFFERENT'}  {name}")
        if not same:
            (args.check / (name + ".now")).write_text(text)
    if args.check:
        print("all identical" if not different else f"{different} case(s) differ (see *.now next to the records)")
        sys.exit(1 if different else 0)


if __name__ == "__main__":
    main()
