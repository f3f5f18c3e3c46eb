"""--nfold_test_regression / --nfold_test_classifiers (SPEC §5): K-fold CV over feature tables.

Folds: scikit-learn KFold(shuffle=True, random_state=seed), seed 42 unless --seed says otherwise
(StratifiedKFold for classifiers). Features are z-scored on each training fold.
"""
import csv
import json
import math

import numpy as np

from ..errors import BertfeatError
from ..progress import notice
from ..tables import check_name, connect

RIDGE_ALPHAS = (1e3, 0.1, 1, 10, 100, 1e4, 1e5)
DEFAULT_SEED = 42
DEFAULT_FOLDS = 10


def load_features(engine, feat_tables):
    """(group ids, matrix, feature names): tables joined on group id, features side by side."""
    merged, names = None, []
    for table in feat_tables:
        engine.require_table(table, ["group_id", "feat", "group_norm"])
        rows = engine.query(f"SELECT group_id, feat, group_norm FROM {engine.q(table)}")
        feats = sorted({f for _, f, _ in rows}, key=_feat_key)
        col = {f: i for i, f in enumerate(feats)}
        groups = sorted({g for g, _, _ in rows}, key=str)
        row = {g: i for i, g in enumerate(groups)}
        x = np.zeros((len(groups), len(feats)))  # a missing (group, feat) row is 0, as in DLATK
        for g, f, v in rows:
            x[row[g], col[f]] = v
        block = {g: x[row[g]] for g in groups}
        if merged is None:
            merged = block
        else:
            merged = {g: np.concatenate([merged[g], block[g]]) for g in merged if g in block}
        names += [f"{table}:{f}" if len(feat_tables) > 1 else f for f in feats]
    groups = sorted(merged, key=str)
    return groups, np.array([merged[g] for g in groups]).reshape(len(groups), len(names)), names


def _feat_key(f):
    digits = "".join(ch for ch in f if ch.isdigit()) if f[:1].isdigit() else ""
    head = len(digits) if f.startswith(digits) else 0
    return (f[head:], int(f[:head]) if head else -1, f)


def load_outcomes(engine, outcome_table, correl_field, outcomes):
    engine.require_table(outcome_table, [correl_field, *outcomes], ["--correl_field"] + ["--outcomes"] * len(outcomes))
    cols = ", ".join(engine.q(c, "column name") for c in [correl_field, *outcomes])
    return {r[0]: r[1:] for r in engine.query(f"SELECT {cols} FROM {engine.q(outcome_table)}")}


def group_word_counts(engine, table, correl_field, message_field):
    engine.require_table(table, [correl_field, message_field], ["--correl_field", "--message_field"])
    counts = {}
    sql = f"SELECT {engine.q(correl_field)}, {engine.q(message_field)} FROM {engine.q(table)}"
    for rows in engine.stream(sql, [], 5000):
        for g, m in rows:
            if m is not None:
                text = m.decode("utf-8", "replace") if isinstance(m, (bytes, bytearray)) else str(m)
                counts[g] = counts.get(g, 0) + len(text.split())
    return counts


def _se(values):
    values = np.asarray(values, float)
    return float(np.std(values) / math.sqrt(len(values)))


def _model(kind, alpha, inner_folds=5):
    from sklearn.linear_model import LogisticRegressionCV, Ridge, RidgeCV
    if kind == "ridgecv":
        return RidgeCV(alphas=np.array(RIDGE_ALPHAS))
    if kind == "ridge":
        return Ridge(alpha=alpha)
    if kind == "lr":  # C chosen by an inner stratified CV, never more folds than a class has groups
        import inspect
        extra = {}  # current scikit-learn's explicit choices, where it has them (no FutureWarnings)
        params = inspect.signature(LogisticRegressionCV).parameters
        if "use_legacy_attributes" in params:
            extra["use_legacy_attributes"] = False
        if "l1_ratios" in params and "use_legacy_attributes" in params:
            extra["l1_ratios"] = (0.0,)  # plain L2, as before
        return LogisticRegressionCV(Cs=10, max_iter=2000, cv=inner_folds, scoring="accuracy", **extra)
    raise BertfeatError(f"unknown --model {kind!r}: choose ridgecv or ridge (regression), lr (classifiers)")


