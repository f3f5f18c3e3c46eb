"""--add_bert (SPEC §3): messages -> windows -> encoder -> reductions -> staged vectors -> feature table.

Messages stream in `message_id` order, a chunk at a time: their vectors are staged (DuckDB) as
each chunk finishes, so a killed run resumes where it stopped and memory stays bounded by the
chunk, not the table. The feature table is built from the stage, written under a temporary
name and renamed, so a half-written table never looks complete.
"""
import functools
import os
import time
from dataclasses import replace

import numpy as np

from ..errors import BertfeatError, param
from ..models import file_sha256, resolve_model
from ..progress import Progress, notice
from ..scaleout import check_cluster
from ..settings import DEFAULT_MODEL, BertSettings, RunConfig
from ..stage import Stage, open_stage
from ..tables import check_connection_keywords, check_name, connect
from ..text.sentences import parse_rows

def add_bert(db, table, correl_field="user_id", bert_model=DEFAULT_MODEL, bert_layers=None,
             bert_layer_aggregation=None, bert_word_aggregation=None, bert_msg_aggregation=None,
             bert_no_context=False, bert_keep_msg=False, message_field="message",
             messageid_field="message_id", device="cpu", precision="fp32", batch_tokens=None,
             threads=None, model_dir=None, stage_dir=None, progress=None, chunk_messages=256,
             bert_table_name=None, bert_class=None, dlatk_compat=False, bert_tokenizer_model=None, ray=None,
             workers=None, bert_keep_tokens=False, bert_word_types=False, **conn):
    """Write the SPEC §3 feature table for `table` grouped by `correl_field`; returns a summary.

    Keywords are the flags' names (`bert_layers` is --bert_layers); `conn` takes the connection
    keywords (bertfeat.api.CONNECTION_KEYS). `bert_table_name` (DLATK's --emb_table_name) names
    the feature table instead of SPEC §3's name; `bert_class` (--emb_class) is checked against
    the model's type ('auto' or None: no check). `dlatk_compat` reproduces DLATK 1.3.15's numbers
    (its token positions; a table name ending `_dlatk`) instead of SPEC §3's. `bert_tokenizer_model`
    (DLATK's --tokenizer_model) splits words with another model's tokenizer (a name ending `_tok_...`).
    `ray` runs inference on Ray actors ('local', 'auto' or host:port; `workers` of them): the same
    table, stage and resume as a local run (bertfeat/scaleout). `bert_keep_tokens` also writes
    every token's vector, `bert_word_types` one vector per group and distinct word (tokens.py)."""
    started = time.perf_counter()
    settings = BertSettings.from_flags(bert_model, bert_layers, bert_layer_aggregation, bert_word_aggregation,
                                       bert_msg_aggregation, bert_no_context, precision, dlatk_compat,
                                       bert_tokenizer_model)
    run = RunConfig(device, threads, batch_tokens, chunk_messages, ray, workers)
    check_connection_keywords(conn, add_bert)
    check_cluster(run.ray)
    run = _device(run, settings.precision)
    correl_field = _one(correl_field)
    check_name(table, "table name")
    check_name(correl_field, "correl field")
    fields = (messageid_field, correl_field, message_field)
    # DuckDB: the file is held for the job's reads and writes, and let go during its long compute
    # (export, inference), so other processes get in between chunks (tables/duck.py)
    with connect(db, **conn) as engine, engine.hold():
        source = _message_source(engine, table, fields)
        stage_path = _stage_path(db, stage_dir, conn)
        with engine.released():
            settings, model = resolve_model(settings, model_dir, *_exporter())
        if source == table:
            notice(f"{source}_stoks not found: splitting sentences on the fly (run --add_sent_tokenized to keep them)")
        _check_class(bert_class, model.manifest)
        feat_table, msg_table = _table_names(engine, settings, table, source, correl_field, messageid_field,
                                             bert_table_name)
        types = dict(engine.columns(source))
        id_type, group_type = _duck_type(types[messageid_field]), _duck_type(types[correl_field])
        key = settings.stage_key(model.manifest, id_type, file_sha256(model.tokenizer) if settings.tokenizer else None)
        stage = Stage(stage_path, key, id_type, group_type, lock_timeout=conn.get("lock_timeout"))

        made = []  # the executor, once one is needed (a Ray pool is closed when the job ends)
        make_executor = _executor_factory(model, settings, run, made)
        try:
            shard_reads = conn if run.ray is not None and engine.kind == "mysql" else None
            counts, executor = _stage_messages(engine, stage, source, fields, source != table, make_executor,
                                               run.chunk_messages, progress, shard_reads)
        finally:
            for e in made:
                e.close()
        written = _write_feature_table(engine, stage, feat_table, functools.partial(
            stage.fill_group_features, aggregations=list(settings.msg_aggregation)), types[correl_field])
        if bert_keep_msg:
            _write_feature_table(engine, stage, msg_table, stage.fill_message_features, types[messageid_field])
        kept = {}
        if bert_keep_tokens or bert_word_types:
            from ..embedder import MessageEmbedder
            here = run if run.ray is None else _device(replace(run, ray=None, workers=None), settings.precision)
            kept = _keep_tokens(engine, stage, settings, table, source, fields, types, bert_keep_tokens,
                                bert_word_types, MessageEmbedder.for_run(model, settings, here),
                                run.chunk_messages, progress)
        stage.drop_groups()
        windows, tokens = executor.counts() if executor else (0, 0)
        summary = {"table": feat_table, "message_table": msg_table if bert_keep_msg else None,
                   "groups": engine.query(f"SELECT count(DISTINCT group_id) FROM {engine.q(feat_table)}")[0][0],
                   "rows": written, "seconds": round(time.perf_counter() - started, 2),
                   "windows": windows, "tokens": tokens, **counts, **kept,
                   # MySQL: "load data" (LOAD DATA LOCAL INFILE) or "executemany" (multi-row INSERTs)
                   **({"write_path": engine.write_path} if getattr(engine, "write_path", None) else {})}
        engine.record_run(feat_table, settings.feature_name(),
                          {**key, "msg_aggregation": settings.msg_aggregation}, summary)
    return summary


