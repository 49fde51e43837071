"""`compare`: the config diff and the sort on hand-made run records (fast), then a real sweep of
three learning rates through the CLI that ends in the comparison table, and `compare` on its
sweep dir, by default and with `--plot`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from pipelines.compare import compare, compare_main, config_diff, render
from pipelines.compare_runs import load
from runtime.store import Store, atomic_write_json
from stages.base import UserError
from tests.cli import ROOT, pipelines

LRS = ["1e-3", "3e-3", "1e-2"]
SWEEP = [
    "+pipeline=sft",
    f"stages.sft.learning_rate={','.join(LRS)}",
    "stages.sft.max_steps=3",
    "stages.sft.per_device_train_batch_size=4",
    "stages.sft.val_size=0.02",
    "stages.sft.logging_steps=1",
    "stages.sft.save_steps=0",
    "stages.eval.metrics=[loss,exact_match]",  # the sweep ends in eval: held-out loss decides
    "stages.eval.max_samples=20",
    "~stages.export",
]


def record(
    id: str,
    lr: float,
    sft: dict,
    eval: dict | None = None,
    job: int | None = None,
    status: str = "ok",
) -> dict:
    """A run record as `run` writes it: sft (and eval) keyed by the learning rate."""
    stages = {
        "base": {"kind": "base", "key": "b0", "status": "cached", "metrics": {"parameters": 9}},
        "sft": {"kind": "sft", "key": f"s{lr}", "status": "ran", "metrics": sft},
    }
    stages["base"]["headline"], stages["sft"]["headline"] = "parameters", "train_loss"
    order = ["base", "sft"]
    if eval is not None:
        stages["eval"] = {"kind": "eval", "key": f"e{lr}", "status": "ran", "metrics": eval}
        stages["eval"]["headline"] = "demo.exact_match"
        order.append("eval")
    config = {"store": "x", "stages": {"sft": {"learning_rate": lr, "cutoff_len": 128}}}
    sweep = {"dir": "/sweeps/a", "job": job} if job is not None else None
    return {"id": id, "status": status, "config": config, "stages": stages, "order": order,
            "sweep": sweep}  # fmt: skip


def rows(text: str) -> list[dict[str, str]]:
    """The table under the heading, as {column: cell} per row (columns cut at the dashes)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if re.match(r"\d+ runs?\b", ln)) + 1
    header, dashes = lines[start], lines[start + 1]
    spans, pos = [], 0
    for part in dashes.split("  "):
        spans.append((pos, pos + len(part)))
        pos += len(part) + 2
    spans[-1] = (spans[-1][0], 10_000)
    names = [header[a:b].strip() for a, b in spans]
    body = []
    for line in lines[start + 2 :]:
        if not line.strip() or line.startswith(("run record", "chart")):
            break
        body.append({n: line[a:b].strip() for n, (a, b) in zip(names, spans, strict=True)})
    return body


# ---- fast: hand-made records


def test_config_diff_names_the_keys_that_differ_with_their_full_path() -> None:
    a, b = record("a", 1e-3, {}), record("b", 3e-3, {})
    b["config"]["stages"]["sft"]["lora_target"] = ["q_proj", "v_proj"]  # absent in a
    assert config_diff([a, b]) == ["stages.sft.learning_rate", "stages.sft.lora_target"]
    assert config_diff([a, record("c", 1e-3, {})]) == []


def test_sorted_by_the_last_stages_headline_best_first_and_marked() -> None:
    runs = [
        record("a", 1e-3, {"train_loss": 2.0}, {"demo": {"exact_match": 0.2}}),
        record("b", 3e-3, {"train_loss": 1.0}, {"demo": {"exact_match": 0.6}}),
        record("c", 1e-2, {"train_loss": 3.0}, {"demo": {"exact_match": 0.4}}),
    ]
    c = compare(runs)
    assert c.sort == ("eval", "demo.exact_match") and not c.ascending  # higher is better
    table = rows(render(c))
    assert [r["run"] for r in table] == ["b", "c", "a"]
    assert [r[""] for r in table] == ["*", "", ""]
    assert [r["stages.sft.learning_rate"] for r in table] == ["3e-3", "0.01", "1e-3"]
    assert [r["eval.demo.exact_match"] for r in table] == ["0.6", "0.4", "0.2"]
    assert "base.parameters" not in table[0]  # the same artifact in every run: not shown
    assert "sorted by eval.demo.exact_match (higher is better" in render(c)


