"""Biased decoding (seaflow/logit_bias.py, seaflow.methods.BiasedDecoding) on tiny random models."""

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml

from seaflow import generation
from seaflow import layout as L
from seaflow.logit_bias import BiasEnergy, biased_decode, prompt_state
from seaflow.energies import LexiconReward
from seaflow.energies.base import ResponseBatch, Reward
from seaflow.methods import BestOfN, BiasedDecoding
from seaflow.relaxations import GumbelSoftmax, OneHot, Softmax, StraightThrough
from seaflow.samplers import Langevin

from test_methods import CORE_FIELDS, direct
from tiny import run_config_on_tiny

PROMPTS = ["describe the city", "tell me about the weather today", "write about my dog", "how"]


def rows(tiny_policy, prompts=PROMPTS):
    tok = tiny_policy.tokenizer
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
    return [tok.encode(text, add_special_tokens=False) for text in texts]


def eos_pad(policy):
    return [policy.model.generation_config.eos_token_id], policy.tokenizer.pad_token_id


@pytest.mark.parametrize("cached", [True, False])
def test_zero_bias_is_the_greedy_decode(tiny_policy, monkeypatch, cached):
    if not cached:
        monkeypatch.setattr(L, "supports_prefix_cache", lambda model: False)
    model, ids = tiny_policy.model, rows(tiny_policy)
    eos, pad = eos_pad(tiny_policy)
    width = 12
    greedy, greedy_lengths = generation.sample(model, ids, width, eos, pad, [], temperature=0)
    prompt = prompt_state(model, ids, pad)
    assert (prompt.key_values is not None) == cached
    decoded = biased_decode(model, prompt, torch.zeros(len(ids), width, tiny_policy.vocab_size), StraightThrough(), eos, pad)
    assert torch.equal(decoded.tokens, greedy)
    assert torch.equal(decoded.lengths, greedy_lengths)


def test_a_row_ends_at_eos_and_the_others_go_on(tiny_policy):
    model, ids = tiny_policy.model, rows(tiny_policy)
    eos, pad = eos_pad(tiny_policy)
    bias = torch.zeros(len(ids), 8, tiny_policy.vocab_size)
    bias[:, :, eos[0]] = -100.0
    greedy = biased_decode(model, prompt_state(model, ids, pad), bias, StraightThrough(), eos, pad)
    bias[1, 3, eos[0]] = 100.0
    decoded = biased_decode(model, prompt_state(model, ids, pad), bias, StraightThrough(), eos, pad)
    assert decoded.lengths.tolist() == [8, 3, 8, 8]
    assert decoded.tokens[1, 3:].eq(pad).all() and torch.equal(decoded.tokens[1, :3], greedy.tokens[1, :3])
    others = [0, 2, 3]
    assert torch.equal(decoded.tokens[others], greedy.tokens[others])
    assert decoded.probs[1, 3:].eq(0).all()
    torch.testing.assert_close(decoded.reference[others], greedy.reference[others])


def test_gumbel_start_is_the_policy_sample_and_reference_is_exact(tiny_policy):
    """With ``init: sample`` each chain's first decode is Best-of-N's candidate ``chain``, and the
    decode's reference term is the discrete log-likelihood of those tokens."""
    method = BiasedDecoding(policy="unused", reward=LexiconReward(), chains=3, max_new_tokens=10, alpha=1.0)
    method.attach(tiny_policy)
    ids = rows(tiny_policy)
    prompt_ids, prompts, keys = method.expand({"prompt_ids": ids, "prompt": PROMPTS, "id": ["a", "b", "c", "d"]}, 3)
    samples, sample_lengths = method.sample_rows(prompt_ids, keys, [r % 3 for r in range(len(keys))], progress=False)
    eos, pad = eos_pad(tiny_policy)
    decoded = biased_decode(tiny_policy.model, prompt_state(tiny_policy.model, prompt_ids, pad), method.start_bias(keys),
                            StraightThrough(), eos, pad)
    assert torch.equal(decoded.tokens, samples)
    assert torch.equal(decoded.lengths, sample_lengths)
    assert len({tuple(r.tolist()) for r in samples[:3]}) > 1  # the chains differ
    scores = method.score(prompt_ids, prompts, decoded.tokens, decoded.lengths)
    torch.testing.assert_close(decoded.reference, scores["ref_token_logprobs"].sum(-1), atol=1e-4, rtol=1e-5)


