#!/usr/bin/env bash
# Throughput, CPU and memory of the SMTP proxy (`batv proxy`), against Postfix's smtp-sink.
#
#   bash bench/proxy.sh                  # full run: about 1 minute on 2 cores, plus the build
#   QUICK=1 bash bench/proxy.sh          # smoke test: small counts, 200 idle connections
#   ROUNDS=5 bash bench/proxy.sh
#
# Environment:
#   ROUNDS=3        rounds; each round runs every concurrency direct and through the proxy
#   QUICK=1         about a tenth of the messages and 200 idle connections
#   IDLE_CONNS=N    idle connections for the memory figure (default 1000)
#   MSG_SIZE=1000   message body size in bytes (smtp-source -l)
#   BOUNCES=0       skip the extra null-sender row (bounces to a tagged recipient)
#   STRICT=1        exit 1 if a target is missed (default: report only)
#   DATA_CHECK=1    run the proxy with data_check = true: every proxied message (from
#                   sender@remote.example to the untagged rcpt@example.com) is held and
#                   inspected, the DATA check's worst case
#   GATEWAY=1       run the proxy in gateway mode (relay control, a Received: field per
#                   message) with a valid_recipients table of 100 000 lines (GATEWAY_RCPTS)
#                   that rcpt@example.com is in: every recipient is looked up
#   BATV_BIN=PATH   use this binary instead of building target/release/batv
#   BATV_POSTFIX_ROOT=DIR   unpacked postfix package (default target/postfix/root)
#
# What it measures (the targets are the issue's):
#   1. messages/second with smtp-source at 1, 20 and 100 parallel sessions, straight to
#      smtp-sink and through the proxy in front of that same smtp-sink. Direct and proxied
#      runs alternate (ABBA order across rounds) so drift in the shared machine's load hits
#      both sides alike; the medians over the rounds give the ratio proxy/direct (>= 0.38).
#      smtp-source opens one connection per message (no -d), so every proxied message
#      costs the proxy two TCP connections, as it would in front of a real MTA.
#   2. CPU per message (utime+stime from /proc/PID/stat) of the proxy and of smtp-sink,
#      over the proxied runs only: smtp-sink does the same SMTP work per message, so it is
#      the yardstick (proxy <= 2 x smtp-sink, over all proxied messages; the per-session-
#      count lines are for information).
#   3. resident memory per idle connection: VmRSS of a fresh proxy before and after
#      bench/idle_conns.py holds IDLE_CONNS sessions open, each greeted (so each has its
#      downstream connection too); target <= 64 KiB per connection.
# Everything listens on 127.0.0.1 only; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
quick=${QUICK:-0}
msg_size=${MSG_SIZE:-1000}
bounces=${BOUNCES:-1}
strict=${STRICT:-0}
sessions=(1 20 100)
# Messages per run, sized so a direct run takes over 1 s and a proxied one 2-4 s on a
# 2-core machine: long enough that process start-up and the last straggling session do
# not matter.
declare -A msgs=([1]=3000 [20]=8000 [100]=8000)
idle_conns=${IDLE_CONNS:-1000}
if [ "$quick" = 1 ]; then
  msgs=([1]=300 [20]=800 [100]=800)
  idle_conns=${IDLE_CONNS:-200}
fi
python=/usr/bin/python3

# Each proxied session holds two sockets; smtp-sink and the idle holder need one per
# connection too. Raise the soft limit (never lower it).
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 8192 ]; then
  ulimit -n 8192 || { echo "bench: cannot raise the open-file limit to 8192" >&2; exit 1; }
fi

# --- Tools -------------------------------------------------------------------------------
if [ -n "${BATV_BIN:-}" ]; then
  batv=$BATV_BIN
else
  cargo build --release -q
  batv=$PWD/target/release/batv
fi

# smtp-sink/smtp-source come from the postfix package, unpacked (not installed: it
# conflicts with exim4, which the tests use), exactly as .ci/run does.
pf_root=${BATV_POSTFIX_ROOT:-$PWD/target/postfix/root}
if [ ! -x "$pf_root/usr/sbin/smtp-sink" ]; then
  if [ -n "${BATV_POSTFIX_ROOT:-}" ]; then
    echo "bench: no smtp-sink in BATV_POSTFIX_ROOT=$pf_root" >&2; exit 1
  fi
  echo "bench: unpacking postfix into target/postfix/root" >&2
  mkdir -p target/postfix
  (cd target/postfix && { apt-get download postfix >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get download postfix >/dev/null; }; } && dpkg -x postfix_*.deb root)
fi
pf_lib=$pf_root/usr/lib/postfix
smtp_sink=$pf_root/usr/sbin/smtp-sink
smtp_source=$pf_root/usr/sbin/smtp-source

