"""Prompts per second for SEA and Best-of-N, memory per chain, and how one step scales.

    nice -n 10 python benchmarks/throughput.py                        # CPU: tiny model
    nice -n 10 python benchmarks/throughput.py --models embedded --batch-sizes 1 --chains 1 4 --steps 3
    python benchmarks/throughput.py --preset gpu                       # GPU: Llama-3.2-1B shape, bf16

Two tables, all rows measured in one run (medians of ``--repeats``):

1. methods: ``SEA.predict_step`` (sample C chains per prompt, T refinement steps, decode,
   score) and ``BestOfN.predict_step`` (N samples, score) on a batch of B prompts of
   ``--prompt`` random tokens, responses of exactly L tokens (the end-of-sequence id is
   outside the vocabulary). Prompts per second = B / wall time; SEA / BoN at the same
   batch size is the cost ratio. Peak memory per chain (per sample for BoN): on CUDA
   ``torch.cuda.max_memory_allocated`` above the models' weights; on CPU the growth of the
   process's peak resident set (``VmHWM`` after resetting it), which also counts the
   allocator's reuse and fragmentation and is only a rough figure.
2. scaling: one energy evaluation (straight-through relaxation, reference and reward with
   cached prompts, backward to ``y``) against response length L, vocabulary V and chains C,
   one factor at a time; time per chain and peak memory per chain (on CUDA
   ``max_memory_allocated``; on CPU the peak bytes of tensors the evaluation creates, from
   torch.profiler's memory timeline).

Models have random weights (the shapes decide the cost).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import build_models, machine, peak_memory, peak_tensor_bytes, preset_parser, preset_settings, timed  # noqa: E402
from step_overhead import make_terms  # noqa: E402

from seaflow.energies import RewardModel  # noqa: E402
from seaflow.energies.base import ResponseBatch  # noqa: E402
from seaflow.methods import BestOfN  # noqa: E402
from seaflow.methods.sea import SEA  # noqa: E402
from seaflow.refine import EnergyFunction  # noqa: E402
from seaflow.relaxations import StraightThrough  # noqa: E402

PRESETS = {
    "cpu": dict(
        models=["tiny"], dtype="float32", prompt=16, length=16, steps=5, repeats=3,
        batch_sizes=[1, 4], chains=[1, 4], best_of=[4, 16],
        scale_lengths=[8, 16, 32], scale_vocabs=[64, 4096, 32768], scale_chains=[1, 4, 16],
    ),
    "gpu": dict(
        models=["llama-3.2-1b"], dtype="bfloat16", prompt=64, length=128, steps=10, repeats=2,
        batch_sizes=[1, 4], chains=[4, 16], best_of=[16],
        scale_lengths=[32, 128, 256], scale_vocabs=[32000, 128256], scale_chains=[1, 4, 16, 32],
    ),
}


def prompt_batch(policy, batch_size: int, prompt_len: int) -> dict[str, list]:
    g = torch.Generator().manual_seed(batch_size)
    ids = [torch.randint(4, policy.vocab_size, (prompt_len,), generator=g).tolist() for _ in range(batch_size)]
    return {
        "id": [f"p{i}" for i in range(batch_size)], "index": list(range(batch_size)),
        "prompt": [policy.tokenizer.decode(row) for row in ids], "prompt_ids": ids,
    }


def rss_peak_growth(fn) -> int | None:
    """Growth of the process's peak resident set during ``fn`` (Linux; None elsewhere)."""
    def status(field: str) -> int:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field))

    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current resident set
        base = status("VmRSS:")
    except OSError:
        return None
    fn()
    return status("VmHWM:") - base


def method_memory(fn, device: str) -> tuple[int | None, str]:
    if device.startswith("cuda"):
        return peak_memory(fn, device), "cuda"
    return rss_peak_growth(fn), "rss"


def make_methods(policy, reward_model, settings, device: str) -> dict[str, object]:
    reward = RewardModel(model="(in memory)")
    reward.attach(reward_model, pad_id=0)
    common = dict(reward=reward, max_new_tokens=settings["length"], seed=0)
    methods = {}
    for chains in settings["chains"]:
        methods[f"SEA C={chains} T={settings['steps']}"] = SEA(chains=chains, steps=settings["steps"], decode="best", **common)
    for n in settings["best_of"]:
        methods[f"BoN N={n}"] = BestOfN(n=n, keep_candidates=False, **common)
    for method in methods.values():
        method.attach(policy)
        method.to(device)  # the LightningModule's device, used for its random streams
    return methods


def rows_per_prompt(name: str) -> int:
    return int(name.split("=")[1].split()[0])


