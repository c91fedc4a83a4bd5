"""fedloop's Presidio recognizers: Chinese PII by pattern and checksum, English PII by Presidio's own.

Everything runs on a blank spaCy pipeline with no model download: patterns,
checksums (resident-id check digit, Luhn), Presidio's pattern-based English
recognizers (phone, credit card, IBAN, IP, US SSN), and person names from
packaged dictionaries (person_names.py).
"""

from __future__ import annotations

import re

import tldextract
from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UsSsnRecognizer,
)

from fedloop.client.privacy.person_names import NAME_TRIGGERS, ChineseNameRecognizer, EnglishNameRecognizer

LANGUAGE = "zh"
_OFFLINE_SUFFIXES = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARS = "10X98765432"


def resident_id_check_digit_ok(number: str) -> bool:
    """True when an 18-character resident id's last character matches its GB 11643 check digit."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK_CHARS[total % 11] == number[17].upper()


def luhn_ok(number: str) -> bool:
    """True when the digits of `number` pass the Luhn checksum."""
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return bool(digits) and total % 10 == 0


class ChineseMobileRecognizer(PatternRecognizer):
    """Mainland mobile numbers: 1[3-9] plus 9 digits, optionally prefixed by +86."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CN_MOBILE",
            supported_language=LANGUAGE,
            patterns=[Pattern("cn_mobile", r"(?<![\d.])(?:\+?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}(?!\d|\.\d)", 0.7)],
            context=["手机", "电话", "mobile", "phone", "tel", "call"],
        )


class ChineseLandlineRecognizer(PatternRecognizer):
    """Landline numbers with an area code: 0 + 2-3 digits, then 7-8 digits."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CN_LANDLINE",
            supported_language=LANGUAGE,
            patterns=[Pattern("cn_landline", r"(?<![\d.])(?:\+?86[- ]?)?\(?0\d{2,3}\)?[- ]?\d{7,8}(?!\d|\.\d)", 0.6)],
            context=["电话", "座机", "固话", "tel", "phone", "landline"],
        )


class ResidentIdRecognizer(PatternRecognizer):
    """18-digit resident identity numbers; a wrong check digit is not reported."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="CN_RESIDENT_ID",
            supported_language=LANGUAGE,
            patterns=[Pattern("cn_resident_id", r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])", 0.8)],
            context=["身份证", "id", "identity"],
        )

    def validate_result(self, pattern_text: str) -> bool:
        """Accept only numbers whose check digit is valid."""
        return resident_id_check_digit_ok(pattern_text)


class BankCardRecognizer(PatternRecognizer):
    """Bank card numbers of 16 to 19 digits (spaces or dashes allowed) that pass Luhn."""

    def __init__(self) -> None:
        super().__init__(
            supported_entity="BANK_CARD",
            supported_language=LANGUAGE,
            # not followed by a Latin letter: a resident id ending in X with a wrong check digit is not a card
            patterns=[Pattern("bank_card", r"(?<![\d-])\d{4}(?:[ -]?\d{4}){2}[ -]?\d{4,7}(?![\dA-Za-z-])", 0.5)],
            context=["卡号", "银行卡", "card", "bank"],
        )

    def validate_result(self, pattern_text: str) -> bool:
        """Accept 16-19 digit numbers that pass Luhn."""
        digits = re.sub(r"\D", "", pattern_text)
        return 16 <= len(digits) <= 19 and luhn_ok(digits)


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer, validating domains with the bundled suffix list (no network)."""

    def __init__(self) -> None:
        super().__init__(
            supported_language=LANGUAGE,
            context=["邮箱", "email", "e-mail", "mail"],
            # ASCII-bounded so that adjacent Chinese characters are not taken into the address
            patterns=[
                Pattern(
                    "email_ascii",
                    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@"
                    r"(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![A-Za-z0-9-])",
                    0.5,
                )
            ],
        )

    def validate_result(self, pattern_text: str) -> bool:
        """Accept addresses whose domain ends in a known public suffix."""
        return bool(_OFFLINE_SUFFIXES(pattern_text.rsplit("@", 1)[-1]).top_domain_under_public_suffix)


PROVINCES = (
    "北京|天津|上海|重庆|河北|山西|辽宁|吉林|黑龙江|江苏|浙江|安徽|福建|江西|山东|河南|湖北|湖南|广东|海南|"
    "四川|贵州|云南|陕西|甘肃|青海|台湾|内蒙古|广西|西藏|宁夏|新疆|香港|澳门"
)


class ChineseAddressRecognizer(PatternRecognizer):
    """Chinese postal addresses: a province-level name, then city/district, street and number."""

    def __init__(self) -> None:
        admin = f"(?:{PROVINCES})(?:省|市|自治区|特别行政区)?"
        local = r"(?:[\u4e00-\u9fa5]{1,6}?(?:市|区|县|镇|乡))*"
        street = r"(?:[\u4e00-\u9fa5A-Za-z0-9]{1,12}?(?:路|街|大道|道|巷|弄|胡同|村)){1,2}"
        number = r"(?:[0-9一二三四五六七八九十百]+(?:号楼|号|弄|栋|幢|楼|单元|室|段))*"
        super().__init__(
            supported_entity="CN_ADDRESS",
            supported_language=LANGUAGE,
            patterns=[
                Pattern("cn_address", admin + local + street + number, 0.6),
                Pattern("cn_street", r"[\u4e00-\u9fa5]{1,3}?(?:区|县)" + street + number + r"(?<=号|室|楼|元)", 0.5),
            ],
            context=["地址", "住址", "收货", "寄到", "送到", "address"],
        )


def may_contain_pii(text: str) -> bool:
    """A cheap pre-check: False only when no recognizer here can match (no digit, '@', ':', province name,
    Chinese surname, or English name shape), so the full analysis can be skipped."""
    return _TRIGGERS.search(text) is not None


class IPv4Recognizer(PatternRecognizer):
    """IPv4 addresses bounded by non-digits, so adjacent Chinese characters do not hide them."""

    def __init__(self) -> None:
        octet = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
        super().__init__(
            supported_entity="IP_ADDRESS",
            supported_language=LANGUAGE,
            patterns=[Pattern("ipv4", rf"(?<![\d.]){octet}(?:\.{octet}){{3}}(?!\d|\.\d)", 0.8)],
            context=["ip", "地址", "登录", "server"],
        )


_TRIGGERS = re.compile(r"[\d@:]|" + NAME_TRIGGERS + "|" + PROVINCES)


def fedloop_recognizers() -> list[EntityRecognizer]:
    """Every recognizer the redactor uses, registered for the analyzer's one language."""
    return [
        ChineseMobileRecognizer(),
        ChineseLandlineRecognizer(),
        ResidentIdRecognizer(),
        BankCardRecognizer(),
        OfflineEmailRecognizer(),
        ChineseAddressRecognizer(),
        ChineseNameRecognizer(),
        EnglishNameRecognizer(),
        IPv4Recognizer(),
        IpRecognizer(supported_language=LANGUAGE),
        # Numbers written with a +country prefix are found whatever the region; the regions only
        # add national formats, and each costs a full phonenumbers pass over the text.
        PhoneRecognizer(supported_language=LANGUAGE, supported_regions=("US", "GB")),
        CreditCardRecognizer(supported_language=LANGUAGE),
        IbanRecognizer(supported_language=LANGUAGE),
        UsSsnRecognizer(supported_language=LANGUAGE),
    ]
