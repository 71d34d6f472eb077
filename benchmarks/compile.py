"""``torch.compile`` of the energy evaluation against eager: compile time, step time, break-even steps.

    nice -n 10 python benchmarks/compile.py                                 # CPU: embedded SmolLM2-135M-Instruct
    python benchmarks/compile.py --models tiny --backend inductor
    python benchmarks/compile.py --preset gpu                                # GPU: Llama-3.2-1B shape, bf16, chains 4 and 16

One SEA energy evaluation (straight-through relaxation of ``y (chains, L, V)``, reference term
on the cached prompt, a lexicon-like model-free reward, backward to ``y``) through
``EnergyFunction(compile=...)``. The compiled function is called first on the first shape
(its wall time, compilation included, is the compile time, reported separately), then timed
against eager, interleaved, medians. With shapes marked dynamic, the second shape (another
chain count) should reuse the compiled code: its first call is timed too. Break-even: the
number of steps after which compiling has paid for itself,
``(first call - eager) / (eager - compiled)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory import VectorReward  # noqa: E402
from _common import build_models, interleaved_medians, machine, preset_parser, preset_settings, timed  # noqa: E402

from seaflow.energies import ReferenceLogLikelihood  # noqa: E402
from seaflow.energies.base import ResponseBatch  # noqa: E402
from seaflow.refine import EnergyFunction  # noqa: E402
from seaflow.relaxations import StraightThrough  # noqa: E402

PRESETS = {
    "cpu": dict(models=["embedded"], chains=[4, 2], length=24, prompt=32, dtype="float32", repeats=3),
    "gpu": dict(models=["llama-3.2-1b"], chains=[4, 16], length=128, prompt=64, dtype="bfloat16", repeats=10),
}


def main(argv: list[str] | None = None) -> None:
    parser = preset_parser(__doc__, PRESETS)
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--chains", nargs="+", type=int, help="first shape, then the shapes that should reuse the compile")
    parser.add_argument("--length", type=int)
    parser.add_argument("--prompt", type=int)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args(argv)
    settings = preset_settings(args, PRESETS)
    if settings is None:
        return
    device = args.device
    print(f"# torch.compile ({args.backend}, dynamic shapes) on {machine(device)}, {settings['dtype']}, L {settings['length']}, "
          f"prompt {settings['prompt']}, medians of {settings['repeats']}\n")
    print("| model | chains | first call (compiles) | eager step | compiled step | compiled / eager | break-even steps |")
    print("|---|---|---|---|---|---|---|")
    for name in settings["models"]:
        policy, _ = build_models(name, getattr(torch, settings["dtype"]), device, reward_layers=1)
        vocab = policy.vocab_size
        g = torch.Generator().manual_seed(0)
        reference = ReferenceLogLikelihood()
        reference.setup(policy)
        reward = VectorReward(torch.randn(vocab, generator=g).to(device))
        prompt = torch.randint(4, vocab, (settings["prompt"],), generator=g).tolist()
        torch._dynamo.reset()
        for chains in settings["chains"]:
            length = settings["length"]
            batch = ResponseBatch([prompt] * chains, ["x"] * chains, torch.full((chains,), length), length)
            with torch.no_grad():
                eager = EnergyFunction(batch, StraightThrough(), reward, reference, alpha=1.0, reference_weight=1.0)
                compiled = EnergyFunction(batch, StraightThrough(), reward, reference, alpha=1.0, reference_weight=1.0,
                                          compile=args.backend)
            y = torch.randn(chains, length, vocab, generator=g).to(device)
            first = timed(lambda: compiled(y), device)
            t = interleaved_medians({"eager": lambda: eager(y), "compiled": lambda: compiled(y)}, settings["repeats"], device)
            gain = t["eager"] - t["compiled"]
            even = f"{max(first - t['eager'], 0.0) / gain:.0f}" if gain > 0 else "never"
            print(f"| {name} | {chains} | {first:.1f} s (compile {compiled.compile_seconds:.1f} s) | {t['eager'] * 1e3:.0f} ms "
                  f"| {t['compiled'] * 1e3:.0f} ms | {t['compiled'] / t['eager']:.2f} | {even} |", flush=True)
        del policy


if __name__ == "__main__":
    main()
