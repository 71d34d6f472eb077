"""What a command line (or ``seaflow.load``'s overrides) means, before and after jsonargparse reads it.

* :func:`nested_nulls`: ``--model.init_args.reward.init_args.lexicon null`` unsets the lexicon, as
  ``null`` does one level up and in YAML. jsonargparse hands a value two components down on as
  the text ``--lexicon=None``, which reads back as the string ``"None"``; the argument is given
  to it as the nested mapping ``--model.init_args.reward={"init_args": {"lexicon": null}}`` instead.
* :func:`warn_switched_class_paths`: a later ``--config`` file or argument that switches a
  component's class keeps the earlier ``init_args`` the new class also accepts (jsonargparse's
  rule); a warning names each kept value.
* :func:`summarize_parse_error`: jsonargparse's nested report of a bad value (12-29 lines) as one
  line naming the key, the value and what is accepted (:class:`ConfigError`; its cause holds the
  full report, shown with ``--debug``).
* :func:`refuse_non_finite`: a NaN or an infinity anywhere in the method's settings (its
  reward's weights, its sampler's schedule, ...) or the data's, in one line naming the key.
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from seaflow.components import subclasses

NULLS = ("null", "Null", "NULL", "~")


class ConfigError(ValueError):
    """A config value the parser refused, in one line (the parser's full report is the cause)."""


# -- numbers that mean nothing ------------------------------------------------------------------


def refuse_non_finite(config: Any, sections: tuple[str, ...] = ("model", "data")) -> None:
    """A :class:`ConfigError` for the first NaN or infinite number in ``sections`` of a parsed config
    (a jsonargparse Namespace or a dict), naming its key. An infinity is refused too, except for an
    argument its class lists in ``infinite_settings`` (``reward_temperature: .inf``)."""
    from seaflow.checks import non_finite_numbers

    as_dict = config.as_dict() if hasattr(config, "as_dict") else dict(config or {})
    for section in sections:
        for key, value, owner, argument in non_finite_numbers(as_dict.get(section), section):
            infinite_ok = argument in _infinite_settings(owner)
            if value == value and infinite_ok:
                continue
            allowed = "a finite number" + (" or .inf" if infinite_ok else "")
            raise ConfigError(f"{key} must be {allowed}, got {value!r}: NaN and infinity mean nothing as a setting; give a number")


def _infinite_settings(class_path: str | None) -> tuple[str, ...]:
    if not class_path:
        return ()
    from jsonargparse.typing import import_object

    try:
        return tuple(getattr(import_object(class_path), "infinite_settings", ()))
    except (ImportError, AttributeError, ValueError, TypeError):
        return ()


# -- null two components down ------------------------------------------------------------------


def _key_value_pairs(args: list[str]) -> Iterable[tuple[int, int, str, str | None]]:
    """``(index, count, --key, value)`` of each option in ``args`` (``--k=v`` or ``--k v``)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            yield i, 1, key, value
            i += 1
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            yield i, 2, arg, args[i + 1]
            i += 2
        else:
            yield i, 1, arg, None
            i += 1


def nested_nulls(args: list[str], options: Iterable[str]) -> list[str]:
    """``args`` with each ``null`` given two or more components below an option of ``options``
    (``--model``, ``--trainer.logger``) rewritten as a nested mapping under the first component."""
    options = sorted({o for o in options if o.startswith("--")}, key=len, reverse=True)
    out: list[str] = []
    for i, count, key, value in _key_value_pairs(list(args)):
        base = next((o for o in options if key.startswith(o + ".")), None) if value is not None and value.strip() in NULLS else None
        rest = key[len(base) + 1 :].removeprefix("init_args.") if base else ""
        first, _, deeper = rest.partition(".")
        if not deeper:
            out += list(args[i : i + count])
            continue
        nested: Any = None
        for part in reversed(deeper.split(".")):
            nested = {part: nested}
        out.append(f"{base}.init_args.{first}={json.dumps(nested)}")
    return out


# -- a class switched by a later file or argument ---------------------------------------------


def _components(data, prefix: str = ""):
    """``(key, class_path, init_args)`` of every component in a loaded config, outermost first."""
    if not isinstance(data, dict):
        return
    if isinstance(data.get("class_path"), str):
        init_args = data.get("init_args") if isinstance(data.get("init_args"), dict) else {}
        yield prefix, data["class_path"], init_args
        for name, value in init_args.items():
            yield from _components(value, f"{prefix}.init_args.{name}")
        return
    for name, value in data.items():
        yield from _components(value, f"{prefix}.{name}" if prefix else str(name))


def accepted_arguments(class_path: str, families: Iterable[type] = ()) -> set[str] | None:
    """The constructor arguments of ``class_path`` (a dotted path or a short name of a subclass of one
    of ``families``), following ``**kwargs`` to the bases as jsonargparse does; None if unresolved."""
    cls = None
    if "." in class_path:
        from jsonargparse.typing import import_object

        try:
            cls = import_object(class_path)
        except (ImportError, AttributeError, ValueError):
            return None
    else:
        for family in families:
            cls = next((c for c in subclasses(family) if c.__name__ == class_path), None)
            if cls is not None:
                break
    if not inspect.isclass(cls):
        return None
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__:
            continue
        parameters = inspect.signature(klass.__dict__["__init__"]).parameters.values()
        names |= {p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def _config_sources(args: list[str]):
    """``(where, loaded config)`` of each ``--config`` (a file, or YAML text from ``seaflow.load``)
    and ``(where, key, value)`` of every other option, in command-line order."""
    for _, _, key, value in _key_value_pairs(args):
        if key in ("--config", "-c") and value is not None:
            try:
                text = Path(value).read_text(encoding="utf-8")
                where = value
            except (OSError, ValueError):
                text, where = value, "the config"  # a config given as text (seaflow.load with a dict)
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError:
                continue  # the parser reports unreadable configs itself
            if isinstance(data, dict):
                yield where, data
        elif key.startswith("--") and value is not None:
            yield f"{key}={value}" if " " not in value else f"{key} {value!r}", key[2:], value


def warn_switched_class_paths(args: list[str], families: Iterable[type] = (), out=None) -> list[str]:
    """Warn when a later ``--config`` or argument switches a component's ``class_path`` (returns the warnings).

    jsonargparse keeps the earlier ``init_args`` that the new class also accepts (Langevin ->
    MALA keeps ``noise_scale``; a RewardModel's ``model`` stays as a PromptedJudge's); each
    warning names them, unless a later file or argument gives them again (docs/configuration.md).
    ``families``: the component bases, to resolve short class names.
    """
    families = tuple(families)
    current: dict[str, dict] = {}  # key -> {"class", "args", "where"}: what is set for each component so far
    switches: list[dict] = []  # each switch: key, old class and its args, new class, where, names given since

    def set_class(key: str, class_path: str, init_args: dict, where: str) -> None:
        short = class_path.rsplit(".", 1)[-1]
        before = current.get(key)
        if before is not None and before["class"] != short:
            accepted = accepted_arguments(class_path, families) or set()  # an unknown class: the parser says so
            kept = {k: v for k, v in before["args"].items() if k in accepted}
            switches.append({"key": key, "old": before["class"], "old_where": before["where"], "new": short,
                             "where": where, "kept": kept, "given": set(init_args)})
            current[key] = {"class": short, "args": dict(init_args), "where": where}
        else:
            args_so_far = before["args"] if before is not None else {}
            current[key] = {"class": short, "args": {**args_so_far, **init_args}, "where": where}

    def set_argument(key: str, name: str, value) -> None:
        if key in current:
            current[key]["args"][name] = value
        for switch in switches:
            if switch["key"] == key:
                switch["given"].add(name)

    for source in _config_sources(list(args)):
        if len(source) == 2:
            where, data = source
            for key, class_path, init_args in _components(data):
                set_class(key, class_path, init_args, where)
                for name in init_args:
                    set_argument(key, name, init_args[name])
            continue
        where, key, value = source
        loaded = _load(value)
        if key.endswith(".class_path"):
            set_class(key[: -len(".class_path")], str(value), {}, where)
        elif isinstance(loaded, dict) and isinstance(loaded.get("class_path"), str):
            for sub, class_path, init_args in _components(loaded, key):
                set_class(sub, class_path, init_args, where)
        elif key in current and isinstance(loaded, str) and re.fullmatch(r"[A-Za-z_][\w.]*", loaded):
            set_class(key, loaded, {}, where)
        elif ".init_args." in key:
            component, _, name = key.rpartition(".init_args.")
            if "." not in name:
                set_argument(component, name, loaded)

    messages = []
    for switch in switches:
        kept = {k: v for k, v in switch["kept"].items() if k not in switch["given"]}
        if not kept:
            continue
        listed = ", ".join(f"{k}={v!r}" for k, v in kept.items())
        name = next(iter(kept))
        if switch["where"].startswith("--"):
            remedy = f"Give them after it (e.g. --{switch['key']}.init_args.{name} null, where it may be unset)"
        else:
            remedy = f"Set them in {switch['where']}"
        messages.append(
            f"seaflow: warning: {switch['where']} switches {switch['key']} from {switch['old']} to {switch['new']}; "
            f"the init_args {switch['old_where']} set for {switch['old']} are kept where {switch['new']} accepts them: "
            f"{listed}. {remedy} (or check --print_config)."
        )
    for message in messages:
        print(message, file=out or sys.stderr)
    return messages


def _load(value: str):
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


# -- one line for a parse error ----------------------------------------------------------------

_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "NoneType": "null", "dict": "a mapping", "list": "a list"}


def _type_words(text: str, names_of: Callable[[type], list[str]] | None) -> str:
    """``<class 'int'>`` -> ``an integer``; ``typing.Literal['a', 'b']`` -> ``one of 'a', 'b'``;
    ``<class 'seaflow.samplers.base.Sampler'>`` -> ``a Sampler (Langevin, MALA, ...)``."""
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text.strip())
    if literal:
        return f"one of {literal.group(1)}"
    match = re.fullmatch(r"<class '([\w.]+)'>", text.strip())
    if not match:
        return text.strip()
    path = match.group(1)
    short = path.rsplit(".", 1)[-1]
    if short in _TYPE_WORDS:
        return _TYPE_WORDS[short]
    names = _family_names(path, names_of)
    return f"a {short} ({', '.join(names)})" if names else f"a {short}"


def _family_names(path: str, names_of: Callable[[type], list[str]] | None) -> list[str]:
    if names_of is None:
        return []
    from jsonargparse.typing import import_object

    try:
        return list(names_of(import_object(path)))
    except (ImportError, AttributeError, ValueError, TypeError):
        return []


def _contexts(message: str) -> list[dict]:
    """The failing keys of a jsonargparse error report, each with what was wrong there."""
    stack: list[tuple[int, str, str]] = []  # (indent, "key" | "class", text)
    contexts: dict[str, dict] = {}
    order: list[str] = []

    def here() -> tuple[str, str | None]:
        parts, owner = [], None
        for _, kind, text in stack:
            if kind == "key":
                if parts and owner is not None:
                    parts.append("init_args")
                parts.append(text)
                owner = None
            else:
                owner = text
        return ".".join(parts), owner

    for line in message.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        indent = len(line) - len(line.lstrip(" -"))
        header = re.fullmatch(r'Parser key "([^"]+)":', stripped.lstrip("- "))
        owner = re.fullmatch(r"- Problem with given class_path '([^']+)':", stripped)
        if header or owner:
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, "key" if header else "class", (header or owner).group(1)))
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key, cls = here()
        context = contexts.get(key)
        if context is None:
            context = contexts[key] = {"key": key, "depth": len(stack), "types": [], "value": None,
                                       "options": [], "classes": [], "owner": None}
            order.append(key)
        item = stripped.lstrip("- ").strip()
        got = re.fullmatch(r"Expected a (.+?)\. Got value: (.*)", item)
        if got:
            context["types"].append(got.group(1))
            context["value"] = got.group(2)
        elif (option := re.fullmatch(r"Option '([^']+)' is not accepted", item)):
            context["options"].append(option.group(1))
            context["owner"] = cls
        elif (unknown := re.fullmatch(r"Expected a dot import path string: (.+)", item)):
            context["classes"].append(unknown.group(1))
        elif (subtypes := re.fullmatch(r"Subtypes: \[(.*)\]", item)):
            context["types"] = [t.strip() for t in re.findall(r"<class '[\w.]+'>|typing\.[^,\]]+\]?", subtypes.group(1))]
        elif (given := re.fullmatch(r"Given value: (.*)", item)) and context["value"] is None:
            context["value"] = given.group(1)
        elif (required := re.fullmatch(r"the following arguments are required: (.+)", item)):
            context["options"].append(("required", [name.strip() for name in required.group(1).split(",")]))
            context["owner"] = cls
    return [contexts[key] for key in order]


def summarize_parse_error(message: str, names_of: Callable[[type], list[str]] | None = None) -> str:
    """One line for jsonargparse's report ``message``: the key, the value and what is accepted.

    ``names_of(base)``: the component names of a family (``seaflow list``'s), for an unknown class
    name. A report this cannot read gives its first line.
    """
    found = [c for c in _contexts(message) if c["key"] and (c["types"] or c["options"] or c["classes"])]
    if not found:
        first = next((line.strip() for line in message.splitlines() if line.strip()), message)
        return first
    context = max(found, key=lambda c: (c["depth"], len(c["key"])))
    key = context["key"]
    types = [t for t in context["types"] if "NoneType" not in t] or context["types"]
    if context["options"]:
        option = context["options"][0]
        owner = (context["owner"] or "").rsplit(".", 1)[-1]
        accepted = sorted(accepted_arguments(context["owner"]) or []) if context["owner"] else []
        if isinstance(option, tuple):
            missing = option[1]
            return (f"{key}: {owner or 'the class'} needs {', '.join(missing)}: set "
                    + ", ".join(f"{key}.init_args.{name}" for name in missing))
        close = difflib.get_close_matches(option, accepted, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listed = f"; its arguments: {', '.join(accepted)}" if accepted else ""
        return f"{key}.init_args.{option}: {owner or 'the class'} has no argument {option!r}{hint}{listed}"
    if context["classes"]:
        name = context["classes"][-1]
        bases = [t for t in types if t.startswith("<class") and _family_names(t[8:-2], names_of)]
        if len(bases) == len(types) and bases:
            names = _family_names(bases[0][8:-2], names_of)
            return (f"{key}: unknown class name {name!r}; available: {', '.join(names)} "
                    "(seaflow list; a dotted path such as my_module.MyClass works for your own)")
    value = context["value"]
    shown = value if value is not None and value.startswith(("{", "[", "NestedArg")) else repr(value)
    accepted = " or ".join(_type_words(t, names_of) for t in types)
    return f"{key}: got {shown}; expected {accepted}"
