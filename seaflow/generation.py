"""Autoregressive sampling and decoding with the policy, batched, with per-row randomness.

Each row draws its randomness from its own ``torch.Generator`` (seeded from the run seed,
the prompt id and the chain index), so a prompt's samples do not depend on which other
prompts share its batch, on the batch size or on the number of processes.
"""

from __future__ import annotations

import torch

from seaflow.layout import active_mask, build_layout, cache_argument, output_cache


def row_generators(seeds: list[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    gens = []
    for seed in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(seed) % (2**63))
        gens.append(g)
    return gens


def gumbel_noise(shape: tuple[int, ...], generators: list[torch.Generator], device) -> torch.Tensor:
    """Standard Gumbel noise ``(B, ...)``, row ``i`` from ``generators[i]``: one step of :func:`sample`'s draws."""
    rows = [torch.rand(shape[1:], generator=g, device=g.device) for g in generators]
    u = torch.stack(rows).to(device).clamp_(1e-20, 1.0)
    return -torch.log(-torch.log(u))


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches ``top_p`` (nucleus)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    eos_ids: list[int],
    pad_id: int,
    generators: list[torch.Generator],
    temperature: float = 1.0,
    top_p: float = 1.0,
    choose=None,
    forced: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample continuations of left-padded prompts with a KV cache.

    Returns ``(tokens (B, max_new_tokens), lengths (B,))`` where ``lengths`` counts the tokens
    before the first EOS (EOS itself is not part of the response) and the rest is ``pad_id``.
    ``choose(step, logits) -> tokens`` overrides the sampling rule (used by guided decoding).

    ``forced[i]`` (the prefilling attack's forced start) is the first tokens of row ``i``'s
    response: steps ``t < len(forced[i])`` emit ``forced[i][t]`` whatever the rule chose (the
    draw is still made, so a row's randomness does not depend on its prefix length), and
    the row then has ``max_new_tokens - max(len(f) for f in forced)`` free tokens, the same
    for every row whatever the others' prefix (callers pass ``max_new_tokens`` = the longest
    prefix + the free budget; :func:`forced_start`).
    """
    device = model.get_input_embeddings().weight.device
    batch = len(prompt_ids)
    layout = build_layout(prompt_ids, torch.zeros(batch, dtype=torch.long), pad_id).to(device)
    mask = layout.attention_mask
    positions = layout.position_ids
    out = model(input_ids=layout.ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    past = output_cache(out)
    logits = out.logits[:, -1].float()
    next_pos = positions[:, -1:] + 1
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
    eos = torch.tensor(eos_ids, device=device)
    start, limit = forced_start(forced, batch, max_new_tokens, device)
    for step in range(max_new_tokens):
        if choose is not None:
            token = choose(step, logits)
        elif temperature == 0:
            token = logits.argmax(-1)
        else:
            scores = filter_top_p(logits / temperature, top_p)
            token = (scores + gumbel_noise(scores.shape, generators, device)).argmax(-1)
        if start is not None:
            if step < start.shape[1]:
                token = torch.where(start[:, step] >= 0, start[:, step], token)
            over = (step >= limit) & ~finished  # the row's free budget is spent: it ends here
            lengths = torch.where(over, torch.full_like(lengths, step), lengths)
            finished = finished | over
        is_eos = torch.isin(token, eos) & ~finished
        lengths = torch.where(is_eos, torch.full_like(lengths, step), lengths)
        finished = finished | is_eos
        tokens[:, step] = torch.where(finished, torch.full_like(token, pad_id), token)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, (~finished).long().unsqueeze(1)], dim=1)
        out = model(
            input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=next_pos,
            use_cache=True, **{cache_argument(model): past},
        )
        past = output_cache(out)
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    return tokens, lengths


def forced_start(forced: list[list[int]] | None, rows: int, width: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(start (B, K), limit (B,))`` for :func:`sample`'s ``forced``: row ``i``'s forced tokens,
    -1 where free, and the step at which it must end (its prefix + ``width - K`` free tokens)."""
    if not forced or not any(forced):
        return None, None
    if len(forced) != rows:
        raise ValueError(f"forced has {len(forced)} rows for {rows} prompts")
    longest = max(map(len, forced))
    if longest > width:
        raise ValueError(f"a forced start of {longest} tokens does not fit a response of {width} tokens")
    start = torch.full((rows, longest), -1, dtype=torch.long)
    for i, ids in enumerate(forced):
        start[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    limit = torch.tensor([len(ids) + width - longest for ids in forced])
    return start.to(device), limit.to(device)


def guided_decode(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    logits: torch.Tensor,
    lengths: torch.Tensor,
    eos_ids: list[int],
    pad_id: int,
    top_k: int,
    forced: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode refined logits left to right among the policy's top-k next tokens (``forced``: see :func:`sample`).

    At each position the token is the one with the highest refined logit ``y_t`` among the
    policy's ``top_k`` most likely next tokens *given the prefix actually decoded so far*
    (as COLD decoding does), so the result stays fluent while following ``y``. Rows stop at
    their active length or when EOS is chosen.
    """
    width = logits.shape[1]
    active = active_mask(lengths.to(logits.device), width)

    def choose(step: int, next_logits: torch.Tensor) -> torch.Tensor:
        candidates = next_logits.topk(top_k, dim=-1).indices  # (B, k)
        scores = logits[:, step].gather(-1, candidates)
        best = candidates.gather(-1, scores.argmax(-1, keepdim=True)).squeeze(-1)
        # past a row's active length the row is over: emit EOS so it finishes
        return torch.where(active[:, step], best, torch.full_like(best, eos_ids[0]))

    return sample(model, prompt_ids, width, eos_ids, pad_id, generators=[], choose=choose, forced=forced)
