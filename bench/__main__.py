"""Run the benchmarks: every ``bench/bench_*.py`` exposing ``async def run() -> dict``.

``python -m bench`` runs them all; ``python -m bench htm_throughput htm_crash`` runs those named
(without the ``bench_`` prefix). Each result is written to ``bench/results/<name>.json`` and
summarised on stdout. Benchmarks are not part of the test suite.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    names = argv or discover()
    unknown = sorted(set(names) - set(discover()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(discover())}")
        return 2
    RESULTS.mkdir(exist_ok=True)
    failed = 0
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            result = asyncio.run(module.run())
        except Exception as exc:  # report and carry on with the others
            failed += 1
            print(f"   failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        result.setdefault("benchmark", name)
        result["wall_seconds"] = round(time.perf_counter() - started, 2)
        out = RESULTS / f"{name}.json"
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(json.dumps(result.get("summary", result), indent=2, default=str), flush=True)
        print(f"   -> {out.relative_to(HERE.parent)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