def _executor_factory(model, settings, run, made):
    """A function making the executor when the first chunk needs inference: the MessageEmbedder
    run in this process, or with `run.ray` the same object inside Ray actors (scaleout/ray_pool.py)."""
    def make():
        if run.ray is not None:
            from ..scaleout.ray_pool import RayEmbedder
            made.append(RayEmbedder(model, settings, run))
        else:
            from ..embedder import InlineExecutor, MessageEmbedder  # numba: imported when a run needs it
            made.append(InlineExecutor(MessageEmbedder.for_run(model, settings, run)))
        return made[-1]
    return make


def _keep_tokens(engine, stage, settings, table, source, fields, types, keep_tokens, word_types, embedder,
                 chunk_messages, progress):
    """--bert_keep_tokens / --bert_word_types: another pass over the messages (tokens.py)."""
    from . import tokens
    from ..settings import run_table_name
    featname = settings.feature_name(per_message=True)
    token_table = check_name(run_table_name("tok", featname, table), "token table name") if keep_tokens else None
    word_table = (check_name(run_table_name("wt", featname, table, fields[1]), "word-type table name")
                  if word_types else None)
    total, _, batches = engine.by_id(source, fields[0], list(fields), chunk_messages)
    return tokens.keep(engine, stage, _parsed(batches, source != table), embedder, token_table, word_table,
                       list(settings.word_aggregation), engine.feature_group_type(types[fields[0]]),
                       engine.feature_group_type(types[fields[1]]), total, progress)


def _stage_path(db, stage_dir, conn):
    """The stage file (cached message vectors) of `db`; an unreadable one is an error now."""
    path = os.path.join(stage_dir or conn.get("db_dir") or os.environ.get("BERTFEAT_DB_DIR") or ".",
                        f"{db}.bertfeat_stage.duckdb")
    if os.path.exists(path):
        open_stage(path, lock_timeout=conn.get("lock_timeout")).close()
    return path


def _table_names(engine, settings, table, source, correl_field, messageid_field, bert_table_name):
    """(feature table, message-level table): SPEC §3's names, or the user's for the first."""
    feat_table = check_name(bert_table_name or settings.table_name(table, correl_field), "feature table name")
    msg_table = check_name(settings.table_name(table, messageid_field, per_message=True), "feature table name")
    if bert_table_name:
        _check_own_table(engine, feat_table, {table, f"{table}_stoks", source, msg_table})
    return feat_table, msg_table


def _device(run, precision):
    """`run` with the device to run on; a missing CUDA provider is an error before any work. With
    --ray, the workers' nodes have the GPUs: the Ray executor places and checks them."""
    from ..runtime import resolve_device
    device = run.device
    if precision == "int8" and device == "cuda":
        raise BertfeatError(f"{param('--precision', 'int8')} runs on the CPU: use {param('--device', 'cpu')},"
                            " or fp32/fp16 on CUDA")
    if precision == "int8" and device == "auto":
        device = "cpu"  # int8 sessions are CPU sessions
    if run.ray is not None:
        return replace(run, device=device)
    device = resolve_device(device)
    if precision == "fp16" and device == "cpu":
        notice(f"{param('--precision', 'fp16')} is meant for {param('--device', 'cuda')}: on the CPU it"
               " is slower than fp32")
    return replace(run, device=device)


