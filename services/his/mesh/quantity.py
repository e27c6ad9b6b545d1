"""Kubernetes resource quantities (`10Gi`, `500m`, `1e3`): recognised, compared, explained.

The API server refuses a quantity it cannot parse (`10GB`, `ten`), and CloudNativePG's webhook
parses `storage.size` and compares memory requests with `shared_buffers`; the schemas say only
"must match <regex>". This module names the mistake as an SRE would fix it.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# The serialisation Kubernetes accepts (apimachinery's resource.Quantity, as the CRDs spell it).
PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?"
    r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(PATTERN)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# `10GB`, `512 MB`, `1.5gb`: a size written with a unit of bytes, as people (and PostgreSQL) do.
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTpP])i?[bB]\s*$")
MESSAGE = "not a Kubernetes quantity such as 10Gi, 512Mi or 250m"


def is_quantity(text: str) -> bool:
    return bool(_QUANTITY.match(text))


def parse(value: object) -> Decimal | None:
    """The amount a quantity names (`1Gi` → 1073741824, `250m` → 0.25), or None when it is
    not a quantity. A YAML number is its own amount."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = str(value)
    if not _QUANTITY.match(text):
        return None
    number = re.match(r"^[+-]?(\d+(\.\d*)?|\.\d+)", text)
    assert number is not None  # the pattern matched
    suffix = text[number.end() :]
    try:
        amount = Decimal(number.group(0))
        if suffix in _BINARY:
            return amount * (Decimal(1024) ** _BINARY[suffix])
        if suffix in _DECIMAL:
            return amount * (Decimal(10) ** _DECIMAL[suffix])
        return amount * (Decimal(10) ** Decimal(suffix[1:]))  # e3, E-2
    except InvalidOperation:
        return None


def fix(text: str) -> str:
    """How to write what was meant: `10GB` → `10Gi`; otherwise the general form."""
    written = _BYTES.match(text)
    if written:
        unit = "K" if written[2] in "kK" else written[2].upper()
        return f"write {written[1]}{unit}i: Kubernetes spells sizes Ki, Mi, Gi, Ti, not kB, MB, GB"
    return (
        "write a number with a unit: binary Ki, Mi, Gi, Ti (10Gi), decimal k, M, G (500M), "
        "or m for thousandths (250m)"
    )
