"""The one-line error of a bad argument, said the same way everywhere.

``require(chains >= 1, "model.init_args.chains", chains, ">= 1")`` raises
``ValueError("model.init_args.chains must be >= 1, got 0")``: the key is the config key a user
sets (``model.init_args.chains``, ``data.batch_size``), so the message names what was wrong, with
the value, and what to change. A component that can sit at several keys (a sampler, a
relaxation) names its class and argument instead: ``"HMC jitter"``.

NaN and the infinities mean nothing as a setting: ``require`` refuses them whatever the
condition says (``finite=False`` where an infinity is a documented value, such as
``reward_temperature: .inf``), and :func:`non_finite_numbers` finds them anywhere in a
parsed config, which ``seaflow predict`` and ``seaflow.load`` refuse before anything is
built (seaflow/arguments.py).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Mapping


def require(ok: bool, key: str, value: object, allowed: str, finite: bool = True) -> None:
    """Raise ``{key} must be {allowed}, got {value!r}`` unless ``ok``, and for a NaN (or, with
    ``finite``, an infinite) float whatever ``ok`` is."""
    meaningless = isinstance(value, float) and (math.isnan(value) or (finite and math.isinf(value)))
    if not ok or meaningless:
        raise ValueError(f"{key} must be {allowed}, got {value!r}")


def require_one_of(key: str, value: object, allowed: Iterable[object]) -> None:
    """``require`` for a value that must be one of ``allowed``, which the message lists (None as
    ``null``, as a config writes it)."""
    allowed = tuple(allowed)
    require(value in allowed, key, value, "one of " + ", ".join("null" if a is None else repr(a) for a in allowed))


def non_finite_numbers(settings: Any, key: str = "", owner: str | None = None,
                       argument: str | None = None) -> Iterator[tuple[str, float, str | None, str | None]]:
    """Every NaN or infinite float in nested settings (mappings and lists, as a parsed config holds
    them): ``(dotted key, value, class_path, argument)``, where ``argument`` of ``class_path`` is the
    component argument the number belongs to (None outside a component's ``init_args``)."""
    if isinstance(settings, float):
        if not math.isfinite(settings):
            yield key, settings, owner, argument
    elif isinstance(settings, Mapping):
        own = settings.get("class_path")
        for name, item in settings.items():
            sub = f"{key}.{name}" if key else str(name)
            if isinstance(own, str) and name == "init_args" and isinstance(item, Mapping):
                for arg, value in item.items():
                    yield from non_finite_numbers(value, f"{sub}.{arg}", own, str(arg))
            else:
                yield from non_finite_numbers(item, sub, owner, argument)
    elif isinstance(settings, (list, tuple)):
        for i, item in enumerate(settings):
            yield from non_finite_numbers(item, f"{key}.{i}", owner, argument)
