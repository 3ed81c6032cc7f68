"""The numbers a sweep shows: status counts, exponent and prefactor statistics.

One function for the CLI's printout, the figures' manifest (`paper_repro`) and
anyone reading `results.csv`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geomsim.io import Table


def sweep_statistics(results: Table) -> dict[str, Any]:
    """Plain-JSON statistics of a sweep's results table (ok runs only for the fits)."""
    ok = results["status"] == "ok"
    status, counts = np.unique(results["status"].astype(str), return_counts=True)
    out: dict[str, Any] = {"runs": int(len(ok)), "status_counts": {str(s): int(c) for s, c in zip(status, counts, strict=True)}}
    if ok.any():
        e = results["exponent"][ok]
        out["exponent"] = {
            "median": float(np.median(e)), "min": float(e.min()), "max": float(e.max()),
            "band_median": [float(np.median(results["exponent_lo"][ok])), float(np.median(results["exponent_hi"][ok]))],
        }
        r = results["c4_ratio"][ok]
        r = r[np.isfinite(r)]
        if r.size:
            out["c4_ratio"] = {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}
        if "prefactor_ratio" in results:
            pr = results["prefactor_ratio"][ok]
            pr = pr[np.isfinite(pr)]
            if pr.size:
                out["prefactor_ratio"] = {"median": float(np.median(pr)), "min": float(pr.min()),
                                          "max": float(pr.max())}
        # Measured time to failure over the bounded forecast's and over the quartic term's alone.
        for column, key in (("t_fail_pred", "t_fail_meas_over_pred"), ("t_fail_quartic", "t_fail_meas_over_quartic")):
            if column not in results:
                continue
            tf = np.isfinite(results["t_fail_meas"][ok]) & np.isfinite(results[column][ok])
            if tf.any():
                rel = results["t_fail_meas"][ok][tf] / results[column][ok][tf]
                out[key] = {"median": float(np.median(rel)), "min": float(rel.min()), "max": float(rel.max()),
                            "within_2x": float(np.mean((rel > 0.5) & (rel < 2.0)))}
    return out
