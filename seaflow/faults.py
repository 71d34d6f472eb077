"""Row faults: a reward that fails on one prompt fails that prompt, not its batch.

A reward, judge or verifier that raises, or returns NaN or an infinity, on the discrete
responses of a prompt is a *row fault*. While a method's ``predict_step`` runs
(:func:`isolation`, entered by :class:`~seaflow.methods.base.AlignmentMethod`), every
:class:`~seaflow.energies.base.Reward`'s ``value`` (and ``value_and_parts``) on token ids is
:func:`guarded`: the error becomes a :class:`RowFault` naming the reward and, where the rows
tell, the prompt ids at fault. The method then runs the batch again without those prompts
(or, when the fault names none, each half of the batch on its own, down to single prompts),
and each prompt that still fails gets an error entry instead of a record (:func:`failure`;
the writer appends it to ``errors.jsonl``). Per-prompt seeds do not depend on the batch, so
the other prompts get the records they get in a run without the fault.

Relaxed evaluations (SEA's gradient steps) are not guarded: a non-finite energy there is
a numerical fault that the refinement loop rolls back (seaflow/refine.py).

:func:`call_with_retries` is the other half, for transient faults: a reward that calls a
service retries with exponential backoff and gives each call a timeout; what still fails
is a row fault.
"""

from __future__ import annotations

import contextvars
import functools
import math
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import torch

_ISOLATING: contextvars.ContextVar[bool] = contextvars.ContextVar("seaflow_row_isolation", default=False)

# the fields of an error entry (a line of errors.jsonl), in order; ``messages`` only for a conversation
FAILURE_FIELDS = ("id", "index", "prompt", "messages", "method", "stage", "error")


class RowFault(Exception):
    """A reward failed on discrete responses: ``reward`` (the failing term), ``error`` (what it
    did, one line) and ``ids``, the prompt ids known to fail (None: somewhere in the call)."""

    def __init__(self, reward: Any, error: str, ids: frozenset[str] | None = None):
        super().__init__(error)
        self.reward = reward
        self.error = error
        self.ids = ids


class RowError(Exception):
    """An error a reward raises for one of its rows (``row``, its index in the call), so that the
    row fault names that row's prompt instead of the whole call's."""

    def __init__(self, row: int, error: BaseException):
        super().__init__(f"{type(error).__name__}: {_one_line(error)}")
        self.row = row
        self.error = error


def isolating() -> bool:
    """Whether a ``predict_step`` is isolating row faults now (rewards' errors become :class:`RowFault`)."""
    return _ISOLATING.get()


@contextmanager
def isolation() -> Iterator[None]:
    """Guard every reward call on token ids inside the block (see the module docstring)."""
    token = _ISOLATING.set(True)
    try:
        yield
    finally:
        _ISOLATING.reset(token)


def _row_ids(prepared: Any) -> list[Any] | None:
    """The prompt id of each row of a reward call, when its prepared input is a ResponseBatch of
    the data module's prompts (a text reward's); None otherwise (a model's layout)."""
    fields = getattr(prepared, "fields", None)
    if not isinstance(fields, list):
        return None
    ids = [row.get("id") for row in fields]
    return ids if all(i is not None for i in ids) else None


def _describe(reward: Any) -> str:
    describe = getattr(reward, "describe", None)
    return describe() if callable(describe) else type(reward).__name__


