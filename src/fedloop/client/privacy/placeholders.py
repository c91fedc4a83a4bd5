"""Replace PII with typed placeholders that are stable within a record.

Within one record (a draft with its prompt, outcome and follow-up messages) the
same original always maps to the same placeholder, e.g. `<CN_MOBILE_1>`, so a
reply that repeats the customer's number stays coherent. The originals are
handed back to the caller for the SM4-encrypted vault; they are never logged.
Finding the PII is the redactor's job (redaction.py); this module needs no NLP.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Finding:
    """One piece of PII found in a text."""

    entity_type: str
    start: int
    end: int


@dataclass
class PlaceholderMap:
    """The placeholders of one record: original text -> placeholder, numbered per entity type."""

    by_original: dict[str, str] = field(default_factory=dict)

    def entity_types(self) -> set[str]:
        """The entity types found so far in this record."""
        return {p[1:-1].rsplit("_", 1)[0] for p in self.by_original.values()}

    def placeholder_for(self, entity_type: str, original: str) -> tuple[str, bool]:
        """The placeholder for `original`, and whether it is new to this record."""
        if original in self.by_original:
            return self.by_original[original], False
        number = 1 + sum(1 for p in self.by_original.values() if p.startswith(f"<{entity_type}_"))
        placeholder = f"<{entity_type}_{number}>"
        self.by_original[original] = placeholder
        return placeholder, True


@dataclass(frozen=True)
class Redaction:
    """A redacted text and the (placeholder, original) pairs it introduced."""

    text: str
    new_entries: list[tuple[str, str]]
    entity_types: list[str]


def apply_placeholders(text: str, findings: list[Finding], placeholders: PlaceholderMap) -> Redaction:
    """Replace each finding in `text` by its record-stable placeholder, then every other occurrence of any
    original this record already knows (a name found in the prompt is replaced in the final text too, even
    where no recognizer would find it there)."""
    segments, placed, new_entries, cursor = [], [], [], 0
    for finding in findings:
        original = text[finding.start : finding.end]
        placeholder, is_new = placeholders.placeholder_for(finding.entity_type, original)
        if is_new:
            new_entries.append((placeholder, original))
        segments.append(text[cursor : finding.start])
        placed.append(placeholder)
        cursor = finding.end
    segments.append(text[cursor:])
    known = sorted(placeholders.by_original.items(), key=lambda item: -len(item[0]))  # longest first
    again: list[str] = []
    for index, segment in enumerate(segments):
        for original, placeholder in known:
            if original in segment:
                again += [placeholder[1:-1].rsplit("_", 1)[0]] * segment.count(original)
                segment = segment.replace(original, placeholder)
        segments[index] = segment
    pieces = [piece for pair in zip(segments, placed + [""], strict=True) for piece in pair]
    return Redaction("".join(pieces), new_entries, [f.entity_type for f in findings] + again)
