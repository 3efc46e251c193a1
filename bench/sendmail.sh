#!/usr/bin/env bash
# Wall time `batv sendmail` adds per message, versus calling the real sendmail directly.
# Both sides run in one hyperfine invocation, so the machine's noise hits them alike.
#
#   bash bench/sendmail.sh [RUNS]
#
# The "real sendmail" is a tiny C program that reads the whole message and ignores its
# arguments, so the figure is batv's own cost: start-up, config, keys, one HMAC, and the exec (or, with
# -t and exempt_recipients, reading the header and splicing the rest).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-300}
if ! command -v hyperfine >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null
fi
cargo build --release -q
batv=$PWD/target/release/batv
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$batv" --keys "$tmp/keys" keys init >/dev/null
printf '#include <unistd.h>\nint main(void){char b[65536];while(read(0,b,sizeof b)>0);return 0;}\n' > "$tmp/real.c"
cc -O2 -o "$tmp/real-sendmail" "$tmp/real.c"
real=$tmp/real-sendmail
cat > "$tmp/plain.toml" <<EOT
keys_dir = "$tmp/keys"
sign_domains = ["example.com"]
[sendmail]
path = "$real"
EOT
cat > "$tmp/exempt.toml" <<EOT
keys_dir = "$tmp/keys"
sign_domains = ["example.com"]
[sendmail]
path = "$real"
exempt_recipients = ["@lists.example.org"]
EOT
# A 1 MiB message.
{ printf 'From: alice@example.com\r\nTo: bob@example.net\r\nSubject: bench\r\n\r\n'; head -c 1048576 /dev/urandom | base64; } > "$tmp/msg"

# hyperfine 1.15 has no --input: each command reads the message through sh, on both sides.
hyperfine -N --warmup 20 --runs "$runs" --export-json "$tmp/out.json" \
  -n direct "sh -c '$real -i -f alice@example.com bob@example.net < $tmp/msg'" \
  -n wrapper "sh -c '$batv --config $tmp/plain.toml sendmail -i -f alice@example.com bob@example.net < $tmp/msg'" \
  -n wrapper-t-exempt "sh -c '$batv --config $tmp/exempt.toml sendmail -t -i -f alice@example.com < $tmp/msg'" >/dev/null

/usr/bin/python3 - "$tmp/out.json" <<'EOT'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
d = r["direct"]
print(f"{'command':<18} {'mean ms':>8} {'median ms':>10} {'added ms (median)':>18}")
for name in ("direct", "wrapper", "wrapper-t-exempt"):
    x = r[name]
    print(f"{name:<18} {x['mean']*1e3:8.3f} {x['median']*1e3:10.3f} {(x['median']-d['median'])*1e3:18.3f}")
EOT
