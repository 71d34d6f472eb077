"""Where the response sits inside a model's input, and how relaxed tokens get there.

Every model that scores a response sees a row ``before + response + after`` (e.g.
``prompt + response`` for the reference model, ``judge question + response + "Answer:"`` for a
prompted judge). Rows differ in length, so they are left-padded to a common width; only
the first ``length[i]`` response positions of row ``i`` are active (a sampled response that
ended early with EOS is shorter). The response itself is either token ids ``(B, L)`` or a
token distribution ``(B, L, V)``; both enter through the same gather, so a one-hot
distribution yields exactly the embeddings of the ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Layout:
    """Token ids and masks of a batch of ``before + response + after`` rows (left-padded).

    ``ids`` holds the fixed tokens (pad in response slots), ``response_slots`` marks the
    response positions, and ``response_index`` says which response position each slot takes.
    """

    ids: torch.Tensor  # (B, S) long
    attention_mask: torch.Tensor  # (B, S) long
    position_ids: torch.Tensor  # (B, S) long
    response_slots: torch.Tensor  # (B, S) bool
    response_index: torch.Tensor  # (B, S) long, 0 outside the slots
    lengths: torch.Tensor  # (B,) active response length per row
    after_lengths: torch.Tensor  # (B,)

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def to(self, device) -> "Layout":
        return Layout(**{k: v.to(device) for k, v in self.__dict__.items()})


def build_layout(
    before: list[list[int]],
    lengths: torch.Tensor,
    pad_id: int,
    after: list[list[int]] | None = None,
) -> Layout:
    """Left-padded rows ``before[i] + [response slot] * lengths[i] + after[i]``."""
    batch = len(before)
    after = after if after is not None else [[] for _ in range(batch)]
    lengths_list = [int(n) for n in lengths.tolist()]
    totals = [len(b) + n + len(a) for b, n, a in zip(before, lengths_list, after)]
    width = max(totals)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    slots = torch.zeros((batch, width), dtype=torch.bool)
    index = torch.zeros((batch, width), dtype=torch.long)
    for row, (b, n, a, total) in enumerate(zip(before, lengths_list, after, totals)):
        start = width - total
        mask[row, start:] = 1
        ids[row, start : start + len(b)] = torch.tensor(b, dtype=torch.long)
        r0 = start + len(b)
        slots[row, r0 : r0 + n] = True
        index[row, r0 : r0 + n] = torch.arange(n)
        if a:
            ids[row, r0 + n :] = torch.tensor(a, dtype=torch.long)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return Layout(
        ids=ids, attention_mask=mask, position_ids=positions, response_slots=slots,
        response_index=index, lengths=lengths.detach().cpu().long(),
        after_lengths=torch.tensor([len(a) for a in after], dtype=torch.long),
    )


def response_embeddings(embedding: torch.nn.Embedding, response: torch.Tensor) -> torch.Tensor:
    """Embeddings of a response given as ids ``(B, L)`` or as a distribution ``(B, L, V)``."""
    if response.dtype in (torch.long, torch.int, torch.int32):
        return embedding(response)
    weight = embedding.weight
    return response.to(weight.dtype) @ weight


def input_embeddings(model: torch.nn.Module, layout: Layout, response: torch.Tensor) -> torch.Tensor:
    """``inputs_embeds`` for ``model``: fixed tokens embedded, response slots filled from ``response``."""
    embedding = model.get_input_embeddings()
    fixed = embedding(layout.ids)
    resp = response_embeddings(embedding, response)  # (B, L, H)
    index = layout.response_index.unsqueeze(-1).expand(-1, -1, resp.shape[-1])
    gathered = resp.gather(1, index)
    return torch.where(layout.response_slots.unsqueeze(-1), gathered, fixed)


def run(model: torch.nn.Module, layout: Layout, response: torch.Tensor, **kwargs):
    """Run ``model`` on ``layout`` with ``response`` in its slots."""
    return model(
        inputs_embeds=input_embeddings(model, layout, response),
        attention_mask=layout.attention_mask,
        position_ids=layout.position_ids,
        use_cache=False,
        **kwargs,
    )


def next_token_logits(model: torch.nn.Module, layout: Layout, response: torch.Tensor) -> torch.Tensor:
    """Logits that predict each response position, ``(B, L, V)``, float32.

    Requires ``after`` to be empty (the response ends every row). Positions beyond a row's
    active length hold the logits of its last active position and must be masked by callers.
    """
    if int(layout.after_lengths.max()) != 0:
        raise ValueError("next_token_logits needs rows that end with the response (no 'after' tokens)")
    max_len = response.shape[1]
    keep = max_len + 1
    logits = run(model, layout, response, logits_to_keep=keep).logits[:, -keep:]
    lengths = layout.lengths.to(logits.device)
    # Row i's response position t sits at window index (keep - 1 - lengths[i]) + t and is
    # predicted by the logits one step earlier.
    t = torch.arange(max_len, device=logits.device)
    index = (max_len - lengths).unsqueeze(1) + t.unsqueeze(0)
    index = index.clamp(max=keep - 2)
    index = index.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index).float()


def active_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B, L)`` boolean mask of active response positions."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
