"""`eval`: measure a model (or a reward model) and keep the numbers as a cached artifact:
`metrics.json` (every metric), `outputs.jsonl` (per example: prompt, reference, reply, whether it
is right, its reward), `mc_outputs.jsonl` and `lm_eval_samples.jsonl` where those ran.

Built in: held-out loss / perplexity, greedy generation over a dataset with exact match, BLEU and
ROUGE, multiple-choice accuracy on MMLU-format files, the reward model's score of the replies and
their win rate against a `baseline` model's; plus any lm-evaluation-harness task (its Python API,
on the loaded model). The model answers through its trained template and stop tokens
(stages/model/inference.py). A reward model under eval gets its pairwise accuracy.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, ClassVar

from stages.base import METRICS, MODEL, REWARD_MODEL, Context, In, bounded, volatile
from stages.evaluation.harness import key_files as harness_files
from stages.rl.reward_funcs import DOTTED, module_file

GENERATION = ("exact_match", "bleu", "rouge", "reward", "win_rate")  # need the model's replies
METRIC_NAMES = ("loss", "perplexity", *GENERATION, "pairwise_accuracy")
REWARD_METRICS = ("pairwise_accuracy",)  # what a reward model under eval can be measured by
HEADLINE_KEY = {"rouge": "rougeL"}  # a metric whose manifest key differs from its name
PACKAGES = {"bleu": "sacrebleu", "rouge": "rouge_score"}
EXTRA = "pip install 'pipelines[eval]'"


@dataclass
class EvalConfig:
    dataset: str | list[str] = "demo_test"  # `datasets` entries ("" for none)
    max_samples: int | None = bounded(None, min=1)  # rows per dataset
    metrics: list[str] = field(default_factory=lambda: ["exact_match", "loss"])
    answer_check: str | None = None  # module:function(instruction, input, answer) -> bool
    max_new_tokens: int = bounded(64, min=1)
    cutoff_len: int = bounded(1024, min=2)  # loss: longer chats lose their left context
    # multiple choice (MMLU format): a `datasets` entry with formatting: multiple_choice
    mc_dataset: str = ""
    n_shot: int = bounded(5, min=0)  # answered rows before each question: the file's first n
    # the lm-evaluation-harness
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_include_path: str | None = None  # a directory of local task YAMLs
    # hf: the loaded model; vllm: vLLM loads it (GPU); auto: vllm where vLLM and a GPU are
    lm_eval_backend: str = field(default="auto", metadata={"choices": ("auto", "hf", "vllm")})
    num_fewshot: int | None = bounded(None, min=0)
    limit: int | float | None = bounded(None, above=0)  # examples per task (a fraction when < 1)
    bootstrap_iters: int = bounded(0, min=0)  # harness stderr bootstraps (0: none)
    apply_chat_template: bool = True  # mc and harness prompts as a user turn of the template
    headline: str | None = None  # the metric the run summary shows (default: the first asked)
    # not keyed: a batch changes speed, not what is measured (see README)
    batch_size: int = volatile(16, metadata={"min": 1})


class EvalStage:
    kind: ClassVar[str] = "eval"
    Config = EvalConfig
    inputs: ClassVar[dict[str, In]] = {
        "model": In((MODEL, REWARD_MODEL), default="base"),
        "reward_model": In(REWARD_MODEL, optional=True),
        "baseline": In(MODEL, optional=True),
    }
    output: ClassVar[str] = METRICS
    code: ClassVar[tuple[str, ...]] = (
        "evaluation/examples.py",
        "evaluation/loss.py",
        "evaluation/generation.py",
        "evaluation/multiple_choice.py",
        "evaluation/judge.py",
        "evaluation/harness.py",
        "evaluation/run.py",
        "model/inference.py",
        "model/reward.py",
        "model/loading.py",
        "model/vllm_layout.py",
        "data/encode.py",
        "data/formats.py",
        "data/sources.py",
    )
    dataset_fields: ClassVar[tuple[str, ...]] = ("dataset", "mc_dataset")
    path_fields: ClassVar[tuple[str, ...]] = ("lm_eval_include_path",)
    headline: ClassVar[str] = "exact_match"
    # models meet as text (replies judged by a reward model): their tokenizers may differ
    compares_text: ClassVar[bool] = True

    @staticmethod
    def headline_for(cfg: EvalConfig) -> str:
        """`headline`, else the first metric asked for, else mc accuracy, else the first
        harness task's first metric (recorded under the task's name)."""
        if cfg.headline:
            return cfg.headline
        if cfg.metrics:
            return HEADLINE_KEY.get(cfg.metrics[0], cfg.metrics[0])
        if cfg.mc_dataset:
            return "mc_accuracy"
        return cfg.lm_eval_tasks[0] if cfg.lm_eval_tasks else ""

    @staticmethod
    def check_config(cfg: EvalConfig) -> list[tuple[str, str]]:
        return check_eval(cfg)

    @staticmethod
    def check_dataset(entry: dict[str, Any]) -> str | None:
        from stages.data.shapes import MULTIPLE_CHOICE, PREFERENCE, SUPERVISED, refuse

        needs = "eval needs prompts with reference replies, or multiple-choice questions"
        return refuse(entry, (SUPERVISED, PREFERENCE, MULTIPLE_CHOICE), needs)

    @staticmethod
    def check_inputs(cfg: EvalConfig, roles: dict[str, str | None]) -> list[tuple[str, str]]:
        return check_roles(cfg, roles)

    @staticmethod
    def check_input_types(cfg: EvalConfig, types: dict[str, str]) -> list[tuple[str, str]]:
        """A reward model under eval is measured by pairwise accuracy only; a language model
        by everything else."""
        return check_model_kind(cfg, reward=types.get("model") == REWARD_MODEL)

    @staticmethod
    def key_files(cfg: EvalConfig) -> list[str]:
        """The answer checker's module and the harness's local task files decide the numbers."""
        checker = module_file(cfg.answer_check.partition(":")[0]) if cfg.answer_check else None
        files = [str(checker)] if checker else []
        return files + (harness_files(cfg.lm_eval_include_path) if cfg.lm_eval_tasks else [])

    def run(self, ctx: Context, cfg: EvalConfig) -> None:
        from stages.evaluation.run import evaluate

        evaluate(ctx, cfg)


def check_eval(cfg: EvalConfig) -> list[tuple[str, str]]:
    """Compile-time rules between eval's own fields."""
    problems = _check_metrics(cfg) + _check_answer_check(cfg.answer_check)
    if cfg.lm_eval_tasks and importlib.util.find_spec("lm_eval") is None:
        problems.append(("lm_eval_tasks", f"the lm-evaluation-harness is not installed: {EXTRA}"))
    known = _known_keys(cfg)
    if cfg.headline and cfg.headline not in known and not _harness_key(cfg, cfg.headline):
        problems.append(
            (
                "headline",
                f"'{cfg.headline}' is not measured here: one of {', '.join(known) or '-'}, "
                "or <lm_eval task>/<metric>",
            )
        )
    return problems


