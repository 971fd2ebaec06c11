"""The parameterisation axis: full fine-tuning, LoRA, QLoRA or Prefix-Tuning for any method.

    harness run method=dpo peft=lora peft.lora.r=16
    harness run method=simpo peft=qlora peft.quant.quant_type=fp4
    harness run method=sft peft=prefix peft.prefix.num_virtual_tokens=8

``harness.training.runner`` calls, in order: :func:`check` (spec-only checks, before data or
model loads), :func:`check_targets_for` (on a weightless skeleton) and :func:`load_kwargs`
(QLoRA's 4-bit loading) before the weights load, :func:`apply` (wraps the loaded base),
:func:`register_checkpoint_hooks` (checkpoints hold the adapter only),
:func:`reference_context` (reference log-probs are the base's with the adapter disabled,
so no second model copy is ever held) and :func:`summary_fields` / :func:`save_meta`
after training.  :func:`load_trained` loads
a run's ``final/`` directory back, as the adapter on its base or merged into it.

Built on ``peft`` (LoRA, rsLoRA, DoRA, Prefix-Tuning) and ``bitsandbytes`` (4-bit
NF4/FP4 bases with double quantisation); both run on CPU as well as CUDA.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from harness.core.config import ConfigError, PeftSpec, RunSpec

#: written next to the adapter in ``final/`` so it reloads on the same (possibly 4-bit) base
META_FILE = "harness_peft.json"

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def uses_adapter(peft: PeftSpec) -> bool:
    return peft.kind != "none"


# --------------------------------------------------------------------------- checks


def check(spec: RunSpec, model_kind: str) -> None:
    """Combinations that cannot train, found before any data or model loads."""
    kind = spec.peft.kind
    if kind == "prefix" and spec.train.gradient_checkpointing:
        raise ConfigError(
            "peft=prefix does not work with train.gradient_checkpointing=true (the prefix key/value "
            "cache and the recomputed forward disagree in size); set train.gradient_checkpointing=false "
            "or use peft=lora"
        )
    if kind == "prefix" and model_kind == "reward":
        raise ConfigError(
            f"peft=prefix cannot train method {spec.method_name!r}: its sequence-classification model "
            "takes no key/value prefix; use peft=lora (or peft=none) for reward models"
        )
    if kind == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                f"peft=qlora loads the base in 4-bit with bitsandbytes, which cannot be imported ({e}); "
                "install it (pip install 'align-harness[qlora]') or use peft=lora"
            ) from None


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names (last path component) of the model's linear layers, sorted and unique."""
    from transformers.pytorch_utils import Conv1D

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))})


def _linear_module_keys(model: torch.nn.Module) -> list[str]:
    from transformers.pytorch_utils import Conv1D

    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]


def check_targets(peft: PeftSpec, model: torch.nn.Module) -> None:
    """Every named LoRA target must match a linear layer (peft's rule: the full name or a
    ``.``-separated suffix of it); the error lists the names the model has."""
    if peft.kind not in ("lora", "qlora") or peft.lora.target_modules == "all-linear":
        return
    keys = _linear_module_keys(model)
    missing = [t for t in peft.lora.target_modules if not any(k == t or k.endswith(f".{t}") for k in keys)]
    if missing:
        raise ConfigError(
            f"peft.lora.target_modules: {', '.join(repr(t) for t in missing)} "
            f"{'is not a linear module' if len(missing) == 1 else 'are not linear modules'} of "
            f"{type(model).__name__}; its linear modules are: {', '.join(linear_module_names(model))} "
            "(or use 'all-linear')"
        )


def check_targets_for(path: str, peft: PeftSpec, model_kind: str, revision: str | None = None,
                      trust_remote_code: bool = False) -> None:
    """:func:`check_targets` on a weightless (meta-device) skeleton, before the weights load."""
    if peft.kind not in ("lora", "qlora") or peft.lora.target_modules == "all-linear":
        return
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if model_kind == "reward":
        cfg.num_labels = 1
    auto = AutoModelForSequenceClassification if model_kind == "reward" else AutoModelForCausalLM
    with torch.device("meta"):
        skeleton = auto.from_config(cfg, trust_remote_code=trust_remote_code)
    check_targets(peft, skeleton)


