"""What producing a record cost: token passes and estimated FLOPs per model, and wall time.

Every method's ``predict_step`` runs inside a :class:`CostMeter` (``AlignmentMethod`` wraps
it), and hooks on the models count what they actually compute, so SEA, the samplers, the
decoding baselines and any new method report cost the same way without counting by hand.

What is counted, per model (``policy``, which is also the reference; ``reward``; ``judge``;
a reward term's other models by their attribute name):

- ``forward_tokens``: positions run through the model's body (its transformer layers),
  summed over rows and calls, padding included (a padded position is computed like any
  other). A KV-cached decoding step counts one position per row; a cached prompt prefix
  is counted once, when it is computed.
- ``backward_tokens``: positions whose gradient was propagated back through the body to its
  input embeddings (SEA's gradient with respect to relaxed tokens).
- ``head_tokens``: positions projected by the output head (the LM head: ``logits_to_keep``
  positions per call; a classifier's score head).
- ``soft_embedding_tokens``: response positions fed as a distribution over the vocabulary,
  i.e. embedded by the dense product ``(rows x L x V) @ (V x H)`` instead of a lookup.
- ``flops``: the estimate below.

FLOP estimate (multiply-add = 2 FLOPs):

- body, per forward position: ``2 * body_params`` where ``body_params`` counts the weights
  (and biases) of every ``nn.Linear`` inside the base model (attention projections and MLP):
  the matrix multiplications. Embedding tables are excluded (a lookup, no multiplication);
  norms and other element-wise parameters are excluded (a few FLOPs per parameter, under
  0.1% for SmolLM2-135M); the output head is its own term. Plus attention over the context:
  ``4 * layers * heads * head_dim * keys`` per position (scores and weighted values), with
  ``keys`` the full key length of the call (cached ones included), as dense kernels compute
  it, without halving for causality;
- body, per backward position: ``2 * body_params`` (weights are frozen, so each linear layer
  needs one product, the gradient of its input, not two) plus twice the attention term
  (the gradients of queries, keys and values need four products where the forward needs
  two). The often quoted "backward = 2 x forward" counts weight gradients too, which
  seaflow never computes;
- head: ``2 * in_features * out_features`` per position forward, the same again per position
  backward;
- soft embedding: ``2 * V * H`` per position forward, the same again backward when the
  distribution needs a gradient.

Sequential depth (``sequential_depth``): model calls one after another on the critical path
of a batch: every forward call of a watched model's body counts one (a prefill, a KV-cached
decoding step, a reward model's pass), every backward through a body one more. Calls over
chunks of rows that a loop makes one after another only to bound memory (``sample_batch``,
``score_batch``) could run side by side: such loops iterate through :func:`side_by_side` and
count as their longest chunk. A reward that runs no model (a lexicon) adds nothing. Every
prompt of a batch waits for the whole batch, so each record carries its batch's depth (not a
share of it). It is what bounds the latency on hardware that runs a call's rows in parallel:
Best-of-N's 64 rows are one call per token, a Metropolis chain's steps are not.

Each record also says where it ran: ``device`` (the policy's device, e.g. ``cpu (2 threads)``
or the GPU's name) and ``load_average`` (the machine's 1-minute load average when the batch
ended), so wall times are read with the load they were measured under.

``tests/test_cost.py`` checks the estimate against ``torch.utils.flop_counter`` on a tiny
model and the token counts of Best-of-N and SEA against a direct calculation. Work a method
does only for the record's metrics (the reference log-likelihood of the returned response,
``AlignmentMethod.reference_stats``) runs under :func:`uncounted` and is excluded, from
FLOPs and from the wall time alike.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

COUNTERS = ("forward_tokens", "backward_tokens", "head_tokens", "soft_embedding_tokens", "flops")
# a batch's values that every one of its records carries whole (not divided over its prompts, not summed over records)
PER_BATCH = ("sequential_depth", "load_average")

_STACK: list["CostMeter"] = []


@dataclass
class ModelShape:
    """What the FLOP estimate needs to know about one model."""

    role: str
    body_params: int
    attention_width: int  # layers * heads * head_dim

    def attention_flops(self, positions: int, keys: int) -> int:
        return 4 * self.attention_width * positions * keys


class CostMeter:
    """Counts model work while active (``with CostMeter() as meter:``); see the module docstring.

    Meters nest: the innermost active one counts. ``totals()`` returns the counts per role
    plus the overall sums and the wall time spent counting (time under :func:`uncounted`
    excluded).
    """

    def __init__(self):
        self.counts: dict[str, dict[str, int]] = {}
        self.paused = 0
        self.started: float | None = None
        self.elapsed = 0.0
        self.excluded = 0.0
        self.depth = 0  # model calls one after another (see the module docstring)

    def __enter__(self) -> "CostMeter":
        self.started = time.perf_counter()
        _STACK.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _STACK.remove(self)
        self.elapsed += time.perf_counter() - self.started

    def add(self, role: str, calls: int = 0, **values: int) -> None:
        """Count ``values`` for ``role``; ``calls``: sequential model calls they took (the depth)."""
        if self.paused:
            return
        self.depth += calls
        entry = self.counts.setdefault(role, dict.fromkeys(COUNTERS, 0))
        for name, value in values.items():
            entry[name] += int(value)

    def totals(self) -> dict[str, Any]:
        models = {role: dict(values) for role, values in sorted(self.counts.items())}
        out: dict[str, Any] = {name: sum(v[name] for v in models.values()) for name in ("flops", "forward_tokens", "backward_tokens")}
        out["sequential_depth"] = self.depth
        out["wall_time_s"] = max(self.elapsed - self.excluded, 0.0)
        out["models"] = models
        return out

    def split(self, parts: int) -> dict[str, Any]:
        """The totals divided evenly over ``parts`` records (the prompts of a batch); the
        :data:`PER_BATCH` values stay whole."""
        totals = self.totals()
        shared = scale({k: v for k, v in totals.items() if k not in PER_BATCH}, 1.0 / max(parts, 1))
        return {k: totals[k] if k in PER_BATCH else shared[k] for k in totals}


def active() -> CostMeter | None:
    return _STACK[-1] if _STACK else None


class uncounted:
    """Context in which no model work is counted (and its time is excluded): metric-only passes."""

    def __enter__(self):
        self.meter = active()
        self.started = time.perf_counter()
        if self.meter is not None:
            self.meter.paused += 1
        return self

    def __exit__(self, *exc):
        if self.meter is not None:
            self.meter.paused -= 1
            if not self.meter.paused:
                self.meter.excluded += time.perf_counter() - self.started


def _on_backward(shape: ModelShape, meter: CostMeter, values: dict[str, int], calls: int = 0):
    def hook(grad):
        meter.add(shape.role, calls=calls, **values)
        return None
    return hook


def side_by_side(chunks):
    """Iterate ``chunks`` (a loop over chunks of rows that run one after another only to bound
    memory): the model calls inside count in the sequential depth as the longest chunk's, as if
    the chunks ran side by side. Used like ``for start in side_by_side(range(0, rows, size)):``."""
    meter = active()
    if meter is None:
        yield from chunks
        return
    start = longest = meter.depth
    try:
        for chunk in chunks:
            meter.depth = start
            yield chunk
            longest = max(longest, meter.depth)
    finally:
        meter.depth = max(longest, meter.depth)


# -- watching models ---------------------------------------------------------------------------


def body_of(model: nn.Module) -> nn.Module:
    """The transformer body of an HF model (``base_model``), or the model itself."""
    body = getattr(model, "base_model", None)
    return body if isinstance(body, nn.Module) else model


def model_shape(model: nn.Module, role: str) -> ModelShape:
    body = body_of(model)
    params = sum(p.numel() for m in body.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False))
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 0) or 0
    heads = getattr(config, "num_attention_heads", 0) or 0
    head_dim = getattr(config, "head_dim", None) or ((getattr(config, "hidden_size", 0) or 0) // max(heads, 1))
    return ModelShape(role=role, body_params=params, attention_width=layers * heads * head_dim)


def watch(model: nn.Module, role: str) -> None:
    """Install the counting hooks on ``model`` once; the first role given sticks."""
    if getattr(model, "_seaflow_cost", None) is not None:
        return
    shape = model_shape(model, role)
    body = body_of(model)
    for module in {model, body}:
        object.__setattr__(module, "_seaflow_cost", shape)
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embedding is not None:
        object.__setattr__(embedding, "_seaflow_cost", shape)

    def body_hook(module, args, kwargs):
        meter = active()
        if meter is None or meter.paused:
            return None
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = kwargs.get("input_ids")
        if x is None and args:
            x = args[0]
        if not isinstance(x, torch.Tensor):
            return None
        rows, positions = x.shape[0], x.shape[1]
        keys = _key_length(kwargs, positions)
        tokens = rows * positions
        attention = shape.attention_flops(tokens, keys)
        meter.add(role, calls=1, forward_tokens=tokens, flops=2 * shape.body_params * tokens + attention)
        if x.is_floating_point() and x.requires_grad and torch.is_grad_enabled():
            x.register_hook(_on_backward(shape, meter, {
                "backward_tokens": tokens, "flops": 2 * shape.body_params * tokens + 2 * attention,
            }, calls=1))
        return None

    body.register_forward_pre_hook(body_hook, with_kwargs=True)
    head = _head_of(model)
    if head is not None:
        per_position = 2 * head.in_features * head.out_features

        def head_hook(module, args, output):
            meter = active()
            if meter is None or meter.paused or not args:
                return None
            tokens = args[0].numel() // args[0].shape[-1]
            meter.add(role, head_tokens=tokens, flops=per_position * tokens)
            if isinstance(output, torch.Tensor) and output.requires_grad and torch.is_grad_enabled():
                output.register_hook(_on_backward(shape, meter, {"flops": per_position * tokens}))
            return None

        head.register_forward_hook(head_hook)


def _head_of(model: nn.Module) -> nn.Linear | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        head = getattr(model, "score", None)
    return head if isinstance(head, nn.Linear) else None


def _key_length(kwargs: dict, positions: int) -> int:
    """Keys each new position attends over: the 2-D attention mask's width, else cache + new."""
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.shape[1]
    for name in ("past_key_values", "cache"):
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length()) + positions
    return positions


