"""What ``seaflow list`` shows: the components a config can select, found among the imported classes.

A component is a subclass of a family's base (``AlignmentMethod``, ``Sampler``, ``Relaxation``,
``EnergyTerm``, ``Schedule``, Lightning's ``Callback``) that implements the family's contract
method; a user's own class shows up as soon as its module is imported (``--import``). There is
no registry: LightningCLI resolves ``class_path`` by import, this module only lists for humans.
The contract kits (seaflow/testing/) check with :func:`available` that a new component is listed.
"""

from __future__ import annotations


def list_components() -> str:
    """Human-readable listing of every component family: the imported subclasses of each base
    that implement its contract (intermediate bases such as DiscreteMethod and RefinementMethod left out)."""
    import lightning as L

    import seaflow.console  # noqa: F401  (its progress bar is a callback)
    from seaflow.energies.base import EnergyTerm, Reward
    from seaflow.methods.base import AlignmentMethod as Method
    from seaflow.prompt_sets import PREFIX, names as prompt_set_names
    from seaflow.relaxations.base import Relaxation
    from seaflow.samplers.base import Sampler
    from seaflow.schedules import Schedule

    energies = available(EnergyTerm, "value")
    rewards = [name for name in energies if name in {cls.__name__ for cls in subclasses(Reward)}]
    callbacks = sorted({
        cls.__name__ for cls in subclasses(L.Callback)
        if not cls.__name__.startswith("_") and not cls.__module__.startswith(("lightning", "pytorch_lightning"))
        and cls.__module__ != "seaflow.cli"  # the CLI's own config saver
    })
    rows = [
        ("methods", available(Method, "predict_step")),
        ("samplers", available(Sampler, "step")),
        ("schedules", available(Schedule, "__call__")),
        ("relaxations", available(Relaxation, "forward")),
        ("rewards", rewards),
        ("reference", [name for name in energies if name not in rewards]),
        ("callbacks", callbacks + ["(and Lightning's, lightning.pytorch.callbacks)"]),
        ("prompt sets", [f"{PREFIX}{name}" for name in prompt_set_names()] + ["(data.path; or a .jsonl/.json/.csv/.txt file)"]),
    ]
    return "\n".join(f"{title + ':':<13} {', '.join(names)}" for title, names in rows)


def available(family: type, contract: str) -> list[str]:
    """Names of the components of ``family``: its subclasses, built-in or user-defined, that
    implement the ``contract`` method (intermediate bases do not); private (``_``) names left out."""
    return sorted({
        cls.__name__ for cls in subclasses(family)
        if not cls.__name__.startswith("_") and getattr(cls, contract) is not getattr(family, contract)
    })


def subclasses(cls):
    """Every subclass of ``cls``, direct or not, imported so far."""
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)
