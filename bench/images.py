"""`make iso` build times and artifact sizes: `python -m bench images`.

Builds in a temporary git worktree of HEAD with its own $OUT, sharing $ELEMENTAL_CACHE's package
cache (downloads are not what we measure). Rows, all from this one run:

* cold: every image rebuilt with its incremental cache dropped (`MKOSI_ARGS=-f`, i.e. mkosi -ff);
* warm, nothing changed: the skip path;
* warm after a one-line Python change (a comment appended to a module of the wheel): what a
  developer waits for; the ratio column compares each row with the cold build.

Takes 10–20 minutes on the 2-core build machines. Targets (issue 3): cold ≤ 8 min, warm rebuild
after a Python change ≤ 90 s, seed ISO ≤ 400 MB, operator image ≤ 150 MB.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MB = 1_000_000


def _make(worktree: Path, out: Path, **env: str) -> float:
    """What `make iso` does after set-up: the three images, then the ISO and PXE packing.

    (Not `make` itself: its set-up step would re-point our editable venv at the worktree.)
    """
    environ = {**os.environ, "OUT": str(out), "PY": str(REPO / ".venv/bin/python"), **env}
    start = time.monotonic()
    # the three images at once, as `make iso` does (IMAGE_JOBS=3)
    builds = [
        subprocess.Popen(
            [str(REPO / ".venv/bin/python"), "-m", "imagebuild", target],
            cwd=worktree,
            env=environ,
            stdout=subprocess.DEVNULL,
        )
        for target in ("os", "seed", "operator-image")
    ]
    if any([b.wait() != 0 for b in builds]):  # a list: wait for every build
        raise RuntimeError("an image build failed (see build/*.log in the worktree)")
    subprocess.run(
        [str(REPO / ".venv/bin/python"), "-m", "iso.pack"],
        cwd=worktree,
        env=environ,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - start


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _unpacked_layer_size(layout: Path) -> int:
    """Bytes of the image's (single) layer once decompressed, i.e. what a container runtime stores."""
    blobs = sorted((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    layer = blobs[-1]  # the layer is by far the largest blob
    out = subprocess.run(
        f"gzip -dc '{layer}' | wc -c", shell=True, check=True, capture_output=True, text=True
    )
    return int(out.stdout)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        worktree, out = Path(tmp) / "src", Path(tmp) / "out"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            # imagebuild runs tools from <repo>/.venv; share ours (nothing is installed into it).
            (worktree / ".venv").symlink_to(REPO / ".venv")
            cold = _make(worktree, out, MKOSI_ARGS="-f")
            warm = _make(worktree, out)
            module = worktree / "elemental_register" / "__init__.py"
            module.write_text(module.read_text() + "# bench: one-line change\n")
            changed = _make(worktree, out)
            rows = [
                ("cold make iso (image caches dropped)", cold, "≤ 480 s"),
                ("warm make iso, nothing changed", warm, ""),
                ("warm make iso after a one-line Python change", changed, "≤ 90 s"),
            ]
            print(f"| {'build':<46} | {'seconds':>8} | {'× cold':>7} | target |")
            print(f"|{'-' * 48}|{'-' * 10}|{'-' * 9}|--------|")
            for name, secs, target in rows:
                print(f"| {name:<46} | {secs:8.1f} | {secs / cold:7.2f} | {target} |")
            print()
            sizes = [
                ("seed ISO (OS image included)", _tree_size(out / "seed.iso"), "≤ 400 MB"),
                ("seed UKI", _tree_size(out / "seed.efi"), ""),
                ("OS OCI image layout", _tree_size(out / "os"), ""),
                ("operator OCI image layout (compressed)", _tree_size(out / "operator"), ""),
                ("operator image unpacked", _unpacked_layer_size(out / "operator"), "≤ 150 MB"),
            ]
            print(f"| {'artifact':<40} | {'MB':>7} | target |")
            print(f"|{'-' * 42}|{'-' * 9}|--------|")
            for name, size, target in sizes:
                print(f"| {name:<40} | {size / MB:7.1f} | {target} |")
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False
            )
