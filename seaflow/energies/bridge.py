"""A token bridge: relaxed policy tokens fed to a reward model with another tokenizer.

:class:`TokenBridge` maps every policy token to one token of the other tokenizer: the token
that decodes to the same string when there is one (``exact``), else the first piece of the
string's re-tokenisation. A response keeps its length, so a distribution over policy tokens
``p (B, L, V_policy)`` becomes ``p M (B, L, V_reward)`` (``M`` the 0/1 map) and gradients flow
back through the map. The mapped sequence equals the true re-tokenisation of the text only
when every token maps exactly and the other tokenizer would split the text at the same
places: :meth:`TokenBridge.agreement` measures how often that holds on real responses
(docs/rewards.md has the numbers and when to prefer a distilled surrogate).

:class:`BridgedRewardModel` is :class:`~seaflow.energies.RewardModel` behind such a bridge.
"""

from __future__ import annotations

import torch

from seaflow.energies.base import ResponseBatch
from seaflow.energies.reward_model import RewardModel
from seaflow.models import LoadedModel


def piece_decoder(tokenizer):
    """``id -> text`` the token adds when it follows other text (a leading space kept, as inside a
    sentence: SentencePiece tokenizers drop it when a token is decoded alone)."""
    anchor = tokenizer.encode("a", add_special_tokens=False)
    if len(anchor) != 1:
        return lambda token_id: tokenizer.decode([token_id])
    skip = len(tokenizer.decode(anchor))
    return lambda token_id: tokenizer.decode(anchor + [token_id])[skip:]


class TokenBridge:
    """The map of ``source`` token ids to ``target`` token ids (see the module docstring).

    ``index[s]`` is the target id of source id ``s``; ``exact[s]`` says whether it decodes to the
    same string. Special tokens of the source map to the target's pad (their text is skipped).
    """

    def __init__(self, source, target, source_size: int | None = None):
        self.source, self.target = source, target
        size = source_size or len(source)
        pad = target.pad_token_id if target.pad_token_id is not None else (target.unk_token_id or 0)
        specials = set(source.all_special_ids)
        self.specials = specials
        source_piece, target_piece = piece_decoder(source), piece_decoder(target)
        index, exact = [], []
        for s in range(size):
            if s in specials or s >= len(source):
                index.append(pad)
                exact.append(s in specials)
                continue
            text = source_piece(s)
            pieces = target.encode(text, add_special_tokens=False) if text else []
            index.append(pieces[0] if pieces else pad)
            exact.append(len(pieces) == 1 and target_piece(pieces[0]) == text)
        self.index = torch.tensor(index, dtype=torch.long)
        self.exact = torch.tensor(exact, dtype=torch.bool)
        self.target_size = max(len(target), int(self.index.max()) + 1)

    def map_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.index.to(ids.device)[ids]

    def map_relaxed(self, p: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """``p M``: each target token gets the mass of the source tokens mapped to it (differentiable)."""
        out = p.new_zeros(*p.shape[:-1], size or self.target_size)
        return out.index_add(-1, self.index.to(p.device)[: p.shape[-1]], p)

    def retokenize(self, ids: list[int]) -> list[int]:
        """The target tokenizer's own tokens for the text of source ``ids``."""
        text = self.source.decode(ids, skip_special_tokens=True)
        return self.target.encode(text, add_special_tokens=False)

    def agreement(self, responses: list[list[int]]) -> dict[str, float]:
        """How often mapping the tokens gives the true re-tokenisation, on source-token responses.

        ``sequence_match``: share of responses whose mapped ids equal the re-tokenisation;
        ``length_match``: share with the same number of tokens; ``token_exact``: share of
        response tokens that map to a token with the same string; ``vocab_exact``: share of the
        source vocabulary that does.
        """
        same = same_length = exact_tokens = total = 0
        for ids in responses:
            mapped = [int(self.index[i]) for i in ids if i not in self.specials]
            true = self.retokenize(ids)
            same += mapped == true
            same_length += len(mapped) == len(true)
            exact_tokens += sum(bool(self.exact[i]) for i in ids)
            total += len(ids)
        n = max(len(responses), 1)
        return {
            "responses": len(responses), "sequence_match": same / n, "length_match": same_length / n,
            "token_exact": exact_tokens / max(total, 1), "vocab_exact": float(self.exact.float().mean()),
        }


class BridgedRewardModel(RewardModel):
    """A sequence-classification reward model with its own tokenizer, fed the policy's relaxed tokens
    through a :class:`TokenBridge` (the prompt is re-tokenised as text).

    Differentiable like :class:`~seaflow.energies.RewardModel`, but the model reads the mapped
    tokens, which differ from its own tokenisation of the text whenever a policy token has no
    single-token equivalent (docs/rewards.md measures how often). Args as RewardModel's.
    """

    def setup(self, policy: LoadedModel) -> None:
        if self.reward_model is not None:
            return
        loaded = self.load_model()
        labels = loaded.model.config.num_labels
        if not 0 <= self.label_index < labels:
            raise ValueError(f"label_index {self.label_index} is out of range for {self.model_name!r} with {labels} labels")
        self.policy_tokenizer = policy.tokenizer
        self.reward_tokenizer = loaded.tokenizer
        self.bridge = TokenBridge(policy.tokenizer, loaded.tokenizer, policy.vocab_size)
        self.reward_vocab = loaded.model.get_input_embeddings().weight.shape[0]
        self.attach(loaded.model, loaded.tokenizer.pad_token_id)

    def prepare(self, batch: ResponseBatch):
        prompts = [self.bridge.retokenize(ids) for ids in batch.prompt_ids]
        return super().prepare(ResponseBatch(prompts, batch.prompts, batch.lengths, batch.max_length))

    def value(self, prepared, response: torch.Tensor) -> torch.Tensor:
        mapped = self.bridge.map_relaxed(response, self.reward_vocab) if response.is_floating_point() else self.bridge.map_ids(response)
        return super().value(prepared, mapped)
