"""The Hydra app behind `run` and `plan`: compose once, compile, then plan or execute."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from compiler.errors import CompileError, Issue, did_you_mean
from compiler.schema import ROOT_KEYS, LauncherConfig
from compiler.select import split_flags
from stages import KINDS

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
_state: dict[str, Any] = {"verb": "run", "exit": 0}


def register_stage_defaults() -> None:
    """`stage/<kind>` in Hydra's ConfigStore: each kind's dataclass defaults, so a pipeline file
    pulls them with `- /stage@stages.<name>: <kind>` and overrides only what it changes."""
    cs = ConfigStore.instance()
    for kind, stage in KINDS.items():
        defaults = {f.name: _default(f) for f in dataclasses.fields(stage.Config)}
        roles = {role: None for role in stage.inputs}  # so `stages.x.model=sft` overrides work
        own = {"launcher": None} if getattr(stage, "distributed", False) else {}
        cs.store(group="stage", name=kind, node={"kind": kind, **roles, **own, **defaults})
    # every model preset starts from the base model's full field list, so any of its keys can be
    # overridden on the command line (model.revision=..., model.trust_remote_code=true)
    fields = {f.name: _default(f) for f in dataclasses.fields(KINDS["base"].Config)}
    fields["name_or_path"] = "???"  # each preset names its model (a `???` would not override)
    cs.store(group="model_fields", name="base", node=fields)
    launcher = {f.name: _default(f) for f in dataclasses.fields(LauncherConfig)}
    cs.store(group="launcher_fields", name="base", node=launcher)  # likewise launcher.<any>=


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else "???"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _task(cfg: DictConfig) -> None:
    from omegaconf.errors import OmegaConfBaseException

    from pipelines.commands import current_sweep, plan_command, run_command

    command = plan_command if _state["verb"] == "plan" else run_command
    sweep = current_sweep()
    if sweep:  # a job of a multirun: `run -m` ends with the comparison of its jobs
        _state["sweep"] = sweep["dir"]
    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        assert isinstance(raw, dict)
        select = _state["select"]
        code = command(raw, base_dir=Path.cwd(), overrides=_task_overrides(), select=select)
    except (CompileError, OmegaConfBaseException) as e:
        # reported here rather than raised, where Hydra would add its own preamble
        message = e.render() if isinstance(e, CompileError) else hydra_message(e)
        code = _report(message, e)
        _remove_output_dir()  # a rejected config leaves nothing behind
    _state["exit"] = max(_state["exit"], code)


def _task_overrides() -> list[str]:
    """This job's arguments: Hydra's config flags as the user gave them, then its overrides."""
    from hydra.core.hydra_config import HydraConfig

    try:
        select = _state["select"].flags() if _state.get("select") else []
        return [*_state.get("flags", []), *select, *HydraConfig.get().overrides.task]
    except ValueError:
        return []


def amend_datasets(args: list[str]) -> list[str]:
    """`datasets.<name>.<field>=value` sets or amends a field of any registry entry, also one
    read from a dataset_info.json (which Hydra has not seen): passed on as `++datasets...`."""
    return [f"++{a}" if a.startswith("datasets.") and "=" in a else a for a in args]


CONFIG_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def config_flags(args: list[str]) -> list[str]:
    """The flags that choose the config (`--config-dir DIR`, `-cn=NAME`), each with its value:
    a resume command must repeat them to mean the same pipeline."""
    out: list[str] = []
    for i, arg in enumerate(args):
        name = arg.split("=", 1)[0]
        if name in CONFIG_FLAGS:
            out.append(arg)
            if "=" not in arg and i + 1 < len(args):
                out.append(args[i + 1])
    return out


def _remove_output_dir() -> None:
    import shutil

    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    if out.resolve() != Path.cwd().resolve() and {p.name for p in out.iterdir()} <= {".hydra"}:
        shutil.rmtree(out)
        for parent in out.parents:  # the date dir and `outputs/` itself, when now empty
            if parent == Path.cwd() or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()


def run_hydra(verb: str, args: list[str]) -> int:
    """Run the Hydra app for `verb`; returns the process exit code."""
    register_stage_defaults()
    try:
        select, args = split_flags(args)  # --force / --only / --until: ours, not Hydra's
    except CompileError as e:
        return _report(e.render(), e)
    args = amend_datasets(args)
    _state.update(verb=verb, exit=0, sweep=None, flags=config_flags(args), select=select)
    if verb == "plan":  # plan writes nothing: no Hydra output dir
        args = [*args, "hydra.output_subdir=null", "hydra.run.dir=."]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us; we print them ourselves
    sys.argv = [f"pipelines {verb}", *args]
    try:
        _task()
    except Exception as e:  # Hydra's and OmegaConf's own config errors, or the store's
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(e, (HydraException, OmegaConfBaseException)):  # before OSError: Hydra's
            return _report(hydra_message(e), e)  # missing-config error is also an IOError
        if _from_sweep_launcher(e):  # e.g. the SLURM launcher where there is no SLURM
            fix = "hydra/launcher=cluster needs a SLURM login node; local_parallel runs jobs here"
            return _report(f"the multirun launcher failed: {e} ({fix})", e)
        if isinstance(e, OSError):  # Hydra's run dir (in the store) could not be written
            fix = "make it writable, or choose another store with store=... or PIPELINES_STORE"
            return _report(CompileError([Issue("store", _unwritable(e), fix)]).render(), e)
        raise
    if verb == "run" and _state["sweep"]:
        from pipelines.compare import sweep_comparison

        text = sweep_comparison(Path(_state["sweep"]))
        if text:  # None when every job was rejected before it ran
            print(text)
    return int(_state["exit"])


def _from_sweep_launcher(e: BaseException) -> bool:
    """Raised inside a Hydra launcher plugin (joblib, submitit) rather than by a job."""
    frames = traceback.extract_tb(e.__traceback__)
    return any("hydra_plugins" in f.filename or "/submitit/" in f.filename for f in frames)


def _unwritable(e: OSError) -> str:
    """What stopped a write into the store: a file where a directory should be, or the OS's
    reason (read-only, permissions, a full disk)."""
    path = Path(str(e.filename)) if e.filename else None
    for part in [path, *path.parents] if path else []:
        if part.exists() and not part.is_dir():
            return f"{part.resolve()} is a file, not a directory"
    where = f" to {path}" if path else ""
    return f"cannot write{where} ({e.strerror or e})"


def _report(message: str, error: BaseException) -> int:
    if os.environ.get("PIPELINES_TRACEBACK"):
        traceback.print_exception(error)
    print(message, file=sys.stderr)
    return 2


def hydra_message(e: BaseException) -> str:
    """Hydra's message, first lines only, plus a did-you-mean for a mistyped override key."""
    text = str(e).strip()
    cause = e.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        text += "\n" + str(cause).strip()
    text = text.split("Config search path")[0]  # Hydra's search path listing is noise here
    text = re.sub(  # "Available options in 'pipeline':" and one name a line -> one line
        r"Available options in '([^']+)':\s*((?:\n[ \t]+\S+)+)",
        lambda m: f"Available options in '{m.group(1)}': {', '.join(m.group(2).split())}",
        text,
    )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"full_key: (\S+)", text)
    issue = None
    if m and "Missing mandatory value" in text:
        path = m.group(1)
        issue = Issue(path, "missing value", f"set it, e.g. {path}=...")
    elif m:
        path = m.group(1)
        hint = did_you_mean(path.rsplit(".", 1)[-1], known_keys())
        issue = Issue(path, "unknown key" if "not in struct" in text else lines[0], hint)
    if issue:
        return CompileError([issue]).render()
    return "config error:\n  " + "\n  ".join(lines[:6])


def known_keys() -> set[str]:
    keys = set(ROOT_KEYS)
    for stage in KINDS.values():
        keys |= {f.name for f in dataclasses.fields(stage.Config)} | set(stage.inputs) | {"kind"}
    return keys
