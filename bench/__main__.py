"""Run the benchmarks: `python -m bench [name ...]`.

Every module in this package that defines ``main() -> None`` is a benchmark; it prints its
own table. Benchmarks are never timed unit tests: they report, they do not assert.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def discover() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = argv or discover()
    failed = []
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "main", None)
        if entry is None:
            continue
        print(f"\n## bench.{name}\n", flush=True)
        start = time.monotonic()
        try:
            entry()
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failed.append(name)
            print(f"bench.{name} failed: {exc}", file=sys.stderr)
        print(f"\n({name}: {time.monotonic() - start:.1f}s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
