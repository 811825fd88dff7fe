"""Prices: credits per second of video per quality, per model, with group multipliers.

Rates may be fractional in the configuration; the price itself is always a whole number of
credits (rounded up), because money is integers.
"""

from __future__ import annotations

import math
from decimal import Decimal

from opendance.settings import Settings


class PriceTable:
    def __init__(self, settings: Settings) -> None:
        self._prices = settings.prices
        self._groups = settings.group_price_multipliers

    def has_model(self, model: str) -> bool:
        return model in self._prices

    def price(self, model: str, quality: str, duration: int, group: str) -> int:
        """Whole credits for `duration` seconds at `quality` for a key of `group`."""
        rates = self._prices.get(model)
        if rates is None or quality not in rates:
            raise KeyError(f"no price for {model} at {quality}")
        multiplier = self._groups.get(group, Decimal(1))
        return int(math.ceil(rates[quality] * duration * multiplier))
