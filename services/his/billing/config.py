"""Settings of the billing service (`HIS_BILLING_*`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from his.base.env import ConfigError

_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True)
class BillingConfig:
    """The one currency the hospital bills in: every price, charge, invoice and payment is in it."""

    currency: str = "CNY"

    def __post_init__(self) -> None:
        if not _CURRENCY.fullmatch(self.currency):
            raise ConfigError("HIS_BILLING_CURRENCY must be a 3-letter ISO 4217 code such as CNY")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BillingConfig:
        """Read HIS_BILLING_CURRENCY."""
        return cls(currency=env.get("HIS_BILLING_CURRENCY") or "CNY")
