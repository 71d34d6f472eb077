"""The sampler contract suite is shipped with the package: ``seaflow.testing.samplers``
(``from seaflow.testing import SamplerContract``). Test modules written against this old
location keep importing it from here."""

from seaflow.testing.samplers import *  # noqa: F401,F403
from seaflow.testing.samplers import CountingEnergy, P_VALUE, TARGETS, chi2_quantile, check_gaussian_moments, one_thread, run_sampler  # noqa: F401
