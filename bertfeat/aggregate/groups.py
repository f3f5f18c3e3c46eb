"""Staged message vectors (a DuckDB file) and the group reductions run from them.

The stage is keyed by everything that determines a message vector (model fingerprint,
precision, layers, layer and word aggregations, context mode): one table per key, rows
(message_id, text_hash, vec). Message aggregation only reads it, so changing
--bert_msg_aggregation or asking for the message-level table needs no inference.
"""
import hashlib
import json
import os

import duckdb

from ..tables.duck import insert_columns
from . import ABBR

DUCK_AGG = {"mean": "avg", "median": "median", "max": "max", "min": "min", "sum": "sum",
            "std": "stddev_pop"}


def stage_key(settings):
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


class Stage:
    def __init__(self, path, settings, id_type, group_type):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.con = duckdb.connect(path)
        self.key = stage_key(settings)
        self.table = f"vec_{self.key}"
        self.groups = f"groups_{self.key}"
        self.con.execute("CREATE TABLE IF NOT EXISTS stage_settings (key VARCHAR PRIMARY KEY, settings VARCHAR)")
        self.con.execute("INSERT OR IGNORE INTO stage_settings VALUES (?, ?)",
                         [self.key, json.dumps(settings, sort_keys=True)])
        self.con.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (message_id {id_type} PRIMARY KEY,"
                         " text_hash VARCHAR, vec DOUBLE[])")
        self.con.execute(f"CREATE OR REPLACE TABLE {self.groups} (message_id {id_type}, group_id {group_type})")

    def add_groups(self, rows):
        """(message_id, group_id) of the messages this run uses."""
        if rows:
            insert_columns(self.con, self.groups, ["message_id", "group_id"], rows)

    def staged(self, message_ids, text_hashes):
        """{message_id: text_hash} already staged, and {text_hash: vec} for the given hashes."""
        # semi-joins against the chunk's keys (hash joins), not a per-row list search
        done = dict(self.con.execute(
            f"SELECT message_id, text_hash FROM {self.table} WHERE message_id IN (SELECT unnest(?))",
            [list(message_ids)]).fetchall())
        by_hash = dict(self.con.execute(
            f"SELECT text_hash, any_value(vec) FROM {self.table} WHERE text_hash IN (SELECT unnest(?))"
            " GROUP BY text_hash", [list(set(text_hashes))]).fetchall())
        return done, by_hash

    def put(self, rows):
        """Stage (message_id, text_hash, vec) rows in one transaction (a kill leaves whole chunks)."""
        if rows:
            # one transaction: a kill leaves whole chunks staged or none
            self.con.execute("BEGIN")
            self.con.execute(f"DELETE FROM {self.table} WHERE message_id IN (SELECT unnest(?))",
                             [[m for m, _, _ in rows]])
            insert_columns(self.con, self.table, ["message_id", "text_hash", "vec"],
                           [(m, h, v.tolist()) for m, h, v in rows])
            self.con.execute("COMMIT")

    def group_features(self, aggregations, batch_size=100_000):
        """Yield batches of (group_id, feat, value) ordered by group, aggregation, dimension."""
        parts = ", ".join(f"{DUCK_AGG[a]}(u.v) AS a{k}" for k, a in enumerate(aggregations))
        cur = self.con.cursor()
        cur.execute(
            f"SELECT g.group_id, u.i, {parts} FROM {self.groups} g JOIN"
            f" (SELECT message_id, unnest(range(len(vec))) AS i, unnest(vec) AS v FROM {self.table}) u"
            " USING (message_id) GROUP BY g.group_id, u.i ORDER BY g.group_id, u.i")
        names = [ABBR[a] for a in aggregations]
        buffered = []
        current, rows = None, []
        while batch := cur.fetchmany(batch_size):
            for group_id, i, *vals in batch:
                if group_id != current:
                    buffered.extend(self._order(rows, names))
                    current, rows = group_id, []
                rows.append((group_id, i, vals))
            if len(buffered) >= batch_size:
                yield buffered
                buffered = []
        buffered.extend(self._order(rows, names))
        if buffered:
            yield buffered
        cur.close()

    @staticmethod
    def _order(rows, names):
        """One group's rows: all dimensions of the first aggregation, then the next."""
        return [(g, f"{i}{names[k]}", float(vals[k])) for k in range(len(names)) for g, i, vals in rows]

    def message_features(self, batch_size=100_000):
        """Yield batches of (message_id, feat, value) for the message-level table."""
        cur = self.con.cursor()
        cur.execute(f"SELECT message_id, i, v FROM (SELECT message_id, unnest(range(len(vec))) AS i,"
                    f" unnest(vec) AS v FROM {self.table} WHERE message_id IN"
                    f" (SELECT message_id FROM {self.groups})) ORDER BY message_id, i")
        while batch := cur.fetchmany(batch_size):
            yield [(m, f"{i}", float(v)) for m, i, v in batch]
        cur.close()

    def close(self):
        self.con.close()
