"""Contract test suites for your own components, shipped with seaflow.

Subclass one in a ``test_*.py`` file of your project and pytest runs every check seaflow's
own components pass (docs/extending.md):

    from seaflow.testing import RelaxationContract, RewardContract, SamplerContract

* :class:`SamplerContract` (:mod:`seaflow.testing.samplers`): Gaussian targets, optimisation
  mode, reproducibility, per-chain step scale, schedules, batched logits, diagnostics.
* :class:`RelaxationContract` (:mod:`seaflow.testing.relaxations`): distributions, gradients,
  one-hot logits, ``allowed`` masks, seeds.
* :class:`RewardContract` (:mod:`seaflow.testing.rewards`): one value per row, one-hot equals
  ids, inactive positions, finite gradients, row independence, on a tiny random policy
  (:mod:`seaflow.testing.tiny`).

The suites need pytest (``pip install pytest``); importing seaflow does not.
"""

from seaflow.testing.relaxations import RelaxationContract
from seaflow.testing.rewards import RewardContract
from seaflow.testing.samplers import SamplerContract

__all__ = ["SamplerContract", "RelaxationContract", "RewardContract"]
