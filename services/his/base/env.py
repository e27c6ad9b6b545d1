"""Reading `HIS_*` settings: typed values with defaults, and the one error for a bad value."""

from __future__ import annotations

from collections.abc import Mapping


class ConfigError(ValueError):
    """A `HIS_*` variable holds a value the service cannot use."""


def integer(env: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    """`env[key]` as an integer of at least `minimum`; `default` when unset or empty."""
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    return value


def number(env: Mapping[str, str], key: str, default: float) -> float:
    """`env[key]` as a non-negative number; `default` when unset or empty."""
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{key} must not be negative, got {value}")
    return value


def choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    """`env[key]`, one of `choices`; `default` when unset or empty."""
    value = env.get(key) or default
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def switch(env: Mapping[str, str], key: str, *, default: bool) -> bool:
    """`env[key]` as on/off (also true/false, 1/0, yes/no); `default` when unset or empty."""
    raw = (env.get(key) or "").strip().lower()
    if not raw:
        return default
    if raw in ("on", "true", "1", "yes"):
        return True
    if raw in ("off", "false", "0", "no"):
        return False
    raise ConfigError(f"{key} must be on or off, got {raw!r}")
