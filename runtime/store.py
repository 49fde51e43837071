"""The artifact store: immutable artifacts, work dirs, locks, run records.

<store>/artifacts/<kind>/<key>/   manifest.json written last; the dir appears by one rename
<store>/work/<key>/               payload being built (out/), checkpoints, logs
<store>/locks/<key>.lock          one writer per key
<store>/runs/<id>.json            run records
<store>/names/<name>.json         the last artifact used under each stage name (for plan reasons)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from compiler.digests import DigestCache, sha256_file
from stages.base import latest_checkpoint

MANIFEST = "manifest.json"
READ_ONLY = 0o444


def atomic_write_json(path: Path, value: Any) -> None:
    """Write to a temp file in the same dir, fsync, rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._digests: DigestCache | None = None

    @property
    def digests(self) -> DigestCache:
        """File digests remembered by (path, size, mtime, inode): data files for keys, and
        artifact files for the cheap integrity check."""
        if self._digests is None:
            self._digests = DigestCache(self.root / "cache" / "digests.json")
        return self._digests

    def save_digests(self) -> None:
        """Remember new digests; a read-only store only costs re-hashing next time."""
        if not self.root.is_dir():
            return
        with suppress(OSError):
            self.digests.save()

    def unwritable(self) -> str | None:
        """Why runs cannot write here (a file in the way, permissions, a read-only or full
        disk), or None; creates the store directory when it can."""
        if self.root.exists() and not self.root.is_dir():
            return f"{self.root} is a file, not a directory"
        probe = self.root / f".probe.{os.getpid()}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            return f"cannot write to {self.root} ({e.strerror or e})"
        return None

    # ---- artifacts
    def find(self, key: str) -> Path | None:
        """The artifact dir for `key`, only if its manifest is complete."""
        base = self.root / "artifacts"
        if not base.is_dir():
            return None
        for kind_dir in base.iterdir():
            if read_manifest(kind_dir / key) is not None:
                return kind_dir / key
        return None

    def has(self, key: str) -> bool:
        return self.find(key) is not None

    def manifest(self, key: str) -> dict[str, Any] | None:
        path = self.find(key)
        return read_manifest(path) if path else None

    def artifacts(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        base = self.root / "artifacts"
        for path in sorted(base.glob("*/*")) if base.is_dir() else []:
            manifest = read_manifest(path)
            if manifest is not None:
                yield path, manifest

    def commit(
        self, kind: str, key: str, payload_dir: Path, meta: dict[str, Any], replace: bool = False
    ) -> Path:
        """Seal `payload_dir` as the artifact for `key`: digests, manifest last, fsync, rename.
        An existing artifact is kept (another process made the same key), unless `replace`
        (a forced rerun): then it is renamed away first, so no reader ever sees half of one."""
        files = {}
        for f in sorted(p for p in payload_dir.rglob("*") if p.is_file()):
            if f == payload_dir / MANIFEST:
                continue  # left by a commit that crashed before its rename; rewritten below
            rel = f.relative_to(payload_dir).as_posix()
            files[rel] = {"sha256": sha256_file(f), "size": f.stat().st_size}
            _fsync_file(f)
            f.chmod(READ_ONLY)  # immutable by convention, and now by permission too
        atomic_write_json(
            payload_dir / MANIFEST, {**meta, "kind": kind, "key": key, "files": files}
        )
        _fsync_dir(payload_dir)
        dest = self.root / "artifacts" / kind / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        if replace:
            self.discard(key)
        if dest.exists():  # a directory without a manifest is debris from a crash: replace it
            if read_manifest(dest) is not None:
                shutil.rmtree(payload_dir)
                return dest
            shutil.rmtree(dest)
        os.rename(payload_dir, dest)
        _fsync_dir(dest.parent)
        for rel, meta in files.items():  # the integrity check need not re-hash what we just did
            self.digests.remember(dest / rel, meta["sha256"])
        self.save_digests()
        return dest

    def damage(self, key: str) -> str | None:
        """The first file of an artifact that is missing, resized or changed since its commit
        (None when intact). Cheap: a file whose (size, mtime, inode) is unchanged since it was
        last hashed is not hashed again."""
        path = self.find(key)
        manifest = read_manifest(path) if path else None
        if path is None or manifest is None:
            return "<no artifact>"
        for rel, meta in sorted(manifest["files"].items()):
            f = path / rel
            if not f.is_file():
                return f"{rel} missing"
            if f.stat().st_size != meta["size"] or self.digests.file(f) != meta["sha256"]:
                return f"{rel} changed"
        return None

    def discard(self, key: str) -> None:
        """Take a (damaged) artifact out of the store: renamed away first, so it is never
        half-deleted in place."""
        path = self.find(key)
        if path is None:
            return
        trash = self.root / "trash" / f"{key}-{os.getpid()}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def verify(self, key: str) -> list[str]:
        """Files whose content no longer matches the manifest (empty when intact)."""
        path = self.find(key)
        manifest = read_manifest(path) if path else None
        if path is None or manifest is None:
            return ["<no artifact>"]
        bad = []
        for rel, meta in manifest["files"].items():
            f = path / rel
            if not f.is_file() or sha256_file(f) != meta["sha256"]:
                bad.append(rel)
        return bad

    # ---- work dirs, checkpoints, locks
    def work_dir(self, key: str) -> Path:
        return self.root / "work" / key

    def checkpoint(self, key: str) -> int | None:
        found = latest_checkpoint(self.work_dir(key) / "checkpoints")
        return found[0] if found else None

    @contextmanager
    def lock(self, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the writer lock for `key`; the OS drops it if this process dies."""
        from filelock import FileLock, Timeout

        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait:
                on_wait()
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    # ---- names and run records
    def remember_name(self, name: str, key: str, payload: dict[str, Any]) -> None:
        atomic_write_json(self._name_path(name), {"name": name, "key": key, "payload": payload})

    def manifest_for_name(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._name_path(name).read_text())
        except (OSError, ValueError):
            return None

    def _name_path(self, name: str) -> Path:
        return self.root / "names" / (name.replace(os.sep, "_") + ".json")

    def write_run(self, record: dict[str, Any]) -> Path:
        path = self.root / "runs" / f"{record['id']}.json"
        atomic_write_json(path, record)
        return path

    def mark_interrupted_runs(self) -> None:
        """Records left `running` by a process of this host that no longer exists (killed)
        become `interrupted`."""
        host = socket.gethostname()
        for record in self.runs():
            pid = record.get("pid")
            if record.get("status") != "running" or record.get("host") != host or not pid:
                continue
            if not pid_alive(int(pid)):
                record["status"] = "interrupted"
                self.write_run(record)

    def runs(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted((self.root / "runs").glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        return out


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "files" in manifest else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def new_run_id() -> str:
    """Sortable by start time (to the millisecond), unique across concurrent processes."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    return f"{stamp}-{os.getpid()}-{os.urandom(2).hex()}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync_file(path)