# --------------------------------------------------------------------------- loading


def quantization_config(peft: PeftSpec) -> Any:
    from transformers import BitsAndBytesConfig

    q = peft.quant
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=DTYPES[q.compute_dtype],
    )


def load_kwargs(peft: PeftSpec, device: torch.device | None = None) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments: QLoRA's 4-bit base, placed on the training device
    (bitsandbytes quantises while loading, so the base cannot be moved afterwards)."""
    if peft.kind != "qlora":
        return {}
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return {"quantization_config": quantization_config(peft), "device_map": {"": device}}


def _lora_config(peft: PeftSpec, task_type: Any) -> Any:
    from peft import LoraConfig

    lo = peft.lora
    return LoraConfig(
        task_type=task_type, r=lo.r, lora_alpha=lo.alpha,  # type: ignore[arg-type]  # peft accepts a float alpha
        lora_dropout=lo.dropout,
        target_modules=lo.target_modules if lo.target_modules == "all-linear" else list(lo.target_modules),
        bias=lo.bias, use_rslora=lo.use_rslora, use_dora=lo.use_dora,
    )


def apply(model: Any, spec: RunSpec, model_kind: str) -> Any:
    """Wrap a loaded base in the spec's adapter (the base is frozen); ``none`` returns it as is."""
    peft = spec.peft
    if peft.kind == "none":
        return model
    from peft import PrefixTuningConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    task_type = TaskType.SEQ_CLS if model_kind == "reward" else TaskType.CAUSAL_LM
    check_targets(peft, model)
    if peft.kind == "qlora":
        # fp32 norms/embeddings and input grads for the frozen 4-bit base; checkpointing only
        # when the run asks for it (peft would switch it on by default)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=spec.train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if peft.kind in ("lora", "qlora"):
        config = _lora_config(peft, task_type)
    else:
        pre = peft.prefix
        config = PrefixTuningConfig(
            task_type=task_type, num_virtual_tokens=pre.num_virtual_tokens,
            prefix_projection=pre.prefix_projection,
            encoder_hidden_size=pre.encoder_hidden_size or model.config.hidden_size,
        )
    return get_peft_model(model, config)


def is_adapter_model(model: Any) -> bool:
    # no import of peft (slow) for full fine-tuning runs: an unimported peft made no adapter
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


@contextlib.contextmanager
def reference_context(model: Any) -> Iterator[None]:
    """The base model's forward: the adapter disabled (LoRA deltas and prefixes off).
    Exact, not approximate: a disabled LoRA layer calls its base layer alone."""
    if is_adapter_model(model):
        with model.disable_adapter():
            yield
    else:
        yield


def reference_key(spec: RunSpec) -> dict[str, Any] | None:
    """What, beyond the weights file, the base's outputs depend on: QLoRA's quantisation.
    Never the adapter: the reference is the base with the adapter disabled."""
    if spec.peft.kind != "qlora":
        return None
    return {"quant": asdict(spec.peft.quant)}


# --------------------------------------------------------------------------- checkpoints


