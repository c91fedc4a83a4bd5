"""PII redaction with Presidio, run before anything is stored.

The analyzer uses a blank spaCy pipeline (no model download) and fedloop's own
pattern recognizers: Chinese mobile numbers, 18-digit resident identity numbers
whose GB 11643 check digit is valid, and e-mail addresses. Each finding is
replaced by a typed placeholder such as `<CN_MOBILE>`.
"""

from __future__ import annotations

from dataclasses import dataclass

import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
from presidio_analyzer.nlp_engine import SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import EmailRecognizer

LANGUAGE = "zh"
_OFFLINE_SUFFIXES = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARS = "10X98765432"


def resident_id_check_digit_ok(number: str) -> bool:
    """True when an 18-character resident id's last character matches its GB 11643 check digit."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK_CHARS[total % 11] == number[17].upper()


class ChineseMobileRecognizer(PatternRecognizer):
    """Mainland mobile numbers: 1[3-9] plus 9 digits, optionally prefixed by +86."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CN_MOBILE",
            supported_language=LANGUAGE,
            patterns=[Pattern("cn_mobile", r"(?<!\d)(?:\+?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}(?!\d)", 0.7)],
            context=["手机", "电话", "mobile", "phone", "tel"],
        )


class ResidentIdRecognizer(PatternRecognizer):
    """18-digit resident identity numbers; a wrong check digit is not reported."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CN_RESIDENT_ID",
            supported_language=LANGUAGE,
            patterns=[Pattern("cn_resident_id", r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])", 0.6)],
            context=["身份证", "id", "identity"],
        )

    def validate_result(self, pattern_text: str) -> bool:
        """Accept only numbers whose check digit is valid."""
        return resident_id_check_digit_ok(pattern_text)


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer, validating domains with the bundled suffix list (no network)."""

    def __init__(self) -> None:
        super().__init__(
            supported_language=LANGUAGE,
            context=["邮箱", "email", "e-mail", "mail"],
            # ASCII-bounded so that adjacent Chinese characters are not taken into the address
            patterns=[Pattern("email_ascii", r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@"
                                             r"(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![A-Za-z0-9-])", 0.5)],
        )

    def validate_result(self, pattern_text: str) -> bool:
        """Accept addresses whose domain ends in a known public suffix."""
        return bool(_OFFLINE_SUFFIXES(pattern_text.rsplit("@", 1)[-1]).top_domain_under_public_suffix)


class _BlankSpacyEngine(SpacyNlpEngine):
    """Presidio's spaCy engine over a blank pipeline: tokenisation only, nothing downloaded."""

    def __init__(self) -> None:
        super().__init__(models=[{"lang_code": LANGUAGE, "model_name": "blank"}])

    def load(self) -> None:
        """Create the blank pipeline instead of loading a trained model by name."""
        self.nlp = {LANGUAGE: spacy.blank(LANGUAGE)}


@dataclass(frozen=True)
class Finding:
    """One piece of PII found in a text."""

    entity_type: str
    start: int
    end: int


class Redactor:
    """Finds PII and replaces it with typed placeholders."""

    def __init__(self) -> None:
        registry = RecognizerRegistry(supported_languages=[LANGUAGE])
        for recognizer in (ChineseMobileRecognizer(), ResidentIdRecognizer(),
                           OfflineEmailRecognizer()):
            registry.add_recognizer(recognizer)
        engine = _BlankSpacyEngine()
        engine.load()
        self._analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=[LANGUAGE])

    def find(self, text: str) -> list[Finding]:
        """All non-overlapping findings in `text`, left to right (longest wins on overlap)."""
        results = sorted(self._analyzer.analyze(text=text, language=LANGUAGE),
                         key=lambda r: (r.start, -(r.end - r.start)))
        findings: list[Finding] = []
        for result in results:
            if findings and result.start < findings[-1].end:
                continue
            findings.append(Finding(result.entity_type, result.start, result.end))
        return findings

    def redact(self, text: str) -> str:
        """`text` with every finding replaced by `<ENTITY_TYPE>`."""
        for finding in reversed(self.find(text)):
            text = f"{text[:finding.start]}<{finding.entity_type}>{text[finding.end:]}"
        return text
