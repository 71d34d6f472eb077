"""The reference term's arithmetic on logits in the model's dtype: block by block it equals the
whole-tensor float32 expression, and with bfloat16 logits it is as close to float64 as the
logits themselves allow."""

import copy

import pytest
import torch

from seaflow.energies import ReferenceLogLikelihood
from seaflow.energies import reference as reference_module
from seaflow.energies.base import ResponseBatch
from seaflow.energies.reference import _position_blocks, _token_logprobs
from seaflow.models import LoadedModel
from seaflow.relaxations import StraightThrough

BFLOAT16_UNIT_ROUNDOFF = 2.0**-8  # 8 significant bits: |round(x) - x| <= 2^-8 |x|


def _plain(z, p):
    return (p * torch.log_softmax(z.float(), -1)).sum(-1)


@pytest.mark.parametrize("block_elements", [20, 120])
def test_position_blocks_cover_every_position_once(monkeypatch, block_elements):
    monkeypatch.setattr(reference_module, "BLOCK_ELEMENTS", block_elements)
    for shape in ((2, 5, 7), (5, 7), (3, 1, 7), (2, 3, 50), (2, 2, 3)):
        seen = torch.zeros(shape[:-1])
        shifted = torch.zeros(*shape[:-2], shape[-2] + 2)
        blocks = 0
        for index, target in _position_blocks(torch.Size(shape), offset=2):
            seen[index[:-1]] += 1
            shifted[target[:-1]] += 1
            blocks += 1
            assert torch.zeros(shape)[index].numel() <= max(block_elements, shape[-1])
        assert bool((seen == 1).all()) and bool((shifted[..., 2:] == 1).all()) and not bool(shifted[..., :2].any())
        assert blocks > 1 or torch.Size(shape).numel() <= block_elements


