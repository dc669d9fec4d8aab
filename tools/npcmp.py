#!/usr/bin/python3
"""Compare two .npy arrays of equal shape.

  npcmp.py A.npy B.npy [--tol 1e-4] [--no-argmax] [--label NAME]
      float arrays (rows = last axis): max|A-B| <= tol and, unless --no-argmax,
      identical argmax in every row. Prints "max|d|=... argmax_agree=...".
  npcmp.py A.npy B.npy --sets [--label NAME]
      integer arrays (e.g. chosen expert ids): each row along the last axis must hold
      the same set of values. Prints "sets_agree=...".

Exit status: 0 pass, 1 mismatch, 2 unusable input (missing file, shape differs, NaN).
"""
import argparse
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--no-argmax", action="store_true", help="skip the per-row argmax check")
    ap.add_argument("--sets", action="store_true", help="compare rows as sets of ids")
    ap.add_argument("--label", default="", help="prefix for the printed line")
    args = ap.parse_args()
    tag = args.label + ": " if args.label else ""

    try:
        a, b = np.load(args.a), np.load(args.b)
    except (OSError, ValueError) as e:
        print(tag + "cannot load: %s" % e)
        return 2
    if a.shape != b.shape:
        print(tag + "shape mismatch: %s vs %s" % (a.shape, b.shape))
        return 2
    if a.size == 0:
        print(tag + "empty arrays")
        return 2

    if args.sets:
        # sort each row: equal sorted rows <=> equal sets (ids within a row are distinct)
        sa, sb = np.sort(a, axis=-1), np.sort(b, axis=-1)
        bad = np.any(sa != sb, axis=-1)
        print(tag + "sets_agree=%s (%d/%d rows differ)" % (not bad.any(), bad.sum(), bad.size))
        return 1 if bad.any() else 0

    a, b = a.astype(np.float64), b.astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        print(tag + "non-finite values (NaN/inf) present")
        return 2
    rows_a = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)
    rows_b = b.reshape(-1, b.shape[-1]) if b.ndim else b.reshape(1, 1)
    d = np.abs(rows_a - rows_b)
    worst = float(d.max())
    r, c = np.unravel_index(int(d.argmax()), d.shape)
    ok = worst <= args.tol
    line = tag + "max|d|=%.3e (row %d col %d) tol=%.1e" % (worst, r, c, args.tol)
    if not args.no_argmax:
        disagree = np.nonzero(rows_a.argmax(-1) != rows_b.argmax(-1))[0]
        line += " argmax_agree=%s" % (disagree.size == 0)
        if disagree.size:
            line += " (rows %s)" % ",".join(str(i) for i in disagree[:10])
            ok = False
    print(line + (" OK" if ok else " FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