def _norm_class(name):
    """'BertModel', 'bert', 'XLMRobertaModel', 'xlm-roberta' -> a comparable family name."""
    name = str(name).lower().replace("-", "").replace("_", "")
    for suffix in ("formaskedlm", "model"):
        name = name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name
    return name


def _check_class(bert_class, manifest):
    """DLATK's --emb_class picks the Hugging Face class; bertfeat reads the type from the model's
    config, so a class is only checked against it (auto, or nothing given: no check)."""
    if bert_class in (None, "") or _norm_class(bert_class) in ("auto", "automodel"):
        return
    if _norm_class(bert_class) != _norm_class(manifest.model_type):
        raise BertfeatError(f"{param('--bert_class', bert_class)} does not match the model's type"
                            f" {manifest.model_type!r} (its config.json): leave it out or use"
                            f" {param('--bert_class', 'auto')}")


def _check_own_table(engine, name, protected):
    """An explicit feature table name (--emb_table_name) must not replace the messages, their
    sentences (`<table>_stoks`, made later by --add_sent_tokenized when not there yet), the
    message-level table or any table that is not a feature table."""
    if name in protected:
        raise BertfeatError(f"{param('--bert_table_name', name)} is the name of a table this run reads or"
                            " writes: choose another name")
    if engine.table_exists(name):
        cols = {c.lower() for c, _ in engine.columns(name)}
        if not {"group_id", "feat", "value", "group_norm"} <= cols:
            raise BertfeatError(f"{param('--bert_table_name', name)}: a table of that name exists and is not a"
                                " feature table; bertfeat will not replace it: choose another name")


def _one(correl_field):
    if isinstance(correl_field, (list, tuple)):
        if len(correl_field) != 1:
            raise BertfeatError(f"--add_bert takes one {param('--correl_field')} (got {len(correl_field)})")
        return correl_field[0]
    return correl_field


def _message_source(engine, table, fields):
    """`<table>_stoks` when there, else `table`, with the fields and at least one message id."""
    stoks = f"{table}_stoks"
    source = stoks if engine.table_exists(stoks) else table
    engine.require_table(source, list(fields), ["--messageid_field", "--correl_field", "--message_field"])
    mid = engine.q(fields[0], "column name")
    if not engine.query(f"SELECT count(*) FROM {engine.q(source)} WHERE {mid} IS NOT NULL")[0][0]:
        raise BertfeatError(f"no messages in table {source!r} (no row has a {fields[0]}):"
                            " nothing to embed, no feature table written")
    return source


def _exporter():
    """(export, find_source): the exporter's, export only where torch is here (runs never need
    it); (None, None) where the exporter cannot even be imported."""
    try:
        from .. import exporter
    except ImportError:
        return None, None
    return (exporter.export if exporter.available() else None), exporter.resolve_source


# chunks read and looked up in the stage together: the identical-text lookup scans the stage's
# hashes once per block, a cost that grows with the stage (at 10^6 messages, 16 chunks a block:
# 90 of a first run's 538 s; bench/LOG.md "Growth"); 64 chunks of 256 messages are 16,384 rows
LOOKUP_CHUNKS = 64


