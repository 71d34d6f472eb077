"""The one sampling loop (seaflow/generation.py): per-row starts and limits, narrowing, resuming,
selecting rows between blocks, the rules, and the per-row randomness it draws (seaflow/rng.py)."""

import pytest
import torch

from seaflow import generation, rng
from seaflow.layout import build_layout

PROMPTS = ["describe the city", "how was the train", "tell me about the river and the hills"]
WIDTH = 8


def setup(policy):
    ids = [policy.tokenizer(p)["input_ids"] for p in PROMPTS]
    return policy.model, ids, [3], 0  # the tiny policy's EOS and pad ids


def generators(rows: int, seed: int = 0) -> list[torch.Generator]:
    return rng.row_generators([seed + i for i in range(rows)])


def start(policy, **kwargs) -> generation.Generation:
    model, ids, eos, pad = setup(policy)
    return generation.Generation.start(generation.prefill(model, ids, pad), WIDTH, eos, pad, **kwargs)


def written(state):
    return state.tokens.clone(), state.lengths.clone()


def test_a_row_never_writes_eos_and_pads_after_its_end(tiny_policy):
    model, ids, eos, pad = setup(tiny_policy)
    state = start(tiny_policy)
    generation.generate(model, state, generation.GumbelSample(generators(len(ids))))
    for row, n in zip(state.tokens, state.lengths):
        assert not bool(torch.isin(row[: int(n)], torch.tensor(eos)).any())
        assert bool((row[int(n):] == pad).all())


def test_sample_is_the_loop_from_the_prefill(tiny_policy):
    model, ids, eos, pad = setup(tiny_policy)
    tokens, lengths = generation.sample(model, ids, WIDTH, eos, pad, generators(len(ids)), temperature=0.7, top_p=0.9)
    state = start(tiny_policy)
    rules = [generation.Temperature(0.7), generation.TopP(0.9)]
    generation.generate(model, state, generation.GumbelSample(generators(len(ids))), rules)
    assert torch.equal(state.tokens, tokens) and torch.equal(state.lengths, lengths)


def test_rows_of_one_prompt_share_its_prefill_and_write_the_same_tokens(tiny_policy):
    from seaflow import cost

    model, ids, eos, pad = setup(tiny_policy)
    cost.watch(model, "policy")  # as a method's attach does
    rows = [ids[0], ids[1], ids[0], ids[2], ids[0], ids[1]]  # three distinct prompts, interleaved
    results = {}
    for share in (True, False):
        with torch.no_grad(), cost.CostMeter() as meter:
            results[share] = generation.sample(model, rows, WIDTH, eos, pad, generators(len(rows)), share_prompt=share)
        results[share] += (meter.totals(),)
    (shared, shared_n, shared_cost), (own, own_n, own_cost) = results[True], results[False]
    assert torch.equal(shared, own) and torch.equal(shared_n, own_n)
    prefill_width = max(map(len, ids))  # left-padded to the longest prompt either way
    assert own_cost["forward_tokens"] - shared_cost["forward_tokens"] == (len(rows) - 3) * prefill_width
    assert own_cost["models"]["policy"]["head_tokens"] - shared_cost["models"]["policy"]["head_tokens"] == len(rows) - 3
    context = generation.prefill(model, rows, pad)  # and each row's context is its prompt's
    alone = generation.prefill(model, [ids[0]], pad, share=False)
    torch.testing.assert_close(context.logits[4], alone.logits[0])


def test_narrowing_the_batch_changes_no_token_and_hands_over_every_row_once(tiny_policy):
    model, ids, eos, pad = setup(tiny_policy)
    wide = start(tiny_policy, limits=torch.tensor([2, WIDTH, 5]))
    generation.generate(model, wide, generation.GumbelSample(generators(len(ids))))
    left = []
    narrow = start(tiny_policy, limits=torch.tensor([2, WIDTH, 5]))
    generation.generate(model, narrow, generation.GumbelSample(generators(len(ids))), narrow=0.3,
                        on_leave=lambda rows, local, cache: left.extend(rows.tolist()))
    assert torch.equal(narrow.tokens, wide.tokens) and torch.equal(narrow.lengths, wide.lengths)
    assert sorted(left) == [0, 1, 2]
    assert len(narrow.rows) < len(ids)  # the batch was narrowed
    assert int(wide.lengths[0]) <= 2 and int(wide.lengths[2]) <= 5  # each row stops at its own limit


