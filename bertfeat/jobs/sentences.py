"""--add_sent_tokenized (SPEC §2): `<table>_stoks`, every column of `table` with its message as a
JSON array of sentences, written in id order under a partial name that a rerun resumes."""
from __future__ import annotations

import time

from ..errors import param
from ..progress import Progress, notice
from ..scaleout import check_cluster
from ..settings import RunConfig
from ..tables import check_name, connect
from ..text.sentences import split_rows


def add_sent_tokenized(db: str, table: str, message_field: str = "message", messageid_field: str = "message_id",
                       overwrite: bool = False, progress: bool | None = None, batch_size: int = 1000,
                       ray: str | None = None, workers: int | None = None, **conn) -> dict:
    """Create `<table>_stoks`: every column of `table`, `message_field` as a JSON array of sentences.

    Written into `<table>_stoks__partial` and renamed when complete, so an interrupted run is
    never mistaken for a finished one; a rerun resumes after the last message_id written.
    `ray` ('local', 'auto' or host:port): batches are split by Ray tasks (`workers` at once),
    written in id order as here.
    """
    started = time.perf_counter()
    check_name(table, "table name")
    run = RunConfig(ray=ray, workers=workers)
    check_cluster(run.ray)
    out = check_name(f"{table}_stoks", "sentence table name")
    partial = check_name(f"{out}__partial", "sentence table name")
    with connect(db, **conn) as engine, engine.hold():  # let go of a DuckDB file while splitting
        columns = engine.require_table(table, [messageid_field, message_field],
                                       ["--messageid_field", "--message_field"])
        # read/written count the whole table, a resumed run's earlier part (resumed_messages) included
        summary = {"table": out, "read": 0, "written": 0, "skipped": {}, "resumed_after": None,
                   "resumed_messages": 0}
        if engine.table_exists(out):
            if not overwrite:
                notice(f"{out} already exists: nothing to do (pass {param('--overwrite', True)} to rebuild it)")
                summary["written"] = engine.query(f"SELECT count(*) FROM {engine.q(out)}")[0][0]
                return summary
        last = _start_partial(engine, table, partial, out, messageid_field, message_field, overwrite)
        summary["resumed_after"] = last
        if last is not None:  # the rows before `last` were split by the interrupted run
            mid = engine.q(messageid_field, "column name")
            summary["resumed_messages"] = summary["read"] = engine.query(
                f"SELECT count(*) FROM {engine.q(table)} WHERE {mid} < ?", [last])[0][0]
            summary["written"] = engine.query(f"SELECT count(*) FROM {engine.q(partial)}")[0][0]
        total, null_ids, batches = engine.by_id(table, messageid_field, columns, batch_size, from_id=last)
        if null_ids:
            summary["skipped"]["NULL message_id"] = null_ids
        msg_index = columns.index(message_field)
        if run.ray is not None:
            from ..scaleout.ray_pool import split_on_ray
            split = split_on_ray(batches, msg_index, run.ray, run.workers, engine.released)
        else:
            split = _split_here(batches, msg_index, engine.released)
        with Progress("sentences", total, enabled=progress) as bar:
            for rows, out_rows, skipped in split:
                for why, n in skipped.items():
                    summary["skipped"][why] = summary["skipped"].get(why, 0) + n
                engine.insert_rows(partial, columns, out_rows)
                engine.commit()
                summary["read"] += len(rows)
                summary["written"] += len(out_rows)
                bar.update(len(rows))
        engine.set_table_comment(partial, "")
        engine.swap_in(partial, out)
        engine.commit()
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _start_partial(engine, table, partial, out, messageid_field, message_field, overwrite):
    """Create or resume `partial`; returns the message_id to resume after (None: from the start).

    A partial table is resumed only when the message table is what it was when the partial was
    started (same ids and texts, kept as its comment): otherwise its rows are stale and it
    starts over. The last id's rows are redone (they may be half written)."""
    mid = engine.q(messageid_field, "column name")
    last = None
    checksum = engine.content_checksum(table, [messageid_field, message_field])
    if engine.table_exists(partial):
        if overwrite:
            engine.drop_table(partial)
        elif engine.table_comment(partial) != f"bertfeat source {checksum}":
            notice(f"{table} changed since {partial} was started: starting {out} over")
            engine.drop_table(partial)
        else:
            last = engine.query(f"SELECT max({mid}) FROM {engine.q(partial)}")[0][0]
            if last is not None:
                engine.execute(f"DELETE FROM {engine.q(partial)} WHERE {mid} = ?", [last])
                engine.commit()
                notice(f"resuming {out} from {messageid_field} {last}")
    if not engine.table_exists(partial):
        engine.copy_schema(table, partial, message_field)
        engine.set_table_comment(partial, f"bertfeat source {checksum}")
        engine.commit()
    return last


def _split_here(batches, msg_index, released):
    """(rows, rows with sentences, skipped) of each batch, split in this process while the
    engine lets go of a DuckDB file (splitting needs no database: other processes get in)."""
    for rows in batches:
        with released():
            out_rows, skipped = split_rows(rows, msg_index)
        yield rows, out_rows, skipped