def count_soft_embedding(embedding: nn.Module, distribution: torch.Tensor, looked_up: bool = False) -> None:
    """Count the dense product of a ``(B, L, V)`` token distribution with the embedding table.

    ``looked_up``: the forward value was read by a row lookup (the distribution is one-hot),
    so only the backward product is counted.
    """
    shape = getattr(embedding, "_seaflow_cost", None)
    meter = active()
    if shape is None or meter is None or meter.paused:
        return
    tokens = distribution.numel() // distribution.shape[-1]
    flops = 2 * tokens * distribution.shape[-1] * embedding.weight.shape[-1]
    if not looked_up:
        meter.add(shape.role, soft_embedding_tokens=tokens, flops=flops)
    if distribution.requires_grad and torch.is_grad_enabled():
        distribution.register_hook(_on_backward(shape, meter, {"flops": flops}))


def models_of(term: nn.Module | None, skip: nn.Module | None = None) -> Iterator[tuple[str, nn.Module]]:
    """``(role, model)`` for every HF model a reward term holds, registered or borrowed.

    The role is the attribute name without ``_model`` (``reward_model`` -> ``reward``,
    ``judge_model`` -> ``judge``). A model that is ``skip`` (the policy) is left out: a term
    that borrows the policy's weights has its passes counted as the policy's.
    """
    if term is None:
        return
    seen = {id(skip)} if skip is not None else set()
    for owner in term.modules():
        for name, value in list(vars(owner).items()) + list(owner._modules.items()):
            if isinstance(value, nn.Module) and hasattr(value, "config") and hasattr(value, "get_input_embeddings"):
                if id(value) not in seen:
                    seen.add(id(value))
                    yield name.removesuffix("_model") or name, value