def methods_table(name, policy, reward_model, settings, device) -> None:
    print(f"\n## methods ({name}, prompt {settings['prompt']}, L {settings['length']})\n")
    print("| method | batch | prompts/s | s per batch | SEA time / fastest BoN time | peak MiB per chain |")
    print("|---|---|---|---|---|---|")
    methods = make_methods(policy, reward_model, settings, device)
    for batch_size in settings["batch_sizes"]:
        batch = prompt_batch(policy, batch_size, settings["prompt"])
        calls = {label: (lambda m=method: m.predict_step(batch)) for label, method in methods.items()}
        for fn in calls.values():  # warm-up
            fn()
        times = {label: [] for label in calls}
        for _ in range(settings["repeats"]):
            for label, fn in calls.items():
                times[label].append(timed(fn, device))
        medians = {label: statistics.median(values) for label, values in times.items()}
        fastest_bon = min((t for label, t in medians.items() if label.startswith("BoN")), default=None)
        for label, fn in calls.items():
            memory, kind = method_memory(fn, device)
            per_chain = "-" if memory is None else f"{memory / (batch_size * rows_per_prompt(label)) / 2**20:.1f} ({kind})"
            ratio = f"{medians[label] / fastest_bon:.2f}" if fastest_bon and label.startswith("SEA") else ""
            print(f"| {label} | {batch_size} | {batch_size / medians[label]:.2f} | {medians[label]:.3f} | {ratio} | {per_chain} |", flush=True)


def evaluation_cost(policy, reward_model, chains: int, length: int, prompt_len: int, repeats: int, device: str):
    """Median seconds and peak bytes of one cached energy evaluation (value + gradient)."""
    g = torch.Generator().manual_seed(chains + length)
    prompt = torch.randint(4, policy.vocab_size, (prompt_len,), generator=g).tolist()
    batch = ResponseBatch([prompt] * chains, ["x"] * chains, torch.full((chains,), length), length)
    reference, reward = make_terms(policy, reward_model)[True]
    with torch.no_grad():
        fn = EnergyFunction(batch, StraightThrough(), reward, reference, alpha=1.0, reference_weight=1.0)
    y = torch.randn(chains, length, policy.vocab_size, generator=g).to(device)
    fn(y)
    seconds = statistics.median(timed(lambda: fn(y), device) for _ in range(repeats))
    memory = peak_memory(lambda: fn(y), device) if device.startswith("cuda") else peak_tensor_bytes(lambda: fn(y))
    return seconds, memory


def scaling_table(name, settings, dtype, device) -> None:
    base_chains = 4
    print(f"\n## scaling of one energy evaluation ({name}, prompt {settings['prompt']}; others at "
          f"L {settings['length']}, C {base_chains}, the model's V)\n")
    print("| factor | value | ms per evaluation | ms per chain | peak MiB per chain |")
    print("|---|---|---|---|---|")
    policy, reward_model = build_models(name, dtype, device, None)

    def row(factor, value, policy, reward_model, chains, length):
        seconds, memory = evaluation_cost(policy, reward_model, chains, length, settings["prompt"], settings["repeats"], device)
        print(f"| {factor} | {value} | {seconds * 1e3:.1f} | {seconds * 1e3 / chains:.1f} | {memory / chains / 2**20:.1f} |", flush=True)

    for length in settings["scale_lengths"]:
        row("L", length, policy, reward_model, base_chains, length)
    for chains in settings["scale_chains"]:
        row("C", chains, policy, reward_model, chains, settings["length"])
    del policy, reward_model
    if name == "embedded":
        return  # a real model has one vocabulary
    for vocab in settings["scale_vocabs"]:
        policy, reward_model = build_models(name, dtype, device, None, vocab_size=vocab)
        row("V", vocab, policy, reward_model, base_chains, settings["length"])
        del policy, reward_model


def main(argv: list[str] | None = None) -> None:
    parser = preset_parser(__doc__, PRESETS)
    parser.add_argument("--models", nargs="+", help="tiny, embedded, llama-3.2-1b")
    parser.add_argument("--tables", nargs="+", choices=["methods", "scaling"], default=["methods", "scaling"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="prompts per batch")
    parser.add_argument("--chains", nargs="+", type=int, help="SEA chains per prompt")
    parser.add_argument("--best-of", nargs="+", type=int, help="Best-of-N sample counts")
    parser.add_argument("--steps", type=int, help="SEA refinement steps T")
    parser.add_argument("--prompt", type=int, help="prompt tokens")
    parser.add_argument("--length", type=int, help="response tokens L")
    parser.add_argument("--scale-lengths", nargs="+", type=int)
    parser.add_argument("--scale-vocabs", nargs="+", type=int)
    parser.add_argument("--scale-chains", nargs="+", type=int)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args(argv)
    settings = preset_settings(args, PRESETS)
    if settings is None:
        return
    device = args.device
    dtype = getattr(torch, settings["dtype"])
    print(f"# throughput on {machine(device)}, {settings['dtype']}, medians of {settings['repeats']}")
    for name in settings["models"]:
        if "methods" in args.tables:
            policy, reward_model = build_models(name, dtype, device, None)
            methods_table(name, policy, reward_model, settings, device)
            del policy, reward_model
        if "scaling" in args.tables:
            scaling_table(name, settings, dtype, device)


if __name__ == "__main__":
    main()
