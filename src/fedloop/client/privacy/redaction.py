"""Find PII with Presidio (fedloop's recognizers over a blank spaCy pipeline) and redact it with placeholders
(src/fedloop/client/privacy/placeholders.py)."""

from __future__ import annotations

import spacy
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import SpacyNlpEngine

from fedloop.client.privacy.placeholders import Finding, PlaceholderMap, Redaction, apply_placeholders
from fedloop.client.privacy.recognizers import LANGUAGE, fedloop_recognizers, may_contain_pii

SPECIFICITY = {"CN_RESIDENT_ID": 3, "IP_ADDRESS": 2, "BANK_CARD": 1, "CREDIT_CARD": 1}


class _BlankSpacyEngine(SpacyNlpEngine):
    """Presidio's spaCy engine over a blank pipeline: tokenisation only, nothing downloaded.

    The multi-language tokenizer splits on spaces and punctuation rather than on
    every Chinese character: the recognizers here are patterns and do not need
    finer tokens, and per-character tokens made the NLP step the slowest part.
    """

    def __init__(self) -> None:
        super().__init__(models=[{"lang_code": LANGUAGE, "model_name": "blank"}])

    def load(self) -> None:
        """Create the blank pipeline instead of loading a trained model by name."""
        self.nlp = {LANGUAGE: spacy.blank("xx")}  # type: ignore[assignment]  # Presidio declares it None until loaded


class Redactor:
    """Finds PII with Presidio and replaces it with typed, record-stable placeholders."""

    def __init__(self) -> None:
        registry = RecognizerRegistry(supported_languages=[LANGUAGE])
        for recognizer in fedloop_recognizers():
            registry.add_recognizer(recognizer)
        engine = _BlankSpacyEngine()
        engine.load()
        self._analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=[LANGUAGE])

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings, left to right.

        On overlap the longer span wins, then the more specific type (a valid
        resident id over a card number that also passes Luhn), then the score.
        """
        if not may_contain_pii(text):
            return []
        results = sorted(
            self._analyzer.analyze(text=text, language=LANGUAGE),
            key=lambda r: (-(r.end - r.start), -SPECIFICITY.get(r.entity_type, 0), -r.score, r.start),
        )
        chosen: list[Finding] = []
        for result in results:
            if all(result.end <= f.start or result.start >= f.end for f in chosen):
                chosen.append(Finding(result.entity_type, result.start, result.end))
        return sorted(chosen, key=lambda f: f.start)

    def redact(self, text: str, placeholders: PlaceholderMap | None = None) -> Redaction:
        """`text` with each finding replaced by its placeholder in `placeholders` (a fresh map if None)."""
        return apply_placeholders(text, self.find(text), placeholders if placeholders is not None else PlaceholderMap())