# -- records -----------------------------------------------------------------------------------


def scale(cost: dict[str, Any], factor: float) -> dict[str, Any]:
    """Every number in a cost dict times ``factor`` (nested; text is kept)."""
    return {k: scale(v, factor) if isinstance(v, dict) else v * factor if isinstance(v, (int, float)) else v
            for k, v in cost.items()}


def add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The sum of two cost dicts (nested; keys of either; the :data:`PER_BATCH` values and text are left out)."""
    out = {k: v for k, v in a.items() if k not in PER_BATCH and not isinstance(v, str)}
    for key, value in b.items():
        if key in PER_BATCH:
            continue
        if isinstance(value, dict):
            out[key] = add(out.get(key) or {}, value)
        elif isinstance(value, (int, float)):
            out[key] = out.get(key, 0) + value
    return out


def total(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Summed ``cost`` of the records that have one (None when none has); the :data:`PER_BATCH`
    values and the device are not sums (see :func:`seaflow.metrics.summarize` for their means)."""
    costs = [r["cost"] for r in records if isinstance(r.get("cost"), dict)]
    if not costs:
        return None
    return functools.reduce(add, costs, {})


def describe_device(device: torch.device | str) -> str:
    """``cpu (N threads)`` or the accelerator's name: where a record's wall time was measured."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the system has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def metered(predict_step):
    """Wrap a method's ``predict_step``: count its models' work and add ``cost`` to every record.

    The batch's totals are split evenly over its prompts (they were computed together). A
    ``predict_step`` called inside another metered one (a subclass calling ``super()``) is
    counted by the outer one only.
    """
    if getattr(predict_step, "_seaflow_metered", False):
        return predict_step

    @functools.wraps(predict_step)
    def wrapper(self, batch, *args, **kwargs):
        if active() is not None and getattr(active(), "owner", None) is self:
            return predict_step(self, batch, *args, **kwargs)
        if hasattr(self, "watch_models"):
            self.watch_models()
        with CostMeter() as meter:
            meter.owner = self
            records = predict_step(self, batch, *args, **kwargs)
        if isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
            share = meter.split(len(records))
            share["device"] = describe_device(getattr(self, "device", "cpu"))
            share["load_average"] = load_average()
            for record in records:
                record["cost"] = dict(share)
        return records

    wrapper._seaflow_metered = True
    return wrapper