clk_tck=$(getconf CLK_TCK)
tmp=$(mktemp -d)
pids=()
idle_w=
cleanup() {
  local p
  [ -n "$idle_w" ] && exec {idle_w}>&-
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# --- Helpers -----------------------------------------------------------------------------
# A port the kernel considers free right now (smtp-sink cannot report the one it got).
free_port() {
  "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# utime+stime of a whole process (all threads), in clock ticks. The command name in field
# 2 may contain spaces, so count fields after its closing parenthesis: utime, stime are
# fields 14, 15 overall = 12, 13 after it.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Start a proxy on a kernel-chosen port; sets proxy_pid and proxy_port.
start_proxy() {
  local log=$1 i
  "$batv" --config "$tmp/batv.toml" --keys "$tmp/keys" proxy \
    --listen 127.0.0.1:0 --forward "127.0.0.1:$sink_port" 2>"$log" &
  proxy_pid=$!
  pids+=("$proxy_pid")
  for i in $(seq 100); do
    proxy_port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log")
    [ -n "$proxy_port" ] && return 0
    kill -0 "$proxy_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: the proxy did not start:" >&2; cat "$log" >&2; exit 1
}

# SIGTERM (the proxy drains), reap, and forget the PID so cleanup cannot hit a reused one.
stop_pid() {
  local p keep=()
  kill -TERM "$1"; wait "$1" || true
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# run_source PORT SESSIONS MESSAGES FROM TO: one smtp-source run; sets `elapsed` (seconds).
# smtp-source aborts with a fatal error on any unexpected reply, so a nonzero exit means
# the run is not a valid measurement. -c prints a counter per completed DATA; its last
# value must equal MESSAGES.
run_source() {
  local port=$1 s=$2 m=$3 from=$4 to=$5 t0 t1 rc=0 done_count
  t0=$(date +%s.%N)
  LD_LIBRARY_PATH=$pf_lib "$smtp_source" -s "$s" -m "$m" -l "$msg_size" -c \
    -f "$from" -t "$to" "127.0.0.1:$port" >"$tmp/source.out" 2>"$tmp/source.err" || rc=$?
  t1=$(date +%s.%N)
  done_count=$(tr '\r' '\n' <"$tmp/source.out" | awk 'NF { last = $1 } END { print last + 0 }')
  if [ "$rc" != 0 ] || [ "$done_count" != "$m" ]; then
    echo "bench: smtp-source -s $s -m $m to port $port: exit $rc, $done_count messages done" >&2
    cat "$tmp/source.err" >&2
    exit 1
  fi
  if [ -s "$tmp/source.err" ]; then
    sed 's/^/bench: smtp-source said: /' "$tmp/source.err" >&2
  fi
  elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
rate() { awk -v m="$1" -v t="$2" 'BEGIN { printf "%.1f", m / t }'; }

# --- Setup -------------------------------------------------------------------------------
"$batv" --keys "$tmp/keys" keys init >/dev/null 2>&1
cat >"$tmp/batv.toml" <<EOT
sign_domains = ["example.com"]

[proxy]
# The idle-connection test holds IDLE_CONNS sessions at once (default limit: 1000).
max_connections = $((idle_conns > 1000 ? 2 * idle_conns : 2000))
data_check = $([ "${DATA_CHECK:-0}" = 1 ] && echo true || echo false)
EOT
if [ "${GATEWAY:-0}" = 1 ]; then
  # The table as a real site's: many domains' users, ours somewhere in the middle.
  n=${GATEWAY_RCPTS:-100000}
  awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++) { if (i == int(n / 2)) print "rcpt@example.com"; else printf "user%d@example.com\n", i } }' >"$tmp/recipients"
  cat >>"$tmp/batv.toml" <<EOT
mode = "gateway"
valid_recipients = "$tmp/recipients"
EOT
  echo "bench: gateway mode, valid_recipients: $(wc -l <"$tmp/recipients") lines"
fi
# A null-sender message to this address is a genuine bounce: the proxy verifies the tag
# (one HMAC), strips it and relays; the row shows the cost of the verifying path.
tagged_rcpt=$("$batv" --config "$tmp/batv.toml" --keys "$tmp/keys" sign rcpt@example.com 2>/dev/null)

sink_port=$(free_port)
sink_args=(-m $((idle_conns + 1000)))          # default 256 simultaneous sessions
[ "$(id -u)" = 0 ] && sink_args+=(-u nobody)   # smtp-sink refuses to run as root
LD_LIBRARY_PATH=$pf_lib "$smtp_sink" "${sink_args[@]}" "127.0.0.1:$sink_port" 4096 \
  2>"$tmp/sink.err" &
sink_pid=$!
pids+=("$sink_pid")
sink_up=0
for i in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$sink_port") 2>/dev/null && { sink_up=1; break; }
  kill -0 "$sink_pid" 2>/dev/null || break
  sleep 0.1
done
[ "$sink_up" = 1 ] || { echo "bench: smtp-sink did not start:" >&2; cat "$tmp/sink.err" >&2; exit 1; }

start_proxy "$tmp/proxy.log"
echo "bench: batv $("$batv" --version 2>/dev/null | awk '{ print $NF }') ($batv), smtp-sink on :$sink_port, proxy on :$proxy_port; $rounds round(s), ${msg_size}-byte messages, $(nproc) CPU(s)"

# Warm-up (not measured): page in both binaries and grow the allocators once.
run_source "$sink_port" 20 200 sender@remote.example rcpt@example.com
run_source "$proxy_port" 20 200 sender@remote.example rcpt@example.com

# --- Throughput and CPU ------------------------------------------------------------------
declare -A direct_rates proxy_rates     # "sessions" -> space-separated msg/s, one per round
declare -A proxy_cpu sink_cpu cpu_msgs  # "sessions" -> ticks / messages over proxied runs
bounce_rates=""
for s in "${sessions[@]}"; do proxy_cpu[$s]=0; sink_cpu[$s]=0; cpu_msgs[$s]=0; done

for r in $(seq "$rounds"); do
  # ABBA: odd rounds direct first, even rounds proxied first.
  if [ $((r % 2)) = 1 ]; then order="direct proxy"; else order="proxy direct"; fi
  for s in "${sessions[@]}"; do
    m=${msgs[$s]}
    for side in $order; do
      if [ "$side" = direct ]; then
        run_source "$sink_port" "$s" "$m" sender@remote.example rcpt@example.com
        direct_rates[$s]+="$(rate "$m" "$elapsed") "
      else
        p0=$(cpu_ticks "$proxy_pid"); k0=$(cpu_ticks "$sink_pid")
        run_source "$proxy_port" "$s" "$m" sender@remote.example rcpt@example.com
        p1=$(cpu_ticks "$proxy_pid"); k1=$(cpu_ticks "$sink_pid")
        proxy_rates[$s]+="$(rate "$m" "$elapsed") "
        proxy_cpu[$s]=$((proxy_cpu[$s] + p1 - p0))
        sink_cpu[$s]=$((sink_cpu[$s] + k1 - k0))
        cpu_msgs[$s]=$((cpu_msgs[$s] + m))
      fi
      printf 'round %d  sessions %3d  %-6s %6d msgs  %6.2f s  %8.1f msg/s\n' \
        "$r" "$s" "$side" "$m" "$elapsed" "$(rate "$m" "$elapsed")"
    done
  done
  if [ "$bounces" = 1 ]; then
    m=${msgs[20]}
    run_source "$proxy_port" 20 "$m" "" "$tagged_rcpt"
    bounce_rates+="$(rate "$m" "$elapsed") "
    printf 'round %d  sessions %3d  %-6s %6d msgs  %6.2f s  %8.1f msg/s\n' \
      "$r" 20 bounce "$m" "$elapsed" "$(rate "$m" "$elapsed")"
  fi
done
kill -0 "$proxy_pid" || { echo "bench: the proxy died:" >&2; tail "$tmp/proxy.log" >&2; exit 1; }
grep -v 'verdict=bounce-ok\|listening on' "$tmp/proxy.log" | sed 's/^/bench: proxy said: /' >&2 || true
stop_pid "$proxy_pid"

# --- Memory per idle connection ----------------------------------------------------------
# A fresh proxy, so memory the throughput runs left in the allocator cannot absorb the
# new sessions and flatter the figure. One message first, so one-time set-up (keys,
# runtime threads) is in the baseline and not charged to the connections.
start_proxy "$tmp/proxy-idle.log"
run_source "$proxy_port" 1 1 sender@remote.example rcpt@example.com
sleep 0.5
rss0=$(rss_kib "$proxy_pid")
fd0=$(ls "/proc/$proxy_pid/fd" | wc -l)
mkfifo "$tmp/idle.in"
"$python" bench/idle_conns.py 127.0.0.1 "$proxy_port" "$idle_conns" \
  <"$tmp/idle.in" >"$tmp/idle.out" 2>"$tmp/idle.err" &
idle_pid=$!
pids+=("$idle_pid")
exec {idle_w}>"$tmp/idle.in"   # the helper holds its connections until this closes
for i in $(seq 600); do
  grep -q READY "$tmp/idle.out" && break
  kill -0 "$idle_pid" 2>/dev/null || { echo "bench: idle_conns.py failed:" >&2; cat "$tmp/idle.err" >&2; tail "$tmp/proxy-idle.log" >&2; exit 1; }
  sleep 0.1
done
grep -q READY "$tmp/idle.out" || { echo "bench: idle_conns.py not ready after 60 s" >&2; exit 1; }
sleep 1   # let the proxy finish anything it does after relaying the greeting
rss1=$(rss_kib "$proxy_pid")
fd1=$(ls "/proc/$proxy_pid/fd" | wc -l)
exec {idle_w}>&-; idle_w=
wait "$idle_pid" || { echo "bench: idle_conns.py failed:" >&2; cat "$tmp/idle.err" >&2; exit 1; }
sleep 1
rss2=$(rss_kib "$proxy_pid")
grep -v 'listening on' "$tmp/proxy-idle.log" | sed 's/^/bench: proxy said: /' >&2 || true
stop_pid "$proxy_pid"

# --- Summary -----------------------------------------------------------------------------
misses=0
# verdict VALUE OP TARGET: "ok" or "MISS" (runs in $(...): callers count the misses).
verdict() { if awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { exit !(op == ">=" ? v >= t : v <= t) }'; then echo ok; else echo MISS; fi; }

echo
echo "== batv proxy benchmark: median of $rounds round(s), ${msg_size}-byte messages, one connection per message, $(nproc) CPU(s) =="
printf '%8s  %8s  %12s  %12s  %6s\n' sessions messages "direct msg/s" "proxy msg/s" ratio
for s in "${sessions[@]}"; do
  # shellcheck disable=SC2086  # word splitting intended: one value per round
  d=$(median ${direct_rates[$s]}); p=$(median ${proxy_rates[$s]})
  ratio=$(awk -v p="$p" -v d="$d" 'BEGIN { printf "%.2f", p / d }')
  v=$(verdict "$ratio" ">=" 0.38); [ "$v" = ok ] || misses=$((misses + 1))
  printf '%8d  %8d  %12.1f  %12.1f  %6s  %s (target >= 0.38)\n' "$s" "${msgs[$s]}" "$d" "$p" "$ratio" "$v"
done
if [ "$bounces" = 1 ]; then
  # shellcheck disable=SC2086
  d=$(median ${direct_rates[20]}); p=$(median $bounce_rates)
  printf '%8s  %8d  %12.1f  %12.1f  %6.2f  (null sender to a tagged rcpt; direct = the 20-session row)\n' \
    "20 <>" "${msgs[20]}" "$d" "$p" "$(awk -v p="$p" -v d="$d" 'BEGIN { print p / d }')"
fi

echo
echo "CPU per message over the proxied runs (utime+stime, ${clk_tck} ticks/s):"
tp=0; tk=0; tm=0
for s in "${sessions[@]}"; do
  printf '  %3d sessions: proxy %6.1f us  smtp-sink %6.1f us  ratio %.2f\n' "$s" \
    "$(awk -v t="${proxy_cpu[$s]}" -v m="${cpu_msgs[$s]}" -v h="$clk_tck" 'BEGIN { print t / h / m * 1e6 }')" \
    "$(awk -v t="${sink_cpu[$s]}" -v m="${cpu_msgs[$s]}" -v h="$clk_tck" 'BEGIN { print t / h / m * 1e6 }')" \
    "$(awk -v a="${proxy_cpu[$s]}" -v b="${sink_cpu[$s]}" 'BEGIN { print (b > 0) ? a / b : 0 }')"
  tp=$((tp + proxy_cpu[$s])); tk=$((tk + sink_cpu[$s])); tm=$((tm + cpu_msgs[$s]))
done
cpu_ratio=$(awk -v a="$tp" -v b="$tk" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 999 }')
v=$(verdict "$cpu_ratio" "<=" 2); [ "$v" = ok ] || misses=$((misses + 1))
printf 'proxy CPU/msg %.1f us, smtp-sink CPU/msg %.1f us (%d msgs): ratio %s  %s (target <= 2.00)\n' \
  "$(awk -v t="$tp" -v m="$tm" -v h="$clk_tck" 'BEGIN { print t / h / m * 1e6 }')" \
  "$(awk -v t="$tk" -v m="$tm" -v h="$clk_tck" 'BEGIN { print t / h / m * 1e6 }')" "$tm" "$cpu_ratio" "$v"

per_conn=$(awk -v a="$rss0" -v b="$rss1" -v n="$idle_conns" 'BEGIN { printf "%.1f", (b - a) / n }')
v=$(verdict "$per_conn" "<=" 64); [ "$v" = ok ] || misses=$((misses + 1))
printf 'proxy memory: %d idle connections: VmRSS %d -> %d KiB = %s KiB per connection  %s (target <= 64)\n' \
  "$idle_conns" "$rss0" "$rss1" "$per_conn" "$v"
printf '  (proxy fds %d -> %d; VmRSS %d KiB after the connections closed)\n' "$fd0" "$fd1" "$rss2"

[ "$strict" = 1 ] && [ "$misses" -gt 0 ] && exit 1
exit 0
