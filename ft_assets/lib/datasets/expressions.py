"""SQL expressions over texts that cleaning (lib/datasets/cleaning.py) and the clean rows' contract
(lib/schemas.py) share, so that a rule and its check read a text the same way: whitespace, blank texts,
and a preference pair's prompt.

Each function takes SQL (a column, an expression) and returns SQL.
"""

from __future__ import annotations

# RE2 `\s` is ASCII only; \p{Z} adds no-break and other unicode spaces, \p{Cc} control characters.
# Every run of them becomes one space. The pattern matches only the runs that change (a space and more,
# or one of the others and more): a single space between two words is left alone, which makes the
# replace five times faster than matching every run, for the same text.
SPACE = r"[\s\p{Z}\p{Cc}]"
SPACE_RUN = rf" {SPACE}+|(?:\p{{Cc}}|[^\P{{Z}} ]){SPACE}*"


def words(column: str) -> str:
    """SQL for the column in NFC, every run of unicode whitespace one space, none at either end."""
    return f"trim(regexp_replace(nfc_normalize({column}), '{SPACE_RUN}', ' ', 'g'))"


def is_blank(column: str) -> str:
    """SQL: the text is null, empty or only unicode whitespace (DuckDB's trim removes spaces only)."""
    return f"regexp_full_match(coalesce({column}, ''), '{SPACE}*')"


def stripped(column: str) -> str:
    """SQL for the text without unicode whitespace at either end."""
    return f"regexp_replace({column}, '^{SPACE}+|{SPACE}+$', '', 'g')"


def prompt_key(text: str = "text") -> str:
    """SQL for a preference pair's prompt as the split and the test-overlap rules compare it: its roles,
    then its contents with whitespace normalised as a classification text's is, so that two prompts that
    differ only in spacing are one prompt. `text` holds the pair's JSON (see lib/ingest/readers.py)."""
    roles = f"array_to_string(json_extract_string({text}, '$.prompt[*].role'), ',')"
    contents = f"array_to_string(json_extract_string({text}, '$.prompt[*].content'), ' | ')"
    return f"{roles} || ' | ' || {words(contents)}"
