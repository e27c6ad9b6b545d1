"""Whether a break-the-glass reason says something: what an auditor or privacy officer can judge.

A length alone is met by "emergency access needed!!" or twenty x's. A reason with substance names
the situation in words of its own: at least MIN_WORDS distinct words of three or more letters
that are not stock phrases, and no character making up more than half of it.
"""

from __future__ import annotations

import re
from collections import Counter

MIN_WORDS = 3
# The share of the non-blank characters one character may make up ("aaaaaaaaaaaaaaaaaaaa").
MAX_ONE_CHARACTER = 0.5
_WORD = re.compile(r"[^\W\d_]{3,}")
# Words every reason could say and that tell nothing about this one: the situation, the access,
# filler, placeholders. Lower case.
STOCK = frozenset(
    [
        "access",
        "accessed",
        "accessing",
        "and",
        "any",
        "are",
        "asap",
        "break",
        "breaking",
        "case",
        "chart",
        "check",
        "checking",
        "clinical",
        "data",
        "emergency",
        "emergent",
        "file",
        "for",
        "from",
        "glass",
        "have",
        "info",
        "information",
        "just",
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "medical",
        "need",
        "needed",
        "needs",
        "now",
        "open",
        "please",
        "reason",
        "record",
        "records",
        "require",
        "required",
        "requires",
        "review",
        "see",
        "test",
        "testing",
        "tests",
        "the",
        "this",
        "that",
        "urgent",
        "urgently",
        "view",
        "with",
        "xxx",
        "yyy",
        "patient",
        "patients",
        "care",
        "treatment",
    ]
)


def reason_problem(reason: str) -> str | None:
    """What is wrong with `reason` (already trimmed, length checked), or None when it will do."""
    characters = [c for c in reason.lower() if not c.isspace()]
    if characters:
        _, most = Counter(characters).most_common(1)[0]
        if most > MAX_ONE_CHARACTER * len(characters):
            return "must describe the situation, not repeat one character"
    words = {word for word in _WORD.findall(reason.lower()) if word not in STOCK}
    if len(words) < MIN_WORDS:
        return (
            f"must describe the situation in at least {MIN_WORDS} words of its own "
            "(what happened and why this record is needed), not only stock phrases such as "
            '"emergency access needed"'
        )
    return None
