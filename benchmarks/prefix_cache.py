"""Cached prompt prefix against whole rows, per energy term and prompt length, measured side by side.

    nice -n 10 python benchmarks/prefix_cache.py                          # CPU: tiny model
    nice -n 10 python benchmarks/prefix_cache.py --models embedded --prompts 32 128 --repeats 3
    python benchmarks/prefix_cache.py --preset gpu                         # GPU: Llama-3.2-1B shape, bf16

For each term (``ReferenceLogLikelihood``, ``PromptedJudge`` borrowing the policy, and
``RewardModel`` with a same-shape random classifier) and each prompt length, one evaluation
(straight-through relaxation, the term's value and the gradient with respect to the logits
``y``) is timed with ``cache_prefix=True`` and ``cache_prefix=False``, interleaved, and the
table gives the medians and the speed-up uncached / cached. ``prepare`` (the prompt's cache)
runs once per batch and is not part of the evaluation; its time is the last column.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import build_models, interleaved_medians, machine, peak_memory, preset_parser, preset_settings, timed  # noqa: E402

from seaflow.energies import PromptedJudge, ReferenceLogLikelihood, RewardModel  # noqa: E402
from seaflow.energies.base import ResponseBatch  # noqa: E402
from seaflow.relaxations import StraightThrough  # noqa: E402

PRESETS = {
    "cpu": dict(models=["tiny"], prompts=[16, 64, 256], chains=4, length=16, dtype="float32", repeats=5),
    "gpu": dict(models=["llama-3.2-1b"], prompts=[64, 256, 1024], chains=4, length=128, dtype="bfloat16", repeats=5),
}
TERMS = ("reference", "judge", "reward")


def make_term(kind: str, cached: bool, policy, reward_model):
    if kind == "reference":
        term = ReferenceLogLikelihood(cache_prefix=cached)
        term.setup(policy)
    elif kind == "judge":
        term = PromptedJudge(question="Request: {prompt}\nReply: {response}\nIs it good? yes or no", use_chat_template=False, cache_prefix=cached)
        term.setup(policy)
    else:
        term = RewardModel(model="(in memory)", cache_prefix=cached)
        term.attach(reward_model, pad_id=0)
    return term


def measure(kind: str, policy, reward_model, prompt_len: int, chains: int, length: int, repeats: int, device: str) -> dict:
    vocab = policy.vocab_size
    g = torch.Generator().manual_seed(prompt_len)
    prompt_ids = torch.randint(4, vocab, (prompt_len,), generator=g).tolist()
    prompt_text = policy.tokenizer.decode(prompt_ids)
    batch = ResponseBatch([prompt_ids] * chains, [prompt_text] * chains, torch.full((chains,), length), length)
    y = torch.randn(chains, length, vocab, generator=g).to(device)
    relax = StraightThrough()
    states, prepare_time = {}, {}
    terms = {cached: make_term(kind, cached, policy, reward_model) for cached in (False, True)}
    for cached, term in terms.items():
        with torch.no_grad():
            prepare_time[cached] = timed(lambda: states.__setitem__(cached, term.prepare(batch)), device)

    def evaluation(cached: bool):
        leaf = y.detach().requires_grad_(True)
        value = terms[cached].value(states[cached], relax(leaf))
        torch.autograd.grad(value.sum(), leaf)

    variants = {"uncached": lambda: evaluation(False), "cached": lambda: evaluation(True)}
    row = interleaved_medians(variants, repeats, device)
    row["prepare"] = prepare_time[True]
    row["memory"] = {name: peak_memory(fn, device) for name, fn in variants.items()}
    return row


def main(argv: list[str] | None = None) -> None:
    parser = preset_parser(__doc__, PRESETS)
    parser.add_argument("--models", nargs="+", help="tiny, embedded, llama-3.2-1b")
    parser.add_argument("--terms", nargs="+", choices=TERMS, default=list(TERMS))
    parser.add_argument("--prompts", nargs="+", type=int, help="prompt lengths in tokens")
    parser.add_argument("--chains", type=int, help="rows per evaluation")
    parser.add_argument("--length", type=int, help="response length L")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args(argv)
    settings = preset_settings(args, PRESETS)
    if settings is None:
        return
    device = args.device
    print(f"# prefix cache on {machine(device)}, {settings['dtype']}, {settings['chains']} rows, L {settings['length']}, "
          f"medians of {settings['repeats']}\n")
    print("| model | term | prompt | uncached (value+grad) | cached (value+grad) | uncached / cached | peak MiB uncached / cached | prepare (cached) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in settings["models"]:
        policy, reward_model = build_models(name, getattr(torch, settings["dtype"]), device, None)
        for prompt_len in settings["prompts"]:
            for kind in args.terms:
                row = measure(kind, policy, reward_model, prompt_len, settings["chains"], settings["length"], settings["repeats"], device)
                mem = row["memory"]
                memory = "-" if mem["cached"] is None else f"{mem['uncached'] / 2**20:.0f} / {mem['cached'] / 2**20:.0f}"
                print(f"| {name} | {kind} | {prompt_len} | {row['uncached'] * 1e3:.1f} ms | {row['cached'] * 1e3:.1f} ms "
                      f"| {row['uncached'] / row['cached']:.2f} | {memory} | {row['prepare'] * 1e3:.1f} ms |", flush=True)
        del policy, reward_model


if __name__ == "__main__":
    main()
