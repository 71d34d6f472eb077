"""seaflow.checks: one way to say a bad argument, the key to set first."""

import pytest

from seaflow.checks import require, require_one_of


def test_require_names_the_key_the_allowed_values_and_the_value():
    require(True, "model.init_args.chains", 0, ">= 1")
    with pytest.raises(ValueError) as error:
        require(False, "model.init_args.chains", 0, ">= 1")
    assert str(error.value) == "model.init_args.chains must be >= 1, got 0"


def test_require_one_of_lists_the_choices_as_a_config_writes_them():
    require_one_of("data.task", None, ("sentiment", None))
    with pytest.raises(ValueError) as error:
        require_one_of("data.task", "sentimental", ("sentiment", None))
    assert str(error.value) == "data.task must be one of 'sentiment', null, got 'sentimental'"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_require_refuses_nan_and_infinity_whatever_the_condition(value):
    with pytest.raises(ValueError) as error:
        require(True, "model.init_args.temperature", value, ">= 0")
    assert str(error.value) == f"model.init_args.temperature must be >= 0, got {value!r}"
    if value == value:
        require(True, "model.init_args.reward_temperature", value, "> 0 (.inf ignores the reward)", finite=False)
    else:
        with pytest.raises(ValueError):
            require(True, "model.init_args.reward_temperature", value, "> 0", finite=False)


def test_non_finite_numbers_name_the_key_and_the_component_argument():
    from seaflow.checks import non_finite_numbers

    config = {"model": {"class_path": "X", "init_args": {"a": 1.0, "weights": {"t": float("nan")},
                                                         "sampler": {"class_path": "Y", "init_args": {"steps": [0.1, float("inf")]}}}}}
    found = [(key, repr(value), owner, argument) for key, value, owner, argument in non_finite_numbers(config)]
    assert found == [("model.init_args.weights.t", "nan", "X", "weights"),
                     ("model.init_args.sampler.init_args.steps.1", "inf", "Y", "steps")]