def test_losses_sort_ascending_and_missing_values_go_last() -> None:
    runs = [
        record("a", 1e-3, {"train_loss": 2.0}),
        record("b", 3e-3, {}, status="failed"),
        record("c", 1e-2, {"train_loss": 1.5}),
    ]
    c = compare(runs, sort="train_loss")
    assert c.sort == ("sft", "train_loss") and c.ascending
    table = rows(render(c))
    assert [(r["run"], r["status"], r["sft.train_loss"]) for r in table] == [
        ("c", "ok", "1.5"),
        ("a", "ok", "2"),
        ("b", "failed", "-"),
    ]


def test_a_headline_that_is_the_same_everywhere_does_not_decide() -> None:
    """An export (here: eval's stand-in) of the same size in every run is skipped for sft's."""
    runs = [record(i, lr, {"train_loss": x}, {"demo": {"exact_match": 0.5}}) for i, lr, x in
            (("a", 1e-3, 2.0), ("b", 3e-3, 1.0))]  # fmt: skip
    assert compare(runs).sort == ("sft", "train_loss")


def test_jobs_of_one_sweep_are_named_by_number() -> None:
    runs = [record(f"r{j}", lr, {"train_loss": 3.0 - j}, job=j) for j, lr in enumerate([1, 2])]
    table = rows(render(compare(runs)))
    assert [r["job"] for r in table] == ["1", "0"]


def test_stage_picks_whose_metrics_are_shown() -> None:
    runs = [record("a", 1e-3, {"train_loss": 2.0}), record("b", 3e-3, {"train_loss": 1.0})]
    table = rows(render(compare(runs, stages=["base"])))
    assert list(table[0]) == ["", "run", "stages.sft.learning_rate", "base.parameters"]


@pytest.mark.parametrize(
    ("sort", "stages", "message"),
    [
        ("train_los", None, r"--sort train_los: no such metric .*did you mean 'train_loss'"),
        ("parameter", None, r"did you mean 'parameters'"),
        (None, ["sfx"], r"--stage sfx: no such stage in these runs \(did you mean 'sft'\?\)"),
    ],
)
def test_unknown_metric_or_stage_is_one_clear_error(sort, stages, message) -> None:  # type: ignore[no-untyped-def]
    runs = [record("a", 1e-3, {"train_loss": 2.0}), record("b", 3e-3, {"train_loss": 1.0})]
    with pytest.raises(UserError, match=message):
        compare(runs, sort=sort, stages=stages)


def test_a_metric_two_stages_have_must_be_named_with_its_stage() -> None:
    runs = [record("a", 1e-3, {"loss": 2.0}, {"loss": 1.0}), record("b", 3e-3, {}, {"loss": 2.0})]
    with pytest.raises(
        UserError, match="more than one stage has it; name one of sft.loss, eval.loss"
    ):
        compare(runs, sort="loss")
    assert compare(runs, sort="eval.loss").sort == ("eval", "loss")


