"""Rewards that see only the decoded text: any tokenizer, any library, no gradient.

A :class:`TextReward` decodes the policy's token ids to text (as the records write
``response``) and scores the strings; it has no gradient with respect to relaxed tokens
(``differentiable = False``). Every method can select, accept/reject and report with one:
Best-of-N, ARGS, CBS and GuidedSuffixMCMC with uniform cuts take it as
``model.init_args.reward``; SEA, BiasedDecoding and GuidedSuffixMCMC's gradient-guided cuts
follow a gradient, so they take it as ``model.init_args.selection_reward`` next to a
differentiable ``reward`` (e.g. the surrogate head that ``seaflow fit --config
configs/distill_reward.yaml`` distils from it; docs/rewards.md).

* :class:`TextClassifierReward`: an HF sequence classifier with its own tokenizer; the text
  is re-tokenised, cut to ``max_length`` and scored ``batch_size`` rows at a time on the
  classifier's own ``device``.
* :class:`CallableReward`: a Python function ``str -> float`` named by its dotted path
  (``seaflow.judges.sentiment_polarity``), optionally ``(prompt, response) -> float`` or
  batched.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Literal

import torch

from seaflow import cost, faults
from seaflow.checks import require
from seaflow.energies.base import ResponseBatch, Reward, check_device
from seaflow.models import LoadedModel


class TextReward(Reward):
    """A reward on decoded text: subclasses implement :meth:`score_texts`.

    ``value(prepared, ids)`` decodes each row's first ``lengths`` tokens with the policy's
    tokenizer (special tokens skipped, an incomplete last character dropped, exactly the
    records' ``response``) and scores the strings. Relaxed tokens are refused with an error
    that names the configuration to use instead.
    """

    differentiable = False

    def setup(self, policy: LoadedModel) -> None:
        self.policy_tokenizer = policy.tokenizer

    def score_texts(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """One reward per (prompt, response) pair, ``(B,)`` float."""
        raise NotImplementedError

    def texts(self, prepared: ResponseBatch, response: torch.Tensor) -> list[str]:
        tok = getattr(self, "policy_tokenizer", None)
        if tok is None:
            raise RuntimeError(f"{type(self).__name__}.setup(policy) must run before scoring token ids")
        return [
            tok.decode(row[: int(n)].tolist(), skip_special_tokens=True).rstrip("\ufffd")
            for row, n in zip(response, prepared.lengths)
        ]

    def value(self, prepared: ResponseBatch, response: torch.Tensor) -> torch.Tensor:
        if response.is_floating_point():
            raise no_gradient_error(self)
        self.follow(response.device)
        scores = self.score_texts(list(prepared.prompts), self.texts(prepared, response))
        return torch.as_tensor(scores, dtype=torch.float32).reshape(-1).to(response.device)

    def follow(self, device: torch.device) -> None:
        """Hook for subclasses with a model: move it to ``device`` unless they own one."""


def no_gradient_error(reward: Reward, method: str = "this method") -> ValueError:
    """The error for a gradient-free reward where a gradient is needed, naming what to set instead."""
    name = reward.describe()
    return ValueError(
        f"{method} follows the gradient of model.init_args.reward with respect to the policy's relaxed tokens, "
        f"but {name} scores decoded text and has none. Move it to model.init_args.selection_reward (it then "
        "selects, accepts and is reported as `reward`) and set model.init_args.reward to a differentiable "
        "surrogate in the policy's vocabulary, e.g. the head `seaflow fit --config configs/distill_reward.yaml` "
        "distils from it (class_path: RewardModel, init_args.model: runs/distill_reward/model); "
        "or use a method that needs no gradient (BestOfN, CBS, ARGS, GuidedSuffixMCMC with cut_temperature: null)."
    )


class TextClassifierReward(TextReward):
    """``r(x, y)`` = one output of an HF sequence classifier that reads the response text.

    The classifier keeps its own tokenizer: the policy's tokens are decoded to text and
    re-tokenised (``max_length`` tokens, cut on the right), ``batch_size`` texts per pass, on
    ``device``. With ``include_prompt`` the prompt is passed as the first text of a pair
    (how cross-encoder reward models such as OpenAssistant's DeBERTa read (question, answer)).

    Args:
        model: hub id or local directory of an ``AutoModelForSequenceClassification``.
        label_index: which output is the reward.
        output: ``logit`` (the raw output), ``probability`` (softmax over the labels, or the
            sigmoid of a single-logit head) or ``log_odds`` (``log p(label) - log(1 - p(label))``).
        include_prompt: score the pair (prompt, response) instead of the response alone.
        max_length: the classifier's input is cut to this many of its tokens.
        batch_size: texts per forward pass.
        device: where the classifier runs (e.g. ``cuda:1``); None: the policy's device. The
            classifier is never a submodule of the method, so Lightning does not move it.
        dtype: classifier dtype (e.g. ``bfloat16``); None keeps the checkpoint's.
        trust_remote_code: allow custom model code from the checkpoint.
        adapter: a PEFT adapter (LoRA, ...) of the classifier, a local directory or a hub id,
            merged into its weights at load time. None: the classifier as it is.
    """

    def __init__(
        self,
        model: str,
        label_index: int = 0,
        output: Literal["logit", "probability", "log_odds"] = "logit",
        include_prompt: bool = False,
        max_length: int = 512,
        batch_size: int = 32,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        adapter: str | None = None,
    ):
        super().__init__()
        self.adapter = adapter
        if output not in ("logit", "probability", "log_odds"):
            raise ValueError(f"TextClassifierReward output must be 'logit', 'probability' or 'log_odds', got {output!r}")
        if max_length < 1 or batch_size < 1:
            raise ValueError(f"TextClassifierReward max_length and batch_size must be >= 1, got {max_length} and {batch_size}")
        self.model_name = model
        self.label_index = label_index
        self.output = output
        self.include_prompt = include_prompt
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = check_device(device, "TextClassifierReward")
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.classifier_model = None

    def describe(self) -> str:
        return f"TextClassifierReward({self.model_name!r})"

    def setup(self, policy: LoadedModel) -> None:
        super().setup(policy)
        if self.classifier_model is not None:
            return
        from seaflow.models import load_sequence_classifier

        loaded = load_sequence_classifier(self.model_name, dtype=self.dtype, trust_remote_code=self.trust_remote_code,
                                          role="the text classifier (TextClassifierReward model)")
        if self.adapter is not None:
            from seaflow.models import apply_adapter

            loaded = apply_adapter(loaded, self.adapter, "TextClassifierReward adapter")
        labels = loaded.model.config.num_labels
        if not 0 <= self.label_index < labels:
            raise ValueError(
                f"TextClassifierReward label_index {self.label_index} is out of range for {self.model_name!r} "
                f"with {labels} labels (config.id2label: {getattr(loaded.model.config, 'id2label', None)})"
            )
        self.tokenizer = loaded.tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = loaded.model.to(self.device or "cpu").eval().requires_grad_(False)
        self._borrow(self, "classifier_model", model)  # out of the module tree: Lightning does not move it

    def follow(self, device: torch.device) -> None:
        """Without its own ``device`` the classifier runs where the policy's tokens are."""
        if self.device is None and self.classifier_model.get_input_embeddings().weight.device != device:
            self.classifier_model.to(device)

    @torch.no_grad()
    def score_texts(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        out = []
        device = self.classifier_model.get_input_embeddings().weight.device
        for start in cost.side_by_side(range(0, len(responses), self.batch_size)):
            texts = responses[start : start + self.batch_size]
            pair = (prompts[start : start + self.batch_size], texts) if self.include_prompt else (texts,)
            encoded = self.tokenizer(
                *pair, padding=True, truncation=True if not self.include_prompt else "only_second",
                max_length=self.max_length, return_tensors="pt",
            ).to(device)
            logits = self.classifier_model(**encoded).logits.float()
            out.append(self._transform(logits).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def _transform(self, logits: torch.Tensor) -> torch.Tensor:
        chosen = logits[:, self.label_index]
        if self.output == "logit":
            return chosen
        if logits.shape[1] == 1:
            log_p, log_not = torch.nn.functional.logsigmoid(chosen), torch.nn.functional.logsigmoid(-chosen)
        else:
            logp = torch.log_softmax(logits, dim=-1)
            log_p = logp[:, self.label_index]
            others = torch.cat([logp[:, : self.label_index], logp[:, self.label_index + 1 :]], dim=1)
            log_not = torch.logsumexp(others, dim=-1)
        return log_p.exp() if self.output == "probability" else log_p - log_not


def resolve_callable(path: str) -> Callable[..., Any]:
    """The object named by ``module.attr`` or ``module:attr`` (nested attributes allowed)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"CallableReward function {path!r} is not a dotted path such as 'seaflow.judges.sentiment_polarity'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"CallableReward function {path!r}: cannot import module {module_name!r} ({err})") from err
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"CallableReward function {path!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"CallableReward function {path!r} is not callable (it is a {type(target).__name__})")
    return target


class CallableReward(TextReward):
    """``r(x, y) = scale * f(y)`` for a Python function named by its dotted path.

    A function that calls a service (an API judge, a remote verifier) can fail for a moment:
    ``retries`` tries each call again after ``backoff`` seconds, then twice as long, and so on,
    and ``timeout`` abandons a call that takes longer. A call that still fails is a row fault
    inside ``seaflow predict``: its prompt gets an entry in errors.jsonl, the others their
    records (seaflow/faults.py).

    Args:
        function: ``package.module.name`` (or ``package.module:name``) of the function, e.g.
            ``seaflow.judges.sentiment_polarity`` (TextBlob polarity in [-1, 1]).
        with_prompt: call ``f(prompt, response)`` instead of ``f(response)``.
        batched: call ``f`` once per batch with lists (``f(responses)`` or
            ``f(prompts, responses)``), returning one number per row.
        kwargs: extra keyword arguments passed to every call.
        scale: multiplier on the result (``-1`` turns a penalty into a reward).
        retries: further attempts of a call that raises or times out (0: none).
        backoff: seconds before the first retry; each next one waits twice as long.
        timeout: seconds a call may take (None: no limit).
    """

    def __init__(
        self,
        function: str,
        with_prompt: bool = False,
        batched: bool = False,
        kwargs: dict[str, Any] | None = None,
        scale: float = 1.0,
        retries: int = 0,
        backoff: float = 1.0,
        timeout: float | None = None,
    ):
        super().__init__()
        require(isinstance(retries, int) and retries >= 0, "CallableReward retries", retries, "an integer >= 0")
        require(backoff >= 0, "CallableReward backoff", backoff, "a number of seconds >= 0")
        require(timeout is None or timeout > 0, "CallableReward timeout", timeout, "a number of seconds > 0, or null (no limit)")
        self.function = function
        self.fn = resolve_callable(function)
        self.with_prompt = with_prompt
        self.batched = batched
        self.kwargs = dict(kwargs or {})
        self.scale = scale
        self.retries, self.backoff, self.timeout = retries, backoff, timeout

    def describe(self) -> str:
        return f"CallableReward({self.function!r})"

    def call(self, *args: Any) -> Any:
        """``function(*args, **kwargs)`` with the retries, backoff and timeout."""
        return faults.call_with_retries(self.fn, args, self.kwargs, self.retries, self.backoff, self.timeout, self.describe())

    def score_texts(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        args = (prompts, responses) if self.with_prompt else (responses,)
        if self.batched:
            values = list(self.call(*args))
            if len(values) != len(responses):
                raise ValueError(f"{self.describe()} returned {len(values)} values for a batch of {len(responses)} responses")
        else:
            values = []
            for row, row_args in enumerate(zip(*args)):
                try:
                    values.append(self.call(*row_args))
                except Exception as err:
                    if faults.isolating():
                        raise faults.RowError(row, err) from err  # the fault names this row's prompt only
                    raise
        try:
            out = torch.tensor([float(v) for v in values], dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{self.describe()} must return numbers, got e.g. {values[:1]!r}") from err
        return out * self.scale
