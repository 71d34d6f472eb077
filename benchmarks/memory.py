"""Peak memory per chain of one SEA energy evaluation at the Llama-3.2-1B shape, by torch.profiler on CPU.

    nice -n 10 python benchmarks/memory.py --dtypes float32            # chains 1 2 4, prompt 64, L 128
    python benchmarks/memory.py --dtypes bfloat16 --chains 1 2
    python benchmarks/memory.py --layers 2 --chains 1 2                # a quick look (fewer layers)

One evaluation = straight-through relaxation of ``y (chains, L, V)``, the reference term
``log pi_ref`` through the policy on the cached prompt, a model-free reward (a fixed random
value per vocabulary entry, ``mean_t <p_t, v>``: the policy's memory alone) and the backward
pass to ``y``. The policy has the Llama-3.2-1B shape with random weights (vocabulary
128256, hidden 2048, 16 layers, tied embeddings). The peak counts the tensors the evaluation
creates (autograd's saved tensors included), from torch.profiler's memory timeline, not the
process's resident memory; ``y``, the weights and the prompt cache exist before and are not
counted. Per chain: the increment between consecutive chain counts. At the peak of the
largest chain count, the live tensors are listed by profiler category and by size in units
of one ``(chains, L, V)`` float32 tensor. ``--variants lookup dense`` measures the one-hot
row lookup of the embedding (default) against the dense ``(chains, L, V) @ (V, H)`` product.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import SHAPES, machine  # noqa: E402

from seaflow import layout  # noqa: E402
from seaflow.energies import ReferenceLogLikelihood  # noqa: E402
from seaflow.energies.base import ResponseBatch, Reward  # noqa: E402
from seaflow.models import LoadedModel  # noqa: E402
from seaflow.refine import EnergyFunction  # noqa: E402
from seaflow.relaxations import StraightThrough  # noqa: E402


class VectorReward(Reward):
    """``mean_t <p_t, v>`` for a fixed vector ``v`` over the vocabulary (no model)."""

    def __init__(self, values: torch.Tensor):
        super().__init__()
        self.values = values

    def value(self, prepared, response):
        if response.dtype == torch.long:
            return self.values[response].mean(-1)
        return (response.float() @ self.values).mean(-1)


def build_policy(dtype: torch.dtype, layers: int | None, device: str = "cpu") -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(SHAPES["llama-3.2-1b"])
    if layers:
        shape["num_hidden_layers"] = layers
    config = LlamaConfig(max_position_embeddings=4096, pad_token_id=0, **shape)
    torch.manual_seed(0)  # random weights (their values do not change the memory)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.eval().requires_grad_(False)
    from _common import synthetic_tokenizer

    return LoadedModel(model, synthetic_tokenizer(8), "llama-3.2-1b-shape")


def profile_peak(fn):
    """``(peak bytes, live tensors at the peak as [(bytes, category, creating op)], the operator running at the
    peak)`` of the tensors ``fn`` creates."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    memory = prof._memory_profile()
    creators: dict = {}  # tensor -> the top-level operator (or autograd node) that created it
    for node in memory._data_flow_graph.flow_nodes:
        for key in (*node.outputs, *node.intermediates):
            creators.setdefault(key, node._event.name.replace("autograd::engine::evaluate_function: ", ""))
    live: dict = {}
    total = peak = 0
    snapshot: dict = {}
    peak_time = None
    for time_ns, action, (key, version), size in memory.timeline:
        if action == Action.CREATE:
            live[key] = (size, version)
            total += size
        elif action == Action.DESTROY:
            total -= size
            live.pop(key, None)
        elif action == Action.INCREMENT_VERSION and key in live:
            live[key] = (live[key][0], version)
        if total > peak:
            peak, snapshot, peak_time = total, dict(live), time_ns
    tensors = []
    for key, (size, version) in snapshot.items():
        category = memory._categories.get(key, version)
        tensors.append((size, category.name.lower() if category is not None else "unknown", creators.get(key, "?")))
    during = [node._event.name for node in memory._data_flow_graph.flow_nodes
              if peak_time is not None and node._event.start_time_ns <= peak_time <= node._event.end_time_ns]
    return peak, tensors, (during[-1].replace("autograd::engine::evaluate_function: ", "") if during else "?")