def _stage_messages(engine, stage, source, fields, from_stoks, make_executor, chunk_messages, progress,
                    shard_reads=None):
    """Stage the vectors of every usable message of `source`, read a chunk at a time in id order;
    returns the counts and the executor (None when every vector was already staged).
    `shard_reads` (the MySQL connection keywords): Ray workers read the chunks' rows themselves.

    A chunk's texts that are neither staged nor in flight go to the executor (inline: computed at
    once; Ray: on actors, several chunks in flight while the next are read); vectors are staged as
    they come back, each batch in one transaction, so a kill leaves whole batches to resume from.
    """
    # reused: messages not embedded by this run; already_staged: of those, the ones a previous
    # run (or an interrupted one) staged; the rest took another message's identical text
    counts = {"messages": 0, "reused": 0, "already_staged": 0, "embedded": 0, "skipped": {}}
    waiting = {}  # text hash sent for inference -> [(message_id, group_id)] that take its vector
    executor = None

    def skip(why, n=1):
        counts["skipped"][why] = counts["skipped"].get(why, 0) + n

    def collect(wait):
        """Stage what the executor has finished (waiting, without the files, for one if `wait`)."""
        results = executor.done(wait=False)
        if wait and not results:
            with engine.released(), stage.released():  # inference needs neither file: others get in
                results = executor.done(wait=True)
        for hashes, vectors in results:
            rows, used = [], []
            for h, vec in zip(hashes, vectors):
                members = waiting.pop(h)
                if vec is None:
                    skip("no sentences", len(members))
                    continue
                rows.extend((mid, h, vec) for mid, _ in members)
                used.extend(members)
                counts["embedded"] += 1
                counts["reused"] += len(members) - 1  # the same text in other messages
            stage.put(rows, used)
            counts["messages"] += len(used)

    # rows are read, and looked up in the stage, LOOKUP_CHUNKS chunks at a time: the lookup of
    # another message's identical text scans the whole stage, so it runs once per block, not
    # once per chunk (bench/LOG.md "Growth"); inference still gets a chunk at a time
    total, null_ids, batches = engine.by_id(source, fields[0], list(fields), chunk_messages * LOOKUP_CHUNKS)
    if null_ids:
        skip("NULL message_id", null_ids)
    chunks = None
    if shard_reads is not None:  # Ray workers read the rows themselves; here, only where shards start
        executor = make_executor()
        if executor.can_read(shard_reads):
            chunks = executor.read_shards(engine.id_starts(source, fields[0], chunk_messages),
                                          (engine.db, shard_reads, source, fields, from_stoks))
    chunks = chunks or _parsed(batches, from_stoks)
    with stage.hold(), Progress("messages", total, enabled=progress) as bar:
        for batch, n_rows, skipped in chunks:
            for why, n in skipped.items():
                skip(why, n)
            todo = list(_reuse_staged(stage, batch, waiting, counts).items())
            bar.update(n_rows - sum(len(waiting[h]) for h, _ in todo))  # reused or skipped
            if executor:
                collect(wait=False)
            for k in range(0, len(todo), chunk_messages):
                part = dict(todo[k:k + chunk_messages])
                if executor is None:  # only when something needs inference
                    with engine.released(), stage.released():
                        executor = make_executor()
                members = sum(len(waiting[h]) for h in part)
                executor.submit(list(part), list(part.values()))  # runs in done(), or elsewhere
                collect(wait=executor.pending >= executor.depth)
                bar.status = executor.status()
                bar.update(members)
        while executor and executor.pending:
            collect(wait=True)
    if not counts["messages"]:
        why = ", ".join(f"{n} {w}" for w, n in counts["skipped"].items()) or "none"
        raise BertfeatError(f"no usable messages in table {source!r} (skipped: {why}):"
                            " no feature table written")
    return counts, executor


def _parsed(batches, from_stoks):
    """(messages [(message_id, group_id, sentences, text hash)], rows read, {why skipped: n}) of
    each batch of rows (message_id, group_id, message) in id order."""
    last_id = object()
    for rows in batches:
        batch, last_id, skipped = parse_rows(rows, from_stoks, last_id)
        yield batch, len(rows), skipped


def _reuse_staged(stage, batch, waiting, counts):
    """Stage what a chunk's messages [(message_id, group_id, sentences, text hash)] can take from
    the stage (the same message with the same text, or another message's identical text), in one
    transaction; a message whose text is in flight waits for it (`waiting`). Returns the texts to
    embed {text hash: sentences}, each once."""
    done, by_hash = stage.staged([b[0] for b in batch], [b[3] for b in batch])
    todo, rows, used = {}, [], []
    for mid, gid, sents, h in batch:
        if done.get(mid) == h:
            used.append((mid, gid))
            counts["already_staged"] += 1
        elif h in by_hash:
            rows.append((mid, h, np.asarray(by_hash[h])))
            used.append((mid, gid))
        else:
            if h not in waiting:
                todo[h], waiting[h] = sents, []
            waiting[h].append((mid, gid))
    stage.put(rows, used)
    counts["reused"] += len(used)
    counts["messages"] += len(used)
    return todo


def _duck_type(sql_type):
    t = sql_type.lower()
    return "BIGINT" if "int" in t else "VARCHAR"


def _write_feature_table(engine, stage, out_table, fill, group_sql_type):
    """Write under a temporary name unique to this run, then swap it in: an interrupted write
    never looks complete, concurrent runs never share a name, readers never see no table.

    DuckDB reads the stage file directly (rows never pass through Python); MySQL gets batched
    multi-row inserts of the rows the stage computes.
    """
    tmp = engine.temp_name(out_table)
    engine.create_feature_table(tmp, engine.feature_group_type(group_sql_type))
    try:
        engine.insert_staged(tmp, stage, fill)
        n = engine.query(f"SELECT count(*) FROM {engine.q(tmp)}")[0][0]
        engine.swap_in(tmp, out_table)
    except BaseException:
        engine.drop_table(tmp)
        engine.commit()
        raise
    engine.index_feature_table(out_table)
    engine.commit()
    return n
