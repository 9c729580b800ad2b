"""Print a digest of what a container build reads: the Dockerfile given and every file of the
build context (the repository) that .dockerignore lets through, by path and content. Files come
from git (tracked, plus untracked ones that .gitignore does not hide), so build outputs and
caches beside the sources do not count. scripts/build_images.sh skips a build whose digest is
the one its image was built from.

    python3 scripts/context_digest.py docker/Dockerfile.serving
"""

from __future__ import annotations

import fnmatch
import hashlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    for pat in patterns:
        pat = pat.rstrip("/")
        if pat.startswith("**/"):
            if any(fnmatch.fnmatch(p, pat[3:]) for p in parts):
                return True
        elif fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(parts[0], pat) or fnmatch.fnmatch(path, pat + "/*"):
            return True
    return False


def main(dockerfile: str) -> None:
    patterns = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    h = hashlib.sha256()
    h.update((REPO / dockerfile).read_bytes())
    for rel in sorted(f for f in files if f and not ignored(f, patterns)):
        path = REPO / rel
        if path.is_file():
            h.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    print(h.hexdigest())


if __name__ == "__main__":
    main(sys.argv[1])
