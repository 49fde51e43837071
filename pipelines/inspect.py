"""`show`, `ls` and `gc`: read (and prune) the store without composing a config."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from compiler.plan import fmt
from pipelines.args import store_flag
from pipelines.summary import KEY_CHARS, table
from runtime.store import Store, pid_alive


def inspect_main(verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"pipelines {verb}")
    parser.add_argument("--store", default=os.environ.get("PIPELINES_STORE", ".pipelines"))
    if verb == "show":
        parser.add_argument("target", help="a stage name or an artifact key (prefix)")
    if verb == "gc":
        parser.add_argument("--yes", action="store_true", help="delete (default: dry run)")
    if verb == "verify":
        parser.add_argument("target", nargs="?", help="a stage name or an artifact key (prefix)")
        parser.add_argument("--all", action="store_true", help="every artifact in the store")
    args = parser.parse_args(store_flag(argv))
    store = Store(Path(args.store))
    if not store.root.is_dir():
        print(
            f"pipelines {verb}: no store at {store.root} (set --store or PIPELINES_STORE)",
            file=sys.stderr,
        )
        return 2
    return {"show": show, "ls": ls, "gc": gc, "verify": verify}[verb](store, args)


def find_key(store: Store, target: str) -> str | None:
    """A stage name (its last artifact) or a unique key prefix."""
    named = store.manifest_for_name(target)
    if named is not None:
        return str(named["key"])
    keys = [m["key"] for _, m in store.artifacts() if m["key"].startswith(target)]
    return keys[0] if len(keys) == 1 else None


def show(store: Store, args: argparse.Namespace) -> int:
    key = find_key(store, args.target)
    manifest = store.manifest(key) if key else None
    if manifest is None:
        print(f"pipelines show: no artifact for '{args.target}' in {store.root}", file=sys.stderr)
        return 2
    print(f"{manifest['name']}  ({manifest['kind']})  key {manifest['key']}")
    print(f"path     {store.find(manifest['key'])}")
    print(
        f"created  {manifest.get('created')}  wall {manifest.get('wall_s')}s  run {manifest.get('run_id')}"
    )
    if manifest.get("resumed_from") is not None:
        print(f"resumed from checkpoint {manifest['resumed_from']}")
    print("metrics  " + ", ".join(f"{k}={fmt(v)}" for k, v in manifest.get("metrics", {}).items()))
    print("config")
    print(_yaml(manifest.get("config", {})))
    print("lineage")
    for line in lineage(store, manifest, depth=1):
        print(line)
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"files    {len(manifest['files'])} files, {size / 1e6:.2f} MB")
    return 0


def _yaml(config: dict[str, Any]) -> str:
    """The stage config as indented YAML, the form the user wrote it in."""
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(OmegaConf.create(config), sort_keys=True)
    return "\n".join("  " + line for line in text.rstrip().splitlines())


def lineage(store: Store, manifest: dict[str, Any], depth: int) -> list[str]:
    out = []
    for role, ref in sorted(manifest.get("inputs", {}).items()):
        out.append(f"{'  ' * depth}{role}: {ref['name']} {ref['key'][:KEY_CHARS]}")
        upstream = store.manifest(ref["key"])
        if upstream is not None:
            out += lineage(store, upstream, depth + 1)
        else:
            out.append(f"{'  ' * (depth + 1)}(not in the store)")
    return out


def ls(store: Store, args: argparse.Namespace) -> int:
    rows = []
    for _, m in store.artifacts():
        size = sum(f["size"] for f in m["files"].values()) / 1e6
        rows.append(
            [
                m["kind"],
                m["key"][:KEY_CHARS],
                m.get("name", ""),
                m.get("created", ""),
                f"{size:.2f} MB",
            ]
        )
    print(table(["kind", "key", "name", "created", "size"], rows) if rows else "(no artifacts)")
    return 0


def referenced_keys(store: Store) -> set[str]:
    """Keys named by any run record, and everything they were made from."""
    todo = [s["key"] for r in store.runs() for s in r.get("stages", {}).values() if s.get("key")]
    seen: set[str] = set()
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        manifest = store.manifest(key) or {}
        todo += [ref["key"] for ref in manifest.get("inputs", {}).values()]
    return seen


def gc(store: Store, args: argparse.Namespace) -> int:
    """Unreferenced artifacts, then leftovers: work dirs of committed or unrecorded keys and
    temp files of writes that were interrupted."""
    keep = referenced_keys(store)
    doomed = [
        (p, f"{m['kind']} {m['key'][:KEY_CHARS]} ({m.get('name', '')})")
        for p, m in store.artifacts()
        if m["key"] not in keep
    ]
    doomed += leftovers(store, keep)
    for path, what in doomed:
        print(f"{'removing' if args.yes else 'would remove'} {what}")
        if args.yes:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if not doomed:
        print("nothing to remove")
    elif not args.yes:
        print(
            f"{len(doomed)} items unreferenced; run `python -m pipelines gc --yes` to remove them"
        )
    return 0


def leftovers(store: Store, keep: set[str]) -> list[tuple[Path, str]]:
    """Work dirs no run needs (their artifact is committed, or no run record names their key:
    a record names a stage's key while it runs, so resumable work is kept) and temp files
    whose writing process is gone."""
    out: list[tuple[Path, str]] = []
    work = store.root / "work"
    for path in sorted(work.iterdir()) if work.is_dir() else []:
        if store.has(path.name):
            out.append((path, f"work dir {path.name[:KEY_CHARS]} (its artifact is committed)"))
        elif path.name not in keep:
            out.append((path, f"work dir {path.name[:KEY_CHARS]} (no run record names it)"))
    for path in sorted(store.root.rglob(".*.tmp")):
        pid = path.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not pid_alive(int(pid)) and work not in path.parents:
            out.append((path, f"temp file {path.relative_to(store.root)} (interrupted write)"))
    trash = store.root / "trash"
    out += [(p, f"trash {p.name}") for p in sorted(trash.iterdir())] if trash.is_dir() else []
    logs = store.root / "logs"  # ranks' logs, kept while their run's record is
    for path in sorted(logs.iterdir()) if logs.is_dir() else []:
        if not (store.root / "runs" / f"{path.name}.json").exists():
            out.append((path, f"logs of run {path.name} (its record is gone)"))
    return out


def verify(store: Store, args: argparse.Namespace) -> int:
    """Re-hash every file of the chosen artifacts (not the cheap check `plan` makes); exit 1
    when any is damaged."""
    if args.all == bool(args.target):
        print("pipelines verify: name one artifact (a stage or key) or pass --all", file=sys.stderr)
        return 2
    if args.all:
        chosen = [m for _, m in store.artifacts()]
    else:
        key = find_key(store, args.target)
        manifest = store.manifest(key) if key else None
        if manifest is None:
            print(
                f"pipelines verify: no artifact for '{args.target}' in {store.root}",
                file=sys.stderr,
            )
            return 2
        chosen = [manifest]
    damaged = 0
    for m in chosen:
        bad = store.verify(m["key"])
        where = f"{m['kind']} {m['key'][:KEY_CHARS]} ({m.get('name', '')})"
        if bad:
            damaged += 1
            print(f"DAMAGED  {where}: {', '.join(bad)}")
        else:
            print(f"ok       {where}")
    total = len(chosen)
    print(
        f"{total - damaged} of {total} artifacts intact"
        + ("" if not damaged else "; the next run recomputes the damaged ones")
    )
    return 1 if damaged else 0