def test_targets_run_ids_files_dirs_and_stage_names(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    old, new = record("20260101-a", 1e-3, {"train_loss": 2}), record("20260102-b", 3e-3, {})
    again = record("20260103-c", 1e-3, {"train_loss": 2})  # the same sft artifact as `old`
    for r in (old, new, again):
        store.write_run(r)
    atomic_write_json(tmp_path / "sweep" / "0" / "run.json", old)
    assert [r["id"] for r in load(["20260102"], store)[0]] == ["20260102-b"]
    assert [r["id"] for r in load([str(tmp_path / "sweep")], store)[0]] == ["20260101-a"]
    assert [r["id"] for r in load([str(store.root / "runs" / "20260102-b.json")], store)[0]] == [
        "20260102-b"
    ]
    runs, stages, _ = load(["sft"], store)  # one row per distinct sft artifact: the latest run
    assert sorted(r["id"] for r in runs) == ["20260102-b", "20260103-c"] and stages == ["sft"]
    for bad, message in [
        ("2026", "3 runs start with this"),
        ("sfx", "not a run id, run record, sweep dir or stage name in .*did you mean 'sft'"),
        ("no/such/dir", "no/such/dir: no such file or directory"),
        (str(store.root / "cache"), "no such file"),
    ]:
        with pytest.raises(UserError, match=message):
            load([bad], store)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no run records \\(run.json\\) under this directory"):
        load([str(tmp_path / "empty")], store)


def test_the_default_is_the_latest_multirun(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    first = [record(f"20260101-{j}", 1e-3 * (j + 1), {"train_loss": 1}, job=j) for j in (0, 1)]
    later = [record(f"20260102-{j}", 1e-3 * (j + 1), {"train_loss": 1}, job=j) for j in (0, 1)]
    for r in later:
        r["sweep"]["dir"] = "/sweeps/b"
    for r in [*first, *later, record("20260103-single", 1.0, {})]:
        store.write_run(r)
    runs, _, where = load([], store)
    assert sorted(r["id"] for r in runs) == ["20260102-0", "20260102-1"] and where == "/sweeps/b"


def test_command_line_errors_are_one_line_and_exit_2(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    store = tmp_path / "store"
    assert compare_main(["--store", str(store)]) == 2
    assert capsys.readouterr().err == (
        f"pipelines compare: no store at {store} (set --store or PIPELINES_STORE)\n"
    )
    Store(store).write_run(record("20260101-a", 1e-3, {}))
    assert compare_main(["--store", str(store)]) == 2
    assert "nothing to compare: no multirun in" in capsys.readouterr().err
    assert compare_main(["--store", str(store), "sft", "--plot", "x.svg"]) == 2
    assert "name a .png file" in capsys.readouterr().err
    assert compare_main(["--store", str(store), "sft", "--plot", "no/dir/x.png"]) == 2
    assert "--plot no/dir/x.png: no directory no/dir" in capsys.readouterr().err


def test_the_chart_without_training_logs_is_the_bars_alone(tmp_path: Path) -> None:
    from pipelines.compare_chart import write_chart

    runs = [record("a", 1e-3, {"train_loss": 2.0}), record("b", 3e-3, {"train_loss": 1.0})]
    path = tmp_path / "chart.png"
    write_chart(compare(runs), path, Store(tmp_path / "store"))
    image = imread(path)
    assert image.shape[:2] == (350, 900) and image[..., :3].std() > 0.05


def test_compare_and_its_chart_do_not_load_torch() -> None:
    code = (
        "import sys\n"
        "import pipelines.compare, pipelines.compare_chart, pipelines.__main__\n"
        "print([m for m in ('torch', 'transformers', 'hydra') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


# ---- slow: a real sweep through the CLI


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(working dir, stdout) of a three-job multirun of the sft pipeline."""
    cwd = tmp_path_factory.mktemp("sweep")
    result = pipelines("run", "-m", *SWEEP, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd, result.stdout


def jobs(cwd: Path) -> list[dict]:
    found = sorted((cwd / "store" / "multirun").rglob("run.json"))
    assert not (cwd / "multirun").exists()  # Hydra's dirs live in the store, not the user's folder
    return [json.loads(p.read_text()) for p in found]


@pytest.mark.slow
def test_a_sweep_ends_in_the_comparison_of_its_jobs(sweep: tuple[Path, str]) -> None:
    cwd, out = sweep
    records = jobs(cwd)
    assert [r["sweep"]["job"] for r in records] == [0, 1, 2]
    assert records[0]["order"] == ["base", "tokenize:demo_sft", "sft", "eval"]
    heading = out[out.rindex("3 runs of store/multirun/") :].splitlines()[0]
    assert heading.endswith("sorted by eval.loss (lower is better; * the best)")
    table = rows(out[out.rindex("3 runs of store/multirun/") :])
    loss = {f"{r['config']['stages']['sft']['learning_rate']:g}": r for r in records}
    assert sorted(r["stages.sft.learning_rate"] for r in table) == ["0.01", "1e-3", "3e-3"]
    for row in table:  # each row holds its own run's metrics
        lr = {"0.01": "0.01", "1e-3": "0.001", "3e-3": "0.003"}[row["stages.sft.learning_rate"]]
        metrics = loss[lr]["stages"]["sft"]["metrics"]
        assert float(row["sft.train_loss"]) == pytest.approx(metrics["train_loss"], rel=1e-5)
        assert float(row["sft.eval_loss"]) == pytest.approx(metrics["eval_loss"], rel=1e-5)
        evaluated = loss[lr]["stages"]["eval"]["metrics"]
        assert float(row["eval.loss"]) == pytest.approx(evaluated["loss"], rel=1e-5)
        assert float(row["eval.exact_match"]) == pytest.approx(evaluated["exact_match"])
        assert row["job"] == str(loss[lr]["sweep"]["job"])
    losses = [float(r["eval.loss"]) for r in table]
    assert losses == sorted(losses) and [r[""] for r in table] == ["*", "", ""]
    assert "tokenize:demo_sft.examples" not in table[0]  # cached in all three: not a difference


@pytest.mark.slow
def test_compare_on_the_sweep_dir_and_by_default_gives_the_same(sweep: tuple[Path, str]) -> None:
    cwd, out = sweep
    at_end = out[out.rindex("3 runs of store/multirun/") :].strip()
    (sweep_dir,) = (cwd / "store" / "multirun").glob("*/*")
    by_dir = pipelines("compare", str(sweep_dir.relative_to(cwd)), cwd=cwd)
    default = pipelines("compare", cwd=cwd)
    assert by_dir.returncode == default.returncode == 0, by_dir.stderr + default.stderr
    assert by_dir.stdout.strip() == default.stdout.strip() == at_end


@pytest.mark.slow
def test_compare_sorts_by_a_chosen_metric_and_plots_without_torch(sweep: tuple[Path, str]) -> None:
    cwd, _ = sweep
    code = (
        "import sys\n"
        "from pipelines.__main__ import main\n"
        "code = main(['compare', '--sort', 'tokens_seen', '--plot', 'x.png'])\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch', code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINES_STORE": str(cwd / "store")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, env=env
    )
    assert out.stdout.strip().endswith("no torch 0"), out.stdout + out.stderr
    assert "sorted by sft.tokens_seen (higher is better" in out.stdout
    image = imread(cwd / "x.png")[..., :3]
    assert image.shape == (700, 900, 3) and image.std() > 0.05
    orange = np.argwhere(np.abs(image - np.array([255, 127, 14]) / 255).max(axis=-1) < 0.02)
    assert len(orange) > 500  # the best run's bar (and its loss curve)


@pytest.mark.slow
def test_plan_of_a_sweep_prints_no_comparison(sweep: tuple[Path, str]) -> None:
    cwd, _ = sweep
    result = pipelines("plan", "-m", *SWEEP, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "sft: cached" in result.stdout and "runs of" not in result.stdout


@pytest.mark.slow
def test_command_line_errors_through_the_cli(sweep: tuple[Path, str]) -> None:
    cwd, _ = sweep
    bad = pipelines("compare", "--sort", "eval_los", cwd=cwd)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == (
        "pipelines compare: --sort eval_los: no such metric in these runs "
        "(did you mean 'eval_loss'?)\n"
    )
    missing = pipelines("compare", "multirun/nope", cwd=cwd)
    assert missing.returncode == 2
    assert missing.stderr == "pipelines compare: multirun/nope: no such file or directory\n"
