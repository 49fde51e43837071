"""Content digests of files and directories, remembered by (path, size, mtime_ns, inode).

Hashing a 1 GB model once is unavoidable; hashing it again on every cached rerun is not.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


class DigestCache:
    def __init__(self, path: Path | None = None):
        self.path = path
        self.entries: dict[str, str] = {}
        self.dirty = False
        if path is not None and path.exists():
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache only costs re-hashing

    @staticmethod
    def _stamp(path: Path) -> str:
        st = path.stat()
        return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"

    def remember(self, path: Path, digest: str) -> None:
        """A digest just computed elsewhere (at commit), for the file as it is now."""
        self.entries[self._stamp(path)] = digest
        self.dirty = True

    def file(self, path: Path) -> str:
        stamp = self._stamp(path)
        digest = self.entries.get(stamp)
        if digest is None:
            digest = sha256_file(path)
            self.entries[stamp] = digest
            self.dirty = True
        return digest

    def tree(self, path: Path) -> str:
        """A file's digest, or for a directory a digest over its files' relative paths and
        digests (so renames count as changes)."""
        if path.is_file():
            return self.file(path)
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file() and ".git" not in p.parts):
            h.update(f"{f.relative_to(path).as_posix()}\0{self.file(f)}\n".encode())
        return h.hexdigest()

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries, sort_keys=True))
        os.replace(tmp, self.path)
        self.dirty = False


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
