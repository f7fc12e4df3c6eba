"""Run every benchmark in turn (``python -m bench [NAME ...]``); each writes bench/results/NAME.md."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ALL = sorted(p.stem for p in HERE.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    names = [f"bench_{n.removeprefix('bench_')}" for n in argv] or ALL
    sys.argv = sys.argv[:1]  # each benchmark's main() reads its own defaults, not our arguments
    for name in names:
        start = time.perf_counter()
        print(f"\n## {name}\n", flush=True)
        importlib.import_module(f"bench.{name}").main()
        print(f"\n({name} took {time.perf_counter() - start:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
