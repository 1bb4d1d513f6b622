"""Optional PII redaction for cleaned text: e-mail addresses, phone numbers and payment card numbers.

Each rule replaces what it finds with a placeholder (`[EMAIL]`, `[PHONE]`, `[CARD_NUMBER]`), so the
model still sees that something was there. Rules run in a fixed order — cards before phones, since
a card number is also a long run of digits.

- email: local@domain.tld.
- card_number: 13 to 19 digits, optionally grouped by spaces or dashes, that pass the Luhn check
  (so an order or tracking number of that length is left alone unless its check digit happens to fit).
- phone: 9 to 15 digits that start with `+`, `(` or `0`, or are grouped by spaces, dots, dashes or
  parentheses. A date (8 digits) and a plain run of digits such as an order number are not phones.
"""

from __future__ import annotations

import re
from collections.abc import Callable

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(r"(?<![\w+(])(?:\+|\()?\d[\d ().-]{6,}\d(?!\w)")


def _luhn(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits))
    return total % 10 == 0


def _phone(candidate: str) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    grouped = any(c in " ().-" for c in candidate.strip())
    return 9 <= digits <= 15 and (grouped or candidate[0] in "+(0")


RULES: dict[str, tuple[re.Pattern, str, Callable[[str], bool] | None]] = {
    "card_number": (CARD, "[CARD_NUMBER]", _luhn),
    "email": (EMAIL, "[EMAIL]", None),
    "phone": (PHONE, "[PHONE]", _phone),
}


def redact(text: str | None, rule: str) -> str | None:
    """`text` with every match of `rule` replaced by its placeholder."""
    if text is None:
        return None
    pattern, placeholder, valid = RULES[rule]
    return pattern.sub(lambda m: placeholder if valid is None or valid(m.group()) else m.group(), text)
