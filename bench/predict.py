"""Age prediction on msgs100u: all-MiniLM-L6-v2 features vs 1-gram relative frequencies.

    .venv/bin/python bench/predict.py [--model_dir models]

Both go through the same `--nfold_test_regression --model ridgecv --folds 10` code (seed 42);
the 1-gram table is a DLATK-style feature table (group_norm = relative frequency) made with
scikit-learn's CountVectorizer over each user's messages.
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_CSV, MODEL, ROOT  # noqa: E402

USERS = ROOT / "tests" / "data" / "users100.csv"  # copied from shared/data


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model_dir", default=str(ROOT / "models"))
    args = p.parse_args()
    import numpy as np
    from sklearn.feature_extraction.text import CountVectorizer

    import bertfeat
    from bertfeat.predict import nfold_test
    from bertfeat.tables import connect
    work = tempfile.mkdtemp(prefix="bertfeat-predict-")
    conn = {"db_engine": "duckdb", "db_dir": work}
    bertfeat.import_csv("p", "msgs", str(DEFAULT_CSV), progress=False, **conn)
    bertfeat.import_csv("p", "users", str(USERS), progress=False, **conn)
    bertfeat.add_sent_tokenized("p", "msgs", progress=False, **conn)
    bert = bertfeat.add_bert("p", "msgs", "user_id", bert_model=MODEL, model_dir=args.model_dir,
                             stage_dir=work, progress=False, **conn)["table"]
    with connect("p", **conn) as engine:
        rows = engine.query("SELECT user_id, message FROM msgs ORDER BY message_id")
        by_user = {}
        for user, text in rows:
            by_user.setdefault(user, []).append(text or "")
        users = sorted(by_user)
        vec = CountVectorizer(min_df=2)
        counts = vec.fit_transform([" ".join(by_user[u]) for u in users]).tocsr()
        totals = np.asarray(counts.sum(1)).ravel()
        names = vec.get_feature_names_out()
        table = "feat$1gram$msgs$user_id$16to16"
        engine.create_feature_table(table, "BIGINT")
        out, n = [], 0
        for i, u in enumerate(users):
            row = counts.getrow(i)
            for j, c in zip(row.indices, row.data):
                n += 1
                out.append((n, u, names[j], float(c), float(c) / totals[i]))
        engine.insert_rows(table, ["id", "group_id", "feat", "value", "group_norm"], out)
    print("age, msgs100u (100 bloggers), 10-fold ridgecv, seed 42\n")
    print("| features | num_features | r | R2 | mae |")
    print("|---|---|---|---|---|")
    for label, t in ((f"{MODEL} (layer 4, mean)", bert), ("1-gram relative frequencies (min_df 2)", table)):
        m = nfold_test("p", t, "users", ["age"], folds=10, quiet=True, **conn)["age"][()][1]
        print(f"| {label} | {m['num_features']} | {m['r']:.3f} | {m['R2']:.3f} | {m['mae']:.2f} |")


if __name__ == "__main__":
    main()
