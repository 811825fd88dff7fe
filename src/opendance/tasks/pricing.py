"""Prices: credits per second of video per quality, per model, with group multipliers.

Rates may be fractional in the configuration; the price itself is always a whole number of
credits (rounded up), because money is integers.
"""

from __future__ import annotations

import math
from decimal import Decimal

from opendance.settings import DEFAULT_MODEL, Settings


class PriceTable:
    def __init__(self, settings: Settings) -> None:
        self._prices = settings.prices
        self._groups = settings.group_price_multipliers

    def has_model(self, model: str) -> bool:
        return model in self._prices

    def priced_as(self, model: str) -> str:
        """The model whose rates apply: its own, else the default model's."""
        return model if model in self._prices else DEFAULT_MODEL

    def per_second(self, model: str, group: str) -> dict[str, Decimal]:
        """Credits per second of video per quality for a key of `group` (before rounding)."""
        multiplier = self._groups.get(group, Decimal(1))
        rates = self._prices.get(self.priced_as(model), {})
        return {quality: rate * multiplier for quality, rate in rates.items()}

    def price(self, model: str, quality: str, duration: int, group: str) -> int:
        """Whole credits for `duration` seconds at `quality` for a key of `group`."""
        rates = self._prices.get(model)
        if rates is None or quality not in rates:
            raise KeyError(f"no price for {model} at {quality}")
        multiplier = self._groups.get(group, Decimal(1))
        return int(math.ceil(rates[quality] * duration * multiplier))
