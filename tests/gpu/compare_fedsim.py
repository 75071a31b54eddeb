"""Compares two gradzip.fedsim rounds.csv files (e.g. --distributed --backend nccl vs the single-process run):
byte columns must be equal, loss/accuracy columns equal to `--tol` (absolute). Exit 1 on any difference.

    python3 tests/gpu/compare_fedsim.py A/rounds.csv B/rounds.csv [--tol 1e-5]
"""

import argparse
import csv
import sys

EXACT = ("round", "uplink_bytes", "downlink_bytes")
CLOSE = ("train_loss", "test_loss", "test_accuracy")


def load(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    a, b = load(args.a), load(args.b)
    bad = 0
    if len(a) != len(b):
        print(f"round count differs: {len(a)} vs {len(b)}")
        return 1
    print(f"{'round':>5} {'col':>15} {'A':>22} {'B':>22} {'|diff|':>10}")
    for ra, rb in zip(a, b):
        for col in EXACT + CLOSE:
            if col not in ra or col not in rb:
                print(f"column {col} missing")
                bad += 1
                continue
            if col in EXACT:
                ok = ra[col] == rb[col]
                diff = 0.0 if ok else float("nan")
            else:
                diff = abs(float(ra[col]) - float(rb[col]))
                ok = diff <= args.tol
            bad += not ok
            print(f"{ra['round']:>5} {col:>15} {ra[col]:>22} {rb[col]:>22} {diff:>10.3g} {'' if ok else 'MISMATCH'}")
    print("fedsim rounds.csv:", "MATCH" if bad == 0 else f"{bad} MISMATCHES", f"(tol {args.tol})")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
