"""A method against Best-of-N at equal policy forward tokens, on one machine, in one run.

    python benchmarks/equal_cost.py --config configs/demo.yaml --prompts data/sentiment_prompts.jsonl \
        --limit 12 --set steps=8 alpha=50 --bon 16 32 64

Runs the config's method on the prompts (all prompts of a batch at once), then Best-of-N with
the same policy, reward, length and seeds for each N of ``--bon``, and prints per method:
mean discrete reward, the share of replies an independent scorer calls positive (VADER's
sentence-level compound score > 0.05, rules that the token lexicon does not have), mean
reference log-likelihood per token (fluency), the policy's forward token passes per prompt
(every token position the policy computes, prompts and padding included, counted by a hook
on the model; and those past the prompt prefills, i.e. what a Best-of-N that shared one
prompt cache would pay), the FLOPs of the records' ``cost`` (seaflow/cost.py: every model,
attention and heads included), and the median wall time per prompt.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sea_vs_best_of_n import batches, build_method  # noqa: E402
from seaflow.data import read_prompts  # noqa: E402
from seaflow.methods import BestOfN  # noqa: E402
from seaflow.models import load_causal_lm  # noqa: E402


class TokenCounter:
    """Counts the token positions every forward call of ``model`` computes."""

    def __init__(self, model: torch.nn.Module):
        self.tokens = 0
        self.prefill = 0  # of which prompt prefills (calls with logits_to_keep=1: generation's first pass, prompt caches)
        self.paused = False
        self.params = sum(p.numel() for p in model.parameters())
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        if self.paused:
            return
        inputs = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        if inputs is None and args:
            inputs = args[0]
        count = int(inputs.shape[0] * inputs.shape[1])
        self.tokens += count
        if kwargs.get("logits_to_keep") == 1:
            self.prefill += count


def judge(texts: list[str]) -> list[float]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]


def measure(name, method, prompts, batch_size, data_cfg, counter) -> dict:
    records, before, prefill = [], counter.tokens, counter.prefill
    stats = method.reference_stats

    def uncounted(*a, **k):  # the records' fluency metrics are not the method's work
        counter.paused = True
        try:
            return stats(*a, **k)
        finally:
            counter.paused = False

    method.reference_stats = uncounted
    for batch in batches(method, prompts, batch_size, data_cfg):
        records += method.predict_step(batch)
        print(f"{name}: {len(records)}/{len(prompts)}", file=sys.stderr, flush=True)
    tokens = counter.tokens - before
    prefill = counter.prefill - prefill
    compound = judge([r["response"] for r in records])
    return {
        "name": name,
        "reward": statistics.fmean(r["reward"] for r in records),
        "positive": sum(c > 0.05 for c in compound) / len(records),
        "ref": statistics.fmean(r["ref_logprob_per_token"] for r in records),
        "tokens": tokens / len(records),
        "flops": statistics.fmean(r["cost"]["flops"] for r in records) if "cost" in records[0] else None,
        "response_tokens": (tokens - prefill) / len(records),
        "time": statistics.median(r["wall_time_s"] for r in records),
        "records": records,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--prompts", default="data/sentiment_prompts.jsonl")
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[], action="append", help="init_args overrides key=yaml_value; repeat --set for several settings")
    ap.add_argument("--bon", nargs="*", type=int, default=[16, 64])
    args = ap.parse_args()
    torch.set_num_threads(2)
    config = yaml.safe_load(Path(args.config).read_text())
    settings = args.set or [[]]
    data_cfg = dict(config["data"], path=args.prompts)
    prompts = read_prompts(args.prompts)[: args.limit]
    batch_size = args.batch_size or len(prompts)
    policy = None
    rows = []
    for overrides in settings:
        method = build_method(yaml.safe_load(Path(args.config).read_text()), overrides)
        policy = policy or load_causal_lm(method.policy_name, dtype=method.dtype_name)
        method.attach(policy)
        counter = getattr(policy.model, "_token_counter", None) or TokenCounter(policy.model)
        policy.model._token_counter = counter
        rows.append(measure(f"{method.method_name()} {' '.join(overrides)}", method, prompts, batch_size, data_cfg, counter))
    for n in args.bon:
        baseline = BestOfN(policy=method.policy_name, reward=method.reward, n=n, keep_candidates=False,
                           max_new_tokens=method.max_new_tokens, seed=method.seed)
        baseline.attach(policy)
        rows.append(measure(f"BoN-{n}", baseline, prompts, batch_size, data_cfg, counter))
    print(f"\n{len(prompts)} prompts of {args.prompts}, {method.max_new_tokens} tokens, {torch.get_num_threads()} threads, "
          f"policy {counter.params / 1e6:.0f}M parameters")
    print("| method | reward | VADER positive | ref logprob/token | fwd tokens/prompt | of which past the prompt | GFLOP/prompt | median s/prompt |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['reward']:+.3f} | {r['positive']:.0%} | {r['ref']:.2f} | {r['tokens']:.0f} | {r['response_tokens']:.0f} | "
              f"{(r['flops'] or 2 * counter.params * r['tokens']) / 1e9:.0f} | {r['time']:.2f} |")


if __name__ == "__main__":
    main()
