"""Text cells of every table and CSV we print: a value a client chose (a model name, a tenant
typed by an operator from a customer's form) must neither break a row nor run as a formula.

Control characters (C0, DEL, C1, Unicode line and paragraph separators) are shown as `\\uXXXX`
escapes, so a CR/LF cannot start a fake row; a cell that a spreadsheet would read as a formula
(first character `=`, `+`, `-`, `@`) gets a leading apostrophe, as OWASP's CSV-injection advice
suggests. JSON output needs neither: the encoder escapes, and nothing evaluates it.
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_FORMULA_START = ("=", "+", "-", "@")


def safe_cell(value: object) -> str:
    """`value` as text that is one cell: control characters escaped, formulas defused."""
    text = _CONTROL.sub(lambda match: f"\\u{ord(match.group()):04x}", str(value))
    if text.startswith(_FORMULA_START):
        text = "'" + text
    return text
