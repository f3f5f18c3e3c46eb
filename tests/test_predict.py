"""Prediction (SPEC §5) on real features of msgs100u + users100.csv, planted signals, errors."""

import numpy as np
import pytest

import bertfeat  # noqa: F401
from bertfeat.predict import nfold_test
from bertfeat.tables import connect

def _planted(tmp_path, shuffle):
    rng = np.random.default_rng(1)
    n, d = 200, 30
    x = rng.normal(size=(n, d))
    y = x[:, 0] * 2 + x[:, 3] - x[:, 7] + rng.normal(scale=0.3, size=n)
    if shuffle:
        y = rng.permutation(y)
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    with connect("s", create=True, **conn) as engine:
        engine.create_feature_table("feat$x$m$user_id$16to16", "BIGINT")
        engine.insert_rows("feat$x$m$user_id$16to16", ["id", "group_id", "feat", "value", "group_norm"],
                           [(i * d + j + 1, i, f"{j}me", x[i, j], x[i, j]) for i in range(n) for j in range(d)])
        engine.execute("CREATE TABLE o (user_id BIGINT, y DOUBLE, label VARCHAR)")
        engine.insert_rows("o", ["user_id", "y", "label"],
                           [(i, float(y[i]), "hi" if y[i] > 0 else "lo") for i in range(n)])
    return conn


def test_planted_signal_is_recovered_and_shuffled_is_not(tmp_path):
    r = nfold_test("s", "feat$x$m$user_id$16to16", "o", "y", folds=5, quiet=True,
                   **_planted(tmp_path / "a", False))["y"][()][1]["r"]
    assert r > 0.9
    r = nfold_test("s", "feat$x$m$user_id$16to16", "o", "y", folds=5, quiet=True,
                   **_planted(tmp_path / "b", True))["y"][()][1]["r"]
    assert abs(r) < 0.3


def test_classifier_on_planted_signal(tmp_path):
    res = nfold_test("s", "feat$x$m$user_id$16to16", "o", "label", folds=5, classify=True, quiet=True,
                     output_name=str(tmp_path / "cls"), **_planted(tmp_path, False))["label"][()][1]
    assert res["acc"] > 0.85 and res["auc"] > 0.9 and {"f1", "acc_folds", "se_auc_folds"} <= set(res)
    assert "\n" not in res["{model_desc}"]  # one CSV line per outcome (issue 22.8)
    assert len((tmp_path / "cls.csv").read_text().splitlines()) == 2


@pytest.mark.parametrize("kw, needle", [
    (dict(outcome_table="nope"), "'nope' not found"),
    (dict(outcomes=["weight"]), "'weight' not found"),
    (dict(folds=500), "too few"),
    (dict(outcomes=["label"]), "not numeric"),
    (dict(correl_field="other"), "no group has both features"),
])
def test_prediction_errors(tmp_path, kw, needle):
    conn = _planted(tmp_path, False)
    args = dict(feat_tables="feat$x$m$user_id$16to16", outcome_table="o", outcomes=["y"], folds=5, quiet=True)
    args.update(kw)
    if kw.get("correl_field"):
        with connect("s", **conn) as engine:
            engine.execute("ALTER TABLE o ADD COLUMN other BIGINT")  # present but matching no group
    with pytest.raises(bertfeat.BertfeatError, match=needle):
        nfold_test("s", **args, **conn)


def test_two_feature_tables_are_joined_on_group_id(tmp_path):
    conn = _planted(tmp_path, False)
    with connect("s", **conn) as engine:  # the same features split over two tables, one group missing
        for name, keep in (("feat$a$m$user_id$16to16", "< 15"), ("feat$b$m$user_id$16to16", ">= 15")):
            engine.execute(f'CREATE TABLE "{name}" AS SELECT * FROM "feat$x$m$user_id$16to16"'
                           f" WHERE CAST(regexp_extract(feat, '[0-9]+') AS INT) {keep}"
                           + (" AND group_id <> 0" if keep == ">= 15" else ""))
    both = nfold_test("s", ["feat$a$m$user_id$16to16", "feat$b$m$user_id$16to16"], "o", "y", folds=5,
                      quiet=True, **conn)["y"][()][1]
    assert both["num_features"] == 30 and both["N"] == 199 and both["r"] > 0.9


def test_classifier_with_ten_groups_sizes_its_inner_cv(tmp_path):
    conn = _planted(tmp_path, False)
    with connect("s", **conn) as engine:  # 10 groups, 5 per class
        engine.execute("DELETE FROM o WHERE user_id NOT IN (SELECT user_id FROM o WHERE label = 'hi'"
                       " ORDER BY user_id LIMIT 5) AND user_id NOT IN (SELECT user_id FROM o WHERE"
                       " label = 'lo' ORDER BY user_id LIMIT 5)")
    res = nfold_test("s", "feat$x$m$user_id$16to16", "o", "label", folds=2, classify=True, quiet=True,
                     **conn)["label"][()][1]
    assert res["N"] == 10 and "cv=2" in res["{model_desc}"]
    with pytest.raises(bertfeat.BertfeatError, match="smallest class has 5 groups, too few for 10 folds"):
        nfold_test("s", "feat$x$m$user_id$16to16", "o", "label", folds=10, classify=True, quiet=True, **conn)


def test_group_freq_thresh_keeps_groups_with_enough_words(tmp_path):
    """--group_freq_thresh N: only groups with at least N whitespace words in the message table
    (-t) are predicted; without -t it is a one-line error."""
    conn = _planted(tmp_path, False)
    rng = np.random.default_rng(2)
    words = {i: int(rng.integers(1, 40)) for i in range(200)}  # each user's total words
    with connect("s", **conn) as engine:
        engine.execute("CREATE TABLE m (message_id BIGINT, user_id BIGINT, message VARCHAR)")
        rows, mid = [], 0
        for user, n in words.items():  # split over two messages, one with extra spaces and a newline
            first = n // 2
            rows += [(mid, user, " ".join(["w"] * first)), (mid + 1, user, "  " + "\n".join(["x"] * (n - first)))]
            mid += 2
        rows.append((mid, 0, None))  # a NULL message counts no words
        engine.insert_rows("m", ["message_id", "user_id", "message"], rows)
    for thresh in (1, 20, 30):
        res = nfold_test("s", "feat$x$m$user_id$16to16", "o", "y", folds=5, group_freq_thresh=thresh, table="m",
                         quiet=True, **conn)["y"][()][1]
        assert res["N"] == sum(n >= thresh for n in words.values()), thresh
    with pytest.raises(bertfeat.BertfeatError, match="needs the message table"):
        nfold_test("s", "feat$x$m$user_id$16to16", "o", "y", folds=5, group_freq_thresh=5, quiet=True, **conn)


def test_an_outcome_that_cannot_be_predicted_does_not_stop_the_others(tmp_path, capsys):
    """Issue 22.8: `y` and `label` together, regression: `label` is not numeric. `y` is computed,
    written and returned, `label` skipped with a notice; nothing goes to stdout from Python."""
    out = tmp_path / "res"
    res = nfold_test("s", "feat$x$m$user_id$16to16", "o", ["label", "y"], folds=5, output_name=str(out),
                     **_planted(tmp_path, False))
    assert list(res) == ["y"] and res["y"][()][1]["r"] > 0.9 and (tmp_path / "res.json").exists()
    captured = capsys.readouterr()
    assert captured.out == "" and "skipping outcome 'label'" in captured.err and "not numeric" in captured.err