def test_rows_start_at_their_own_slot_and_keep_what_is_before(tiny_policy):
    """A row that starts at slot s after its first s tokens is the row written from slot 0, greedily."""
    model, ids, eos, pad = setup(tiny_policy)
    full = start(tiny_policy, limits=torch.full((3,), WIDTH))
    generation.generate(model, full, generation.Greedy())
    cut = torch.minimum(torch.tensor([0, 2, 3]), full.lengths)  # a cut at most at the row's end
    kept = torch.where(torch.arange(WIDTH) < cut.unsqueeze(1), full.tokens, pad)
    before = [p + full.tokens[i, : int(c)].tolist() for i, (p, c) in enumerate(zip(ids, cut))]
    resumed = generation.Generation.start(generation.prefill(model, before, pad), WIDTH, eos, pad, slots=cut, tokens=kept)
    generation.generate(model, resumed, generation.Greedy())
    assert torch.equal(resumed.tokens, full.tokens) and torch.equal(resumed.lengths, full.lengths)


def test_a_generation_resumes_where_it_stopped(tiny_policy):
    model, ids, eos, pad = setup(tiny_policy)
    once = start(tiny_policy)
    generation.generate(model, once, generation.GumbelSample(generators(len(ids))))
    blocks = start(tiny_policy)
    choose = generation.GumbelSample(generators(len(ids)))
    generation.generate(model, blocks, choose, steps=3)
    assert not blocks.finished and blocks.steps == 3
    generation.generate(model, blocks, choose, steps=2)
    generation.generate(model, blocks, choose)
    assert torch.equal(blocks.tokens, once.tokens) and torch.equal(blocks.lengths, once.lengths)


def test_selected_rows_continue_as_their_source(tiny_policy):
    """Between blocks, select keeps, drops and repeats rows with their cache: a repeated row
    continues exactly as its source does (greedy)."""
    model, ids, eos, pad = setup(tiny_policy)
    once = start(tiny_policy)
    generation.generate(model, once, generation.Greedy())
    blocks = start(tiny_policy)
    generation.generate(model, blocks, generation.Greedy(), steps=2)
    index = torch.tensor([2, 0, 0])
    picked = blocks.select(index)
    generation.generate(model, picked, generation.Greedy())
    assert torch.equal(picked.tokens, once.tokens[index]) and torch.equal(picked.lengths, once.lengths[index])


def test_select_refuses_a_narrowed_batch(tiny_policy):
    model, ids, eos, pad = setup(tiny_policy)
    state = start(tiny_policy, limits=torch.tensor([1, WIDTH, WIDTH]))
    generation.generate(model, state, generation.Greedy(), steps=3, narrow=0.3)
    with pytest.raises(ValueError, match="without narrow"):
        state.select(torch.tensor([1, 2]))


def test_forced_tokens_replace_the_choice_and_set_each_rows_limit(tiny_policy):
    model, ids, eos, pad = setup(tiny_policy)
    forced = [[5, 6], [], [7]]
    tokens, lengths = generation.sample(model, ids, WIDTH, eos, pad, generators(3), forced=forced)
    assert tokens[0, :2].tolist() == [5, 6] and tokens[2, 0] == 7
    # the same number of free tokens for every row: its start + (width - the longest start)
    assert (lengths <= torch.tensor([WIDTH, WIDTH - 2, WIDTH - 1])).all()


def test_the_top_k_record_is_the_policys_top_k_given_the_prefix(tiny_policy):
    model, ids, eos, pad = setup(tiny_policy)
    candidates = torch.zeros(len(ids), WIDTH, 4, dtype=torch.long)
    state = start(tiny_policy)
    generation.generate(model, state, generation.GumbelSample(generators(len(ids))), records=[generation.RecordTopK(candidates)])
    layout = build_layout(ids, state.lengths, pad)
    expected = layout.next_token_logits(model, state.tokens).topk(4, dim=-1).indices
    for row, n in enumerate(state.lengths.tolist()):
        assert torch.equal(candidates[row, :n], expected[row, :n])


def test_stops_end_a_row_at_eos_or_at_its_limit():
    stops = generation.Stops.of([9], torch.tensor([4, 2, 4]))
    rows = torch.arange(3)
    write, ended = stops.step(rows, torch.tensor([1, 1, 1]), torch.tensor([9, 5, 5]), torch.tensor([True, True, False]))
    assert write.tolist() == [False, True, False]
    assert ended.tolist() == [True, True, False]  # EOS at slot 1; slot 1 is the last of a 2-token limit
    assert stops.lengths.tolist() == [1, 2, 4]


def test_a_rows_gumbel_draws_depend_on_its_generator_only():
    alone = rng.gumbel((1, 50), rng.row_generators([rng.prompt_seed(0, "p", 1)]))
    together = rng.gumbel((3, 50), rng.row_generators([rng.prompt_seed(0, key, c) for key, c in (("q", 0), ("p", 1), ("p", 2))]))
    assert torch.equal(together[1], alone[0])
    assert rng.prompt_seed(0, "p", 1) != rng.prompt_seed(0, "p", 1, "refine")
