"""The math: relaxed inputs against token ids, signs, and the layout of ragged rows."""

import torch
import torch.nn.functional as F

from seaflow.layout import active_mask, build_layout
from seaflow.energies import LexiconReward, PromptedJudge, ReferenceLogLikelihood, RewardModel
from seaflow.energies.base import ResponseBatch


def _batch(policy, prompts=("describe the city", "tell me about the weather today"), length=6, lengths=None):
    tok = policy.tokenizer
    prompt_ids = [tok.encode(p) for p in prompts]
    lengths = torch.tensor(lengths if lengths is not None else [length] * len(prompts))
    return ResponseBatch(prompt_ids=prompt_ids, prompts=list(prompts), lengths=lengths, max_length=length)


def _tokens(policy, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(4, policy.vocab_size, (len(batch), batch.max_length), generator=g)
    active = active_mask(batch.lengths, batch.max_length)
    return tokens.masked_fill(~active, policy.tokenizer.pad_token_id)


def _direct_loglik(policy, prompt_ids, tokens, length):
    """log p(tokens[:length] | prompt) by feeding ids one row at a time, no padding."""
    ids = torch.tensor([prompt_ids + tokens[:length].tolist()])
    logits = policy.model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    start = len(prompt_ids)
    return sum(float(logp[start - 1 + t, tokens[t]]) for t in range(length))


def test_reference_matches_direct_ids(tiny_policy):
    batch = _batch(tiny_policy, lengths=[6, 3])
    ref = ReferenceLogLikelihood()
    ref.setup(tiny_policy)
    tokens = _tokens(tiny_policy, batch)
    value = ref.value(ref.prepare(batch), tokens)
    for row in range(2):
        expected = _direct_loglik(tiny_policy, batch.prompt_ids[row], tokens[row], int(batch.lengths[row]))
        assert abs(float(value[row]) - expected) < 1e-4


def test_one_hot_equals_ids_for_every_term(tiny_policy, tiny_models):
    batch = _batch(tiny_policy, lengths=[6, 4])
    tokens = _tokens(tiny_policy, batch)
    one_hot = F.one_hot(tokens, tiny_policy.vocab_size).float()
    terms = [
        ReferenceLogLikelihood(),
        RewardModel(model=str(tiny_models["reward"])),
        PromptedJudge(),
        LexiconReward(),
    ]
    for term in terms:
        term.setup(tiny_policy)
        prepared = term.prepare(batch)
        from_ids = term.value(prepared, tokens)
        from_probs = term.value(prepared, one_hot)
        assert from_ids.shape == (2,)
        torch.testing.assert_close(from_ids, from_probs, rtol=1e-5, atol=1e-5, msg=type(term).__name__)


def test_padding_does_not_change_values(tiny_policy, tiny_models):
    """A row scored alone equals the same row scored next to a longer one (left padding, positions)."""
    batch = _batch(tiny_policy, lengths=[6, 2])
    tokens = _tokens(tiny_policy, batch)
    alone = ResponseBatch(batch.prompt_ids[1:], batch.prompts[1:], batch.lengths[1:], batch.max_length)
    for term in (ReferenceLogLikelihood(), RewardModel(model=str(tiny_models["reward"])), PromptedJudge()):
        term.setup(tiny_policy)
        both = term.value(term.prepare(batch), tokens)
        single = term.value(term.prepare(alone), tokens[1:])
        torch.testing.assert_close(both[1:], single, rtol=1e-4, atol=1e-4, msg=type(term).__name__)


def test_reward_model_matches_plain_forward(tiny_policy, tiny_models):
    batch = _batch(tiny_policy, lengths=[6, 6])
    tokens = _tokens(tiny_policy, batch)
    term = RewardModel(model=str(tiny_models["reward"]))
    term.setup(tiny_policy)
    value = term.value(term.prepare(batch), tokens)
    for row in range(2):
        ids = torch.tensor([batch.prompt_ids[row] + tokens[row].tolist()])
        expected = term.reward_model(input_ids=ids).logits[0, 0]
        assert abs(float(value[row]) - float(expected)) < 1e-4


def test_lexicon_value_is_mean_token_value(tiny_policy):
    term = LexiconReward()
    term.setup(tiny_policy)
    tok = tiny_policy.tokenizer
    good, bad, neutral = (tok.convert_tokens_to_ids(w) for w in ("good", "terrible", "train"))
    assert term.values[good] > 0 > term.values[bad]
    assert term.values[neutral] == 0
    tokens = torch.tensor([[good, bad, neutral, neutral]])
    batch = ResponseBatch([[5]], ["x"], torch.tensor([4]), 4)
    value = term.value(term.prepare(batch), tokens)
    expected = (term.values[good] + term.values[bad]) / 4
    torch.testing.assert_close(value, expected.reshape(1))


def test_energy_signs(tiny_policy):
    """Lower energy = higher likelihood / reward: gradient descent on E raises both."""
    from seaflow.refine import EnergyFunction
    from seaflow.relaxations import Softmax

    batch = _batch(tiny_policy, lengths=[6, 6])
    ref, lex = ReferenceLogLikelihood(), LexiconReward()
    ref.setup(tiny_policy)
    lex.setup(tiny_policy)
    y = torch.randn(2, 6, tiny_policy.vocab_size)
    for alpha, weight, field in ((1.0, 0.0, "reward"), (0.0, 1.0, "reference")):
        fn = EnergyFunction(batch, Softmax(), lex, ref, alpha=alpha, reference_weight=weight)
        evaluation = fn(y)
        before = evaluation.parts[field]
        torch.testing.assert_close(evaluation.energy, -before)
        assert (fn(y - 0.5 * evaluation.grad).parts[field] > before).all()


def test_straight_through_gradient_equals_softmax_gradient(tiny_policy):
    from seaflow.relaxations import Softmax, StraightThrough

    batch = _batch(tiny_policy, lengths=[5, 5], length=5)
    ref = ReferenceLogLikelihood()
    ref.setup(tiny_policy)
    prepared = ref.prepare(batch)
    y = torch.randn(2, 5, tiny_policy.vocab_size, requires_grad=True)
    probs = StraightThrough()(y)
    assert torch.equal(probs, F.one_hot(y.argmax(-1), tiny_policy.vocab_size).float())
    (grad_st,) = torch.autograd.grad(ref.value(prepared, probs).sum(), y)
    # the same gradient by the chain rule: dE/dp evaluated at the one-hot, through softmax's Jacobian
    hard = probs.detach().requires_grad_(True)
    (grad_p,) = torch.autograd.grad(ref.value(prepared, hard).sum(), hard)
    soft = torch.softmax(y, -1)
    (expected,) = torch.autograd.grad(soft, y, grad_outputs=grad_p)
    torch.testing.assert_close(grad_st, expected, rtol=1e-5, atol=1e-6)


# -- the memory-lean forms equal the plain formulas ---------------------------------------


def _plain_straight_through(y, temperature, allowed=None):
    """The textbook estimator: one-hot + (softmax - softmax.detach())."""
    logits = y if allowed is None else y.masked_fill(~allowed, float("-inf"))
    soft = torch.softmax(logits / temperature, dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
    return hard + (soft - soft.detach())


def test_straight_through_equals_the_textbook_estimator():
    from seaflow.relaxations import StraightThrough

    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 5, 40, generator=g) * 4
    weights = torch.randn(3, 5, 40, generator=g)
    allowed = torch.rand(3, 5, 40, generator=g) < 0.5
    allowed[..., 0] = True
    for temperature, mask in ((1.0, None), (0.7, None), (2.0, allowed)):
        outputs = []
        for relax in (lambda y: StraightThrough(temperature)(y, allowed=mask), lambda y: _plain_straight_through(y, temperature, mask)):
            leaf = y.clone().requires_grad_(True)
            p = relax(leaf)
            (grad,) = torch.autograd.grad((p * weights).sum() + (p[..., :3] ** 2).sum(), leaf)
            outputs.append((p.detach(), grad))
        assert torch.equal(outputs[0][0], outputs[1][0])
        torch.testing.assert_close(outputs[0][1], outputs[1][1], rtol=1e-5, atol=1e-6)


def test_softmax_relaxation_at_unit_temperature_is_softmax():
    from seaflow.relaxations import Softmax

    y = torch.randn(2, 3, 11)
    assert torch.equal(Softmax()(y), torch.softmax(y, -1))
    torch.testing.assert_close(Softmax(0.5)(y), torch.softmax(y / 0.5, -1))


def test_reference_token_logprobs_equal_log_softmax_form():
    """<p, z> - logsumexp(z) * sum(p) against sum(p * log_softmax(z)): values and both gradients."""
    from seaflow.energies.reference import _token_logprobs

    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        z = (torch.randn(2, 4, 50, generator=g) * 5).to(dtype)
        p = torch.softmax(torch.randn(2, 4, 50, generator=g), -1)
        results = []
        for form in (_token_logprobs, lambda z, p: (p * torch.log_softmax(z.float(), -1)).sum(-1)):
            z_leaf, p_leaf = z.clone().requires_grad_(True), p.clone().requires_grad_(True)
            value = form(z_leaf, p_leaf)
            grads = torch.autograd.grad((value * torch.arange(1.0, 5.0)).sum(), (z_leaf, p_leaf))
            results.append((value.detach(), *grads))
        for got, expected in zip(results[0], results[1]):
            torch.testing.assert_close(got.float(), expected.float(), rtol=1e-5, atol=1e-5)
        ids = torch.randint(0, 50, (2, 4), generator=g)
        expected = torch.log_softmax(z.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(_token_logprobs(z, ids), expected, rtol=1e-5, atol=1e-5)


def test_next_token_logits_full_rows_and_ragged_rows_agree(tiny_policy):
    """The slice taken when every row is full length equals the gather of the ragged path."""
    batch = _batch(tiny_policy, lengths=[6, 6])
    tokens = _tokens(tiny_policy, batch)
    layout = build_layout(batch.prompt_ids, batch.lengths, tiny_policy.tokenizer.pad_token_id)
    full = layout.next_token_logits(tiny_policy.model, tokens)
    for row in range(2):
        alone = build_layout(batch.prompt_ids[row : row + 1], torch.tensor([5]), tiny_policy.tokenizer.pad_token_id)
        got = alone.next_token_logits(tiny_policy.model, tokens[row : row + 1, :6])
        torch.testing.assert_close(got[0, :5], full[row, :5], rtol=1e-5, atol=1e-5)
