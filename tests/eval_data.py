"""The demo datasets the eval tests read, as dataset entries, and the demo's answer checker."""

from __future__ import annotations

from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "stages" / "data" / "demo"
TEST = {"name": "demo_test", "path": str(DEMO / "test.jsonl"), "formatting": "alpaca"}
MMLU = {"name": "demo_mmlu", "path": str(DEMO / "mmlu.jsonl"), "formatting": "multiple_choice"}
PREFERENCE = {
    "name": "demo_preference",
    "path": str(DEMO / "preference.jsonl"),
    "formatting": "alpaca",
    "ranking": True,
}
CHECK = "stages.data.demo:check_answer"
TEST_ROWS = (DEMO / "test.jsonl").read_text().splitlines()
