"""What the benchmarks share: model shapes with random weights, timing, peak memory, the machine
in words, and the ``--preset cpu|gpu`` command line.

Each benchmark declares ``PRESETS = {"cpu": {...}, "gpu": {...}}``; ``preset_parser`` adds
``--preset`` and ``--device``, the benchmark adds one option per preset key (same name, dashes
for underscores), and ``preset_settings`` merges what was given over the preset.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from seaflow.models import LoadedModel  # noqa: E402

SHAPES = {
    "tiny": dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "llama-3.2-1b": dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, tie_word_embeddings=True, rope_theta=500000.0,
    ),
}


def build_models(name: str, dtype: torch.dtype, device: str, reward_layers: int | None, **shape):
    """(policy as LoadedModel, reward classifier) with random weights (the embedded policy keeps its own).

    ``shape`` overrides fields of the named shape (e.g. ``vocab_size``).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    if name == "embedded":
        from seaflow.models import EMBEDDED_DEFAULT, load_causal_lm

        loaded = load_causal_lm(EMBEDDED_DEFAULT)
        policy, tokenizer = loaded.model, loaded.tokenizer
        config = LlamaConfig(**policy.config.to_dict())
    else:
        config = LlamaConfig(max_position_embeddings=4096, pad_token_id=0, **{**SHAPES[name], **shape})
        torch.manual_seed(0)
        with torch.device(device):  # random initialisation where the model will run (fast on a GPU)
            policy = LlamaForCausalLM(config)
        tokenizer = synthetic_tokenizer(config.vocab_size)
    fields = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    reward_config = LlamaConfig(**{**fields, "num_labels": 1, "pad_token_id": 0})
    if reward_layers:
        reward_config.num_hidden_layers = reward_layers
    with torch.device(device):
        reward = LlamaForSequenceClassification(reward_config)
    models = []
    for model in (policy, reward):
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        model.config.use_cache = False
        models.append(model)
    # an end-of-sequence id outside the vocabulary: sampled responses always have the full length
    models[0].generation_config.eos_token_id = [config.vocab_size]
    models[0].generation_config.pad_token_id = 0
    return LoadedModel(models[0], tokenizer, name), models[1]


def synthetic_tokenizer(vocab_size: int):
    """A word-level tokenizer over ``vocab_size`` made-up words (``<pad>`` 0, ``<unk>`` 1, ``yes``, ``no``, ``w4`` ...).

    Random-weight models need a tokenizer of their vocabulary size for the parts of seaflow
    that encode or decode text (judge templates, records); the words mean nothing.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "yes", "no"] + [f"w{i}" for i in range(4, vocab_size)]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<pad>")


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_medians(variants: dict, repeats: int, device: str) -> dict:
    """Median seconds per variant: one warm-up call each, then ``repeats`` rounds, variants interleaved."""
    for fn in variants.values():  # warm-up (allocator, kernels)
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def peak_memory(fn, device: str) -> float | None:
    """Peak bytes allocated during ``fn`` above what was allocated before (CUDA only)."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def peak_tensor_bytes(fn) -> int:
    """Peak bytes of tensors alive during ``fn`` that ``fn`` created, from torch.profiler's memory timeline.

    Works on CPU, where the allocator keeps no statistics: it counts tensor storages as the
    profiler sees them created and destroyed (autograd's saved tensors included), not the
    process's resident memory.
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def machine(device: str) -> str:
    """The device in words, for the header of a benchmark's output."""
    import os
    import platform

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{load} (torch {torch.__version__})"


def preset_parser(doc: str, presets: dict[str, dict]) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of ``doc``, with ``--preset`` and ``--device``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(presets), default="cpu", help="cpu: this machine's sizes; gpu: the paper's shape")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def preset_settings(args: argparse.Namespace, presets: dict[str, dict]) -> dict | None:
    """The chosen preset with every option given on the command line over it; ``None`` (said
    on stdout, so a benchmark script's log shows it) for ``--preset gpu`` without a CUDA device."""
    if args.preset == "gpu" and not args.device.startswith("cuda"):
        print("--preset gpu needs a CUDA device (none found); nothing measured")
        return None
    settings = dict(presets[args.preset])
    for key in settings:
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    return settings
