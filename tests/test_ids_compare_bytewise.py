"""Ids and group ids compare byte for byte on both engines (issue 22.2): MySQL's default
collations fold case and ignore trailing spaces, so `abc`/`ABC` and `x`/`x ` collided on import
and `Bob`/`bob` were merged into one group by the server."""
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bertfeat
from bertfeat.tables import connect
from tiny_models import make_model
from helpers import write_rows_csv

ENGINES = ["duckdb", "mysql"]
# ids that a case-insensitive or space-padding comparison takes for one another
variants = st.lists(st.sampled_from(["abc", "ABC", "Abc", "x", "x ", "x  ", "X", "bob", "Bob", "BOB", "é", "É",
                                     "e", "a b", "a  b"]), min_size=2, max_size=12, unique=True)


def _conn(engine_name, tmp_path, request):
    if engine_name == "duckdb":
        return f"ids_{uuid.uuid4().hex[:8]}", {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    return request.getfixturevalue("mysql_db")


@pytest.mark.parametrize("engine_name", ENGINES)
def test_ids_differing_by_case_or_trailing_space_import_and_group_apart(engine_name, tmp_path, request):
    db, conn = _conn(engine_name, tmp_path, request)
    rows = [{"message_id": mid, "user_id": user, "message": f"Post {k} by {user!r}. It has two sentences."}
            for k, (mid, user) in enumerate([("abc", "Bob"), ("ABC", "bob"), ("x", "Bob"), ("x ", "bob "),
                                              ("y", "BOB")])]
    csv_path = write_rows_csv(tmp_path / "ids.csv", rows)
    assert bertfeat.import_csv(db, "msgs", str(csv_path), progress=False, **conn)["rows"] == 5
    bertfeat.add_sent_tokenized(db, "msgs", progress=False, **conn)
    model = make_model("bert", tmp_path / "tiny")
    s = bertfeat.add_bert(db, "msgs", "user_id", bert_model=str(model), bert_layers=[0],
                          model_dir=str(tmp_path / "m"), stage_dir=str(tmp_path), bert_keep_msg=True,
                          progress=False, **conn)
    with connect(db, **conn) as engine:
        ids = sorted(r[0] for r in engine.query("SELECT message_id FROM msgs"))
        groups = sorted(r[0] for r in engine.query(f'SELECT DISTINCT group_id FROM {engine.q(s["table"])}'))
        per_message = engine.query(f'SELECT COUNT(DISTINCT group_id) FROM {engine.q(s["message_table"])}')[0][0]
    assert ids == sorted(["abc", "ABC", "x", "x ", "y"])
    assert groups == sorted(["Bob", "bob", "bob ", "BOB"]) and s["groups"] == 4 and s["messages"] == 5
    assert per_message == 5


@pytest.mark.parametrize("engine_name", ENGINES)
def test_any_ids_round_trip_distinct(engine_name, tmp_path, request):
    """Hypothesis over ids that differ only by case, accents or spaces: every one imports as its
    own primary key and comes back byte for byte."""
    db, conn = _conn(engine_name, tmp_path, request)

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(variants)
    def check(ids):
        path = write_rows_csv(tmp_path / "v.csv", [{"message_id": i, "user_id": i, "message": "hi."} for i in ids])
        bertfeat.import_csv(db, "msgs", str(path), overwrite=True, progress=False, **conn)
        with connect(db, **conn) as engine:
            back = [r[0] for r in engine.query("SELECT message_id FROM msgs")]
            distinct = engine.query("SELECT COUNT(DISTINCT message_id) FROM msgs")[0][0]
        assert sorted(back) == sorted(ids) and distinct == len(ids)
    check()


def test_mysql_write_paths_give_the_same_table(tmp_path, mysql_db, monkeypatch):
    """Issue 24.3: LOAD DATA LOCAL INFILE (where the server allows it) and multi-row INSERTs
    write the same feature table, byte for byte, with group ids that CSV, SQL and the collation
    could each get wrong (quotes, commas, newlines, backslashes, NULL-like text, trailing spaces,
    case); the summary and bertfeat_runs say which path wrote it."""
    db, conn = mysql_db
    groups = ['Bob', 'bob', 'bob ', 'a,b', 'say "hi"', 'line\nbreak', 'back\\slash', 'NULL', '\\N', "it's", 'é']
    rows = [{"message_id": k + 1, "user_id": g, "message": f"Post {k}. By {g!r}, with two sentences."}
            for k, g in enumerate(groups * 2)]
    bertfeat.import_csv(db, "msgs", str(write_rows_csv(tmp_path / "g.csv", rows)), progress=False, **conn)
    model = make_model("bert", tmp_path / "tiny")
    kw = dict(bert_model=str(model), bert_layers=[0], model_dir=str(tmp_path / "m"), stage_dir=str(tmp_path),
              bert_keep_msg=True, progress=False, **conn)
    tables = {}
    for path in ("load data", "executemany"):
        monkeypatch.setenv("BERTFEAT_MYSQL_LOAD_DATA", "1" if path == "load data" else "0")
        s = bertfeat.add_bert(db, "msgs", "user_id", bert_table_name=f"feat$path_{path[0]}", **kw)
        assert s["write_path"] == path and s["groups"] == len(groups)
        with connect(db, **conn) as engine:
            tables[path] = [sorted(engine.query(f"SELECT id, group_id, feat, value, group_norm FROM {engine.q(t)}"))
                            for t in (s["table"], s["message_table"])]  # group means (DOUBLE), message values (FLOAT)
            runs = engine.query("SELECT summary FROM bertfeat_runs WHERE feat_table = ?", [s["table"]])
        assert f'"write_path": "{path}"' in runs[-1][0]
    assert tables["load data"] == tables["executemany"] and {r[1] for r in tables["load data"][0]} == set(groups)


class _Stage:
    """A stage whose CSV writer writes `rows` lines into the path, then fails if `fail`."""

    def __init__(self, rows, fail):
        self.rows, self.fail = rows, fail

    def to_csv(self, fill, path):
        with open(path, "w") as f:
            for k in range(self.rows):
                f.write(f'"{k}","g","0me","0.5","0.5"\n')
        if self.fail:
            raise RuntimeError("the stage broke")


@pytest.mark.unit
def test_streamed_csv_never_hangs_and_never_hides_a_short_file(tmp_path):
    """Issue 24.2: the MySQL write streams the stage's CSV through a named pipe (no temporary
    file of the whole table). Whichever side fails, the other does not wait forever, and a
    writer's failure is raised before the reader commits (it saw a short file)."""
    import threading
    from bertfeat.tables.mysql import _streamed_csv

    def within(seconds, fn):
        out = []
        t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
        t.start()
        t.join(seconds)
        assert not t.is_alive(), "hung"
        return out[0]

    def read_all(rows, fail):
        path = str(tmp_path / f"rows_{rows}_{fail}.csv")
        try:
            with _streamed_csv(_Stage(rows, fail), None, path) as complete:
                with open(path) as f:
                    n = sum(1 for _ in f)
                complete()
            return n
        except RuntimeError as e:
            return str(e)

    assert within(30, lambda: read_all(200_000, False)) == 200_000
    assert within(30, lambda: read_all(1000, True)) == "the stage broke"  # after part of it
    assert within(30, lambda: read_all(0, True)) == "the stage broke"  # before writing anything

    def reader_fails():
        path = str(tmp_path / "early.csv")
        try:
            with _streamed_csv(_Stage(2_000_000, False), None, path):
                with open(path) as f:
                    f.readline()
                raise ValueError("the server refused")
        except ValueError as e:
            return str(e)
    assert within(30, reader_fails) == "the server refused"  # the writer, blocked on the pipe, ended


def test_a_stage_failing_mid_load_leaves_no_table(tmp_path, mysql_db, monkeypatch):
    """A failure while the stage's rows stream into LOAD DATA: the error is raised, nothing of the
    half-loaded table is committed or left behind, and a run after it writes the whole table."""
    from bertfeat.stage import Stage
    db, conn = mysql_db
    rows = [{"message_id": k + 1, "user_id": k % 3, "message": f"Post {k}. Two sentences."} for k in range(9)]
    bertfeat.import_csv(db, "msgs", str(write_rows_csv(tmp_path / "m.csv", rows)), progress=False, **conn)
    model = make_model("bert", tmp_path / "tiny")
    kw = dict(bert_model=str(model), bert_layers=[0], model_dir=str(tmp_path / "m"), stage_dir=str(tmp_path),
              progress=False, **conn)
    real = Stage.to_csv

    def breaks(self, fill, path):
        whole = str(tmp_path / "whole.csv")
        real(self, fill, whole)
        with open(whole) as f, open(path, "w") as out:
            out.writelines(f.readlines()[:5])  # part of the rows, then an error
        raise OSError("disk gone")
    monkeypatch.setattr(Stage, "to_csv", breaks)
    with pytest.raises(OSError, match="disk gone"):
        bertfeat.add_bert(db, "msgs", "user_id", **kw)
    with connect(db, **conn) as engine:
        assert [t for t in engine.tables() if t.startswith("feat$")] == []
    monkeypatch.setattr(Stage, "to_csv", real)
    s = bertfeat.add_bert(db, "msgs", "user_id", **kw)
    assert s["write_path"] == "load data" and s["rows"] == 3 * 32, s
