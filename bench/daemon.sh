#!/usr/bin/env bash
# Socketmap lookups per second of `batv daemon`, asked by Postfix's own client
# (`postmap -q -`, which sends its keys one after another on one kept-alive connection,
# as each Postfix process does), against a baseline in the same run: the same keys looked
# up in an in-process texthash: table by the same postmap (no socket, no daemon).
#
#   bash bench/daemon.sh            # ~30 s, plus the build
#   KEYS=20000 PARALLEL=4 bash bench/daemon.sh
#
# Rows: the sign map (an HMAC per lookup), the strip map (a verify per lookup), and
# PARALLEL postmap processes at once on the sign map (the daemon's concurrency).
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${KEYS:-50000}
parallel=${PARALLEL:-4}
if [ -n "${BATV_BIN:-}" ]; then batv=$BATV_BIN; else cargo build --release -q; batv=$PWD/target/release/batv; fi
pf_root=${BATV_POSTFIX_ROOT:-$PWD/target/postfix/root}
if [ ! -x "$pf_root/usr/sbin/postmap" ]; then
  echo "bench: unpacking postfix into target/postfix/root" >&2
  mkdir -p target/postfix
  (cd target/postfix && { apt-get download postfix >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get download postfix >/dev/null; }; } && dpkg -x postfix_*.deb root)
  pf_root=$PWD/target/postfix/root
fi
export LD_LIBRARY_PATH=$pf_root/usr/lib/postfix
postmap=$pf_root/usr/sbin/postmap
tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
# postmap reads main.cf: an empty config directory will do.
mkdir "$tmp/etc" && touch "$tmp/etc/main.cf"
export MAIL_CONFIG=$tmp/etc

printf 'sign_domains = ["example.org"]\n' > "$tmp/batv.toml"
"$batv" --config "$tmp/batv.toml" --keys "$tmp/keys" keys init >/dev/null 2>&1
"$batv" --config "$tmp/batv.toml" --keys "$tmp/keys" daemon --listen "unix:$tmp/batv.sock" 2>"$tmp/daemon.log" &
pid=$!
for _ in $(seq 100); do [ -S "$tmp/batv.sock" ] && break; sleep 0.1; done
[ -S "$tmp/batv.sock" ] || { echo "bench: the daemon did not start" >&2; cat "$tmp/daemon.log" >&2; exit 1; }

# Keys: distinct senders of the signed domain, and their tags for the strip map.
seq "$keys" | sed 's/.*/user&.name@example.org/' > "$tmp/senders"
"$batv" --config "$tmp/batv.toml" --keys "$tmp/keys" sign $(head -1000 "$tmp/senders") > "$tmp/tags1000"
for _ in $(seq $(( (keys + 999) / 1000 ))); do cat "$tmp/tags1000"; done | head -n "$keys" > "$tmp/tags"
sed 's/$/ x/' "$tmp/senders" > "$tmp/table"

# run NAME FILE MAP...: lookups per second of postmap -q - on FILE (checks every answer).
run() {
  local name=$1 file=$2 map=$3 t0 t1 n
  t0=$(date +%s.%N)
  n=$("$postmap" -q - "$map" < "$file" | wc -l)
  t1=$(date +%s.%N)
  [ "$n" = "$keys" ] || { echo "bench: $name: $n answers for $keys keys" >&2; exit 1; }
  awk -v n="$n" -v a="$t0" -v b="$t1" -v name="$name" 'BEGIN { printf "%-34s %8d keys %7.2f s %10.0f lookups/s\n", name, n, b - a, n / (b - a) }'
}

echo "bench: batv daemon, $keys keys per run, $(nproc) CPU(s)"
base=$(run "baseline: texthash (in process)" "$tmp/senders" "texthash:$tmp/table")
echo "$base"
sign=$(run "socketmap sign" "$tmp/senders" "socketmap:unix:$tmp/batv.sock:sign")
echo "$sign"
strip=$(run "socketmap strip" "$tmp/tags" "socketmap:unix:$tmp/batv.sock:strip")
echo "$strip"
t0=$(date +%s.%N)
for i in $(seq "$parallel"); do
  "$postmap" -q - "socketmap:unix:$tmp/batv.sock:sign" < "$tmp/senders" > "$tmp/par.$i" &
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
t1=$(date +%s.%N)
total=$(cat "$tmp"/par.* | wc -l)
[ "$total" = $((keys * parallel)) ] || { echo "bench: parallel: $total answers" >&2; exit 1; }
par=$(awk -v n="$total" -v a="$t0" -v b="$t1" -v p="$parallel" 'BEGIN { printf "%-34s %8d keys %7.2f s %10.0f lookups/s\n", "socketmap sign, " p " postmaps at once", n, b - a, n / (b - a) }')
echo "$par"
rate() { awk '{ print $(NF-1) }' <<<"$1"; }
echo
awk -v b="$(rate "$base")" -v s="$(rate "$sign")" -v t="$(rate "$strip")" -v p="$(rate "$par")" 'BEGIN {
  printf "sign: %.0f lookups/s (%.2f x texthash), strip: %.0f/s (%.2f x), %d at once: %.0f/s\n", s, s / b, t, t / b, '"$parallel"', p }'
kill -USR1 "$pid"; sleep 0.2
grep -E "lookups_total" "$tmp/daemon.log" | sed 's/^/bench: daemon counter: /'
