"""A prompted judge: a causal LM asked a question about the response."""

from __future__ import annotations

import re

import torch

from seaflow.layout import Layout, PrefixLayout, build_layout, build_prefix_layout, supports_prefix_cache, with_prefix_cache
from seaflow.encoding import chat_segments, encode_segments
from seaflow.energies.base import ResponseBatch, Reward, check_device
from seaflow.models import LoadedModel, load_causal_lm

_RESPONSE = "\x00RESPONSE\x00"
_INSERT = "\x00\x01{}\x00"  # where the prompt or a row field goes: user text, inserted after the template renders
_INSERTED = re.compile("\x00\x01(\\w+)\x00")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")

DEFAULT_QUESTION = (
    "Here is a request and a reply.\nRequest: {prompt}\nReply: {response}\n"
    "Is the reply positive and cheerful? Answer yes or no."
)


class PromptedJudge(Reward):
    """``r = log p(positive answer) - log p(negative answer)`` after a question about the response.

    The judge reads ``question`` (with ``{prompt}``, ``{response}`` and any ``{field}`` of the
    prompt's row, e.g. ``{keywords}`` or ``{target}``, filled in; a list is joined with ", "), wrapped
    in its chat template when it has one, and the reward compares the next-token
    probability of the positive answer words against the negative ones (summed over each
    word's first tokens, with and without a leading space and capital). Differentiable
    through ``inputs_embeds``.

    Mind the calibration (docs/rewards.md): a tiny judge can be worse than chance.

    Args:
        question: template with ``{prompt}``, ``{response}`` and the row fields it needs
            (``ResponseBatch.fields``: ``task``, ``target``, ``keywords`` and ``data.fields``).
        positive: answer words that mean "good".
        negative: answer words that mean "bad".
        model: the judge model; None borrows the policy (no second copy in memory).
        use_chat_template: wrap the question as a user turn with the generation prompt.
        dtype: judge model dtype when ``model`` is given (e.g. ``bfloat16``).
        cache_prefix: compute the key/value cache of the template before the response once
            per batch and run only the response and the closing text on every evaluation.
        device: keep the judge model (``model`` must be given) on this device instead of the
            policy's, outside the method's module tree so that Lightning does not move it;
            relaxed tokens are moved to it and the reward back. None: a submodule of the method.
    """

    def __init__(
        self,
        question: str = DEFAULT_QUESTION,
        positive: list[str] | None = None,
        negative: list[str] | None = None,
        model: str | None = None,
        use_chat_template: bool = True,
        dtype: str | None = None,
        cache_prefix: bool = True,
        device: str | None = None,
    ):
        super().__init__()
        if device is not None and model is None:
            raise ValueError(
                f"PromptedJudge device {device!r} needs a judge model of its own (set model); "
                "without one the judge is the policy and runs on the policy's device"
            )
        if "{response}" not in question:
            raise ValueError(f"PromptedJudge question must contain '{{response}}', got {question!r}")
        self.question = question
        self.row_fields = list(dict.fromkeys(n for n in _PLACEHOLDER.findall(question) if n not in ("prompt", "response")))
        self.positive = positive or ["yes"]
        self.negative = negative or ["no"]
        self.model_name = model
        self.use_chat_template = use_chat_template
        self.dtype = dtype
        self.cache_prefix = cache_prefix
        self.device = check_device(device, "PromptedJudge")
        self.judge_model = None

    def setup(self, policy: LoadedModel) -> None:
        if self.model_name is None:
            self._borrow(self, "judge_model", policy.model)
            self.tokenizer = policy.tokenizer
        elif self.judge_model is None:
            loaded = load_causal_lm(self.model_name, dtype=self.dtype, role="the judge model (PromptedJudge model)")
            self.check_vocabulary(policy, loaded, f"judge model {self.model_name!r}")
            if self.device is not None:
                self._borrow(self, "judge_model", loaded.model.to(self.device))  # out of the module tree
            else:
                self.judge_model = loaded.model
            self.tokenizer = loaded.tokenizer
        if self.use_chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                "PromptedJudge has use_chat_template: true but the judge's tokenizer has no chat "
                "template; set use_chat_template: false"
            )
        self._cacheable = self.cache_prefix and supports_prefix_cache(self.judge_model)
        self.positive_ids = self._answer_ids(self.positive)
        self.negative_ids = self._answer_ids(self.negative)
        overlap = set(self.positive_ids) & set(self.negative_ids)
        if overlap:
            raise ValueError(f"positive and negative answers share token ids {sorted(overlap)}")

    def _answer_ids(self, words: list[str]) -> list[int]:
        ids = set()
        for word in words:
            for variant in {word, word.capitalize(), " " + word, " " + word.capitalize()}:
                tokens = self.tokenizer.encode(variant, add_special_tokens=False)
                if tokens and tokens[0] != self.tokenizer.unk_token_id:
                    ids.add(tokens[0])
        if not ids:
            raise ValueError(f"none of the answer words {words} is a token of the judge's vocabulary")
        return sorted(ids)

    def _split(self, prompt: str, fields: dict[str, str] | None = None) -> tuple[list[int], list[int]]:
        """Judge tokens before and after the response. The question is the config's own text; the
        prompt and the row fields inserted into it are user text, so special-token strings typed
        in them stay text."""
        inserted = {"prompt": prompt, **(fields or {})}
        content = self.question.replace("{response}", _RESPONSE)
        for name in inserted:
            content = content.replace("{" + name + "}", _INSERT.format(name))
        if self.use_chat_template:
            segments = chat_segments(self.tokenizer, [{"role": "user", "content": content}])
        else:
            segments = [(content, True)]
        pieces = []
        for text, _ in segments:
            for i, part in enumerate(_INSERTED.split(text)):
                pieces.append((inserted[part], False) if i % 2 else (part, True))
        at = next(i for i, (text, markup) in enumerate(pieces) if markup and _RESPONSE in text)
        head, tail = pieces[at][0].split(_RESPONSE)
        before = pieces[:at] + [(head, True)]
        after = [(tail, True)] + pieces[at + 1 :]
        return encode_segments(self.tokenizer, before), encode_segments(self.tokenizer, after)

    def prepare(self, batch: ResponseBatch) -> Layout | PrefixLayout:
        cache: dict[tuple, tuple[list[int], list[int]]] = {}
        befores, afters = [], []
        columns = [batch.field(name, f"PromptedJudge's question ({{{name}}})") for name in self.row_fields]
        for row, prompt in enumerate(batch.prompts):
            fields = {name: _text(values[row]) for name, values in zip(self.row_fields, columns)}
            key = (str(prompt), *fields.values())
            if key not in cache:
                cache[key] = self._split(prompt, fields)
            befores.append(cache[key][0])
            afters.append(cache[key][1])
        device = self.judge_model.get_input_embeddings().weight.device
        pad = self.tokenizer.pad_token_id
        if getattr(self, "_cacheable", False) and all(befores) and all(afters):
            layout = build_prefix_layout(befores, batch.lengths, pad, after=afters).to(device)
            return with_prefix_cache(self.judge_model, layout)
        return build_layout(befores, batch.lengths, pad, after=afters).to(device)

    def value(self, prepared: Layout | PrefixLayout, response: torch.Tensor) -> torch.Tensor:
        home = response.device
        response = response.to(self.judge_model.get_input_embeddings().weight.device)
        # the response and the closing text (on the cached template with a PrefixLayout)
        output = prepared.run(self.judge_model, response, logits_to_keep=1)
        logits = output.logits[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        pos = torch.logsumexp(logp[:, self.positive_ids], dim=-1)
        neg = torch.logsumexp(logp[:, self.negative_ids], dim=-1)
        return (pos - neg).to(home)


def _text(value) -> str:
    """A row field as the judge reads it: a list joined with ", ", anything else as its string."""
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
