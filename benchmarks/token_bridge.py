"""How often the token bridge's mapped sequence equals the true re-tokenisation, on real responses.

    python benchmarks/token_bridge.py [--responses runs/distill_reward/responses.jsonl] [--target gemma]

Reads the policy's sampled responses (token ids) from a DistillData cache (or any JSONL with
``response_token_ids``), maps them with :class:`seaflow.energies.bridge.TokenBridge` from the
embedded SmolLM2 tokenizer to the target tokenizer (default: Gemma-3's, another family) and
prints the agreement report as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seaflow.energies.bridge import TokenBridge  # noqa: E402
from seaflow.files import physical_lines  # noqa: E402
from seaflow.models import EMBEDDED_DEFAULT, load_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--responses", default="runs/distill_reward/responses.jsonl")
    ap.add_argument("--source", default=EMBEDDED_DEFAULT, help="the policy (its tokenizer)")
    ap.add_argument("--target", default="gemma", help="the other model (its tokenizer); gemma = Gemma-3-270m")
    args = ap.parse_args()
    if args.target == "gemma":
        from seaflow.judges import gemma_location

        args.target = gemma_location()
    source, _ = load_tokenizer(args.source)
    target, _ = load_tokenizer(args.target)
    rows = [json.loads(line) for line in physical_lines(Path(args.responses).read_text()) if line.strip()]
    responses = [r["response_token_ids"] for r in rows if r.get("response_token_ids")]
    started = time.perf_counter()
    bridge = TokenBridge(source, target)
    built = time.perf_counter() - started
    report = bridge.agreement(responses)
    mismatched = [ids for ids in responses if [int(bridge.index[i]) for i in ids] != bridge.retokenize(ids)][:3]
    report.update(
        bridge_build_s=round(built, 1), source_vocab=len(source), target_vocab=len(target),
        examples=[{"text": source.decode(ids), "mapped": target.convert_ids_to_tokens([int(bridge.index[i]) for i in ids]),
                   "retokenised": target.convert_ids_to_tokens(bridge.retokenize(ids))} for ids in mismatched],
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
