"""Cost accounting (seaflow/cost.py): FLOP estimate against torch's FLOP counter, token counts
of Best-of-N and SEA against a direct calculation, records and summary."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from seaflow import cost
from seaflow.layout import build_layout
from seaflow.energies import LexiconReward, RewardModel
from seaflow.methods import BestOfN, Sample
from seaflow.metrics import summarize
from seaflow.models import load_causal_lm
from seaflow.methods import SEA
from seaflow.samplers import Langevin

from test_methods import PROMPTS, direct


@pytest.fixture(scope="module")
def eager_policy(tiny_models):
    """A private copy of the tiny policy with eager attention, whose matmuls torch's counter sees."""
    loaded = load_causal_lm(str(tiny_models["policy"]))
    loaded.model.set_attn_implementation("eager")
    cost.watch(loaded.model, "policy")
    return loaded


def shape_of(model):
    return cost.model_shape(model, "policy")


def test_body_params_are_the_linear_weights(eager_policy):
    model = eager_policy.model
    config = model.config
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * i  # q, k, v, o, gate, up, down (no biases)
    assert shape_of(model).body_params == layers * per_layer
    assert shape_of(model).attention_width == layers * h


def test_flops_match_torch_flop_counter_forward_backward_relaxed(eager_policy):
    model = eager_policy.model
    layout = build_layout([[5, 6, 7], [8, 9]], torch.tensor([4, 4]), 0)
    response = torch.softmax(torch.randn(2, 4, model.config.vocab_size), -1).requires_grad_(True)
    with cost.CostMeter() as meter, FlopCounterMode(display=False) as counter:
        logits = layout.run(model, response).logits
        logits.float().logsumexp(-1).sum().backward()
    counts = meter.totals()["models"]["policy"]
    assert counts["forward_tokens"] == counts["backward_tokens"] == 2 * 7
    assert counts["soft_embedding_tokens"] == 2 * 4
    assert counts["head_tokens"] == 2 * 7
    assert counts["flops"] == counter.get_total_flops()


def test_flops_match_torch_flop_counter_cached_decoding(eager_policy):
    model = eager_policy.model
    gens = [torch.Generator().manual_seed(s) for s in range(3)]
    prompt_ids = [[5, 6, 7, 8], [9, 10], [11]]
    with torch.no_grad(), cost.CostMeter() as meter, FlopCounterMode(display=False) as counter:
        tokens, lengths = generation_sample(model, prompt_ids, gens)
    counts = meter.totals()["models"]["policy"]
    steps = min(int(lengths.max()), 5)  # incremental forwards after the prompt pass
    assert counts["forward_tokens"] == 3 * 4 + 3 * steps
    assert counts["head_tokens"] == 3 * (1 + steps)
    assert counts["backward_tokens"] == 0
    assert counts["flops"] == counter.get_total_flops()
    # and the direct formula: 2 x body params per token, attention over 4, 5, ... keys, head per kept row
    shape = shape_of(model)
    h, v = model.config.hidden_size, model.config.vocab_size
    keys = 3 * 4 * 4 + sum(3 * (4 + s) for s in range(1, steps + 1))
    assert counts["flops"] == 2 * shape.body_params * counts["forward_tokens"] + 4 * shape.attention_width * keys + 2 * h * v * counts["head_tokens"]


def generation_sample(model, prompt_ids, gens):
    from seaflow import generation

    return generation.sample(model, prompt_ids, 6, [3], 0, gens)


def test_best_of_n_counts_n_candidates_by_l_tokens(tiny_models, tiny_policy):
    n, width = 4, 6
    method = BestOfN(policy=str(tiny_models["policy"]), reward=RewardModel(model=str(tiny_models["reward"])),
                     n=n, max_new_tokens=width, sample_batch=64, score_batch=64)
    records, items = direct(method, tiny_policy, prompts=PROMPTS[:2])
    prompt_ids, _, keys = method.expand({k: [it[k] for it in items] for k in items[0]}, n)
    with torch.no_grad():  # the same draws, outside any meter
        _, lengths = method.sample_rows(prompt_ids, keys, [r % n for r in range(len(keys))])
    rows, prompt_width = len(keys), max(len(p) for p in prompt_ids)
    steps = min(int(lengths.max()), width - 1)
    batch_cost = cost.add(records[0]["cost"], records[1]["cost"])
    policy, reward = batch_cost["models"]["policy"], batch_cost["models"]["reward"]
    # generation: one pass per prompt (its n rows share it), then one cached position per row and
    # step; the metric-only reference pass over the returned responses is not counted
    prompts = rows // n
    assert policy["forward_tokens"] == prompts * prompt_width + rows * steps
    assert policy["head_tokens"] == prompts + rows * steps
    assert policy["backward_tokens"] == reward["backward_tokens"] == 0
    # reward: the cached prompt once, then the responses (as wide as the longest)
    assert reward["forward_tokens"] == rows * prompt_width + rows * max(int(lengths.max()), 1)
    assert records[0]["cost"]["forward_tokens"] == pytest.approx((policy["forward_tokens"] + reward["forward_tokens"]) / 2)
    assert records[0]["cost"]["wall_time_s"] > 0


