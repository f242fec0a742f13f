"""Reference statistics for tests/api/stats.rs, from numpy, scipy and scikit-learn.

Usage: stats_reference.py CASES.json

Each case holds `labels`, the class scores of two runs `a` and `b` on the same examples,
`num_labels`, the bootstrap `resamples` (lists of example indices) and `seed_values`.
Prints, per case: for each run and metric the estimate and the 2.5% and 97.5% percentiles
over the resamples (numpy's linear interpolation; resamples where the metric is undefined are
left out); the paired difference a - b likewise, with its two-sided bootstrap p-value; McNemar's
exact p-value (scipy's binomial test of the discordant pairs); the mean, sample standard
deviation and count of `seed_values`, and the 95% t-interval of their mean.
"""

import json
import os
import sys
import warnings

import numpy as np
from scipy.stats import binomtest, sem, t

sys.path.insert(0, os.path.dirname(__file__))
from sklearn_metrics import metrics  # noqa: E402


def on(labels, probs, k, idx):
    return metrics({"labels": [labels[i] for i in idx], "probs": [probs[i] for i in idx],
                    "num_labels": k})


def interval(estimate, values):
    values = np.array([v for v in values if v is not None], dtype=np.float64)
    if estimate is None or len(values) == 0:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return {"estimate": estimate, "low": float(low), "high": float(high)}


def case_result(case):
    labels, k, res = case["labels"], case["num_labels"], case["resamples"]
    everything = list(range(len(labels)))
    out = {"runs": {}, "difference": {}}
    per = {}
    for run in ("a", "b"):
        probs = case[run]
        full = on(labels, probs, k, everything)
        per[run] = [on(labels, probs, k, idx) for idx in res]
        out["runs"][run] = {m: interval(full[m], [r[m] for r in per[run]])
                            for m in ("accuracy", "f1", "auroc")}
    for m in ("accuracy", "f1", "auroc"):
        fa, fb = out["runs"]["a"][m], out["runs"]["b"][m]
        if fa is None or fb is None:
            out["difference"][m] = None
            continue
        diffs = [None if x[m] is None or y[m] is None else x[m] - y[m]
                 for x, y in zip(per["a"], per["b"])]
        iv = interval(fa["estimate"] - fb["estimate"], diffs)
        d = np.array([v for v in diffs if v is not None])
        p = 2 * min(np.mean(d <= 1e-12), np.mean(d >= -1e-12))
        iv["p_value"] = float(min(1.0, max(p, 1 / len(d))))
        out["difference"][m] = iv
    ra = np.argmax(np.array(case["a"]), axis=1) == np.array(labels)
    rb = np.argmax(np.array(case["b"]), axis=1) == np.array(labels)
    only_a, only_b = int(np.sum(ra & ~rb)), int(np.sum(~ra & rb))
    out["mcnemar"] = {
        "only_first": only_a, "only_second": only_b,
        "p_value": 1.0 if only_a + only_b == 0 else float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue),
    }
    v = np.array(case["seed_values"], dtype=np.float64)
    out["spread"] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                     "n": len(v)}
    low, high = t.interval(0.95, len(v) - 1, loc=v.mean(), scale=sem(v))
    out["mean_interval"] = {"low": float(low), "high": float(high)}
    return out


def main():
    warnings.simplefilter("ignore")
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    json.dump([case_result(c) for c in cases], sys.stdout)
    print()


if __name__ == "__main__":
    main()
