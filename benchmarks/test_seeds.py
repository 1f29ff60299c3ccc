"""How robust are the statistical tests? Rerun them on other seeds and print their margins.

Run: ``python benchmarks/test_seeds.py [--seeds 0 1 2 3 4] [-k EXPR] [--record FILE]``.

Every test marked ``statistical`` adds ``SEED`` (``PYMC_ABI_TEST_SEED``) to its seeds and
reports each quantity it asserts on with ``measure(name, value, limit)``. This script runs
``pytest -m statistical`` once per seed, with ``PYMC_ABI_TEST_RECORD`` naming a JSONL file,
and prints, per test and quantity, the tolerance, the worst value over the seeds and the
margin (tolerance / worst value: above 1 passes, and a margin near 1 is a flaky test).
Set tolerances from this table, never from one lucky seed. ``--table FILE`` prints the
table of an earlier run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path


def run(seeds: list[int], record: Path, keyword: str | None) -> None:
    for seed in seeds:
        env = {**os.environ, "PYMC_ABI_TEST_SEED": str(seed), "PYMC_ABI_TEST_RECORD": str(record)}
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "statistical",
            "-q",
            "-p",
            "no:cacheprovider",
        ]
        if keyword:
            command += ["-k", keyword]
        print(f"seed {seed}: {' '.join(command[1:])}", flush=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        print("   ", (done.stdout.strip().splitlines() or ["(no output)"])[-1], flush=True)


def table(record: Path) -> str:
    rows = defaultdict(list)
    limits = {}
    for line in record.read_text().splitlines():
        row = json.loads(line)
        key = (row["test"].split("::")[-1], row["name"])
        rows[key].append((row["value"], row["seed"]))
        limits[key] = row["limit"]
    out = [
        "| test | quantity | tolerance | worst | seeds | margin |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key in sorted(rows):
        values = rows[key]
        worst = max(v for v, _ in values)
        seeds = len({s for _, s in values})
        margin = limits[key] / worst if worst > 0 else float("inf")
        out.append(
            f"| {key[0]} | {key[1]} | {limits[key]:.3g} | {worst:.3g} | {seeds} | {margin:.2f} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    parser.add_argument("--record", type=Path, default=Path("test_seeds.jsonl"))
    parser.add_argument("--table", type=Path, default=None, help="only print this record")
    args = parser.parse_args()
    if args.table is None:
        args.record.unlink(missing_ok=True)
        run(args.seeds, args.record, args.keyword)
    print(table(args.table or args.record))


if __name__ == "__main__":
    main()
