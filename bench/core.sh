#!/usr/bin/env bash
# Per-core figures: tag sign/verify (benches/tags.rs) and bounce checking over the shared
# corpus (benches/check.rs), with criterion, then one table against the targets.
#
#   bash bench/core.sh            # about 1 minute, plus the build
#   QUICK=1 bash bench/core.sh    # shorter measurements
#
# Each figure also appears as a ratio to a baseline measured in the same run (a bare
# HMAC with the `hmac` crate; mail-parser's own parse of the corpus), which says more
# than the absolute figure on a noisy shared machine. Needs the shared corpus in
# ../shared/data/bounces beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${QUICK:-0}" = 1 ]; then times=(--warm-up-time 1 --measurement-time 2); else times=(--warm-up-time 2 --measurement-time 5); fi
cargo bench -q --bench tags -- "${times[@]}" >/dev/null
cargo bench -q --bench check -- "${times[@]}" >/dev/null
/usr/bin/python3 - <<'PY'
import json, os
root = "target/criterion"
def ns(group, name):
    with open(os.path.join(root, group, name, "new", "estimates.json")) as f:
        return json.load(f)["mean"]["point_estimate"]
rows = [
    # (label, group, bench, items per iteration, baseline bench, target per second)
    ("verify native tag", "tag", "verify_native", 1, "baseline_hmac-sha256", 4_000_000),
    ("verify prvs tag", "tag", "verify_prvs", 1, "baseline_hmac-sha1", 4_000_000),
    ("verify native, sub-address", "tag", "verify-subaddress_native", 1, "baseline_hmac-sha256", None),
    ("verify prvs, sub-address", "tag", "verify-subaddress_prvs", 1, "baseline_hmac-sha1", None),
    ("sign native", "tag", "sign_native", 1, "baseline_hmac-sha256", 4_000_000),
    ("sign prvs", "tag", "sign_prvs", 1, "baseline_hmac-sha1", 4_000_000),
    ("parse a tagged address", "tag", "parse_native", 1, "baseline_hmac-sha256", None),
    ("check (inspect+judge), corpus", "check", "inspect+judge", None, "mime-parse", 5_000),
]
n_msgs = sum(len([f for f in os.listdir(f"../shared/data/bounces/{d}") if f.endswith(".eml")]) for d in ("public", "generated"))
print(f"{'what':32} {'time/item':>11} {'per second':>12} {'x baseline':>10} {'target/s':>10}  met")
for label, group, bench, items, base, target in rows:
    items = items or n_msgs
    t = ns(group, bench) / items
    b = ns(group, base) / items
    rate = 1e9 / t
    unit = f"{t:.0f} ns" if t < 1e4 else f"{t / 1000:.1f} us"
    met = "-" if target is None else ("yes" if rate >= target else "NO")
    print(f"{label:32} {unit:>11} {rate:>12,.0f} {t / b:>10.2f} {target or 0:>10,}  {met}")
print(
    f"baselines: hmac-sha256 {ns('tag', 'baseline_hmac-sha256'):.0f} ns, hmac-sha1 {ns('tag', 'baseline_hmac-sha1'):.0f} ns "
      f"(the hmac crate, pre-keyed state cloned per call); mail-parser parse {ns('check', 'mime-parse') / n_msgs / 1000:.1f} us/message ({n_msgs} messages)")
PY
