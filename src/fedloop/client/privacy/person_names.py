"""Person names, Chinese and English, found without any model download.

- Chinese, with a context word: a common surname plus one or two characters
  after "我叫", "姓名：" … or before a title ("先生", "女士" …).
- Chinese, without context: jieba's part-of-speech segmentation (its dictionary
  and HMM ship in the package) tags person names `nr`; a tagged word is kept
  when it starts with a common surname and has the shape of a name.
- English: a gazetteer of the US census first names and surnames (PyPI `names`):
  "First Last" in title case, a title and a surname ("Ms Johnson"), a first
  name after "I'm" / "this is", or any title-case name after "my name is".
"""

from __future__ import annotations

import logging
import re
from functools import cache
from pathlib import Path

import jieba
import jieba.posseg
import names
from presidio_analyzer import EntityRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from spacy.lang.en.stop_words import STOP_WORDS

jieba.setLogLevel(logging.WARNING)

# The most common Chinese surnames (single characters), enough to cover the large majority of people.
SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
    "姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
COMPOUND_SURNAMES = ("欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "令狐", "慕容", "司徒", "夏侯")
TITLES = ("先生", "女士", "小姐", "同学", "老师", "经理")
_NAME_AFTER = r"(?:我叫|我是|姓名[:：]?|联系人[:：]?|收件人[:：]?|收货人[:：]?)\s*"
NAME_TRIGGERS = (
    r"["
    + SURNAMES
    + r"][\u4e00-\u9fa5]|"
    + "|".join(COMPOUND_SURNAMES)
    + r"|\b[A-Z][a-z]+\.?\s+[A-Z][a-z]|(?i:\bname\s+is\b|\bI'?m\b|\bI\s+am\b|\bthis\s+is\b)"
)
ENGLISH_TITLES = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)"
# Title-case words that start sentences or name months and days: never read as a first name.
_NOT_FIRST_NAMES = {
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "dear",
    "hello",
    "hi",
    "thanks",
    "thank",
    "best",
    "kind",
    "warm",
    "customer",
    "order",
}
# Surnames rarer than this (per cent of the US population) are left out: the long tail is mostly common words.
MIN_SURNAME_FREQUENCY = 0.001
_WORD = r"[A-Z][a-z]+(?:['-][A-Z][a-z]+)?"


def _census_names(path: str, min_frequency: float) -> frozenset[str]:
    """Lower-cased names of a census list (`NAME frequency cumulative rank` lines) at or above a frequency."""
    kept = set()
    for line in Path(path).read_text().splitlines():
        name, frequency, _, _ = line.split()
        if float(frequency) >= min_frequency:
            kept.add(name.lower())
    return frozenset(kept)


@cache
def first_names() -> frozenset[str]:
    """US census first names (male and female), less stop words, months, days and greetings."""
    listed = _census_names(names.FILES["first:male"], 0.0) | _census_names(names.FILES["first:female"], 0.0)
    return frozenset(listed - STOP_WORDS - _NOT_FIRST_NAMES)


@cache
def surnames() -> frozenset[str]:
    """US census surnames at or above MIN_SURNAME_FREQUENCY, less stop words."""
    return frozenset(_census_names(names.FILES["last"], MIN_SURNAME_FREQUENCY) - STOP_WORDS)


class ChineseNameRecognizer(EntityRecognizer):
    """Chinese person names: next to a context word, or tagged a person name by jieba's segmentation."""

    _after = re.compile(_NAME_AFTER + f"([{SURNAMES}][\u4e00-\u9fa5]{{1,2}})")
    _before = re.compile(f"([{SURNAMES}][\u4e00-\u9fa5]{{0,2}}?)(?={'|'.join(TITLES)})")

    def __init__(self) -> None:
        super().__init__(supported_entities=["CN_PERSON"], supported_language="zh", name="ChineseNameRecognizer")

    def load(self) -> None:
        """Load jieba's dictionary now, not on the first request."""
        jieba.posseg.lcut("预热")

    @staticmethod
    def name_shaped(word: str) -> bool:
        """A surname (single or compound) plus one or two given-name characters, no title, not doubled (谢谢)."""
        compound = word[:2] in COMPOUND_SURNAMES
        given = word[2:] if compound else word[1:]
        return (
            (compound or word[0] in SURNAMES)
            and 1 <= len(given) <= 2
            and re.fullmatch(r"[\u4e00-\u9fa5]+", word) is not None
            and word[1] != word[0]
            and not any(word.endswith(title) for title in TITLES)
        )

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """Names introduced by a context word ("我叫…", "姓名：…"), followed by a title ("…先生"), or tagged `nr`."""
        results = [
            RecognizerResult("CN_PERSON", match.start(1), match.end(1), 0.7)
            for pattern in (self._after, self._before)
            for match in pattern.finditer(text)
        ]
        position = 0
        for pair in jieba.posseg.cut(text):
            if pair.flag == "nr" and self.name_shaped(pair.word):
                results.append(RecognizerResult("CN_PERSON", position, position + len(pair.word), 0.6))
            position += len(pair.word)
        return results


class EnglishNameRecognizer(EntityRecognizer):
    """English person names from the census gazetteer: "First Last", "Ms Last", "my name is First"."""

    _full = re.compile(rf"\b(?=({_WORD})\s+(?:[A-Z]\.\s+)?({_WORD})\b)")  # a lookahead: pairs may overlap
    _titled = re.compile(rf"\b{ENGLISH_TITLES}\.?\s+({_WORD}(?:\s+{_WORD})?)\b")
    _introduced = re.compile(
        rf"(?i:\b(my\s+name\s+is|name:)\s*|\b(?:i'?m|i\s+am|this\s+is)\s+)"
        rf"({_WORD}(?:\s+{_WORD})?)\b"
    )

    def __init__(self) -> None:
        super().__init__(supported_entities=["PERSON"], supported_language="zh", name="EnglishNameRecognizer")

    def load(self) -> None:
        """Read the census lists now, not on the first request."""
        first_names(), surnames()

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """Every span that reads as a person's name."""
        first, last = first_names(), surnames()
        results = [
            RecognizerResult("PERSON", match.start(1), match.end(2), 0.6)
            for match in self._full.finditer(text)
            if match.group(1).lower() in first and match.group(2).lower() in last
        ]
        for match in self._titled.finditer(text):
            words = match.group(1).split()
            keep = words if len(words) == 1 or words[1].lower() in last else words[:1]
            if keep[0].lower() not in STOP_WORDS:
                results.append(RecognizerResult("PERSON", match.start(1), match.start(1) + len(" ".join(keep)), 0.7))
        for match in self._introduced.finditer(text):
            named, words = match.group(1) is not None, match.group(2).split()
            if not named and words[0].lower() not in first:  # "my name is" names anyone; "I'm" needs a first name
                continue
            keep = words if len(words) == 2 and (named or words[1].lower() in last) else words[:1]
            results.append(RecognizerResult("PERSON", match.start(2), match.start(2) + len(" ".join(keep)), 0.6))
        return results