def test_sea_counts_forward_and_backward_per_step(tiny_models, tiny_policy):
    chains, steps, width = 2, 3, 5
    method = SEA(policy=str(tiny_models["policy"]), reward=RewardModel(model=str(tiny_models["reward"])),
                 sampler=Langevin(step_size=0.1), chains=chains, steps=steps, max_new_tokens=width,
                 alpha=1.0, decode="best")
    records, items = direct(method, tiny_policy, prompts=PROMPTS[:2])
    prompt_ids, _, keys = method.expand({k: [it[k] for it in items] for k in items[0]}, chains)
    with torch.no_grad():
        _, lengths = method.sample_rows(prompt_ids, keys, [r % chains for r in range(len(keys))], progress=False)
    rows, prompt_width = len(keys), max(len(p) for p in prompt_ids)
    gen_steps = min(int(lengths.max()), width - 1)
    batch_cost = cost.add(records[0]["cost"], records[1]["cost"])
    policy, reward = batch_cost["models"]["policy"], batch_cost["models"]["reward"]
    evaluations = steps + 1  # one gradient evaluation per Langevin step, and the last iterate's
    # policy: sampling (one pass per prompt, shared by its chains); the reference logits of the
    # samples (init); the reference term's prefix; the response tail (L - 1 slots: the last slot
    # predicts nothing) per evaluation
    prompts = rows // chains
    assert policy["forward_tokens"] == (prompts * prompt_width + rows * gen_steps) + (rows * prompt_width + rows * (width - 1)) \
        + rows * prompt_width + evaluations * rows * (width - 1)
    assert policy["backward_tokens"] == steps * rows * (width - 1)
    # straight-through's forward is one-hot: embedded by a row lookup, only the backward product is dense
    assert policy["soft_embedding_tokens"] == 0
    # reward: scoring the samples and the result (prefix + L slots each), the energy's prefix, L slots per evaluation
    assert reward["forward_tokens"] == 2 * (rows * prompt_width + rows * width) + rows * prompt_width + evaluations * rows * width
    assert reward["backward_tokens"] == steps * rows * width
    assert reward["soft_embedding_tokens"] == 0
    assert batch_cost["backward_tokens"] == policy["backward_tokens"] + reward["backward_tokens"]


def test_every_record_and_the_summary_carry_cost(tiny_models, tiny_policy):
    method = Sample(policy=str(tiny_models["policy"]), max_new_tokens=4)
    records, _ = direct(method, tiny_policy, prompts=PROMPTS[:3])
    for record in records:
        assert set(record["cost"]) >= {"flops", "forward_tokens", "backward_tokens", "wall_time_s", "models"}
        assert record["cost"]["flops"] > 0
        json.dumps(record["cost"])
    summary = summarize(records)
    assert summary["cost"]["flops"] == pytest.approx(sum(r["cost"]["flops"] for r in records))
    assert summary["mean_flops"] == pytest.approx(summary["cost"]["flops"] / 3)


def test_uncounted_work_is_excluded(eager_policy):
    model = eager_policy.model
    with torch.no_grad(), cost.CostMeter() as meter:
        model(input_ids=torch.tensor([[5, 6, 7]]))
        with cost.uncounted():
            model(input_ids=torch.tensor([[5, 6, 7, 8, 9]]))
    assert meter.totals()["forward_tokens"] == 3
    with torch.no_grad():  # no meter: nothing is counted, nothing fails
        model(input_ids=torch.tensor([[5, 6]]))
    assert meter.totals()["forward_tokens"] == 3


def test_sequential_depth_counts_model_calls_one_after_another(tiny_policy):
    """A prefill and the cached steps for sampling; 2 more per Langevin step (a forward and a backward
    through the policy; the lexicon reward runs no model); chunks of rows generated one after
    another for memory count once."""
    never_eos = lambda method: type("NoEos", (type(method),), {"eos_ids": property(lambda self: [10**6])})  # noqa: E731
    width = 6
    depth = {}
    for rows in (2, 64):
        method = BestOfN(policy="tiny", reward=LexiconReward(), n=6, sample_batch=rows, max_new_tokens=width)
        method.__class__ = never_eos(method)
        records, _ = direct(method, tiny_policy, prompts=PROMPTS[:2])
        depth[rows] = [r["cost"]["sequential_depth"] for r in records]
    assert depth[2] == depth[64] == [width, width]  # the batch's depth on every record, not a share
    for steps in (1, 3):
        method = SEA(policy="tiny", reward=LexiconReward(), sampler=Langevin(step_size=0.1), chains=2, steps=steps,
                     max_new_tokens=width, alpha=1.0, decode="best")
        depth[f"sea{steps}"] = direct(method, tiny_policy, prompts=PROMPTS[:2])[0][0]["cost"]["sequential_depth"]
    assert depth["sea3"] - depth["sea1"] == 2 * 2
    summary = summarize(records)
    assert summary["mean_sequential_depth"] == width and "sequential_depth" not in summary["cost"]
    assert summary["device"].startswith("cpu") and records[0]["cost"]["device"] == summary["device"]
