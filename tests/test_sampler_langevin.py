"""Langevin passes the sampler contract (seaflow.testing.samplers)."""

from seaflow.testing.samplers import SamplerContract

from seaflow.samplers import Langevin


class TestLangevin(SamplerContract):
    sampler_class = Langevin
    relative_step = 0.1

    def relative_bias(self, target):
        # unadjusted Langevin on a Gaussian: the stationary variance along an eigendirection
        # with precision lambda is 1 / (lambda (1 - eta lambda / 2))
        h = self.step_size_for(target) * target.lambda_max
        return 1 / (1 - h / 2) - 1