def regression_metrics(y, pred, fold_ids, train_means):
    from scipy.stats import pearsonr, spearmanr
    folds = sorted(set(fold_ids))
    per = {k: [] for k in ("r", "r_p", "R2", "mae", "mse", "train_mean_mae")}
    for f in folds:
        m = fold_ids == f
        r, p = pearsonr(y[m], pred[m]) if m.sum() > 2 and np.std(pred[m]) > 0 else (0.0, 1.0)
        per["r"].append(r)
        per["r_p"].append(p)
        per["R2"].append(_r2(y[m], pred[m]))
        per["mae"].append(np.mean(np.abs(y[m] - pred[m])))
        per["mse"].append(np.mean((y[m] - pred[m]) ** 2))
        per["train_mean_mae"].append(np.mean(np.abs(y[m] - train_means[m])))
    r, r_p = pearsonr(y, pred)
    rho, rho_p = spearmanr(y, pred)
    r2 = _r2(y, pred)
    out = {"N": int(len(y)), "R": math.sqrt(r2) if r2 > 0 else 0.0, "R2": r2,
           "mae": float(np.mean(np.abs(y - pred))), "mse": float(np.mean((y - pred) ** 2)),
           "r": float(r), "r_p": float(r_p), "rho": float(rho), "rho_p": float(rho_p),
           "train_mean_mae": float(np.mean(np.abs(y - train_means)))}
    for k, vals in per.items():
        out[f"{k}_folds"] = float(np.mean(vals))
        out[f"se_{k}_folds"] = _se(vals)
    return out


def _r2(y, pred):
    ss = np.sum((y - y.mean()) ** 2)
    return float(1 - np.sum((y - pred) ** 2) / ss) if ss > 0 else 0.0


def nfold_test(db, feat_tables, outcome_table, outcomes, correl_field="user_id", model="ridgecv",
               folds=DEFAULT_FOLDS, group_freq_thresh=None, table=None, message_field="message",
               output_name=None, save_predictions=False, seed=DEFAULT_SEED, alpha=1.0,
               classify=False, quiet=False, **conn):
    """Cross-validated prediction of each outcome from the feature tables; returns DLATK's dict
    (the CLI prints it). An outcome that cannot be predicted (not numeric, too few groups) is
    skipped with a notice and the others are computed and written; when none can, the first
    reason is the error."""
    feat_tables = [feat_tables] if isinstance(feat_tables, str) else list(feat_tables)
    outcomes = [outcomes] if isinstance(outcomes, str) else list(outcomes)
    if not feat_tables or not outcome_table or not outcomes:
        raise BertfeatError("prediction needs -f FEAT_TABLE, --outcome_table and --outcomes")
    for t in feat_tables:
        check_name(t, "feature table name")
    if folds < 2:
        raise BertfeatError(f"--folds must be at least 2 (got {folds})")
    if classify and model == "ridgecv":
        model = "lr"
    _model(model, alpha)  # validates the name early
    with connect(db, **conn) as engine:
        groups, x, names = load_features(engine, feat_tables)
        ys = load_outcomes(engine, outcome_table, correl_field, outcomes)
        keep = None
        if group_freq_thresh:
            if not table:
                raise BertfeatError("--group_freq_thresh needs the message table (-t)")
            words = group_word_counts(engine, table, correl_field, message_field)
            keep = {str(g) for g, n in words.items() if n >= group_freq_thresh}
    ys = {str(g): v for g, v in ys.items()}
    results, predictions, skipped = {}, [], []
    for k, outcome in enumerate(outcomes):
        try:
            idx, y = _outcome_rows(groups, ys, k, outcome, keep, group_freq_thresh, folds, classify, correl_field,
                                   quiet)
        except BertfeatError as e:
            if len(outcomes) == 1:
                raise
            skipped.append(e)
            notice(f"skipping outcome {outcome!r}: {e}")
            continue
        xs = x[idx]
        if classify:
            y = np.array([str(v) for v in y])
        fit = _cross_validate(xs, y, model, alpha, folds, seed, classify, outcome)
        if classify:
            metrics = classification_metrics(y, fit["pred"], fit["proba"], fit["classes"], fit["fold_ids"])
        else:
            metrics = regression_metrics(y, fit["pred"], fit["fold_ids"], fit["train_means"])
        metrics.update({"num_features": int(x.shape[1]), "train_size": fit["train_size"],
                        "test_size": fit["test_size"], "{model_desc}": fit["desc"], "{modelFS_desc}": "None"})
        results[outcome] = {(): {1: dict(sorted(metrics.items()))}}
        predictions += [(groups[i], outcome, y[j], fit["pred"][j]) for j, i in enumerate(idx)]
    if not results:
        raise skipped[0]
    if output_name:
        write_outputs(output_name, results, predictions if save_predictions else None)
    return results