@pytest.mark.parametrize("block_elements", [1 << 22, 60, 200])  # whole tensor, one position per block, four
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocks_equal_the_whole_tensor_float32_expression(monkeypatch, block_elements, dtype):
    """Values and both gradients, logits split into position blocks (one of them a non-contiguous
    view) against ``sum p log_softmax(z.float())``; the gradient to bfloat16 logits is bfloat16, as
    autograd rounds the float32 gradient of the upcast."""
    monkeypatch.setattr(reference_module, "BLOCK_ELEMENTS", block_elements)
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(2, 9, 50, generator=g) * 5).to(dtype)
    p = torch.softmax(torch.randn(2, 9, 50, generator=g) * 2, -1)
    weights = torch.randn(2, 9, generator=g)
    results = []
    for split in (True, False):
        z_leaf, p_leaf = z.clone().requires_grad_(True), p.clone().requires_grad_(True)
        if split:
            wide = torch.cat([z_leaf[:, 1:], z_leaf[:, 1:]], dim=-1)[..., :50]  # a strided view
            value = _token_logprobs([z_leaf[:, :1], wide[:, :4], z_leaf[:, 5:]], p_leaf)
        else:
            value = _plain(z_leaf, p_leaf)
        grads = torch.autograd.grad((value * weights).sum(), (z_leaf, p_leaf))
        results.append((value.detach(), *grads))
    assert results[0][1].dtype == dtype and results[0][2].dtype == torch.float32
    value, dz, dp = results[0]
    torch.testing.assert_close(value, results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dp, results[1][2], rtol=1e-5, atol=1e-5)
    # float32 values that differ in the last bits can round to neighbouring bfloat16 numbers (2^-7 apart)
    torch.testing.assert_close(dz.float(), results[1][1].float(), rtol=1e-5 if dtype == torch.float32 else 2.0**-7, atol=1e-5)
    ids = torch.randint(0, 50, (2, 9), generator=g)
    expected = torch.log_softmax(z.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(_token_logprobs([z[:, :3], z[:, 3:]], ids), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cover 8 positions"):
        _token_logprobs([z[:, :8]], p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reused_logits_same_gradients_and_a_second_backward_fails(dtype):
    """``reuse_logits`` writes dz over the (non-leaf) logits: the same values and gradients; a second
    backward pass through them raises autograd's in-place error instead of reading dz as z; logits
    that belong to the caller (a leaf or a view of one) are never overwritten."""
    g = torch.Generator().manual_seed(4)
    z = (torch.randn(2, 9, 50, generator=g) * 5).to(dtype)
    p = torch.softmax(torch.randn(2, 9, 50, generator=g) * 2, -1)
    weights = torch.randn(2, 9, generator=g)
    results = []
    for reuse in (False, True):
        z_leaf, p_leaf = z.clone().requires_grad_(True), p.clone().requires_grad_(True)
        logits = z_leaf * 1.0  # a model output: not a leaf
        value = _token_logprobs([logits[:, :4], logits[:, 4:]], p_leaf, reuse_logits=reuse)
        loss = (value * weights).sum()
        results.append((value.detach(), *torch.autograd.grad(loss, (z_leaf, p_leaf), retain_graph=True)))
        if reuse:
            with pytest.raises(RuntimeError, match="inplace operation"):
                torch.autograd.grad(loss, (z_leaf, p_leaf))
    for got, expected in zip(*results):
        assert torch.equal(got, expected)
    z_leaf = z.clone().requires_grad_(True)
    value = _token_logprobs([z_leaf[:, :4], z_leaf[:, 4:]], p, reuse_logits=True)
    value.sum().backward()
    assert torch.equal(z_leaf.detach(), z)


def _bfloat16_copy(policy):
    model = copy.deepcopy(policy.model).to(torch.bfloat16)
    return LoadedModel(model, policy.tokenizer, policy.name + "-bf16")


def _batch(policy, length):
    prompts = ["describe the city", "tell me about the weather today"]
    ids = [policy.tokenizer.encode(p) for p in prompts]
    return ResponseBatch(ids, prompts, torch.full((2,), length), length)


def test_bfloat16_logits_against_float64(tiny_policy, monkeypatch):
    """On a bfloat16 tiny policy's logits (exact in float64), the term against the float64 expression.

    The inputs are the same numbers in both, so only the term's own arithmetic differs: value
    and ``dp = g (z - logsumexp z)`` are float32 (relative error ~1e-6 of |z|, hence 1e-5 of
    the largest magnitude), and ``dz`` is rounded once to bfloat16 (at most 2^-8 of its float64
    value, plus the float32 error before rounding). A term that reduced in bfloat16 would
    miss by ~1e-2 (logsumexp of ~5 with 8 bits) and fails.
    """
    monkeypatch.setattr(reference_module, "BLOCK_ELEMENTS", 3 * tiny_policy.vocab_size)  # several blocks
    policy = _bfloat16_copy(tiny_policy)
    reference = ReferenceLogLikelihood()
    reference.setup(policy)
    length = 7
    layout = reference.prepare(_batch(policy, length))
    g = torch.Generator().manual_seed(5)
    p = torch.softmax(torch.randn(2, length, policy.vocab_size, generator=g) * 3, -1)
    with torch.no_grad():
        blocks = layout.next_token_logit_blocks(policy.model, p)
    assert [b.dtype for b in blocks] == [torch.float32, torch.bfloat16]  # the prompt's last logits, the response's
    weights = torch.randn(2, length, generator=g)

    leaves = [b.clone().requires_grad_(True) for b in blocks]
    p_leaf = p.clone().requires_grad_(True)
    value = _token_logprobs(leaves, p_leaf)
    dp, *dz = torch.autograd.grad((value * weights).sum(), (p_leaf, *leaves))
    assert dz[1].dtype == torch.bfloat16

    z64 = torch.cat([b.double() for b in blocks], dim=1).requires_grad_(True)
    p64 = p.double().requires_grad_(True)
    value64 = (p64 * torch.log_softmax(z64, -1)).sum(-1)
    dp64, dz64 = torch.autograd.grad((value64 * weights.double()).sum(), (p64, z64))

    scale = float(z64.abs().max()) + float(torch.logsumexp(z64, -1).abs().max())
    assert float((value.double() - value64).abs().max()) <= 1e-5 * scale
    assert float((dp.double() - dp64).abs().max()) <= 1e-5 * scale * float(weights.abs().max())
    dz_all = torch.cat([d.double() for d in dz], dim=1)
    bound = (BFLOAT16_UNIT_ROUNDOFF + 1e-5) * dz64.abs() + 1e-6
    assert bool(((dz_all - dz64).abs() <= bound).all())


def _direct_float64(model, prompt_ids, y):
    """``log pi(p | prompt)`` for one unpadded row, straight-through ``p`` of ``y`` embedded densely, float64."""
    p = StraightThrough()(y)
    weight = model.get_input_embeddings().weight
    inputs = torch.cat([weight[torch.tensor(prompt_ids)], p @ weight]).unsqueeze(0)
    logits = model(inputs_embeds=inputs).logits[0, len(prompt_ids) - 1 : -1]
    return (p * torch.log_softmax(logits, -1)).sum()


def test_bfloat16_policy_against_float64_direct_computation(tiny_policy):
    """The term on a bfloat16 tiny policy (cached prompt, straight-through of float32 ``y``) against a
    direct float64 computation with the same (bfloat16-rounded) weights, row by row.

    The difference is the bfloat16 model's own rounding. Value: log-softmax is 2-Lipschitz in the
    max norm, so per position it moves by at most twice the largest logit error, which is
    measured here (bfloat16 forward against float64); the term adds float32 rounding only.
    Gradient to ``y``: every operation of the bfloat16 forward and backward rounds to 8 bits
    (2^-8 = 0.4 %); through two layers, attention and the softmax's gradient the relative error
    of the whole gradient is 0.6-0.7 % on these rows, checked at 2 % (three times that).
    """
    policy = _bfloat16_copy(tiny_policy)
    model64 = copy.deepcopy(policy.model).to(torch.float64)
    reference = ReferenceLogLikelihood()
    reference.setup(policy)
    length = 6
    batch = _batch(policy, length)
    layout = reference.prepare(batch)
    g = torch.Generator().manual_seed(7)
    y = torch.randn(2, length, policy.vocab_size, generator=g) * 3

    leaf = y.clone().requires_grad_(True)
    value = reference.value(layout, StraightThrough()(leaf))
    (grad,) = torch.autograd.grad(value.sum(), leaf)
    assert value.dtype == torch.float32 and grad.dtype == torch.float32

    tokens = y.argmax(-1)
    for row in range(2):
        leaf64 = y[row].double().requires_grad_(True)
        value64 = _direct_float64(model64, batch.prompt_ids[row], leaf64)
        (grad64,) = torch.autograd.grad(value64, leaf64)
        ids = torch.tensor([batch.prompt_ids[row] + tokens[row].tolist()])
        with torch.no_grad():
            start = len(batch.prompt_ids[row]) - 1
            z16 = policy.model(input_ids=ids).logits[0, start:-1].double()
            z64 = model64(input_ids=ids).logits[0, start:-1]
        logit_error = (z16 - z64).abs().amax(-1)  # per position
        assert abs(float(value[row]) - float(value64)) <= 2 * float(logit_error.sum()) + 1e-4
        relative = float((grad[row].double() - grad64).norm() / grad64.norm())
        assert relative <= 0.02, relative
