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
