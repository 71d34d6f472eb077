"""The methods ``seaflow tune`` tries, each with the settings docs/results.md measured, and the
user's task they are tried on.

A :class:`Candidate` is one method at fixed settings with one size knob (``n``, ``beams``,
``particles``, ``steps``) that the budget sets (seaflow/tune/budget.py). Its ``prompt`` says
which prompt it answers:

* ``given``: the prompt as the user gave it;
* ``asked``: the prompt with the task's ask on it (the config's ``data.proposal_system_prompt``
  becomes ``data.system_prompt``, ``data.proposal_prompt_field`` becomes ``data.prompt_field``,
  ``data.proposal_instruction`` becomes ``data.instruction``): the first thing a user tries
  where the prompt may change;
* ``steered``: the prompt as given, the policy given the asked version proposing
  (GuidedSuffixMCMC's steered proposals, importance-corrected): for prompts that must stay
  as given.

A :class:`Task` is the user's ``seaflow predict`` config: its policy, reward, response length
and seed (:data:`CARRIED`) and its data section go into every candidate's config unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# model.init_args of the user's config that every candidate keeps: the task, not the method
CARRIED = ("policy", "reward", "selection_reward", "max_new_tokens", "seed", "dtype", "trust_remote_code", "adapter")
# data keys that state the ask, and the keys that put it on the prompt itself
ASKS = {"proposal_system_prompt": "system_prompt", "proposal_prompt_field": "prompt_field",
        "proposal_instruction": "instruction"}
RESULTS = "docs/results.md"

Setting = tuple[Any, str]  # (value, or a function of (size, max_new_tokens) giving it; the comment it carries)


@dataclass(frozen=True)
class Candidate:
    """One method at the settings docs/results.md measured, sized by one knob.

    ``probes``: the two sizes measured on one batch of tuning prompts to fit the cost line; ``smallest`` and
    ``largest``: the sizes the budget may choose from; ``settings``: further ``model.init_args``
    as ``key: (value, comment)``, a value possibly a function of ``(size, max_new_tokens)``.
    """

    name: str
    method: str
    knob: str
    knob_comment: str
    smallest: int
    largest: int
    probes: tuple[int, int]
    settings: dict[str, Setting] = field(default_factory=dict)
    prompt: Literal["given", "asked", "steered"] = "given"
    summary: str = ""
    evidence: str = RESULTS

    def init_args(self, size: int, max_new_tokens: int) -> dict[str, Setting]:
        """The method's own ``model.init_args`` at ``size``, each with its comment."""
        out = {self.knob: (size, self.knob_comment)}
        for key, (value, comment) in self.settings.items():
            out[key] = (value(size, max_new_tokens) if callable(value) else value, comment)
        return out

    def label(self, size: int) -> str:
        return f"{self.knob}={size}"

    def asked(self) -> "Candidate":
        """The same method on the asked prompt (``name_asked``)."""
        return Candidate(f"{self.name}_asked", self.method, self.knob, self.knob_comment, self.smallest, self.largest,
                         self.probes, dict(self.settings), "asked", f"{self.summary}, on the asked prompt", self.evidence)


def _all_rows(size: int, _: int) -> int:
    return size


