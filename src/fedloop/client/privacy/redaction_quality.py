"""Precision and recall of the redactor on a labelled set of sentences.

A predicted span counts as a true positive when it overlaps a gold span of the
same kind; kinds that name the same thing are grouped (a card number found as
CREDIT_CARD or BANK_CARD; a phone number as CN_MOBILE, CN_LANDLINE or
PHONE_NUMBER). Each gold span is matched at most once.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fedloop.client.privacy.redaction import Redactor

GROUPS = {
    "CREDIT_CARD": "CARD",
    "BANK_CARD": "CARD",
    "CN_MOBILE": "PHONE",
    "CN_LANDLINE": "PHONE",
    "PHONE_NUMBER": "PHONE",
}


def kind(entity_type: str) -> str:
    """The comparison group of an entity type."""
    return GROUPS.get(entity_type, entity_type)


@dataclass
class PiiReport:
    """True positives, false positives and false negatives, overall and per gold kind."""

    tp: Counter[str] = field(default_factory=Counter)
    fp: Counter[str] = field(default_factory=Counter)
    fn: Counter[str] = field(default_factory=Counter)
    sentences: int = 0

    @staticmethod
    def _ratio(a: int, b: int) -> float:
        return a / b if b else 1.0

    def precision(self, group: str | None = None) -> float:
        """TP / (TP + FP), overall or for one kind."""
        tp = self.tp[group] if group else sum(self.tp.values())
        fp = self.fp[group] if group else sum(self.fp.values())
        return self._ratio(tp, tp + fp)

    def recall(self, group: str | None = None) -> float:
        """TP / (TP + FN), overall or for one kind."""
        tp = self.tp[group] if group else sum(self.tp.values())
        fn = self.fn[group] if group else sum(self.fn.values())
        return self._ratio(tp, tp + fn)

    def kinds(self) -> list[str]:
        """Every kind seen in gold or predictions."""
        return sorted(set(self.tp) | set(self.fp) | set(self.fn))


def measure_redaction(redactor: Redactor, path: Path) -> PiiReport:
    """Run the redactor over a JSONL file of {"text", "entities": [{"type", "start", "end"}]}."""
    report = PiiReport()
    for line in path.read_text().splitlines():
        row = json.loads(line)
        report.sentences += 1
        gold = [(kind(e["type"]), e["start"], e["end"]) for e in row["entities"]]
        unmatched = list(gold)
        for finding in redactor.find(row["text"]):
            group = kind(finding.entity_type)
            match = next((g for g in unmatched if g[0] == group and finding.start < g[2] and g[1] < finding.end), None)
            if match is None:
                report.fp[group] += 1
            else:
                unmatched.remove(match)
                report.tp[group] += 1
        for group, _, _ in unmatched:
            report.fn[group] += 1
    return report
