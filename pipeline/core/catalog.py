"""The price catalog (schemas/catalog.json): models, dated prices, limits, plugins, free quota.

Every number of BILLING_RULES §2-§6 that could change lives in that file, never in code; a
catalog is versioned so that a rebill can name the one it used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.core.settlement import grace_us
from pipeline.core.timestamps import day_start_of
from pipeline.core.windows import Limits

DEFAULT_CATALOG = Path(__file__).resolve().parents[2] / "schemas" / "catalog.json"
_THOUSAND = Decimal(1000)


class CatalogError(ValueError):
    """A catalog file that cannot be used for billing."""


@dataclass(frozen=True, slots=True)
class TokenPrice:
    from_us: int | None  # None: in force since forever
    input_per_token: Decimal
    output_per_token: Decimal


@dataclass(frozen=True, slots=True)
class UnitPrice:
    from_us: int | None
    per_unit: Decimal


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    context: int | None
    max_input: int
    whitelist_only: bool
    prices: tuple[TokenPrice, ...]  # ascending by from_us

    def price_at(self, ts_us: int) -> TokenPrice | None:
        price: TokenPrice | None = _in_force(self.prices, ts_us)
        return price


@dataclass(frozen=True, slots=True)
class PluginSpec:
    name: str
    unit: str
    prices: tuple[UnitPrice, ...]

    def price_at(self, ts_us: int) -> UnitPrice | None:
        price: UnitPrice | None = _in_force(self.prices, ts_us)
        return price


@dataclass(frozen=True, slots=True)
class Catalog:
    version: str
    free_quota_tokens: int
    global_max_input: int
    default_limits: Limits
    max_active_keys: int
    settlement_grace_minutes: int
    settlement_grace_us: int  # the same grace in microseconds, converted once here, not per record
    models: dict[str, ModelSpec]
    plugins: dict[str, PluginSpec]


def _in_force(versions: tuple[Any, ...], ts_us: int) -> Any:
    """The latest version whose start is at or before ts_us (prices change at 00:00 +08:00)."""
    current = None
    for version in versions:
        if version.from_us is None or version.from_us <= ts_us:
            current = version
        else:
            break
    return current


def _from_us(value: str | None) -> int | None:
    return None if value is None else day_start_of(date.fromisoformat(value))


def _sorted(versions: list[Any], where: str) -> tuple[Any, ...]:
    ordered = sorted(versions, key=lambda v: -1 << 62 if v.from_us is None else v.from_us)
    starts = [v.from_us for v in ordered]
    if len(set(starts)) != len(starts):
        raise CatalogError(f"{where}: two price versions start on the same date")
    return tuple(ordered)


def _decimal(value: str, where: str) -> Decimal:
    try:
        amount = Decimal(value)
    except Exception:
        raise CatalogError(f"{where}: price {value!r} is not a decimal string") from None
    if not amount.is_finite() or amount < 0:
        raise CatalogError(f"{where}: price {value!r} must be a finite non-negative decimal")
    return amount


def _per_unit(value: str, where: str) -> Decimal:
    per_unit = _decimal(value, where)
    if per_unit != per_unit.quantize(Decimal("0.000001")):
        raise CatalogError(f"{where}: {value} per unit has more than 6 decimals")
    return per_unit


def _per_token(value: str, where: str) -> Decimal:
    per_token = _decimal(value, where) / _THOUSAND
    if per_token != per_token.quantize(Decimal("0.000001")):
        raise CatalogError(f"{where}: {value} per 1000 tokens has more than 6 decimals per token")
    return per_token


def parse_catalog(data: dict[str, Any]) -> Catalog:
    try:
        models = {
            name: ModelSpec(
                name=name,
                context=spec["context"],
                max_input=min(spec["max_input"], data["global_max_input_tokens"]),
                whitelist_only=bool(spec.get("whitelist_only", False)),
                prices=_sorted(
                    [
                        TokenPrice(
                            _from_us(p["from"]),
                            _per_token(p["input_per_1k"], f"{name} input"),
                            _per_token(p["output_per_1k"], f"{name} output"),
                        )
                        for p in spec["prices"]
                    ],
                    name,
                ),
            )
            for name, spec in data["models"].items()
        }
        plugins = {
            name: PluginSpec(
                name=name,
                unit=spec.get("unit", "invocation"),
                prices=_sorted(
                    [UnitPrice(_from_us(p["from"]), _per_unit(p["per_unit"], f"plugin {name}")) for p in spec["prices"]],
                    f"plugin {name}",
                ),
            )
            for name, spec in data["plugins"].items()
        }
        limits = data["default_limits"]
        grace_minutes = int(data.get("settlement_grace_minutes", 10))
        return Catalog(
            version=str(data["version"]),
            free_quota_tokens=int(data["free_quota_tokens"]),
            global_max_input=int(data["global_max_input_tokens"]),
            default_limits=Limits(int(limits["qps"]), int(limits["qpm"]), int(limits["tpm"])),
            max_active_keys=int(data["max_active_keys"]),
            settlement_grace_minutes=grace_minutes,
            settlement_grace_us=grace_us(grace_minutes),
            models=models,
            plugins=plugins,
        )
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        if isinstance(exc, CatalogError):
            raise
        raise CatalogError(f"catalog is malformed: {exc!r}") from None


def load_catalog(path: str | Path | None = None) -> Catalog:
    source = Path(path) if path else DEFAULT_CATALOG
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"cannot read catalog {source}: {exc}") from None
    return parse_catalog(data)
