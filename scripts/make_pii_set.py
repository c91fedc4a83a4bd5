"""Build the labelled PII evaluation set (tests/data/pii_labelled.jsonl), deterministically.

Mixed Chinese/English sentences from templates with known spans, plus hard
negatives (order numbers, dates, prices, an id with a wrong check digit, a card
number failing Luhn, words that start with a surname character, title-case
phrases). Run: `python scripts/make_pii_set.py` (seeded; the output
is committed and used by tests and scripts/bench_redaction.py).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "pii_labelled.jsonl"
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def resident_id(rng: random.Random, valid: bool = True) -> str:
    body = (
        f"{rng.choice(['110105', '310104', '440305', '510107'])}{rng.randint(1950, 2005)}"
        f"{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(100, 999)}"
    )
    check = "10X98765432"[sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS, strict=True)) % 11]
    if not valid:
        check = "10X98765432"[("10X98765432".index(check) + 3) % 11]
    return body + check


def luhn_complete(prefix: str) -> str:
    for last in "0123456789":
        digits = [int(c) for c in prefix + last]
        total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(reversed(digits)))
        if total % 10 == 0:
            return prefix + last
    raise AssertionError


def card(rng: random.Random, valid: bool = True) -> str:
    number = luhn_complete(rng.choice(["6222", "6228", "6217"]) + "".join(rng.choice("0123456789") for _ in range(14)))
    return number if valid else number[:-1] + str((int(number[-1]) + 1) % 10)


VALUES = {
    "CN_MOBILE": lambda r: f"1{r.choice('3589')}{r.randint(0, 9)}{r.randint(10000000, 99999999)}",
    "CN_LANDLINE": lambda r: f"0{r.choice(['10', '21', '755', '571'])}-{r.randint(2000000, 89999999)}",
    "CN_RESIDENT_ID": resident_id,
    "BANK_CARD": card,
    "EMAIL_ADDRESS": lambda r: (
        f"{r.choice(['li.lei', 'wangfang', 'anna.k', 'tom_88'])}@"
        f"{r.choice(['qq.com', '163.com', 'example.com.cn', 'gmail.com'])}"
    ),
    "IP_ADDRESS": lambda r: f"{r.randint(11, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
    "CN_ADDRESS": lambda r: r.choice(
        [
            "北京市海淀区中关村大街27号",
            "上海市浦东新区世纪大道100号",
            "广东省深圳市南山区科技园路8号",
            "浙江省杭州市西湖区文三路90号",
            "四川省成都市武侯区人民南路四段12号",
        ]
    ),
    "CN_PERSON": lambda r: r.choice(["王小明", "李娜", "张伟", "刘洋", "陈静", "杨帆", "赵磊", "黄丽"]),
    "PHONE_NUMBER": lambda r: r.choice(["(212) 555-0187", "+1 415 555 0134", "+44 20 7946 0958", "(646) 555-0199"]),
    "US_SSN": lambda r: r.choice(["536-22-1234", "401-43-9876", "212-67-4321"]),
    # Twelve names of the US census lists and four that are not (the English recognizer's known gap).
    "PERSON": lambda r: r.choice(
        [
            "John Smith",
            "Mary Johnson",
            "Robert Brown",
            "Linda Davis",
            "James Wilson",
            "Patricia Moore",
            "Michael Taylor",
            "Jennifer Anderson",
            "David Miller",
            "Susan Clark",
            "Thomas Walker",
            "Karen Lewis",
            "Priya Raman",
            "Oluwaseun Adeyemi",
            "Wei Zhang",
            "Siobhan O'Neill",
        ]
    ),
}
TEMPLATES = {
    "CN_MOBILE": ["请拨打{}联系我", "我的手机是{}，谢谢", "call me on {} please", "手机号：{}"],
    "CN_LANDLINE": ["公司座机{}，工作日可打", "office line {} is staffed 9-6", "固话：{}"],
    "CN_RESIDENT_ID": ["身份证号{}已登记", "my id number is {}.", "证件号码：{}"],
    "BANK_CARD": ["退款请打到卡号{}", "refund to card {} please", "银行卡：{}"],
    "EMAIL_ADDRESS": ["邮箱{}", "write to {} for the invoice", "请发到{}，多谢"],
    "IP_ADDRESS": ["登录地址来自{}", "the request came from {} at noon"],
    "CN_ADDRESS": ["地址：{}", "请寄到{}，收件人会签收", "ship it to {} please"],
    "CN_PERSON": ["我叫{}，订单还没到", "联系人：{}", "{}先生说包裹破损了", "姓名：{}"],
    "PHONE_NUMBER": ["you can reach me at {} after 5pm", "US support line: {}"],
    "US_SSN": ["my SSN is {} for the tax form"],
    "PERSON": [
        "My name is {} and my order is late",
        "{} called about the refund yesterday",
        "please ask {} to call me back",
        "hello, this is {} from accounting",
    ],
}
# Chinese names with no context word: only a segmenter that knows names finds them.
CONTEXTLESS_CN_PERSON = ["{}说他上周买的耳机坏了", "{}昨天打电话投诉物流太慢", "帮我查一下{}的订单", "{}和我一起下的单"]
NEGATIVES = [
    "Where is my order 12345678? It has not arrived.",
    "订单号20240501123已发货",
    "The price is 1299.00 yuan.",
    "Meeting on 2024-05-01 at 10:30.",
    "快递单号SF1234567890",
    "Version 2.13.0 fixed the bug.",
    "请问退货要几天？",
    "I was charged twice, please help.",
    "我想取消订阅",
    "Can I change my password?",
    "第3季度的销量增长了15%",
    "Track package 1Z999AA10123456784 online.",
    "商品编号 8806 缺货",
    # Words that start with a Chinese surname character, and title-case phrases that are not names.
    "方便说一下怎么退货吗",
    "高兴地说谢谢",
    "周末能送到吗",
    "黄金会员怎么开通",
    "马上帮我处理一下",
    "请问金额多少",
    "许多人说这款很好",
    "程序一直出错",
    "任何时候都可以",
    "万一丢件怎么办",
    "白色的还有货吗",
    "江南仓库发货",
    "Go to Account Settings > Payment Methods.",
    "Thank you for contacting Customer Support.",
    "Dear Customer Service, the May Sale ended.",
    "Ship it to New York City by Monday.",
    "I'm sorry, I will call Best Buy later.",
    "Will Express Delivery ship it in June?",
]


def build(seed: int = 20261121, per_type: int = 16) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for entity, templates in TEMPLATES.items():
        for i in range(per_type):
            value = VALUES[entity](rng)
            template = templates[i % len(templates)]
            start = template.index("{}")
            rows.append(
                {
                    "text": template.format(value),
                    "entities": [{"type": entity, "start": start, "end": start + len(value)}],
                }
            )
    for i in range(per_type):
        value, template = VALUES["CN_PERSON"](rng), CONTEXTLESS_CN_PERSON[i % len(CONTEXTLESS_CN_PERSON)]
        start = template.index("{}")
        rows.append(
            {
                "text": template.format(value),
                "entities": [{"type": "CN_PERSON", "start": start, "end": start + len(value)}],
            }
        )
    for _ in range(30):  # two entities in one sentence
        a, b = rng.sample(["CN_MOBILE", "EMAIL_ADDRESS", "CN_RESIDENT_ID", "CN_PERSON"], 2)
        va, vb = VALUES[a](rng), VALUES[b](rng)
        prefix = "我叫" if a == "CN_PERSON" else "信息："
        text = f"{prefix}{va}，另外 {vb} 也可以"
        rows.append(
            {
                "text": text,
                "entities": [
                    {"type": a, "start": len(prefix), "end": len(prefix) + len(va)},
                    {"type": b, "start": len(prefix) + len(va) + 4, "end": len(prefix) + len(va) + 4 + len(vb)},
                ],
            }
        )
    for text in NEGATIVES:
        rows.append({"text": text, "entities": []})
    for _ in range(8):
        rows.append({"text": f"身份证号{resident_id(rng, valid=False)}校验位不对", "entities": []})
        rows.append({"text": f"卡号{card(rng, valid=False)}校验失败", "entities": []})
    return rows


if __name__ == "__main__":
    rows = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(rows)} sentences written to {OUT}")