def _outcome_rows(groups, ys, k, outcome, keep, group_freq_thresh, folds, classify, correl_field, quiet):
    """(row indices into the feature matrix, outcome values) of the groups that have both, in
    feature-table order (sorted by group id as text), so folds do not depend on row order."""
    key = {str(g): i for i, g in enumerate(groups)}
    rows = sorted((key[g], v[k]) for g, v in ys.items() if g in key and v[k] is not None)
    dropped = {"no outcome": len(groups) - len(rows), "outcome without features": len(
        [g for g, v in ys.items() if g not in key and v[k] is not None])}
    if keep is not None:
        before = len(rows)
        rows = [(i, v) for i, v in rows if str(groups[i]) in keep]
        dropped[f"under {group_freq_thresh} words"] = before - len(rows)
    if not rows:
        raise BertfeatError(f"no group has both features and a value of {outcome!r}: check that -c"
                            f" ({correl_field}) matches the feature tables' group_id")
    if len(rows) < folds:
        raise BertfeatError(f"{len(rows)} groups for {outcome!r} are too few for {folds} folds")
    try:
        y = np.array([v for _, v in rows], dtype=float if not classify else object)
    except (TypeError, ValueError):
        raise BertfeatError(f"outcome {outcome!r} is not numeric: use --nfold_test_classifiers"
                            " for categories") from None
    if not quiet:
        notice(f"{outcome}: {len(rows)} groups; dropped " +
               ", ".join(f"{n} {why}" for why, n in dropped.items() if n) if any(dropped.values())
               else f"{outcome}: {len(rows)} groups")
    return np.array([i for i, _ in rows]), y


def _splitter(y, folds, seed, classify, outcome):
    """(the fold splitter, the inner CV's folds for lr)."""
    from sklearn.model_selection import KFold, StratifiedKFold
    if not classify:
        return KFold(n_splits=folds, shuffle=True, random_state=seed), 5
    smallest = min(np.unique(y, return_counts=True)[1])
    # each training fold holds about (folds - 1) / folds of the smallest class
    inner = int(min(5, smallest * (folds - 1) // folds))
    if smallest < folds or inner < 2:
        raise BertfeatError(
            f"outcome {outcome!r}: its smallest class has {smallest} groups, too few for"
            f" {folds} folds with an inner CV for lr (each class needs at least"
            f" {max(folds, math.ceil(2 * folds / (folds - 1)))} groups): use fewer --folds or more groups")
    return StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed), inner


def _cross_validate(xs, y, model, alpha, folds, seed, classify, outcome):
    """Out-of-fold predictions (and class probabilities), each fold z-scored on its training part."""
    from sklearn.preprocessing import StandardScaler
    splitter, inner = _splitter(y, folds, seed, classify, outcome)
    out = {"pred": np.empty(len(y), dtype=object if classify else float), "proba": None, "classes": None,
           "train_means": np.empty(len(y)), "fold_ids": np.empty(len(y), int)}
    for f, (tr, te) in enumerate(splitter.split(xs, y)):
        scaler = StandardScaler().fit(xs[tr])
        est = _model(model, alpha, inner).fit(scaler.transform(xs[tr]), y[tr])
        out["pred"][te] = est.predict(scaler.transform(xs[te]))
        if classify:
            p = est.predict_proba(scaler.transform(xs[te]))
            if out["proba"] is None:
                out["proba"] = np.zeros((len(y), len(est.classes_)))
                out["classes"] = list(est.classes_)
            out["proba"][np.ix_(te, [out["classes"].index(c) for c in est.classes_])] = p
        else:
            out["train_means"][te] = y[tr].mean()
        out["fold_ids"][te] = f
        # one line (sklearn wraps a long repr, which split the CSV's model_desc cell over lines)
        out.update(desc=" ".join(repr(est).split()), train_size=len(tr), test_size=len(te))
    return out


def classification_metrics(y, pred, proba, classes, fold_ids):
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    def auc(yt, pr):
        if len(set(yt)) < 2:
            return float("nan")
        if len(classes) == 2:
            return float(roc_auc_score(yt == classes[1], pr[:, 1]))
        return float(roc_auc_score(yt, pr, multi_class="ovr", labels=classes))
    per = {"acc": [], "f1": [], "auc": []}
    for f in sorted(set(fold_ids)):
        m = fold_ids == f
        per["acc"].append(accuracy_score(y[m], pred[m].astype(str)))
        per["f1"].append(f1_score(y[m], pred[m].astype(str), average="macro"))
        per["auc"].append(auc(y[m], proba[m]))
    out = {"N": int(len(y)), "acc": float(accuracy_score(y, pred.astype(str))),
           "f1": float(f1_score(y, pred.astype(str), average="macro")), "auc": auc(y, proba),
           "classes": [str(c) for c in classes]}
    for k, vals in per.items():
        out[f"{k}_folds"] = float(np.nanmean(vals))
        out[f"se_{k}_folds"] = _se(vals)
    return out


def write_outputs(name, results, predictions=None):
    flat = {o: r[()][1] for o, r in results.items()}
    with open(f"{name}.json", "w") as f:
        json.dump(flat, f, indent=1, default=str)
    keys = sorted({k for m in flat.values() for k in m})
    with open(f"{name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["outcome", *keys])
        for o, m in flat.items():
            w.writerow([o, *[m.get(k) for k in keys]])
    if predictions is not None:
        with open(f"{name}.predictions.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["group_id", "outcome", "actual", "predicted"])
            w.writerows(predictions)
