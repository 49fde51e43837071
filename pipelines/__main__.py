"""Entry point. The verb is stripped before Hydra sees the arguments (it would parse it as an
override); user mistakes end in one message and exit code 2, without a traceback unless
`PIPELINES_TRACEBACK=1`."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

USAGE = """usage: python -m pipelines <verb> [args]

  run  [overrides]      compile the pipeline and run what is not cached (-m: a sweep)
  plan [overrides]      print the DAG and, per stage, cached / resume / run, and why
  show <stage|key>      one artifact's manifest, metrics and lineage
  ls                    the artifacts in the store
  gc [--yes]            remove artifacts no run record references (dry run without --yes)
  verify [--all | stage | key]
                        re-hash artifacts against their manifests and report any damage
  compare [runs | sweep dir | stages] [--sort METRIC] [--stage NAME] [--plot FILE.png]
                        the configs that differ and the metrics of several runs side by side,
                        best first (default: the jobs of the latest multirun)
  data preview <dataset> [-n N] [--template T] [overrides]
                        render examples through the template, trained tokens marked
  serve <stage|key|dir> [--host H] [--port N] [--store DIR] [overrides]
                        an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions)
  chat <stage|key|dir> [--system TEXT] [--store DIR] [overrides]
                        talk to a model in the terminal (/reset, /exit)

examples:
  python -m pipelines run +pipeline=sft
  python -m pipelines plan +pipeline=sft stages.sft.learning_rate=2e-4
  python -m pipelines run -m +pipeline=sft stages.sft.learning_rate=1e-4,2e-4"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb in ("run", "plan"):
        from pipelines.app import run_hydra

        return run_hydra(verb, rest)
    if verb in ("show", "ls", "gc", "verify"):
        from pipelines.inspect import inspect_main

        return inspect_main(verb, rest)
    if verb == "compare":
        from pipelines.compare import compare_main

        return compare_main(rest)
    if verb in ("serve", "chat"):
        from pipelines.serving.cli import chat_main, serve_main

        return serve_main(rest) if verb == "serve" else chat_main(rest)
    if verb == "data" and rest[:1] == ["preview"]:
        from pipelines.preview import preview_main

        return preview_main(rest[1:])
    print(f"pipelines: unknown verb '{verb}'\n\n{USAGE}", file=sys.stderr)
    return 2


def entry() -> None:
    """The `pipelines` console script and `python -m pipelines`."""
    # Ctrl-C stops the run and says how to resume, even when started by a parent that ignores
    # SIGINT (Python then keeps ignoring it: a test runner, a script's background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `... | head` closed the pipe: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    finally:
        with contextlib.suppress(BrokenPipeError):
            sys.stdout.flush()
        os.environ.pop("HYDRA_FULL_ERROR", None)


if __name__ == "__main__":
    entry()
