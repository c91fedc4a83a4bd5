"""PII redaction before storage."""

from __future__ import annotations

import pytest

from fedloop.client.privacy import Redactor, resident_id_check_digit_ok


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize("text, expected", [
    ("请拨打13812345678联系我", "请拨打<CN_MOBILE>联系我"),
    ("call +86 139-1234-5678 today", "call <CN_MOBILE> today"),
    ("身份证号11010519491231002X已登记", "身份证号<CN_RESIDENT_ID>已登记"),
    ("my id is 110101199003074514.", "my id is <CN_RESIDENT_ID>."),
    ("write to li.lei@example.com.cn please", "write to <EMAIL_ADDRESS> please"),
    ("邮箱zhang_san@qq.com", "邮箱<EMAIL_ADDRESS>"),
])
def test_pii_is_replaced_by_typed_placeholders(redactor: Redactor, text: str, expected: str) -> None:
    assert redactor.redact(text) == expected


def test_resident_id_with_invalid_check_digit_is_left_alone(redactor: Redactor) -> None:
    assert not resident_id_check_digit_ok("110105194912310021")
    assert redactor.redact("id 110105194912310021 here") == "id 110105194912310021 here"


def test_text_without_pii_is_unchanged(redactor: Redactor) -> None:
    text = "Order 12345 ships in 2 days; ticket 2024-05-01."
    assert redactor.redact(text) == text
