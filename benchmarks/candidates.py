"""Forward-only candidate evaluation against one gradient evaluation, measured side by side.

    nice -n 10 python benchmarks/candidates.py                             # CPU: embedded SmolLM2-135M-Instruct
    python benchmarks/candidates.py --models tiny --tries 1 4 16 --repeats 5
    python benchmarks/candidates.py --preset gpu                            # GPU: Llama-3.2-1B shape, bf16

For C chains with responses of L tokens on a prompt of P tokens, the energy is SEA's
reference term (``-log pi_ref``, the policy's cost; a lexicon reward adds nothing measurable)
through the ``OneHot`` relaxation. Timed, interleaved, medians:

- ``gradient``: one gradient evaluation of the C chains (``EnergyFunction.__call__``: forward
  and backward through the policy), what every sampler step pays;
- ``whole K``: exact energies of K candidates per chain with ``EnergyFunction.energies``
  (forward only, the prompt cache indexed, every candidate's whole response run);
- ``after base K``: the same with the chain's current response as ``base``: the base runs once,
  each candidate only from its first edit on.

Candidates are what a multiple-try proposal at about one changed position draws: each is the
chain's response with one token changed at a uniformly random position. The table gives
candidates per second and "candidates per gradient evaluation": how many exact candidate
energies cost as much time as one gradient evaluation of one chain.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import build_models, interleaved_medians, machine, preset_parser, preset_settings  # noqa: E402

from seaflow.energies import ReferenceLogLikelihood  # noqa: E402
from seaflow.energies.base import ResponseBatch  # noqa: E402
from seaflow.refine import EnergyFunction  # noqa: E402
from seaflow.relaxations import OneHot  # noqa: E402

PRESETS = {
    "cpu": dict(models=["embedded"], chains=4, length=24, prompt=32, tries=[1, 2, 4, 8, 16], dtype="float32", repeats=3, rows=64),
    "gpu": dict(models=["llama-3.2-1b"], chains=4, length=128, prompt=64, tries=[1, 4, 16, 64], dtype="bfloat16", repeats=5, rows=256),
}


def edits(base: torch.Tensor, k: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` copies of each row of ``base`` with one token changed at a random position."""
    chains, width = base.shape
    out = base.unsqueeze(1).repeat(1, k, 1)
    position = torch.randint(width, (chains, k), generator=generator)
    token = torch.randint(4, vocab, (chains, k), generator=generator)
    out.scatter_(2, position.unsqueeze(-1), token.unsqueeze(-1))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = preset_parser(__doc__, PRESETS)
    parser.add_argument("--models", nargs="+", help="tiny, embedded, llama-3.2-1b")
    parser.add_argument("--chains", type=int)
    parser.add_argument("--length", type=int)
    parser.add_argument("--prompt", type=int)
    parser.add_argument("--tries", nargs="+", type=int, help="candidates per chain K")
    parser.add_argument("--rows", type=int, help="candidate rows per forward pass (EnergyFunction candidate_rows)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    settings = preset_settings(args, PRESETS)
    if settings is None:
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    chains, length = settings["chains"], settings["length"]
    print(f"# candidate evaluation on {machine(device)}, {settings['dtype']}, {chains} chains, L {length}, "
          f"prompt {settings['prompt']}, {settings['rows']} rows per pass, medians of {settings['repeats']}\n")
    print("| model | K | gradient evaluation (C chains) | whole K | after base K | candidates/s whole | candidates/s after base "
          "| candidates per gradient evaluation (whole / after base) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in settings["models"]:
        policy, _ = build_models(name, getattr(torch, settings["dtype"]), device, reward_layers=1)
        vocab = policy.vocab_size
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(4, vocab, (settings["prompt"],), generator=g).tolist()
        batch = ResponseBatch([prompt] * chains, ["x"] * chains, torch.full((chains,), length), length)
        reference = ReferenceLogLikelihood()
        reference.setup(policy)
        energy_fn = EnergyFunction(batch, OneHot(), None, reference, alpha=0.0, reference_weight=1.0, candidate_rows=settings["rows"])
        base = torch.randint(4, vocab, (chains, length), generator=g).to(device)
        y = torch.nn.functional.one_hot(base, vocab).float() * 10
        for k in settings["tries"]:
            candidates = edits(base.cpu(), k, vocab, g).to(device)
            variants = {
                "gradient": lambda: energy_fn(y),
                "whole": lambda: energy_fn.energies(candidates),
                "after base": lambda: energy_fn.energies(candidates, base),
            }
            t = interleaved_medians(variants, settings["repeats"], device)
            n = chains * k
            per_grad = t["gradient"] / chains
            print(f"| {name} | {k} | {t['gradient'] * 1e3:.0f} ms | {t['whole'] * 1e3:.0f} ms | {t['after base'] * 1e3:.0f} ms "
                  f"| {n / t['whole']:.1f} | {n / t['after base']:.1f} "
                  f"| {per_grad * n / t['whole']:.2f} / {per_grad * n / t['after base']:.2f} |", flush=True)
        del policy, energy_fn


if __name__ == "__main__":
    main()