def guarded(function: Callable) -> Callable:
    """Wrap a reward's ``value`` or ``value_and_parts``: while :func:`isolating`, an exception or
    a non-finite value on token ids raises :class:`RowFault`; otherwise nothing changes."""
    if getattr(function, "_seaflow_guarded", False):
        return function

    @functools.wraps(function)
    def wrapper(self, prepared, response, *args, **kwargs):
        # relaxed tokens first: a compiled energy traces this wrapper, and a ContextVar read would break its graph
        if response.is_floating_point() or not _ISOLATING.get():
            return function(self, prepared, response, *args, **kwargs)
        try:
            out = function(self, prepared, response, *args, **kwargs)
        except (RowFault, torch.cuda.OutOfMemoryError):
            raise  # a term's fault, named by the term; memory is the batch's, not a row's
        except RowError as err:
            ids = _row_ids(prepared)
            raise RowFault(self, f"{_describe(self)} raised {err}",
                           frozenset({str(ids[err.row])}) if ids is not None and 0 <= err.row < len(ids) else None) from err.error
        except Exception as err:  # noqa: BLE001 - any error of a reward on a row fails the row
            ids = _row_ids(prepared)
            suspects = frozenset(map(str, ids)) if ids is not None else None
            raise RowFault(self, f"{_describe(self)} raised {type(err).__name__}: {_one_line(err)}",
                           suspects if suspects is not None and len(suspects) == 1 else None) from err
        values, parts = (out[0], out[1]) if isinstance(out, tuple) else (out, {})
        bad = ~torch.isfinite(values.detach().float())
        for part in parts.values():
            bad |= ~torch.isfinite(part.detach().float())
        if bad.any():
            rows = bad.nonzero().flatten().tolist()
            value = float(values[rows[0]])
            shown = str(value) if not math.isfinite(value) else "a non-finite value in one of its parts"
            ids = _row_ids(prepared)
            raise RowFault(self, f"{_describe(self)} returned {shown} (a reward must be a finite number)",
                           frozenset(str(ids[row]) for row in rows) if ids is not None else None)
        return out

    wrapper._seaflow_guarded = True
    return wrapper


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


def failure(prompt: Mapping[str, Any], method: str, stage: str, error: str) -> dict[str, Any]:
    """The error entry of a prompt that failed (a line of ``errors.jsonl``): its id, index and text
    (a conversation's turns too), the method, the config key of the failing reward and the error."""
    entry = {"id": prompt["id"], "index": prompt.get("index"), "prompt": str(prompt.get("prompt"))}
    if prompt.get("messages") is not None:
        entry["messages"] = prompt["messages"]
    entry.update(method=method, stage=stage, error=error)
    return entry


def is_failure(entry: Mapping[str, Any]) -> bool:
    """Whether a ``predict_step`` output is an error entry (:func:`failure`) rather than a record."""
    return "error" in entry and "response" not in entry


# -- transient faults --------------------------------------------------------------------------


class ServiceError(RuntimeError):
    """A call that failed on every attempt; the message names the attempts and the last error."""


def call_with_retries(function: Callable, args: tuple = (), kwargs: Mapping[str, Any] | None = None, retries: int = 0,
                      backoff: float = 1.0, timeout: float | None = None, what: str = "the call") -> Any:
    """``function(*args, **kwargs)``, tried ``1 + retries`` times, waiting ``backoff``, then twice as
    long, and so on, between attempts; each attempt given ``timeout`` seconds (None: no limit).

    An attempt that runs past its timeout is abandoned (it runs on in a daemon thread; Python
    cannot stop a thread) and counts as failed with a TimeoutError. When every attempt fails,
    the last error is raised as it is without retries, and as a :class:`ServiceError` naming
    the attempts with them.
    """
    kwargs = dict(kwargs or {})
    last: BaseException | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            return _timed(function, args, kwargs, timeout)
        except Exception as err:  # noqa: BLE001 - whatever the service says, try again
            last = err
    if retries == 0:
        raise last
    raise ServiceError(f"{what} failed {retries + 1} times; the last: {type(last).__name__}: {_one_line(last)}") from last


def _timed(function: Callable, args: tuple, kwargs: dict, timeout: float | None) -> Any:
    if timeout is None:
        return function(*args, **kwargs)
    box: dict[str, Any] = {}
    done = threading.Event()

    def call() -> None:
        try:
            box["value"] = function(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = err
        finally:
            done.set()

    threading.Thread(target=call, name="seaflow-reward-call", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]
