"""Precision and recall of fedloop's PII redaction on the labelled set, plus time per sentence.

Run: .venv/bin/python scripts/bench_redaction.py [--data tests/data/pii_labelled.jsonl]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedloop.client.privacy.redaction import Redactor
from fedloop.client.privacy.redaction_quality import measure_redaction

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Print a Markdown table of precision and recall per kind and overall."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT / "tests" / "data" / "pii_labelled.jsonl")
    args = parser.parse_args()
    redactor = Redactor()
    started = time.perf_counter()
    report = measure_redaction(redactor, args.data)
    elapsed = time.perf_counter() - started
    print(f"{report.sentences} sentences, {elapsed / report.sentences * 1000:.2f} ms per sentence\n")
    print("| kind | TP | FP | FN | precision | recall |\n|---|---|---|---|---|---|")
    for kind in report.kinds():
        print(
            f"| {kind} | {report.tp[kind]} | {report.fp[kind]} | {report.fn[kind]} | "
            f"{report.precision(kind):.3f} | {report.recall(kind):.3f} |"
        )
    print(
        f"| **all** | {sum(report.tp.values())} | {sum(report.fp.values())} | {sum(report.fn.values())} | "
        f"**{report.precision():.3f}** | **{report.recall():.3f}** |"
    )


if __name__ == "__main__":
    main()