def _third(_: int, length: int) -> list[int]:
    return [max(1, length // 3)]


SUFFIX_CUTS = {
    "cut_temperature": (1.0, "q(t|y) ∝ exp(score_t / cut_temperature): the reward's gradient chooses where to rewrite"),
    "cut_floor": (0.1, "share of uniform cuts mixed into q(t|y)"),
    "cut_top_k": (50, "a slot's score: the best gradient gain among the policy's top-50 next tokens there"),
    "temperature": (1.0, "must be 1.0: the policy's own suffixes make the Metropolis ratio exact"),
    "top_p": (1.0, "must be 1.0 (same reason)"),
}

BEST_OF_N = Candidate(
    "best_of_n", "seaflow.methods.BestOfN", "n", "candidates per prompt (sized to the budget by seaflow tune)", 1, 256, (2, 8),
    {"returns": ("best_reward", "the highest reward, the earlier candidate on a tie"),
     "keep_candidates": (False, "true writes every candidate's text to the record"),
     "sample_batch": (_all_rows, "rows per generation call: a prompt's candidates share its pass"),
     "score_batch": (_all_rows, "rows per reward pass"),
     "temperature": (1.0, "policy sampling temperature"), "top_p": (1.0, "nucleus threshold (1.0 = off)")},
    summary="Best-of-N, the highest reward",
    evidence=f"{RESULTS}#asked-prompts-against-a-best-of-n-that-shares-its-prompt-pass-48-held-out-prompts-per-task",
)
BEST_OF_N_LIKELIEST = Candidate(
    "best_of_n_likeliest", BEST_OF_N.method, "n", BEST_OF_N.knob_comment, 1, 256, (2, 8),
    {**BEST_OF_N.settings,
     "returns": ("likeliest_best", "the highest reward, among tied rewards the likeliest under the policy (read while sampling)")},
    summary="Best-of-N, ties to the likeliest", evidence=BEST_OF_N.evidence,
)
CBS = Candidate(
    "cbs", "seaflow.methods.CBS", "beams", "beam width w (sized to the budget by seaflow tune)", 1, 64, (1, 4),
    {"samples_per_beam": (4, "chunks sampled per beam k"),
     "chunk_length": (8, "tokens per chunk (docs/results.md: 4 chunks of 8 tokens per beam, set before any run)"),
     "sample_batch": (128, "rows per generation call"), "score_batch": (128, "rows per reward pass"),
     "temperature": (1.0, "policy sampling temperature"), "top_p": (1.0, "nucleus threshold (1.0 = off)")},
    summary="chunk-level beam search by the reward on the text so far", evidence=BEST_OF_N.evidence,
)
PARTICLE_FILTER = Candidate(
    "particle_filter", "seaflow.methods.ParticleFilter", "particles", "particles per prompt (sized to the budget by seaflow tune)",
    2, 512, (4, 16),
    {"partial_reward": (None, "the reward on the text so far weighs the partial responses"),
     "block": (4, "tokens decoded between two weightings (chosen on tuning prompts, docs/baselines.md)"),
     "reward_temperature": (0.02, "lambda: weights exp(r / lambda), in reward units (chosen on tuning prompts)"),
     "potential": ("difference", "weights grow by exp((r_t - r_s) / lambda): SMC on pi_ref exp(r / lambda)"),
     "resampling": ("systematic", "systematic resampling from the prompt's own stream"),
     "ess_threshold": (0.5, "resample when the effective sample size falls below half the particles"),
     "final": ("best", "return the particle with the highest reward"),
     "share_prompt": (True, "each prompt runs once, its keys and values copied to its rows"),
     "sample_batch": (64, "rows per search group"), "score_batch": (64, "rows per reward pass"),
     "temperature": (1.0, "policy sampling temperature"), "top_p": (1.0, "nucleus threshold (1.0 = off)")},
    summary="SMC over partial replies",
    evidence=f"{RESULTS}#every-search-on-the-sentiment-tasks-asked-and-un-asked",
)
SPECULATIVE_REJECTION = Candidate(
    "speculative_rejection", "seaflow.methods.SpeculativeRejection", "n", "candidates started per prompt (sized to the budget by seaflow tune)",
    4, 1024, (8, 32),
    {"partial_reward": (None, "the reward on the text so far ranks the partial responses"),
     "decision_points": (_third, "prune after a third of the response (8 of 24 tokens, chosen on tuning prompts, docs/baselines.md)"),
     "keep_fraction": (0.25, "share of the live candidates kept at each decision point"),
     "share_prompt": (True, "each prompt runs once, its keys and values copied to its rows"),
     "sample_batch": (128, "rows per search group"), "score_batch": (128, "rows per reward pass"),
     "temperature": (1.0, "policy sampling temperature"), "top_p": (1.0, "nucleus threshold (1.0 = off)")},
    summary="Best-of-N pruned early by partial reward", evidence=PARTICLE_FILTER.evidence,
)
SUFFIX_MCMC = Candidate(
    "suffix_mcmc", "seaflow.methods.GuidedSuffixMCMC", "steps", "Metropolis steps per chain (sized to the budget by seaflow tune)",
    0, 256, (1, 4),
    {"alpha": (50.0, "target pi_ref exp(alpha r) (configs/demo.yaml's setting for a reward in [-1, 1])"),
     "chains": (4, "chains per prompt"), **SUFFIX_CUTS,
     "sample_batch": (64, "rows per generation call for the initial samples"), "score_batch": (64, "rows per reward pass")},
    summary="the default GuidedSuffixMCMC: the policy rewrites a gradient-chosen suffix, an exact Metropolis test accepts",
    evidence=f"{RESULTS}#un-asked-sentiment-guidedsuffixmcmc-against-best-of-n",
)
STEERED_CHAINS = Candidate(
    "steered_chains", SUFFIX_MCMC.method, "steps", SUFFIX_MCMC.knob_comment, 0, 256, (1, 4),
    {"alpha": (80.0, "target pi_ref(y | prompt) exp(alpha r) (chosen among 20, 40, 80 on keyword tuning prompts)"),
     "chains": (4, "chains per prompt"), **SUFFIX_CUTS,
     "token_moves": (0.5, "half the steps are gradient token moves"),
     "token_temperature": (2.0, "2: locally balanced (Gibbs-with-gradients)"),
     "returns": ("best_target", "the visited state of highest log pi_ref(y | prompt) + alpha r"),
     "init_from": ("proposal_prompt", "the initial samples follow the asked prompt too"),
     "sample_batch": (64, "rows per generation call for the initial samples"), "score_batch": (64, "rows per reward pass")},
    prompt="steered",
    summary="steered chains: the policy given the asked prompt proposes, the Metropolis ratio corrects to the prompt as given",
    evidence=f"{RESULTS}#un-asked-keywords-steered-chains-48-held-out-prompts",
)
SEA = Candidate(
    "sea", "seaflow.SEA", "steps", "sampler steps T (sized to the budget by seaflow tune)", 1, 256, (1, 4),
    {"sampler": ({"class_path": "Langevin", "init_args": {"step_size": 0.3, "noise_scale": 0.05}},
                 "Langevin on the response logits at configs/demo.yaml's measured step size and noise"),
     "relaxation": ({"class_path": "StraightThrough", "init_args": {"temperature": 1.0}},
                    "forward one-hot(argmax y), backward softmax(y / temperature)"),
     "alpha": (200.0, "reward weight (the demo's setting for a per-token-mean reward)"),
     "reference_weight": (1.0, "weight of -log pi_ref (the KL term)"),
     "chains": (4, "chains per prompt"), "init": ("sample", "start from policy samples"),
     "init_logits": ("reference", "policy log-probs with the sampled token lifted above the rest"),
     "decode": ("guided", "COLD's decode: left to right among the policy's top-10 next tokens, by the refined logits"),
     "decode_top_k": (10, "candidates per position of the guided decode")},
    summary="the paper's SEA: Langevin on relaxed logits, guided decode",
    evidence=f"{RESULTS}#every-search-on-the-sentiment-tasks-asked-and-un-asked",
)
ARGS = Candidate(
    "args", "seaflow.methods.ARGS", "top_k", "candidates per position (sized to the budget by seaflow tune)", 2, 256, (2, 8),
    {"weight": (50.0, "w in log pi + w r (chosen among 5, 15, 50 on the asked sentiment tuning prompts)"),
     "mode": ("greedy", "the best score at each position"),
     "sample_batch": (128, "rows per generation call"), "score_batch": (128, "rows per reward pass"),
     "temperature": (1.0, "policy sampling temperature"), "top_p": (1.0, "nucleus threshold (1.0 = off)")},
    summary="ARGS: greedy decoding by log-prob + weight x reward over the policy's top-k",
    evidence=PARTICLE_FILTER.evidence,
)

# every candidate seaflow tune knows, in the order it runs them; DEFAULT: those it tries without --methods
CANDIDATES: dict[str, Candidate] = {c.name: c for c in (
    BEST_OF_N, BEST_OF_N_LIKELIEST, BEST_OF_N.asked(), BEST_OF_N_LIKELIEST.asked(), CBS, CBS.asked(), PARTICLE_FILTER,
    SPECULATIVE_REJECTION, SUFFIX_MCMC, STEERED_CHAINS, SEA, ARGS,
)}
DEFAULT = tuple(name for name in CANDIDATES if name != "args")


class TaskConfigError(ValueError):
    """The user's config cannot be tuned; the message names the key and what to do."""


@dataclass
class Task:
    """The user's ``seaflow predict`` config: what every candidate keeps from it."""

    path: Path
    config: dict[str, Any]

    @classmethod
    def read(cls, path: str | Path) -> "Task":
        path = Path(path)
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise TaskConfigError(f"--config {str(path)!r}: cannot read it ({err.strerror or err})") from None
        except yaml.YAMLError as err:
            raise TaskConfigError(f"--config {str(path)!r} is not YAML ({err})") from None
        if not isinstance(config, dict):
            raise TaskConfigError(f"--config {str(path)!r} holds no mapping: give a seaflow predict config")
        task = cls(path, config)
        if not task.model_args.get("reward"):
            raise TaskConfigError(f"{path} has no model.init_args.reward: seaflow tune compares methods by a reward; "
                                  "add the reward (e.g. class_path: LexiconReward) to the config")
        if not task.data.get("path"):
            raise TaskConfigError(f"{path} has no data.path: set the prompts file every candidate runs on")
        return task

    @property
    def model_args(self) -> dict[str, Any]:
        model = self.config.get("model") or {}
        return dict(model.get("init_args") or {}) if isinstance(model, dict) else {}

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.config.get("data") or {})

    @property
    def max_new_tokens(self) -> int:
        return int(self.model_args.get("max_new_tokens") or 32)

    @property
    def ask(self) -> dict[str, Any]:
        """The data keys that state an asked version of the prompts (``data.proposal_system_prompt``, ``_prompt_field``, ``_instruction``), as set."""
        return {key: self.data[key] for key in ASKS if self.data.get(key) is not None}

    def carried(self) -> dict[str, Any]:
        """The task's ``model.init_args`` every candidate keeps (:data:`CARRIED`), as the config sets them."""
        return {key: value for key, value in self.model_args.items() if key in CARRIED}

    def data_for(self, prompt: str) -> dict[str, Any]:
        """The data section a candidate answering ``prompt`` (given, asked, steered) runs with."""
        data = self.data
        if prompt == "steered":
            return data
        for key, target in ASKS.items():
            value = data.pop(key, None)
            if prompt == "asked" and value is not None:
                data[target] = value
        return data

    def applicable(self, candidate: Candidate, asking: bool) -> str | None:
        """Why ``candidate`` cannot run on this task (None when it can)."""
        if candidate.prompt != "given" and not self.ask:
            return ("needs an asked version of the prompts: set data.proposal_system_prompt, data.proposal_prompt_field "
                    "or data.proposal_instruction in the config")
        if candidate.prompt == "asked" and not asking:
            return "changes the prompt (--no-asking: the prompts stay as given)"
        return None

    def cell_config(self, candidate: Candidate, size: int, ids: list[str] | None, output_dir: str | Path,
                    progress_bar: bool = False) -> dict[str, Any]:
        """The ``seaflow predict`` config of ``candidate`` at ``size`` on the prompts ``ids`` (None: all)."""
        init_args = {**self.carried(), **{k: v for k, (v, _) in candidate.init_args(size, self.max_new_tokens).items()}}
        data = self.data_for(candidate.prompt)
        if ids is not None:
            data.update(ids=list(ids), limit=None)
        trainer = dict(self.config.get("trainer") or {})
        trainer.update(enable_progress_bar=progress_bar, logger=trainer.get("logger", False) if progress_bar else False)
        trainer.setdefault("inference_mode", False)
        config = {key: value for key, value in self.config.items() if key not in ("model", "data", "trainer", "output")}
        config.update(model={"class_path": candidate.method, "init_args": init_args}, data=data, trainer=trainer,
                      output={"output_dir": str(output_dir), "overwrite": False})
        return config

    def comments(self, candidate: Candidate, size: int) -> dict[str, str]:
        """The comment of every key of a candidate's config (``dotted.key: comment``)."""
        source = self.path.name
        out = {"model": "the method seaflow tune chose", "model.class_path": candidate.summary,
               "model.init_args": "the task's settings (from " + source + ") and the method's", "data": f"as in {source}",
               "trainer": f"as in {source}", "output": "where the records go",
               "output.output_dir": "predictions.jsonl, summary.json and config.yaml land here",
               "output.overwrite": "false: a rerun resumes where the last one stopped"}
        for key in self.carried():
            out[f"model.init_args.{key}"] = f"as in {source}"
        for key, (_, comment) in candidate.init_args(size, self.max_new_tokens).items():
            out[f"model.init_args.{key}"] = comment
        for key, target in ASKS.items():
            if candidate.prompt == "asked" and key in self.ask:
                out[f"data.{target}"] = f"the ask ({source}'s data.{key}) on the prompt itself"
        return out