def test_a_large_bias_puts_its_token_in_place(tiny_policy):
    model, ids = tiny_policy.model, rows(tiny_policy)
    eos, pad = eos_pad(tiny_policy)
    token = tiny_policy.tokenizer.convert_tokens_to_ids("wonderful")
    bias = torch.zeros(len(ids), 6, tiny_policy.vocab_size)
    greedy = biased_decode(model, prompt_state(model, ids, pad), bias, StraightThrough(), eos, pad)
    assert not bool((greedy.tokens[:, 2] == token).any())
    bias[:, 2, token] = 100.0
    bias[:, :2, eos[0]] = -100.0  # no row ends before position 2
    decoded = biased_decode(model, prompt_state(model, ids, pad), bias, StraightThrough(), eos, pad)
    assert bool((decoded.tokens[:, 2] == token).all())
    assert torch.equal(decoded.tokens[:, :2], greedy.tokens[:, :2]) or bool((greedy.lengths < 2).any())


def test_soft_relaxation_is_refused(tiny_policy):
    model, ids = tiny_policy.model, rows(tiny_policy)
    eos, pad = eos_pad(tiny_policy)
    with pytest.raises(ValueError, match="one-hot"):
        biased_decode(model, prompt_state(model, ids, pad), torch.zeros(len(ids), 3, tiny_policy.vocab_size), Softmax(), eos, pad)


