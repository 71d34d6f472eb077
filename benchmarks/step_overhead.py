"""Cost of one SEA refinement step relative to a plain forward + backward, measured side by side.

    nice -n 10 python benchmarks/step_overhead.py                       # CPU: tiny and embedded models
    python benchmarks/step_overhead.py --preset gpu                      # GPU: Llama-3.2-1B shape, bf16
    python benchmarks/step_overhead.py --models tiny --chains 1 4 --lengths 16 --repeats 5

One SEA step is what the sampler pays per gradient evaluation: the straight-through
relaxation of the logits ``y (chains, L, V)``, the reference term ``log pi_ref`` through the
policy, the reward through a same-vocabulary sequence classifier (random weights, same shape
as the policy unless ``--reward-layers`` says otherwise), and the backward pass to ``y``.
It is timed with the prompt's key/value cache (``cache_prefix=True``, the default, for the
reference and the reward) and without it. The baseline ("plain") is a forward + backward of the same
two models on the same tokens (prompt + response, one row per chain), differentiating the
input embeddings: the least any gradient-based refinement can cost. ``prepare`` (building
layouts, computing the prompt cache) runs once per batch and is not part of the step.

All variants run interleaved, repeat after repeat, and the table reports medians and the
ratios step / plain and uncached / cached. Peak memory per chain is measured on CUDA only
(``torch.cuda.max_memory_allocated`` above the models' weights); CPU rows print ``-``.
Compute does not depend on weight values, so random weights give representative timings.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import build_models, interleaved_medians, machine, peak_memory, preset_parser, preset_settings  # noqa: E402

from seaflow.energies import ReferenceLogLikelihood, RewardModel  # noqa: E402
from seaflow.energies.base import ResponseBatch  # noqa: E402
from seaflow.models import LoadedModel  # noqa: E402
from seaflow.refine import EnergyFunction  # noqa: E402
from seaflow.relaxations import StraightThrough  # noqa: E402

PRESETS = {
    # CPU defaults: the tiny test model's shape and the embedded SmolLM2-135M-Instruct
    "cpu": dict(models=["tiny", "embedded"], chains=[1, 4, 16], lengths=[16, 32], prompt=32, dtype="float32", repeats=5),
    # the GPU baseline of the project notes: Llama-3.2-1B shape, random weights, bf16
    "gpu": dict(models=["llama-3.2-1b"], chains=[4, 16, 32], lengths=[128], prompt=64, dtype="bfloat16", repeats=10),
}


def make_terms(policy: LoadedModel, reward_model) -> dict[bool, tuple[ReferenceLogLikelihood, RewardModel]]:
    """``cached -> (reference, reward)``: both terms with and without the prompt's key/value cache."""
    terms = {}
    for cached in (False, True):
        reference = ReferenceLogLikelihood(cache_prefix=cached)
        reference.setup(policy)
        reward = RewardModel(model="(in memory)", cache_prefix=cached)
        reward.attach(reward_model, pad_id=0)  # setup() keeps an already attached model
        terms[cached] = reference, reward
    return terms


def plain_step(policy, reward_model, ids: torch.Tensor, prompt_len: int):
    """Forward + backward of both models on ``ids``, gradient to the input embeddings."""
    embeds = policy.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = policy(inputs_embeds=embeds, use_cache=False).logits[:, prompt_len - 1 : -1].float()
    loglik = torch.log_softmax(logits, -1).gather(-1, ids[:, prompt_len:].unsqueeze(-1)).sum()
    reward_embeds = reward_model.get_input_embeddings()(ids).detach().requires_grad_(True)
    score = reward_model(inputs_embeds=reward_embeds, use_cache=False).logits.float().sum()
    torch.autograd.grad(loglik + score, (embeds, reward_embeds))


def measure(policy, reward_model, chains: int, length: int, prompt_len: int, repeats: int, device: str) -> dict:
    vocab = policy.vocab_size
    g = torch.Generator().manual_seed(chains * 1000 + length)
    prompt = torch.randint(1, vocab, (prompt_len,), generator=g).tolist()
    y = torch.randn(chains, length, vocab, generator=g).to(device)
    ids = torch.cat([torch.tensor(prompt).expand(chains, -1), torch.randint(1, vocab, (chains, length), generator=g)], dim=1).to(device)
    batch = ResponseBatch([prompt] * chains, ["x"] * chains, torch.full((chains,), length), length)
    terms = make_terms(policy, reward_model)
    with torch.no_grad():  # once per batch, as in SEA
        functions = {
            cached: EnergyFunction(batch, StraightThrough(), terms[cached][1], terms[cached][0], alpha=1.0, reference_weight=1.0)
            for cached in (False, True)
        }
    variants = {
        "plain": lambda: plain_step(policy.model, reward_model, ids, prompt_len),
        "uncached": lambda: functions[False](y),
        "cached": lambda: functions[True](y),
    }
    row = interleaved_medians(variants, repeats, device)
    row["memory"] = {name: peak_memory(fn, device) for name, fn in variants.items()}
    return row


def main(argv: list[str] | None = None) -> None:
    parser = preset_parser(__doc__, PRESETS)
    parser.add_argument("--models", nargs="+", help="tiny, embedded, llama-3.2-1b")
    parser.add_argument("--chains", nargs="+", type=int)
    parser.add_argument("--lengths", nargs="+", type=int, help="response lengths L")
    parser.add_argument("--prompt", type=int, help="prompt tokens")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--reward-layers", type=int, default=None, help="layers of the reward model (default: the policy's)")
    parser.add_argument("--max-chains", type=int, default=None, help="skip larger chain counts for models other than tiny")
    args = parser.parse_args(argv)
    settings = preset_settings(args, PRESETS)
    if settings is None:
        return
    dtype = getattr(torch, settings["dtype"])
    device = args.device
    print(f"# step overhead on {machine(device)}, {settings['dtype']}, prompt {settings['prompt']} tokens, "
          f"medians of {settings['repeats']}\n")
    print("| model | chains | L | plain fwd+bwd | SEA step, uncached | SEA step, cached | uncached / plain "
          "| cached / plain | uncached / cached | peak MiB per chain (plain / uncached / cached) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in settings["models"]:
        policy, reward_model = build_models(name, dtype, device, args.reward_layers)
        for length in settings["lengths"]:
            for chains in settings["chains"]:
                if args.max_chains and name != "tiny" and chains > args.max_chains:
                    continue
                row = measure(policy, reward_model, chains, length, settings["prompt"], settings["repeats"], device)
                mem = row["memory"]
                memory = "-" if mem["plain"] is None else " / ".join(f"{mem[k] / chains / 2**20:.0f}" for k in ("plain", "uncached", "cached"))
                print(f"| {name} | {chains} | {length} | {row['plain'] * 1e3:.1f} ms | {row['uncached'] * 1e3:.1f} ms "
                      f"| {row['cached'] * 1e3:.1f} ms | {row['uncached'] / row['plain']:.2f} | {row['cached'] / row['plain']:.2f} "
                      f"| {row['uncached'] / row['cached']:.2f} | {memory} |", flush=True)
        del policy, reward_model


if __name__ == "__main__":
    main()