def cuda_peak(fn):
    """``(peak bytes above what was allocated before, [], None)``: CUDA's allocator statistics (no breakdown)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, [], None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--chains", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--layers", type=int, help="fewer layers than the 16 of the shape (a quick look)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu", help="cpu (torch.profiler) or cuda (the allocator's peak)")
    parser.add_argument("--variants", nargs="+", default=["lookup"], choices=["lookup", "dense"],
                        help="lookup: one-hot forwards embedded by a row lookup (default); dense: the (chains, L, V) @ (V, H) product")
    args = parser.parse_args(argv)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# memory per chain on {machine(device)}; Llama-3.2-1B shape{'' if not args.layers else f' with {args.layers} layers'}, "
          f"prompt {args.prompt}, L {args.length}; straight-through, reference (cached prompt) + model-free reward\n")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        started = time.perf_counter()
        policy = build_policy(dtype, args.layers, device)
        vocab = policy.vocab_size
        reference = ReferenceLogLikelihood()
        reference.setup(policy)
        g = torch.Generator().manual_seed(1)
        reward = VectorReward(torch.randn(vocab, generator=g).to(device))
        prompt = torch.randint(4, vocab, (args.prompt,), generator=g).tolist()
        unit_bytes = args.length * vocab * 4  # one (L, V) float32 tensor per chain
        print(f"## {dtype_name} (model built in {time.perf_counter() - started:.0f} s)\n")
        print("| embedding | chains | peak (tensors created by one evaluation) | increment per added chain | seconds |")
        print("|---|---|---|---|---|")
        runs = [(variant, chains) for variant in args.variants for chains in args.chains]
        previous, last = None, None
        for variant, chains in runs:
            layout.ONE_HOT_LOOKUP = variant == "lookup"
            if previous is not None and previous[2] != variant:
                previous = None
            batch = ResponseBatch([prompt] * chains, ["x"] * chains, torch.full((chains,), args.length), args.length)
            with torch.no_grad():
                energy_fn = EnergyFunction(batch, StraightThrough(), reward, reference, alpha=1.0, reference_weight=1.0)
            y = torch.randn(chains, args.length, vocab, generator=g).to(device)
            started = time.perf_counter()
            peak, tensors, during = (cuda_peak if device.startswith("cuda") else profile_peak)(lambda: energy_fn(y))
            seconds = time.perf_counter() - started
            increment = "-" if previous is None else f"{(peak - previous[1]) / (chains - previous[0]) / 2**30:.3f} GiB"
            print(f"| {variant} | {chains} | {peak / 2**30:.3f} GiB | {increment} | {seconds:.0f} |", flush=True)
            if variant == args.variants[0]:
                last = (chains, tensors, during)
            previous = (chains, peak, variant)
            del energy_fn, y
        chains, tensors, during = last
        if not tensors:
            continue
        by_category = Counter()
        for size, category, _ in tensors:
            by_category[category] += size
        print(f"\nthe peak of {chains} chains is reached in {during}; live then, by category: " + ", ".join(
            f"{name} {size / 2**30:.3f} GiB" for name, size in by_category.most_common()))
        unit = unit_bytes * chains
        big = sorted((t for t in tensors if t[0] >= unit // 4), reverse=True)
        print(f"tensors of at least a quarter of one (chains, L, V) float32 tensor ({unit / 2**20:.0f} MiB), in those units "
              "(profiler category, operator or autograd node that created it): " + ", ".join(
                  f"{size / unit:.2f} ({category}, {creator})" for size, category, creator in big))
        small = sum(t[0] for t in tensors if t[0] < unit // 4)
        print(f"the rest: {small / 2**30:.3f} GiB in {sum(1 for t in tensors if t[0] < unit // 4)} tensors\n", flush=True)
        del policy, reference


if __name__ == "__main__":
    main()