def _trainable_keys(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _is_adapter_wrapped(model: Any) -> bool:
    return is_adapter_model(getattr(model, "module", model))  # DDP wraps the PeftModel in .module


def register_checkpoint_hooks(accelerator: Any) -> None:
    """Checkpoints of an adapter run hold the trainable (adapter) tensors only.

    The frozen base is the model the run loaded and never changes, so saving it in every
    checkpoint only costs disk; and a 4-bit base's state dict (quantisation constants as
    extra keys) cannot be loaded back strictly, which broke QLoRA resume."""
    from safetensors.torch import load_file

    def save_hook(models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        for i, model in enumerate(models):
            if _is_adapter_wrapped(model) and i < len(weights):
                keep = _trainable_keys(model)
                weights[i] = {k: v for k, v in weights[i].items() if k in keep}

    def load_hook(models: list[Any], input_dir: str) -> None:
        if len(models) != 1 or not _is_adapter_wrapped(models[0]):
            return  # the training core prepares one model; anything else loads as accelerate does
        model = models[0]
        path = Path(input_dir) / "model.safetensors"
        state = load_file(str(path))
        missing = _trainable_keys(model) - set(state)
        if missing:
            raise RuntimeError(f"{path}: the checkpoint lacks {len(missing)} adapter tensors (e.g. "
                               f"{sorted(missing)[0]}); it was saved by a run with another peft section")
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"{path}: unexpected tensors {result.unexpected_keys[:3]}; "
                               "it was saved by a run with another peft section")
        models.clear()  # loaded here; accelerate must not load it again, strictly

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# --------------------------------------------------------------------------- accounting and saving


def param_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as their unpacked number of values."""
    if is_adapter_model(model):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def summary_fields(model: Any, spec: RunSpec, base_path: str) -> dict[str, Any]:
    trainable, total = param_counts(model)
    out: dict[str, Any] = {
        "peft": spec.peft.kind, "adapter": is_adapter_model(model),
        "trainable_params": trainable, "total_params": total, "trainable_share": trainable / max(total, 1),
    }
    if out["adapter"]:
        out["base_model"] = base_path
    return out


def save_meta(final_dir: Path, spec: RunSpec, base_path: str) -> None:
    """Record how the adapter's base was loaded, so :func:`load_trained` rebuilds it exactly."""
    if spec.peft.kind == "none":
        return
    meta = {"kind": spec.peft.kind, "base_model": base_path,
            "quant": asdict(spec.peft.quant) if spec.peft.kind == "qlora" else None}
    (Path(final_dir) / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_trained(
    path: str | Path, *, merge: bool = False, model_kind: str = "causal_lm", base_path: str | None = None,
    device: torch.device | None = None,
) -> Any:
    """A run's ``final/`` as a model: full weights as saved, or the adapter on its base.

    ``merge=True`` folds a LoRA adapter into the weights (``merge_and_unload``), giving a plain
    model for tools that know nothing of peft.  A QLoRA adapter is reloaded on the same 4-bit
    base it trained on; merged, it goes into the full-precision base instead (the trained
    result plus the base's quantisation error).  Prefix-Tuning has nothing to merge.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = Path(path)
    auto = AutoModelForSequenceClassification if model_kind == "reward" else AutoModelForCausalLM
    extra: dict[str, Any] = {"num_labels": 1} if model_kind == "reward" else {}
    if not is_adapter_dir(path):
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} holds neither a model (config.json) nor an adapter (adapter_config.json)")
        return auto.from_pretrained(path, dtype=torch.float32, **extra)
    from peft import PeftConfig, PeftModel

    meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).is_file() else {}
    config = PeftConfig.from_pretrained(str(path))
    base = base_path or meta.get("base_model") or config.base_model_name_or_path
    if not base:
        raise FileNotFoundError(f"{path}: the adapter names no base model; pass base_path")
    if str(base).startswith(("/", ".", "~")) and not Path(base).expanduser().exists():
        raise FileNotFoundError(f"{path}: the adapter's base model {base!r} does not exist (a toy base lives in "
                                "the cache: rebuild it with the same ALIGN_HARNESS_CACHE, or pass base_path)")
    if merge and config.is_prompt_learning:
        raise ValueError(f"{path}: a {config.peft_type} adapter adds virtual tokens and cannot be merged; load it with merge=False")
    kw: dict[str, Any] = {"dtype": torch.float32, **extra}
    if meta.get("kind") == "qlora" and not merge:
        kw.update(load_kwargs(PeftSpec(kind="qlora", quant=_quant_from(meta["quant"])), device))
    base_model = auto.from_pretrained(base, **kw)
    model = PeftModel.from_pretrained(base_model, path)
    model.eval()
    return model.merge_and_unload() if merge else model


def _quant_from(d: dict[str, Any]) -> Any:
    from harness.core.config import QuantSpec, build

    return build(QuantSpec, d, "quant")
