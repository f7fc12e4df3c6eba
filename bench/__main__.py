"""Run every benchmark in turn (``python -m bench [NAME ...]``); each writes bench/results/NAME.md.

Each benchmark runs in its own process, so thread settings (``OMP_NUM_THREADS`` is read once, when Concrete's
runtime loads) and loaded models of one do not leak into the next.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
ALL = sorted(p.stem for p in HERE.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    names = [f"bench_{n.removeprefix('bench_')}" for n in argv] or ALL
    # Byte-compile he_compute first, as installing a wheel does: the editable install leaves it uncompiled,
    # and where PYTHONDONTWRITEBYTECODE is set every `hec` process a benchmark starts would compile ~80
    # modules again (about 0.1 s each time).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "he_compute")], check=False)
    failed = []
    for name in names:
        start = time.perf_counter()
        print(f"\n## {name}\n", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=HERE.parent).returncode:
            failed.append(name)
        print(f"\n({name} took {time.perf_counter() - start:.0f}s)", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
