"""Proto enums stored as readable lower-case text (`PATIENT_STATE_ACTIVE` ↔ `active`)."""

from __future__ import annotations

from google.protobuf.descriptor import EnumDescriptor


class EnumText:
    """Two-way map between an enum's non-zero values and short text codes for the database."""

    def __init__(self, descriptor: EnumDescriptor) -> None:
        prefix = _common_prefix(descriptor)
        self._to_text = {
            value.number: value.name[len(prefix) :].lower()
            for value in descriptor.values
            if value.number != 0
        }
        self._to_number = {text: number for number, text in self._to_text.items()}

    def text(self, number: int) -> str:
        """The text code of a (validated, non-zero) enum number."""
        return self._to_text[number]

    def number(self, text: str) -> int:
        """The enum number of a stored text code."""
        return self._to_number[text]


def _common_prefix(descriptor: EnumDescriptor) -> str:
    zero = descriptor.values_by_number[0].name
    if not zero.endswith("UNSPECIFIED"):
        raise ValueError(f"{descriptor.full_name}: zero value must be *_UNSPECIFIED")
    return zero[: -len("UNSPECIFIED")]
