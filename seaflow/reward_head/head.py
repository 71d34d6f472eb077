"""A reward head: a linear score on the frozen policy's last-token hidden state, trained to
classify labels (the refusal head) or to regress a text reward's scores (a surrogate)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torchmetrics import CatMetric

from seaflow.calibrate.metrics import auc, best_threshold
from seaflow.calibrate.run import encode_prompt, encode_response
from seaflow.layout import build_layout, pad_rows
from seaflow.models import EMBEDDED_DEFAULT, load_causal_lm
from seaflow.reward_head.data import _key
from seaflow.reward_head.export import export_classifier

log = logging.getLogger(__name__)


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
        objective: ``classify`` (BCE on the rows' 0/1 ``label``, e.g. the refusal head) or
            ``regress`` (squared error on the rows' ``target``, standardised on the training
            rows: a surrogate of a text reward, :class:`~seaflow.reward_head.distill.DistillData`).
            A regression head is exported in the target's units (up to the dropped bias), and
            ``<export_dir>/agreement.json`` reports its held-out agreement with the target.
        export_best: export the head of the best checkpoint (the ``ModelCheckpoint`` callback's
            monitored metric, e.g. ``val_spearman``: early stopping on the validation prompts, so
            only the ``evaluate`` sets stay untouched) instead of the last one.
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
        objective: Literal["classify", "regress"] = "classify",
        export_best: bool = False,
    ):
        super().__init__()
        if objective not in ("classify", "regress"):
            raise ValueError(f"RewardHead objective must be 'classify' or 'regress', got {objective!r}")
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
        self.objective = objective
        self.export_best = export_best
        # a regression head learns the standardised target; export multiplies back by the std
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))
        self.policy = None
        self.head: torch.nn.Linear | None = None
        self.bias = torch.nn.Parameter(torch.zeros(1))
        self._features: dict[str, torch.Tensor] = {}
        # validation scores and labels of every process (torchmetrics gathers them under DDP)
        self.val_scores, self.val_labels, self.val_targets = CatMetric(), CatMetric(), CatMetric()
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
        if self.objective == "regress":
            rows = getattr(self.trainer.datamodule, "train_rows", None) or []
            if not rows or "target" not in rows[0]:
                raise ValueError("objective: regress needs rows with a `target` (data: class_path: seaflow.reward_head.DistillData)")
            targets = torch.tensor([float(r["target"]) for r in rows])
            self.target_mean.fill_(float(targets.mean()))
            self.target_std.fill_(max(float(targets.std()), 1e-6))

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
            tokens, lengths = pad_rows(ids, tok.pad_token_id)
            layout = build_layout(before, lengths, tok.pad_token_id).to(self.device)
            hidden = layout.run(self.backbone, tokens.to(self.device)).last_hidden_state[:, -1].float()
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
        if self.objective == "regress":
            target = torch.tensor(batch["target"], dtype=torch.float32, device=logits.device)
            loss = torch.nn.functional.mse_loss(logits, (target - self.target_mean) / self.target_std)
            self.log("train_loss", loss, prog_bar=True, batch_size=len(target))
            return loss
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
        self.val_scores.update(scores.float())
        self.val_labels.update(torch.as_tensor(batch["label"], dtype=torch.float32, device=scores.device))
        if self.objective == "regress":
            self.val_targets.update(torch.as_tensor(batch["target"], dtype=torch.float32, device=scores.device))

    def on_validation_epoch_end(self) -> None:
        if self.val_labels.update_count == 0:
            return
        scores, labels = self.val_scores.compute().cpu(), self.val_labels.compute().long().cpu()
        targets = self.val_targets.compute().cpu() if self.objective == "regress" else None
        for metric in (self.val_scores, self.val_labels, self.val_targets):
            metric.reset()
        if targets is not None:
            for name, value in agreement(scores, targets, labels).items():
                self.log(f"val_{name}", value, prog_bar=name == "spearman")
            return
        if len(set(labels.tolist())) == 2:
            self.log("val_auc", auc(scores, labels), prog_bar=True)
            self.log("val_acc", best_threshold(scores, labels)[0])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def on_fit_end(self) -> None:
        best = getattr(self.trainer.checkpoint_callback, "best_model_path", "") if self.export_best else ""
        if best:
            state = torch.load(best, map_location=self.device, weights_only=False)["state_dict"]
            self.load_state_dict(state, strict=False)
            log.warning("exporting the best checkpoint %s", best)
        if self.trainer.is_global_zero:
            path = self.export(self.export_dir)
            if self.objective == "regress":
                report = self.agreement_report(self.trainer.datamodule)
                (path / "agreement.json").write_text(json.dumps(report, indent=2) + "\n")
                if not any(entry["rows"] for entry in report.values()):
                    log.warning("agreement.json has no held-out rows (val_fraction 0, no evaluate files): "
                                "the surrogate's agreement with the reward is unmeasured")
                log.warning("surrogate agreement with the reward (held out): %s", json.dumps(report))
            log.warning("reward head saved to %s (load it with RewardModel(model=%r, include_prompt=%s))",
                        path, str(path), self.include_prompt)

    def export(self, directory: str | Path) -> Path:
        """Save policy weights + trained head as an HF sequence-classification directory."""
        return export_classifier(self, directory)

    @torch.no_grad()
    def agreement_report(self, data) -> dict:
        """Held-out agreement of the trained score with the target: the validation rows and each
        evaluation set (the data module's ``eval_sets``; with labels, the AUC of the surrogate and of the reward)."""
        sets = {"validation": data.val_rows, **getattr(data, "eval_sets", {})}
        report = {}
        for name, rows in sets.items():
            if not rows:  # val_fraction 0: nothing held out, and the report says so
                report[name] = {"rows": 0}
                continue
            scores = torch.cat([
                self(*zip(*[(r["prompt"], r["response"]) for r in rows[i : i + 64]])).float().cpu()
                for i in range(0, len(rows), 64)
            ])
            targets = torch.tensor([float(r["target"]) for r in rows])
            labels = torch.tensor([int(r.get("label", -1)) for r in rows])
            report[name] = {"rows": len(rows), **agreement(scores, targets, labels)}
            if ((labels == 0) | (labels == 1)).all() and len(set(labels.tolist())) == 2:
                report[name]["reward_auc"] = auc(targets, labels)
        return report


def agreement(scores: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
    """Spearman and Pearson correlation of ``scores`` with ``targets``; the AUC of ``scores``
    against ``labels`` on the rows labelled 0/1 when both classes are present."""
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

    out = {}
    if len(scores) >= 2:
        out["spearman"] = float(spearman_corrcoef(scores.float(), targets.float()))
        out["pearson"] = float(pearson_corrcoef(scores.float(), targets.float()))
    if labels is not None:
        known = (labels == 0) | (labels == 1)
        if len(set(labels[known].tolist())) == 2:
            out["auc"] = auc(scores[known], labels[known])
    return out