class TokenValues(Reward):
    """``r = sum_t <p_t, v>`` over active positions with fixed random values (float64, for finite differences)."""

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.values = values

    def prepare(self, batch: ResponseBatch):
        return batch.lengths

    def value(self, lengths, response):
        per_token = response.to(self.values.dtype) @ self.values
        mask = torch.arange(response.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        return (per_token * mask).sum(-1)


def relaxed_objective(model, prompt_ids, tokens, lengths, anchor_z, bias, surrogate, reward, alpha, w_ref, bias_weight, delta,
                      fixed_logits=None):
    """The energy with the anchor's token choices held fixed and the relaxation's surrogate
    perturbing them: ``p_t = one_hot(token_t) + f(z_t) - f(z_t at the anchor)``, ``z_t = logits_t + b_t``,
    computed without a cache, one full pass per position (an independent implementation)."""
    weight = model.get_input_embeddings().weight
    rows_, width, vocab = bias.shape
    probs, reference = [], torch.zeros(rows_, dtype=bias.dtype)
    for t in range(width):
        layout = L.build_layout(prompt_ids, torch.full((rows_,), t), 0)
        response = torch.stack(probs, 1) if probs else torch.zeros(rows_, 0, vocab, dtype=bias.dtype)
        embeds = L.input_embeddings(model, layout, response) if t else model.get_input_embeddings()(layout.ids)
        out = model(inputs_embeds=embeds.to(weight.dtype), attention_mask=layout.attention_mask, position_ids=layout.position_ids)
        logits = out.logits[:, -1].to(bias.dtype)
        z = (logits if fixed_logits is None else fixed_logits[:, t]) + bias[:, t]
        one_hot = torch.nn.functional.one_hot(tokens[:, t], vocab).to(bias.dtype)
        p = one_hot + surrogate(z) - surrogate(anchor_z[:, t])
        active = (t < lengths).to(bias.dtype)
        p = p * active.unsqueeze(1)
        reference = reference + active * (p * torch.log_softmax(logits, -1)).sum(-1)
        probs.append(p)
    energy = -w_ref * reference - alpha * reward.value(lengths, torch.stack(probs, 1))
    return energy + 0.5 * bias_weight * delta.flatten(1).pow(2).sum(1)


@pytest.mark.parametrize("relaxation, surrogate, eps, through_policy", [
    (StraightThrough(temperature=2.0), lambda z: torch.softmax(z / 2.0, -1), 1e-3, True),
    (OneHot(), lambda z: z, 1e-4, True),
    (StraightThrough(temperature=2.0), lambda z: torch.softmax(z / 2.0, -1), 1e-3, False),
    (OneHot(), lambda z: z, 1e-4, False),
])
def test_gradient_matches_finite_differences_of_the_relaxed_objective(tiny_policy, monkeypatch, relaxation, surrogate, eps, through_policy):
    """The straight-through gradient through the cached decode is the exact gradient of the relaxed
    objective (token choices held, surrogate perturbations fed on): equal to an independent cache-free
    implementation's autograd gradient, and to its central finite differences (float64; the model's
    RMSNorm computes in float32, which limits the differences to about 1e-4 relative). Without
    ``through_policy`` the choices read the policy's logits as constants (their anchor values)."""
    monkeypatch.setattr(L, "supports_prefix_cache", lambda model: False)  # float64 throughout (the cache keeps float32 logits)
    model = copy.deepcopy(tiny_policy.model).double()
    model.lm_head.weight.data.mul_(0.125)  # undo the tiny policy's sharpening: a smoother objective for differences
    prompts = PROMPTS[:3]
    ids = rows(tiny_policy, prompts)
    eos, pad = eos_pad(tiny_policy)
    vocab, width = tiny_policy.vocab_size, 5
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(vocab, generator=generator, dtype=torch.float64)
    base = 0.5 * torch.randn(len(ids), width, vocab, generator=generator, dtype=torch.float64)
    base[:, :, eos[0]] = -50.0  # full-length rows: every position carries a gradient
    delta = 0.3 * torch.randn(len(ids), width, vocab, generator=generator, dtype=torch.float64)
    alpha, w_ref, bias_weight = 2.0, 0.7, 0.1
    energy_fn = BiasEnergy(
        model, ResponseBatch(ids, prompts, torch.full((len(ids),), width), width), relaxation, TokenValues(values),
        alpha, w_ref, bias_weight, eos, pad, base=base, through_policy=through_policy,
    )
    evaluation = energy_fn(delta)
    energy, grad = evaluation.energy, evaluation.grad
    decoded = biased_decode(model, energy_fn.prompt, base + delta, relaxation, eos, pad, keep_logits=True)
    anchor_z = decoded.logits + base + delta
    assert bool((decoded.lengths == width).all())

    def objective(d):
        return relaxed_objective(model, ids, decoded.tokens, decoded.lengths, anchor_z, base + d, surrogate,
                                 TokenValues(values), alpha, w_ref, bias_weight, d,
                                 fixed_logits=None if through_policy else decoded.logits)

    point = delta.clone().requires_grad_(True)
    value = objective(point)
    (reference_grad,) = torch.autograd.grad(value.sum(), point)
    torch.testing.assert_close(value.detach(), energy, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for _ in range(3):
            direction = torch.randn(delta.shape, generator=generator, dtype=torch.float64)
            numeric = (objective(delta + eps * direction) - objective(delta - eps * direction)) / (2 * eps)
            analytic = (grad * direction).flatten(1).sum(1)
            torch.testing.assert_close(analytic, numeric, rtol=2e-3, atol=1e-3)
            assert bool((analytic.abs() > 1e-2).all())  # a real signal, not zeros on both sides


def test_energy_is_the_discrete_energy_plus_the_bias_penalty(tiny_policy):
    reward = LexiconReward()
    reward.setup(tiny_policy)
    ids = rows(tiny_policy)
    eos, pad = eos_pad(tiny_policy)
    width = 8
    batch = ResponseBatch(ids, PROMPTS, torch.full((len(ids),), width), width)
    delta = torch.randn(len(ids), width, tiny_policy.vocab_size, generator=torch.Generator().manual_seed(1))
    energy_fn = BiasEnergy(tiny_policy.model, batch, StraightThrough(), reward, 3.0, 0.5, 0.2, eos, pad)
    evaluation = energy_fn(delta)
    energy = evaluation.energy
    assert set(evaluation.parts) == {"reward", "reference"}
    method = BiasedDecoding(policy="unused", reward=reward, max_new_tokens=width)
    method.attach(tiny_policy)
    tokens, lengths = energy_fn.best_tokens, energy_fn.best_lengths
    scores = method.score(ids, PROMPTS, tokens, lengths)
    discrete = -0.5 * scores["ref_token_logprobs"].sum(-1) - 3.0 * scores["reward"]
    torch.testing.assert_close(energy_fn.best_energy, discrete, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(energy, discrete + 0.1 * delta.flatten(1).pow(2).sum(1), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(evaluation.parts["reward"], scores["reward"], atol=1e-6, rtol=1e-6)


def test_best_state_is_kept_per_chain(tiny_policy):
    """A later evaluation replaces a chain's kept sequence only when its discrete energy is lower."""
    ids = rows(tiny_policy)
    eos, pad = eos_pad(tiny_policy)
    width, vocab = 6, tiny_policy.vocab_size
    batch = ResponseBatch(ids, PROMPTS, torch.full((len(ids),), width), width)
    energy_fn = BiasEnergy(tiny_policy.model, batch, StraightThrough(), None, 0.0, 1.0, 0.0, eos, pad)
    noisy = torch.randn(len(ids), width, vocab, generator=torch.Generator().manual_seed(0)) * 3
    swap = torch.tensor([True, True, False, False]).view(-1, 1, 1)
    energy_fn.track(torch.where(swap, noisy, 0.0))  # rows 0, 1 start noisy, rows 2, 3 greedy
    first, start = energy_fn.best_tokens.clone(), energy_fn.best_energy.clone()
    later = energy_fn(torch.where(swap, 0.0, noisy)).energy  # and then the other way round
    better = later < start
    assert bool(better.any()) and bool((~better).any())
    assert torch.equal(energy_fn.best_tokens[~better], first[~better])
    assert not torch.equal(energy_fn.best_tokens[better], first[better])
    torch.testing.assert_close(energy_fn.best_energy, torch.minimum(start, later))
    assert torch.equal(energy_fn.first_tokens, first)


def test_method_end_to_end(tiny_policy):
    """Records with the core fields; chain starts are Best-of-N's candidates; with the reward alone
    in the energy the returned reward is at least the best start's, and the gradient finds more."""
    reward = LexiconReward()
    method = BiasedDecoding(
        policy="unused", reward=reward, sampler=Langevin(step_size=1.0, noise_scale=0.0), relaxation=OneHot(),
        alpha=50.0, reference_weight=0.0, bias_weight=0.0, chains=3, steps=4, max_new_tokens=6,
    )
    records, _ = direct(method, tiny_policy)
    bon, _ = direct(BestOfN(policy="unused", reward=LexiconReward(), n=3, max_new_tokens=6), tiny_policy)
    gains = 0
    for record, best in zip(records, bon):
        for field in CORE_FIELDS:
            assert field in record, field
        assert record["method"] == "BiasedDecoding"
        assert record["initial_best_reward"] == pytest.approx(best["reward"], abs=1e-6)
        assert record["chain_initial_rewards"] == pytest.approx(best["candidate_rewards"], abs=1e-6)
        assert record["reward"] >= record["initial_best_reward"] - 1e-6
        assert record["energy_evaluations"] == 4
        assert len(record["trace"]["energy"]) == 4
        assert math.isclose(sum(record["ref_token_logprobs"]) / max(record["response_tokens"], 1),
                            record["ref_logprob_per_token"], abs_tol=1e-3)
        gains += record["reward"] > record["initial_best_reward"] + 1e-6
    assert gains >= 2


def test_method_runs_with_a_batch_independent_result(tiny_policy):
    method = BiasedDecoding(
        policy="unused", reward=LexiconReward(), sampler=Langevin(step_size=0.5, noise_scale=0.1),
        alpha=5.0, bias_weight=0.1, chains=2, steps=2, max_new_tokens=5,
    )
    together, _ = direct(method, tiny_policy)
    alone, _ = direct(method, tiny_policy, batch_size=1)
    assert [r["response"] for r in together] == [r["response"] for r in alone]
    for a, b in zip(together, alone):
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"top_p": 0.9}, "model.init_args.top_p"),
    ({"init": "random"}, "init"),
    ({"bias_weight": -1.0}, "bias_weight"),
    ({"chains": 0}, "chains"),
    ({"reward": None}, "needs a reward"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = {"policy": "unused", "reward": LexiconReward(), "alpha": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        BiasedDecoding(**args)


def test_gumbel_relaxation_decodes_real_tokens(tiny_policy):
    model, ids = tiny_policy.model, rows(tiny_policy)
    eos, pad = eos_pad(tiny_policy)
    decoded = biased_decode(model, prompt_state(model, ids, pad), torch.zeros(len(ids), 4, tiny_policy.vocab_size),
                            GumbelSoftmax(hard=True), eos, pad, generator=torch.Generator().manual_seed(0))
    assert decoded.tokens.shape == (len(ids), 4)


ROOT = Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").glob("biased_decoding*.yaml"))


@pytest.mark.parametrize("config_path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_runs_on_tiny_models_and_is_commented(tmp_path, tiny_models, config_path):
    """Each biased-decoding config through ``seaflow predict`` (tiny policy, short run); every key commented."""
    lines = config_path.read_text().splitlines()
    keyed = [l for l in lines if l.strip() and not l.strip().startswith("#") and ":" in l and not l.strip().startswith("-")]
    assert not [l for l in keyed if "#" not in l and not l.rstrip().endswith(":")]
    config = yaml.safe_load(config_path.read_text())
    reward = {"class_path": "LexiconReward", "init_args": {"lexicon": "vader"}}
    records = run_config_on_tiny(config, tmp_path, tiny_models, steps=2, chains=2, max_new_tokens=5, reward=reward)
    assert [r["id"] for r in records] == ["p0", "p1"]
    assert all(r["method"] == "BiasedDecoding" and len(r["trace"]["energy"]) == 2 for r in records)
