"""The refinement pieces on tiny models: init decodes to the sample, ablation switches, top-k."""

import pytest
import torch

from seaflow import SEA
from seaflow.energies import LexiconReward, ReferenceLogLikelihood
from seaflow.energies.base import ResponseBatch
from seaflow.methods.record import FIELDS
from seaflow.refine import EnergyFunction, initial_logits
from seaflow.relaxations import StraightThrough


def _batch(policy, prompts=("describe the city", "tell me about the weather today")):
    tok = policy.tokenizer
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False) for p in prompts]
    return {"id": [f"p{i}" for i in range(len(prompts))], "index": list(range(len(prompts))), "prompt": list(prompts), "prompt_ids": ids}


@pytest.mark.parametrize("with_reference", [True, False])
def test_initial_logits_decode_to_the_sample(with_reference):
    torch.manual_seed(0)
    tokens = torch.randint(0, 50, (3, 7))
    reference = torch.randn(3, 7, 50) * 5 if with_reference else None
    y = initial_logits(tokens, reference, 50, margin=0.5)
    assert torch.equal(y.argmax(-1), tokens)


def test_zero_steps_returns_the_samples(tiny_policy):
    sea = SEA(reward=LexiconReward(), chains=3, steps=0, max_new_tokens=6)
    sea.attach(tiny_policy)
    records = sea.predict_step(_batch(tiny_policy))
    for record in records:
        assert record["chain_responses"] == [record["initial_response"]] + record["chain_responses"][1:]
        assert record["chain_rewards"] == pytest.approx(record["chain_initial_rewards"])
        assert record["reward"] == pytest.approx(record["initial_best_reward"])
        assert list(record) == sorted(record, key=FIELDS.index)  # the record schema's order
        assert len(record["response_token_ids"]) == record["response_tokens"]
        assert tiny_policy.tokenizer.decode(record["response_token_ids"], skip_special_tokens=True) == record["response"]


def test_same_seed_same_result_different_seed_differs(tiny_policy):
    def run(seed):
        sea = SEA(reward=LexiconReward(), chains=2, steps=2, max_new_tokens=6, seed=seed, alpha=5.0)
        sea.attach(tiny_policy)
        return [{k: v for k, v in r.items() if k not in ("wall_time_s", "cost")} for r in sea.predict_step(_batch(tiny_policy))]

    assert run(0) == run(0)
    assert [r["chain_responses"] for r in run(0)] != [r["chain_responses"] for r in run(1)]


def test_prompt_results_do_not_depend_on_batch_composition(tiny_policy):
    sea = SEA(reward=LexiconReward(), chains=2, steps=0, max_new_tokens=6)
    sea.attach(tiny_policy)
    both = sea.predict_step(_batch(tiny_policy))
    alone = sea.predict_step({k: v[1:] for k, v in _batch(tiny_policy).items()})
    assert both[1]["chain_initial_rewards"] == pytest.approx(alone[0]["chain_initial_rewards"])
    assert both[1]["initial_response"] == alone[0]["initial_response"]


def test_ablation_switches(tiny_policy):
    batch = ResponseBatch([[4, 5, 6]], ["x"], torch.tensor([4]), 4)
    ref, lex = ReferenceLogLikelihood(), LexiconReward()
    ref.setup(tiny_policy)
    lex.setup(tiny_policy)
    y = torch.randn(1, 4, tiny_policy.vocab_size)
    no_reward = EnergyFunction(batch, StraightThrough(), lex, ref, alpha=0.0, reference_weight=1.0)
    assert no_reward.reward is None and set(no_reward(y).parts) == {"reference"}
    no_reference = EnergyFunction(batch, StraightThrough(), lex, ref, alpha=1.0, reference_weight=0.0)
    assert no_reference.reference is None and set(no_reference(y).parts) == {"reward"}
    with pytest.raises(ValueError, match="no term"):
        EnergyFunction(batch, StraightThrough(), lex, ref, alpha=0.0, reference_weight=0.0)


def test_restrict_top_k_keeps_tokens_in_the_policy_top_k(tiny_policy):
    sea = SEA(reward=LexiconReward(), chains=2, steps=3, max_new_tokens=6, restrict_top_k=3, alpha=50.0,
              relaxation=StraightThrough())
    sea.attach(tiny_policy)
    records = sea.predict_step(_batch(tiny_policy))
    assert all(len(r["chain_responses"]) == 2 for r in records)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"chains": 0}, "chains"),
        ({"steps": -1}, "steps"),
        ({"alpha": float("nan")}, "alpha"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"init": "zeros"}, "init"),
        ({"decode": "beam"}, "decode"),
        ({"restrict_top_k": 3, "init": "random"}, "restrict_top_k"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SEA(reward=LexiconReward(), **kwargs)


def test_decode_best_never_returns_a_higher_energy_than_the_sample(tiny_policy):
    """decode: best keeps each chain's lowest-energy visited state, the sample included."""
    from seaflow.samplers import Langevin

    alpha = 20.0
    sea = SEA(reward=LexiconReward(), chains=2, steps=4, max_new_tokens=6, alpha=alpha, decode="best",
              sampler=Langevin(step_size=2.0, noise_scale=0.5))
    sea.attach(tiny_policy)
    for record in sea.predict_step(_batch(tiny_policy)):
        n = record["chain_response_tokens"][0]  # decode: best keeps each chain's length
        final = -record["chain_ref_logprob_per_token"][0] * n - alpha * record["chain_rewards"][0]
        initial = -record["initial_ref_logprob_per_token"] * n - alpha * record["chain_initial_rewards"][0]
        assert final <= initial + 1e-4


def test_decode_best_needs_a_one_hot_forward(tiny_policy):
    from seaflow.relaxations import Softmax

    sea = SEA(reward=LexiconReward(), chains=1, steps=1, max_new_tokens=4, decode="best", relaxation=Softmax())
    sea.attach(tiny_policy)
    with pytest.raises(ValueError, match="one-hot"):
        sea.predict_step(_batch(tiny_policy))
