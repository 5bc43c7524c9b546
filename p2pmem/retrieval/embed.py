"""Offline text embedders loaded from a model folder on disk.

Two folder formats are understood, both run fully offline (nothing is ever
downloaded):

* **model2vec static models**: ``tokenizer.json`` + ``model.safetensors``
  holding a ``vocab x dim`` tensor named ``embeddings`` (optionally a
  per-token ``weights`` vector and a token-to-row ``mapping``, as newer
  model2vec releases write). A text embeds as the mean of its tokens' rows.
* **ONNX transformer encoders** (fastembed, sentence-transformers or Optimum
  exports): ``tokenizer.json`` + ``model.onnx`` (or ``onnx/model.onnx``, or
  ``model_optimized.onnx``), run with onnxruntime; the last hidden state is
  mean-pooled over the attention mask.

Either way rows come back float32 and L2-normalised, so a dot product is the
cosine. The optional dependencies (numpy, tokenizers, safetensors,
onnxruntime; ``pip install 'p2pmem[semantic]'``) are imported only when a
model is loaded, so the base install works without them.

Which folder: the ``--model PATH`` flag, else ``P2PMEM_MODEL``, else a
``model`` folder (or symlink to one) or a ``model.txt`` file naming one,
inside the p2pmem home (see :func:`configured_model_path`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from p2pmem.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "MODEL_ENV",
    "Embedder",
    "ModelError",
    "ModelFingerprint",
    "OnnxEmbedder",
    "StaticEmbedder",
    "configured_model_path",
    "fingerprint_files",
    "load_embedder",
    "optional_import",
]

MODEL_ENV = "P2PMEM_MODEL"
ONNX_CANDIDATES = ("model.onnx", "onnx/model.onnx", "model_optimized.onnx")
MAX_TOKENS = 512  # a cap on tokens per text: enough for a memory, bounded for the encoder
BATCH = 32  # texts per ONNX run: padding to the longest text wastes less in small batches
_CHUNK = 1 << 20


class ModelError(UsageError):
    """The embedding model cannot be found, recognised or loaded."""


@dataclass(frozen=True)
class ModelFingerprint:
    """What identifies a model's vectors: vectors from different fingerprints
    are not comparable, so a store re-embeds when it changes."""

    name: str  # the model folder's name, for people
    dim: int
    digest: str  # SHA-256 (hex) over the weight and tokenizer files, see fingerprint_files

    def label(self) -> str:
        """A short form for logs and --explain: ``name/dim/first 12 hex digits``."""
        return f"{self.name}/{self.dim}d/{self.digest[:12]}"


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors of ``fingerprint.dim``."""

    fingerprint: ModelFingerprint

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A float32 array of shape ``(len(texts), dim)``, rows L2-normalised (a text
        with no known token embeds as the zero vector, similar to nothing)."""
        ...


# --- locating and identifying a model -------------------------------------------


def configured_model_path(env: Mapping[str, str], home: Path) -> Path | None:
    """The model folder the user configured, or None for none.

    In order: the ``P2PMEM_MODEL`` environment variable; a ``model`` folder
    (or symlink to one) in the home; a ``model.txt`` file in the home whose
    first non-blank line is the folder (relative paths are taken from the
    home). The folder is not checked here: :func:`load_embedder` does that
    and says what is wrong. A ``--model`` flag, where a command has one,
    comes before all of these.
    """
    value = env.get(MODEL_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    linked = home / "model"
    if linked.is_dir():
        return linked
    pointer = home / "model.txt"
    if pointer.is_file():
        try:
            lines = pointer.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"cannot read {pointer}: {exc}") from None
        for line in lines:
            if line.strip():
                return home / Path(line.strip()).expanduser()  # an absolute path replaces home
    return None


def fingerprint_files(files: Sequence[Path]) -> str:
    """SHA-256 (hex) over ``files`` in sorted name order: each file's name,
    its size and its bytes, so that renaming or moving bytes between files
    also changes the digest."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        name = path.name.encode("utf-8")
        digest.update(len(name).to_bytes(4, "big") + name)
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def optional_import(module: str) -> ModuleType:
    """Import an optional dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(
            f"semantic search needs the {module!r} package: install p2pmem[semantic]"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    return value if isinstance(value, dict) else {}


def _load_tokenizer(folder: Path) -> tuple[Any, set[int]]:
    """The folder's ``tokenizer.json`` and the ids of its special and unknown tokens."""
    tokenizers = optional_import("tokenizers")
    path = folder / "tokenizer.json"
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exception subclasses
        raise ModelError(f"cannot load {path}: {exc}") from None
    spec = _read_json(path)
    skip = {t["id"] for t in spec.get("added_tokens", []) if t.get("special") and "id" in t}
    unknown = (spec.get("model") or {}).get("unk_token")
    if isinstance(unknown, str) and tokenizer.token_to_id(unknown) is not None:
        skip.add(tokenizer.token_to_id(unknown))
    return tokenizer, skip


