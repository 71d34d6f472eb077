"""The one-line error of a bad argument, said the same way everywhere.

``require(chains >= 1, "model.init_args.chains", chains, ">= 1")`` raises
``ValueError("model.init_args.chains must be >= 1, got 0")``: the key is the config key a user
sets (``model.init_args.chains``, ``data.batch_size``), so the message names what was wrong, with
the value, and what to change. A component that can sit at several keys (a sampler, a
relaxation) names its class and argument instead: ``"HMC jitter"``.
"""

from __future__ import annotations

from typing import Iterable


def require(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raise ``{key} must be {allowed}, got {value!r}`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{key} must be {allowed}, got {value!r}")


def require_one_of(key: str, value: object, allowed: Iterable[object]) -> None:
    """``require`` for a value that must be one of ``allowed``, which the message lists (None as
    ``null``, as a config writes it)."""
    allowed = tuple(allowed)
    require(value in allowed, key, value, "one of " + ", ".join("null" if a is None else repr(a) for a in allowed))
