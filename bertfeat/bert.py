"""--add_bert (SPEC §3): messages -> windows -> encoder -> reductions -> staged vectors -> feature table.

Messages stream in `message_id` order, a chunk at a time: their vectors are staged (DuckDB) as
each chunk finishes, so a killed run resumes where it stopped and memory stays bounded by the
chunk, not the table. The feature table is built from the stage, written under a temporary
name and renamed, so a half-written table never looks complete.
"""
import hashlib
import json
import os
import time

import numpy as np

from .aggregate import ABBR, AGGREGATIONS, LAYER_AGGREGATIONS
from .aggregate.groups import Stage, open_stage
from .errors import BertfeatError
from .models import canonical_name, check_precision, layer_count, locate, short_name
from .progress import Progress, notice
from .tables import MAX_NAME, check_name, connect

# --- settings -------------------------------------------------------------------------------
def parse_aggregations(values, flag, default, allow_concatenate=False):
    values = list(values or [default])
    allowed = LAYER_AGGREGATIONS if allow_concatenate else AGGREGATIONS
    for v in values:
        if v not in allowed:
            hint = "" if allow_concatenate or v != "concatenate" else " (concatenate is for layers only)"
            raise BertfeatError(f"unknown {flag} {v!r}{hint}: choose from {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise BertfeatError(f"{flag} lists an aggregation twice: {' '.join(values)}")
    return values


def normalize_layers(layers, n_layers):
    """SPEC §3: 0 = first block's output, negatives from the end; deduplicated and sorted."""
    if layers is None or len(layers) == 0:
        layers = [n_layers - 2 if n_layers > 1 else 0]
    out = set()
    for layer in layers:
        try:
            layer = int(layer)
        except (TypeError, ValueError):
            raise BertfeatError(f"--bert_layers takes integers, not {layer!r}") from None
        if not -n_layers <= layer < n_layers:
            raise BertfeatError(f"layer {layer} out of range: this model has {n_layers} layers"
                                f" (valid --bert_layers: 0..{n_layers - 1} or -{n_layers}..-1)")
        out.add(layer % n_layers)
    return sorted(out)


def feature_name(model, layers, layer_aggs, word_aggs, msg_aggs, no_context, precision="fp32"):
    """SPEC §3 featname; msg_aggs None gives the message-level table's name (no message aggregation).

    Reduced precision appends `_int8` or `_fp16`, so it never overwrites the fp32 table of the same
    settings.
    """
    name = short_name(model) + "_" + ("noc_" if no_context else "")
    name += "".join(ABBR[a] for a in msg_aggs or [])
    name += "".join(f"L{layer}" for layer in layers) + "".join(ABBR[a] for a in layer_aggs)
    if word_aggs != ["mean"]:
        name += "w" + "".join(ABBR[a] for a in word_aggs)
    if precision != "fp32":
        name += f"_{precision}"
    return name


def table_name(featname, table, correl, max_len=MAX_NAME):
    """`feat$<featname>$<table>$<correl>$16to16`, shortened deterministically past `max_len`."""
    full = f"feat${featname}${table}${correl}$16to16"
    if len(full) <= max_len:
        return full
    digest = hashlib.sha1(full.encode()).hexdigest()[:8]
    tail = f"${table}${correl}$16to16"
    keep = max_len - len(tail) - len("feat$") - 9
    if keep < 4:
        tail = f"${digest}$16to16"
        keep = max_len - len(tail) - len("feat$")
        return f"feat${featname[:keep]}{tail}"
    return f"feat${featname[:keep]}_{digest}{tail}"


# --- the job ----------------------------------------------------------------------------------
def add_bert(db, table, correl_field="user_id", bert_model="base-uncased", bert_layers=None,
             bert_layer_aggregation=None, bert_word_aggregation=None, bert_msg_aggregation=None,
             bert_no_context=False, bert_keep_msg=False, message_field="message",
             messageid_field="message_id", device="cpu", precision="fp32", batch_tokens=None,
             threads=None, model_dir=None, stage_dir=None, progress=None, chunk_messages=256, **conn):
    """Write the SPEC §3 feature table for `table` grouped by `correl_field`; returns a summary."""
    started = time.perf_counter()
    check_precision(precision)
    for flag, value in (("--batch_tokens", batch_tokens), ("--threads", threads), ("chunk_messages", chunk_messages)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BertfeatError(f"{flag} must be a positive whole number (got {value!r}); leave it out"
                                " for the default")
    from .runtime import resolve_device
    if precision == "int8" and device == "cuda":
        raise BertfeatError("--precision int8 runs on the CPU: use --device cpu, or fp32/fp16 on CUDA")
    if precision == "int8" and device == "auto":
        device = "cpu"  # int8 sessions are CPU sessions
    device = resolve_device(device)  # a missing CUDA provider is an error before any work
    if precision == "fp16" and device == "cpu":
        notice("--precision fp16 is meant for --device cuda: on the CPU it is slower than fp32")
    layer_aggs = parse_aggregations(bert_layer_aggregation, "--bert_layer_aggregation", "concatenate", True)
    word_aggs = parse_aggregations(bert_word_aggregation, "--bert_word_aggregation", "mean")
    msg_aggs = parse_aggregations(bert_msg_aggregation, "--bert_msg_aggregation", "mean")
    if isinstance(correl_field, (list, tuple)):
        if len(correl_field) != 1:
            raise BertfeatError("--add_bert takes one correl field (-c)")
        correl_field = correl_field[0]
    check_name(table, "table name")
    check_name(correl_field, "correl field")
    name = canonical_name(bert_model)

    # DuckDB: the file is held for the job's reads and writes, and let go during its long compute
    # (export, inference), so other processes get in between chunks (tables/duck.py)
    with connect(db, **conn) as engine, engine.hold():
        stoks = f"{table}_stoks"
        source = stoks if engine.table_exists(stoks) else table
        engine.require_table(source, [messageid_field, correl_field, message_field])
        mid = engine.q(messageid_field, "column name")
        if not engine.query(f"SELECT count(*) FROM {engine.q(source)} WHERE {mid} IS NOT NULL")[0][0]:
            raise BertfeatError(f"no messages in table {source!r} (no row has a {messageid_field}):"
                                " nothing to embed, no feature table written")
        stage_path = os.path.join(stage_dir or conn.get("db_dir") or os.environ.get("BERTFEAT_DB_DIR") or ".",
                                  f"{db}.bertfeat_stage.duckdb")
        if os.path.exists(stage_path):
            open_stage(stage_path, lock_timeout=conn.get("lock_timeout")).close()  # unreadable: say so now
        from . import exporter  # exports when torch is here; runs never need it
        can_export = exporter.available()
        with engine.released():
            n_layers = layer_count(name, model_dir, exporter.resolve_source if can_export else None)
        layers = normalize_layers(bert_layers, n_layers)
        if source == table:
            notice(f"{stoks} not found: splitting sentences on the fly (run --add_sent_tokenized to keep them)")
        featname = feature_name(name, layers, layer_aggs, word_aggs, msg_aggs, bert_no_context, precision)
        msg_featname = feature_name(name, layers, layer_aggs, word_aggs, None, bert_no_context, precision)
        feat_table = check_name(table_name(featname, table, correl_field), "feature table name")
        msg_table = check_name(table_name(msg_featname, table, messageid_field), "feature table name")
        types = dict(engine.columns(source))
        id_type = _duck_type(types[messageid_field])
        group_type = _duck_type(types[correl_field])

        with engine.released():
            entry = locate(name, layers[-1] + 1, precision, model_dir, verify=True,
                           export=exporter.export if can_export else None)
        from .models import MIN_COSINE, read_manifest, usable_layers
        manifest = read_manifest(entry)
        ok = usable_layers(manifest)
        weak = [k for k in layers if k not in ok]
        if weak:
            per_layer = manifest.get("fp32_layer_cosine") or []
            shown = ", ".join(f"layer {k} {per_layer[k]:.4f}" if k < len(per_layer) else f"layer {k}" for k in weak)
            raise BertfeatError(
                f"--precision {precision} of {name} does not agree with fp32 closely enough on this"
                f" machine ({shown}; window cosine < {manifest.get('min_cosine', MIN_COSINE)}): use"
                f" --precision fp32" + (f", or --bert_layers among {' '.join(map(str, ok))}" if ok else ""))
        # the stage key holds the graph's content hash (verified above): vectors computed by any
        # other file, a corrupted one included, are never reused
        settings = {"model": name, "fingerprint": manifest["fingerprint"],
                    "model_sha256": manifest["files"]["model.onnx"], "id_type": id_type,
                    "precision": precision,
                    "layers": layers, "layer_aggregation": layer_aggs, "word_aggregation": word_aggs,
                    "no_context": bool(bert_no_context)}
        stage = Stage(stage_path, settings, id_type, group_type, lock_timeout=conn.get("lock_timeout"))
        counts = {"messages": 0, "reused": 0, "embedded": 0, "skipped": {}}

        def skip(why, n=1):
            counts["skipped"][why] = counts["skipped"].get(why, 0) + n

        total, null_ids, batches = engine.by_id(source, messageid_field,
                                                [messageid_field, correl_field, message_field], chunk_messages)
        if null_ids:
            skip("NULL message_id", null_ids)
        from_stoks = source != table
        last_id = object()
        embedder = None

        def embed(messages):
            nonlocal embedder
            with engine.released(), stage.released():
                if embedder is None:  # only when something needs inference
                    from .embedder import MessageEmbedder
                    embedder = MessageEmbedder(entry, layers, layer_aggs, word_aggs, bert_no_context,
                                               device=device, threads=threads, batch_tokens=batch_tokens)
                return embedder(messages)

        with stage.hold(), Progress("messages", total, enabled=progress) as bar:
            for rows in batches:
                batch = []
                for mid, gid, message in rows:
                    if mid == last_id:  # rows come in message_id order: repeats are adjacent
                        skip("repeated message_id")
                        continue
                    last_id = mid
                    if gid is None:
                        skip("NULL group id")
                        continue
                    if message is None:
                        skip("NULL message")
                        continue
                    sents = _sentences(message, from_stoks)
                    if sents is None:
                        skip("invalid JSON in _stoks")
                        continue
                    batch.append((mid, gid, sents, _text_hash(sents)))
                _stage_chunk(stage, batch, embed, counts, skip)
                bar.update(len(rows))

        if not counts["messages"]:
            why = ", ".join(f"{n} {w}" for w, n in counts["skipped"].items()) or "none"
            raise BertfeatError(f"no usable messages in table {source!r} (skipped: {why}):"
                                " no feature table written")
        written = {}
        outputs = [(feat_table, stage.group_features_sql, (msg_aggs,), types[correl_field])]
        if bert_keep_msg:
            outputs.append((msg_table, stage.message_features_sql, (), types[messageid_field]))
        for out_table, make_sql, extra, gtype in outputs:
            written[out_table] = _write_feature_table(engine, stage, out_table, make_sql, extra, gtype)
        stage.drop_groups()
        groups = engine.query(f"SELECT count(DISTINCT group_id) FROM {engine.q(feat_table)}")[0][0]
        seconds = round(time.perf_counter() - started, 2)
        summary = {"table": feat_table, "message_table": msg_table if bert_keep_msg else None,
                   "groups": groups, "rows": written[feat_table], "seconds": seconds,
                   "windows": embedder.encoder.windows_run if embedder else 0,
                   "tokens": embedder.encoder.tokens_run if embedder else 0, **counts}
        engine.record_run(feat_table, featname, {**settings, "msg_aggregation": msg_aggs}, summary)
    return summary


def _stage_chunk(stage, batch, embed, counts, skip):
    """Stage the vectors of a chunk's messages [(message_id, group_id, sentences, text hash)].

    A message already staged with the same text, or sharing its text with a staged message, is
    reused; each remaining distinct text is embedded once. One transaction per chunk.
    """
    done, by_hash = stage.staged([b[0] for b in batch], [b[3] for b in batch])
    todo, staged_rows = {}, []
    for mid, _, sents, h in batch:
        if done.get(mid) == h:
            counts["reused"] += 1
        elif h in by_hash:
            staged_rows.append((mid, h, np.asarray(by_hash[h])))
            counts["reused"] += 1
        else:
            todo.setdefault(h, (sents, []))[1].append(mid)
    empty = set()
    if todo:
        for h, vec in zip(todo, embed([sents for sents, _ in todo.values()])):
            if vec is None:
                empty.add(h)
            else:
                staged_rows.extend((mid, h, vec) for mid in todo[h][1])
                counts["embedded"] += 1
                counts["reused"] += len(todo[h][1]) - 1  # the same text again in this chunk
    used = []
    for mid, gid, _, h in batch:
        if h in empty:
            skip("no sentences")
        else:
            used.append((mid, gid))
    stage.put(staged_rows, used)
    counts["messages"] += len(used)


def _duck_type(sql_type):
    t = sql_type.lower()
    return "BIGINT" if "int" in t else "VARCHAR"


def _text_hash(sents):
    return hashlib.sha1(json.dumps(sents, ensure_ascii=False).encode()).hexdigest()


def _sentences(message, from_stoks):
    """Sentences of a row: the JSON array of a _stoks row, or split on the fly. None = unusable."""
    if message is None:
        return None
    if from_stoks:
        if isinstance(message, (bytes, bytearray)):
            message = bytes(message).decode("utf-8", errors="replace")
        try:
            sents = json.loads(message)
        except ValueError:
            return None
        if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
            return None
        return [s for s in sents if s.strip()]
    from .text.sentences import split_sentences
    return split_sentences(message)


def _write_feature_table(engine, stage, out_table, make_sql, extra, group_sql_type):
    """Write under a temporary name unique to this run, then swap it in: an interrupted write
    never looks complete, concurrent runs never share a name, readers never see no table.

    DuckDB reads the stage file directly (rows never pass through Python); MySQL gets batched
    multi-row inserts of the rows the stage computes.
    """
    tmp = engine.temp_name(out_table)
    engine.create_feature_table(tmp, engine.feature_group_type(group_sql_type))
    try:
        engine.insert_staged(tmp, stage, make_sql, extra)
        n = engine.query(f"SELECT count(*) FROM {engine.q(tmp)}")[0][0]
        engine.swap_in(tmp, out_table)
    except BaseException:
        engine.drop_table(tmp)
        engine.commit()
        raise
    engine.index_feature_table(out_table)
    engine.commit()
    return n