def _normalise(rows: np.ndarray) -> np.ndarray:
    import numpy as np

    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    # A zero row stays zero: dividing by 1 instead of 0 avoids NaNs.
    return (rows / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


# --- model2vec static embeddings -------------------------------------------------


class StaticEmbedder:
    """A model2vec static model: the (weighted) mean of the text's token vectors."""

    def __init__(self, folder: Path) -> None:
        np = optional_import("numpy")
        safetensors_numpy = optional_import("safetensors.numpy")
        self._np = np
        self._tokenizer, self._skip = _load_tokenizer(folder)
        weights_path = folder / "model.safetensors"
        try:
            tensors = safetensors_numpy.load_file(str(weights_path))
        except Exception as exc:
            raise ModelError(f"cannot load {weights_path}: {exc}") from None
        table = tensors.get("embeddings")
        if table is None or table.ndim != 2:
            raise ModelError(f"{weights_path} has no 2-D 'embeddings' tensor (not model2vec)")
        self._table = table.astype(np.float32)
        self._weights = tensors.get("weights")
        self._mapping = tensors.get("mapping")
        files = [weights_path, folder / "tokenizer.json"]
        files += [folder / "config.json"] if (folder / "config.json").is_file() else []
        self.fingerprint = ModelFingerprint(
            folder.resolve().name, int(self._table.shape[1]), fingerprint_files(files)
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """See :meth:`Embedder.embed`."""
        np = self._np
        out = np.zeros((len(texts), self.fingerprint.dim), dtype=np.float32)
        known = len(self._mapping if self._mapping is not None else self._table)
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        for row, encoding in enumerate(encodings):
            ids = [i for i in encoding.ids if i not in self._skip and i < known][:MAX_TOKENS]
            ids = np.asarray(ids, dtype=np.int64)
            if ids.size == 0:
                continue
            rows = self._table[self._mapping[ids] if self._mapping is not None else ids]
            if self._weights is not None:
                rows = rows * self._weights[ids, None].astype(np.float32)
            out[row] = rows.mean(axis=0)
        return _normalise(out)


# --- ONNX transformer encoders -----------------------------------------------------


class OnnxEmbedder:
    """A transformer encoder exported to ONNX, mean-pooled over real tokens."""

    def __init__(self, folder: Path, model_path: Path) -> None:
        np = optional_import("numpy")
        ort = optional_import("onnxruntime")
        self._np = np
        self._tokenizer, _ = _load_tokenizer(folder)
        self._tokenizer.enable_truncation(max_length=_token_limit(folder))
        self._tokenizer.enable_padding(pad_id=self._pad_id())
        options = ort.SessionOptions()
        options.log_severity_level = 3  # onnxruntime warns about unused initialisers on stderr
        try:
            self._session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelError(f"cannot load {model_path}: {exc}") from None
        self._inputs = {i.name: i.type for i in self._session.get_inputs()}
        if "input_ids" not in self._inputs:
            raise ModelError(f"{model_path} takes no 'input_ids' input (not a text encoder)")
        outputs = [o.name for o in self._session.get_outputs()]
        preferred = [n for n in ("last_hidden_state", "token_embeddings") if n in outputs]
        self._output = preferred[0] if preferred else outputs[0]
        # External weight files (model.onnx_data, ...) sit beside the graph.
        weights = [model_path, *sorted(model_path.parent.glob(model_path.name + "*data"))]
        dim = int(self._run(["dimension probe"]).shape[1])
        self.fingerprint = ModelFingerprint(
            folder.resolve().name, dim, fingerprint_files([*weights, folder / "tokenizer.json"])
        )

    def _pad_id(self) -> int:
        padding = self._tokenizer.padding
        if padding and isinstance(padding.get("pad_id"), int):
            return padding["pad_id"]
        for token in ("[PAD]", "<pad>"):
            if (pad := self._tokenizer.token_to_id(token)) is not None:
                return pad
        return 0  # masked out anyway: the id only has to exist

    def _feed(self, name: str, values: list[list[int]]) -> np.ndarray:
        dtype = self._np.int32 if self._inputs[name] == "tensor(int32)" else self._np.int64
        return self._np.asarray(values, dtype=dtype)

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        np = self._np
        encodings = self._tokenizer.encode_batch(list(texts))
        mask = self._feed("input_ids", [e.attention_mask for e in encodings])
        feed = {"input_ids": self._feed("input_ids", [e.ids for e in encodings])}
        if "attention_mask" in self._inputs:
            feed["attention_mask"] = self._feed(
                "attention_mask", [e.attention_mask for e in encodings]
            )
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = self._feed("token_type_ids", [e.type_ids for e in encodings])
        (hidden,) = self._session.run([self._output], feed)
        hidden = np.asarray(hidden, dtype=np.float32)
        if hidden.ndim == 2:  # the export already pools
            return hidden
        weights = mask.astype(np.float32)[:, :, None]
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """See :meth:`Embedder.embed`."""
        np = self._np
        if not texts:
            return np.zeros((0, self.fingerprint.dim), dtype=np.float32)
        parts = [self._run(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]
        return _normalise(np.concatenate(parts))


def _token_limit(folder: Path) -> int:
    """The tokens per text the encoder was trained on: sentence-transformers'
    ``max_seq_length`` (256 for MiniLM), else the tokenizer's limit, at most
    MAX_TOKENS."""
    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("tokenizer_config.json", "model_max_length"),
    ):
        limit = _read_json(folder / name).get(key)
        if isinstance(limit, int) and limit > 0:
            return min(limit, MAX_TOKENS)
    return MAX_TOKENS


# --- choosing a loader -------------------------------------------------------------


def load_embedder(path: Path) -> Embedder:
    """Load the model folder at ``path``, whichever supported format it holds.

    Raises :class:`ModelError` (a :class:`~p2pmem.errors.UsageError`) for a
    missing folder, a format it does not know, or a missing optional package.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}")
    if not (folder / "tokenizer.json").is_file():
        raise ModelError(f"no tokenizer.json in {folder}: not a supported model folder")
    for candidate in ONNX_CANDIDATES:
        if (folder / candidate).is_file():
            return OnnxEmbedder(folder, folder / candidate)
    if (folder / "model.safetensors").is_file():
        if _is_static(folder / "model.safetensors"):
            return StaticEmbedder(folder)
        raise ModelError(
            f"{folder} holds transformer weights (model.safetensors) but no ONNX export; "
            "use a model2vec folder or one with model.onnx"
        )
    raise ModelError(
        f"unknown model format in {folder}: expected model.safetensors (model2vec) "
        f"or one of {', '.join(ONNX_CANDIDATES)}"
    )


def _is_static(weights_path: Path) -> bool:
    """Whether a safetensors file is a model2vec table (reads only its header)."""
    safetensors = optional_import("safetensors")
    try:
        with safetensors.safe_open(str(weights_path), framework="numpy") as handle:
            return "embeddings" in handle.keys()  # noqa: SIM118 - a safe_open handle is no dict
    except Exception as exc:
        raise ModelError(f"cannot read {weights_path}: {exc}") from None
