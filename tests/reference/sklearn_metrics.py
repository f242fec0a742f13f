"""Reference classification metrics from scikit-learn.

Usage: sklearn_metrics.py CASES.json

CASES.json holds a list of {"labels": [...], "probs": [[...], ...], "num_labels": K}.
Prints a JSON list with one {"accuracy", "f1", "auroc"} object per case, where
predictions are argmax(probs) and "auroc" is null whenever scikit-learn cannot
define it (a class missing from the labels). Used by tests/api/metrics.rs.
"""

import json
import math
import sys
import warnings

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def auroc(labels, probs, k):
    try:
        if k == 2:
            value = roc_auc_score(labels, probs[:, 1])
        else:
            value = roc_auc_score(
                labels, probs, multi_class="ovr", average="macro", labels=list(range(k))
            )
    except ValueError:
        # Older scikit-learn raises when a class is absent from y_true.
        return None
    value = float(value)
    # Newer scikit-learn warns and returns NaN instead.
    return None if math.isnan(value) else value


def metrics(case):
    k = case["num_labels"]
    labels = np.asarray(case["labels"], dtype=np.int64)
    probs = np.asarray(case["probs"], dtype=np.float64).reshape(len(labels), k)
    preds = np.argmax(probs, axis=1)
    average = "binary" if k == 2 else "macro"
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "f1": float(
            f1_score(labels, preds, average=average, labels=list(range(k)), zero_division=0)
        ),
        "auroc": auroc(labels, probs, k),
    }


def main():
    warnings.simplefilter("ignore")
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    json.dump([metrics(case) for case in cases], sys.stdout)
    print()


if __name__ == "__main__":
    main()