def _check_metrics(cfg: EvalConfig) -> list[tuple[str, str]]:
    problems = []
    for name in cfg.metrics:
        if name not in METRIC_NAMES:
            near = difflib.get_close_matches(name, METRIC_NAMES, n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"one of: {', '.join(METRIC_NAMES)}"
            problems.append(("metrics", f"unknown metric '{name}' ({hint})"))
        elif name in PACKAGES and importlib.util.find_spec(PACKAGES[name]) is None:
            problems.append(("metrics", f"{name} needs {PACKAGES[name]}: {EXTRA}"))
    if cfg.metrics and not cfg.dataset:
        asked = ", ".join(cfg.metrics)
        problems.append(("dataset", f"metrics {asked} read a dataset: name one (e.g. demo_test)"))
    if not (cfg.metrics or cfg.mc_dataset or cfg.lm_eval_tasks):
        problems.append(("metrics", "nothing to measure: set metrics, mc_dataset or lm_eval_tasks"))
    return problems


def _check_answer_check(path: str | None) -> list[tuple[str, str]]:
    if path and not DOTTED.match(path):
        return [("answer_check", f"'{path}' is not a dotted path: write module:function")]
    if path and module_file(path.partition(":")[0]) is None:
        return [("answer_check", f"cannot find the module of '{path}': is it on PYTHONPATH?")]
    return []


def _known_keys(cfg: EvalConfig) -> list[str]:
    """The metric keys eval writes for this config (besides the harness's)."""
    keys = [HEADLINE_KEY.get(m, m) for m in cfg.metrics]
    keys += ["perplexity"] if "loss" in cfg.metrics else []
    keys += ["rouge1", "rouge2"] if "rouge" in cfg.metrics else []
    keys += ["reward", "baseline_reward"] if "win_rate" in cfg.metrics else []
    return list(dict.fromkeys(keys + (["mc_accuracy"] if cfg.mc_dataset else [])))


def _harness_key(cfg: EvalConfig, key: str) -> bool:
    return any(key == t or key.startswith(f"{t}/") for t in cfg.lm_eval_tasks)


def check_roles(cfg: EvalConfig, roles: dict[str, str | None]) -> list[tuple[str, str]]:
    """The judge's metrics need a reward model, win rate a baseline; a baseline is only judged."""
    problems = []
    judged = [m for m in cfg.metrics if m in ("reward", "win_rate")]
    if judged and roles.get("reward_model") is None:
        problems.append(
            (
                "reward_model",
                f"metrics {', '.join(judged)} need a judge: name a reward model stage "
                "(reward_model: <rm stage>)",
            )
        )
    if "win_rate" in cfg.metrics and roles.get("baseline") is None:
        problems.append(
            ("baseline", "win_rate compares with another model: name it (baseline: <stage>)")
        )
    if roles.get("baseline") is not None and "win_rate" not in cfg.metrics:
        problems.append(("baseline", "only win_rate reads a baseline: add win_rate, or drop it"))
    return problems


def check_model_kind(cfg: EvalConfig, reward: bool) -> list[tuple[str, str]]:
    """A reward model cannot generate or be scored by likelihood: its one metric is pairwise
    accuracy, which in turn needs a reward model."""
    if not reward:
        if "pairwise_accuracy" in cfg.metrics:
            why = "pairwise_accuracy measures a reward model, but model is a language model"
            return [("metrics", why)]
        return []
    problems = []
    wrong = [m for m in cfg.metrics if m not in REWARD_METRICS]
    if wrong:
        problems.append(
            (
                "metrics",
                f"{', '.join(wrong)} need a language model, but model is a reward model: "
                "measure it with metrics: [pairwise_accuracy] on preference data",
            )
        )
    for name, value in (("mc_dataset", cfg.mc_dataset), ("lm_eval_tasks", cfg.lm_eval_tasks)):
        if value:
            problems.append((name, "needs a language model, but model is a reward model"))
    return problems
