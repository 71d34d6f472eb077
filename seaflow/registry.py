"""Family registries: every subclass of a pluggable base class is recorded by name.

The CLI resolves components through jsonargparse (``class_path`` or a short class name);
the registry only serves humans (``seaflow list``) and error messages that list the valid
names. User classes defined outside seaflow register themselves on import, like built-ins.
"""

from __future__ import annotations

from typing import ClassVar


class Registered:
    """Mixin: ``Base.registry`` maps class names to subclasses of ``Base``.

    A base class declares its own ``registry: ClassVar[dict] = {}``; subclasses are added to
    the nearest base's registry. Classes whose name starts with ``_``, and intermediate
    bases that set ``abstract = True`` in their body, stay out.
    """

    registry: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "registry" in cls.__dict__:  # a new family root
            return
        if not cls.__name__.startswith("_") and not cls.__dict__.get("abstract", False):
            cls.registry[cls.__name__] = cls

    @classmethod
    def available(cls) -> list[str]:
        """Names of the registered members of this family, sorted."""
        return sorted(name for name, c in cls.registry.items() if issubclass(c, cls))

    @classmethod
    def lookup(cls, name: str) -> type:
        """The class called ``name``, or a ValueError listing the valid names."""
        try:
            return cls.registry[name]
        except KeyError:
            raise ValueError(
                f"unknown {cls.__name__} {name!r}; available: {', '.join(cls.available())}"
            ) from None
