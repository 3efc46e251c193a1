#!/usr/bin/env bash
# Messages per second through a whole Postfix with batv's milter, against the same Postfix
# without it, in one run.
#
#   bash bench/milter.sh                 # full run: about 4 minutes on 2 cores, plus the build
#   QUICK=1 bash bench/milter.sh         # smoke test: a tenth of the messages
#   ROUNDS=5 bash bench/milter.sh
#
# Environment:
#   ROUNDS=3        rounds; each round runs every row once without and once with the milter
#   QUICK=1         a tenth of the messages
#   MSG_SIZE=1000   message body size in bytes (smtp-source -l)
#   BOUNCES=0       skip the null-sender row (bounces to a tagged recipient)
#   BATV_BIN=PATH   use this binary instead of building target/release/batv
#   BATV_POSTFIX_ROOT=DIR   unpacked postfix package (default target/postfix/root)
#
# Needs root and the postfix user and postdrop group (Postfix drops to them), as
# tests/milter_postfix.rs does.
#
# The set-up: one Postfix (master, smtpd, cleanup, qmgr, trivial-rewrite, discard, from the
# unpacked package, its own config and queue in a temp dir), with two smtpd services on
# loopback ports that differ only in `smtpd_milters`: one has batv's milter
# (inet:127.0.0.1:PORT, milter_protocol = 6, milter_default_action = tempfail), the other
# none. smtp-source (one connection per message, as at an MX) sends to one or the other;
# Postfix queues each message (cleanup writes and fsyncs the queue file before the 250) and
# delivers it with `default_transport = discard` / `relay_transport = discard`: no
# downstream SMTP, so the figures are smtpd + milter + queueing. Rows:
#   out, 1 and 20 sessions: sender@example.org -> rcpt@remote.example from 127.0.0.1, which
#       is in mynetworks and in the milter's internal_networks: every message is signed at
#       end of message (CHGFROM), each connection costs a milter connection + negotiation;
#   bounce, 20 sessions: MAIL FROM:<> to a tagged rcpt@example.org (`batv sign`): the
#       milter verifies the tag at RCPT and strips it at end of message (DELRCPT+ADDRCPT).
# Without and with alternate (ABBA across rounds); medians over the rounds give the ratio.
# Between runs the queue is drained (not timed) so one run's deliveries do not slow the
# next. CPU per message (utime+stime from /proc/PID/stat, from before a run to after its
# queue drained): batv milter over the milter runs; as the yardstick, Postfix's smtpd
# processes (children of master, told apart by their service's port) and the whole Postfix
# (master and all its children) for each side. max_use and max_idle are raised so Postfix's
# processes live through the run and keep their counted CPU.
# Everything listens on 127.0.0.1 only; every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
quick=${QUICK:-0}
msg_size=${MSG_SIZE:-1000}
bounces=${BOUNCES:-1}
rows=("out 1" "out 20")
[ "$bounces" = 1 ] && rows+=("bounce 20")
declare -A msgs=([1]=1000 [20]=4000)
if [ "$quick" = 1 ]; then msgs=([1]=100 [20]=400); fi
python=/usr/bin/python3

if [ "$(id -u)" != 0 ] || ! getent passwd postfix >/dev/null || ! getent group postdrop >/dev/null; then
  echo "bench: a whole Postfix needs root and the postfix user and postdrop group" >&2; exit 1
fi

# --- Tools -------------------------------------------------------------------------------
if [ -n "${BATV_BIN:-}" ]; then
  batv=$BATV_BIN
else
  cargo build --release -q
  batv=$PWD/target/release/batv
fi
pf_root=${BATV_POSTFIX_ROOT:-$PWD/target/postfix/root}
if [ ! -x "$pf_root/usr/sbin/postfix" ]; then
  if [ -n "${BATV_POSTFIX_ROOT:-}" ]; then
    echo "bench: no postfix in BATV_POSTFIX_ROOT=$pf_root" >&2; exit 1
  fi
  echo "bench: unpacking postfix into target/postfix/root" >&2
  mkdir -p target/postfix
  (cd target/postfix && { apt-get download postfix >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get download postfix >/dev/null; }; } && dpkg -x postfix_*.deb root)
fi
pf_root=$(cd "$pf_root" && pwd)
pf_lib=$pf_root/usr/lib/postfix
smtp_source=$pf_root/usr/sbin/smtp-source

clk_tck=$(getconf CLK_TCK)
tmp=$(mktemp -d)
pids=()
master_pid=
cleanup() {
  local p i kids=()
  # SIGTERM to Postfix's master stops it and its children (`postfix start-fg` then exits);
  # they are waited for by PID, so nothing writes into $tmp while it is removed.
  if [ -n "$master_pid" ]; then
    read -r -a kids <<<"$(pf_procs 2>/dev/null | awk '{ printf "%s ", $1 }')"
    kill -TERM "$master_pid" 2>/dev/null || true
    for i in $(seq 100); do
      for p in "${kids[@]}"; do kill -0 "$p" 2>/dev/null && break; p=; done
      [ -z "${p:-}" ] && break
      sleep 0.1
    done
    for p in "${kids[@]}"; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done; true
  fi
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp" 2>/dev/null || { sleep 1; rm -rf "$tmp"; }
}
trap cleanup EXIT
trap "exit 1" INT TERM HUP

# --- Helpers -----------------------------------------------------------------------------
free_port() {
  "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# utime+stime of a whole process (all threads), in clock ticks; fields 14, 15 overall, 12,
# 13 after the command name's closing parenthesis (which may contain spaces).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

# Postfix's processes now: lines "PID KIND TICKS", KIND = smtpd-PORT for an smtpd (its
# cmdline has `-n 127.0.0.1:PORT`), else the command name. master itself is included.
pf_procs() {
  local d pid rest ppid comm ticks kind
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    rest=$(cat "$d/stat" 2>/dev/null) || continue
    comm=${rest#*(}; comm=${comm%%)*}
    read -r _ ppid _ _ _ _ _ _ _ _ _ utime stime _ <<<"${rest##*) }"
    [ "$ppid" = "$master_pid" ] || [ "$pid" = "$master_pid" ] || continue
    ticks=$((utime + stime)); kind=$comm
    if [ "$comm" = smtpd ]; then
      kind=smtpd-$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null | sed -n 's/.*-n 127\.0\.0\.1:\([0-9]*\).*/\1/p')
    fi
    echo "$pid $kind $ticks"
  done
}

# pf_delta BEFORE AFTER KIND: ticks spent between two pf_procs snapshots by processes of
# KIND ("all" for every one); a process new in AFTER counts from 0.
pf_delta() {
  awk -v k="$3" 'FNR == NR { b[$1] = $3; next } k == "all" || $2 == k { t += $3 - b[$1] } END { print t + 0 }' "$1" "$2"
}

# Wait until Postfix's queue is empty (every accepted message delivered, i.e. discarded).
drain() {
  local i n
  for i in $(seq 600); do
    n=$(find "$tmp/pf/queue/maildrop" "$tmp/pf/queue/incoming" "$tmp/pf/queue/active" \
      "$tmp/pf/queue/deferred" "$tmp/pf/queue/hold" -type f 2>/dev/null | wc -l)
    [ "$n" = 0 ] && return 0
    sleep 0.1
  done
  echo "bench: the queue did not drain in 60 s ($n left); maillog tail:" >&2
  tail -20 "$tmp/pf/maillog" >&2; exit 1
}

# run_source PORT SESSIONS MESSAGES FROM TO: one smtp-source run; sets `elapsed` (seconds).
# smtp-source exits nonzero on any unexpected reply (a milter tempfail included); its -c
# counter must reach MESSAGES.
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
    tail -20 "$tmp/pf/maillog" >&2
    exit 1
  fi
  if [ -s "$tmp/source.err" ]; then
    sed 's/^/bench: smtp-source said: /' "$tmp/source.err" >&2
  fi
  elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
rate() { awk -v m="$1" -v t="$2" 'BEGIN { printf "%.1f", m / t }'; }
us() { awk -v t="$1" -v m="$2" -v h="$clk_tck" 'BEGIN { printf "%.1f", (m > 0) ? t / h / m * 1e6 : 0 }'; }

# --- The milter --------------------------------------------------------------------------
cat >"$tmp/batv.toml" <<'EOT'
sign_domains = ["example.org"]

[milter]
internal_networks = ["127.0.0.1/32"]
EOT
"$batv" --config "$tmp/batv.toml" --keys "$tmp/keys" keys init >/dev/null 2>&1
tagged_rcpt=$("$batv" --config "$tmp/batv.toml" --keys "$tmp/keys" sign rcpt@example.org 2>/dev/null)
"$batv" --config "$tmp/batv.toml" --keys "$tmp/keys" milter --listen inet:127.0.0.1:0 \
  2>"$tmp/milter.log" &
milter_pid=$!
pids+=("$milter_pid")
milter_addr=
for _ in $(seq 100); do
  milter_addr=$(sed -n 's/.*listening on inet:\(127\.0\.0\.1:[0-9]*\).*/\1/p' "$tmp/milter.log")
  [ -n "$milter_addr" ] && break
  kill -0 "$milter_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$milter_addr" ] || { echo "bench: batv milter did not start:" >&2; cat "$tmp/milter.log" >&2; exit 1; }

# --- Postfix (as tests/common/postfix.rs sets it up) -------------------------------------
pf=$tmp/pf
mkdir -p "$pf/etc" "$pf/queue" "$pf/data"
chmod 755 "$tmp" "$pf"   # the postfix user must reach the queue and data
chown postfix "$pf/data"
port_plain=$(free_port)
port_milter=$(free_port)
while [ "$port_milter" = "$port_plain" ]; do port_milter=$(free_port); done
cat >"$pf/etc/main.cf" <<EOT
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
command_directory = $pf_root/usr/sbin
daemon_directory = $pf_lib/sbin
shlib_directory = $pf_lib
meta_directory = $pf/etc
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.example.com
mydomain = example.com
mydestination =
alias_maps =
alias_database =
biff = no
smtpd_banner = \$myhostname ESMTP Postfix
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C LD_LIBRARY_PATH=$pf_lib
mynetworks = 127.0.0.1/32
relay_domains = example.org
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
default_transport = discard
relay_transport = discard
milter_protocol = 6
milter_default_action = tempfail
# Long-lived processes: their CPU stays countable in /proc until the end.
max_use = 1000000
max_idle = 3600s
EOT
cat >"$pf/etc/master.cf" <<EOT
127.0.0.1:$port_plain inet n - n - - smtpd -o smtpd_milters=
127.0.0.1:$port_milter inet n - n - - smtpd -o smtpd_milters=inet:$milter_addr
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOT
cp "$pf_root/etc/postfix/postfix-files" "$pf/etc/" 2>/dev/null || true
LD_LIBRARY_PATH=$pf_lib "$pf_root/usr/sbin/postfix" -c "$pf/etc" start-fg \
  </dev/null >"$tmp/postfix.out" 2>&1 &
pf_pid=$!
pids+=("$pf_pid")
up=0
for _ in $(seq 150); do
  if [ -z "$master_pid" ] && [ -s "$pf/queue/pid/master.pid" ]; then
    master_pid=$(tr -d ' \n' <"$pf/queue/pid/master.pid")
  fi
  if [ -n "$master_pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port_plain") 2>/dev/null &&
    (exec 3<>"/dev/tcp/127.0.0.1/$port_milter") 2>/dev/null; then
    up=1; break
  fi
  kill -0 "$pf_pid" 2>/dev/null || break
  sleep 0.1
done
[ "$up" = 1 ] || { echo "bench: Postfix did not start:" >&2; cat "$tmp/postfix.out" "$pf/maillog" >&2 2>/dev/null; exit 1; }

echo "bench: batv $("$batv" --version 2>/dev/null | awk '{ print $NF }') ($batv), milter on $milter_addr; Postfix $(LD_LIBRARY_PATH=$pf_lib "$pf_root/usr/sbin/postconf" -c "$pf/etc" -h mail_version 2>/dev/null) smtpd :$port_plain (no milter), :$port_milter (milter), delivery discarded; $rounds round(s), ${msg_size}-byte messages, $(nproc) CPU(s)"

# row_args KIND: smtp-source's -f and -t for a row.
row_from() { if [ "$1" = bounce ]; then echo ""; else echo sender@example.org; fi; }
row_to() { if [ "$1" = bounce ]; then echo "$tagged_rcpt"; else echo rcpt@remote.example; fi; }

# Warm-up (not measured): every smtpd service and the milter once.
for port in "$port_plain" "$port_milter"; do
  run_source "$port" 20 200 sender@example.org rcpt@remote.example
  run_source "$port" 20 100 "" "$tagged_rcpt"
done
drain

# --- Throughput and CPU ------------------------------------------------------------------
declare -A rates              # "row side" -> msg/s, one per round
declare -A pcpu smtpd_cpu     # "side" -> ticks over all rows
declare -A side_msgs          # "side" -> messages
milter_cpu=0
for side in plain milter; do pcpu[$side]=0; smtpd_cpu[$side]=0; side_msgs[$side]=0; done
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="plain milter"; else order="milter plain"; fi
  for row in "${rows[@]}"; do
    read -r kind s <<<"$row"
    m=${msgs[$s]}
    for side in $order; do
      if [ "$side" = plain ]; then port=$port_plain; else port=$port_milter; fi
      pf_procs >"$tmp/before"; c0=$(cpu_ticks "$milter_pid")
      run_source "$port" "$s" "$m" "$(row_from "$kind")" "$(row_to "$kind")"
      drain
      pf_procs >"$tmp/after"; c1=$(cpu_ticks "$milter_pid")
      rates["$row $side"]+="$(rate "$m" "$elapsed") "
      pcpu[$side]=$((pcpu[$side] + $(pf_delta "$tmp/before" "$tmp/after" all)))
      smtpd_cpu[$side]=$((smtpd_cpu[$side] + $(pf_delta "$tmp/before" "$tmp/after" "smtpd-$port")))
      side_msgs[$side]=$((side_msgs[$side] + m))
      [ "$side" = milter ] && milter_cpu=$((milter_cpu + c1 - c0))
      printf 'round %d  %-6s %3d sessions  %-6s %6d msgs  %6.2f s  %8.1f msg/s\n' \
        "$r" "$kind" "$s" "$side" "$m" "$elapsed" "$(rate "$m" "$elapsed")"
    done
  done
done
kill -0 "$milter_pid" || { echo "bench: the milter died:" >&2; tail "$tmp/milter.log" >&2; exit 1; }

# The milter did its work: signed senders and stripped recipients reached delivery.
# Expected: the warm-up's 200 outbound and 100 bounces through the milter, and the rows'.
want_signed=$((200 + rounds * (msgs[1] + msgs[20])))
want_stripped=$((100 + (bounces == 1 ? rounds * msgs[20] : 0)))
for _ in $(seq 50); do   # postlogd writes the maillog asynchronously
  signed=$(grep -c 'qmgr.*from=<prvs=' "$pf/maillog" || true)
  stripped=$(grep -c 'postfix/discard.*to=<rcpt@example\.org>' "$pf/maillog" || true)
  [ "$signed" = "$want_signed" ] && [ "$stripped" = "$want_stripped" ] && break
  sleep 0.1
done
grep -v 'verdict=bounce-ok\|listening on' "$tmp/milter.log" | sed 's/^/bench: milter said: /' >&2 || true

# --- Summary -----------------------------------------------------------------------------
echo
echo "== batv milter in Postfix: median of $rounds round(s), ${msg_size}-byte messages, one connection per message, delivery discarded, $(nproc) CPU(s) =="
printf '%-20s  %8s  %15s  %14s  %6s\n' row messages "no milter msg/s" "milter msg/s" ratio
for row in "${rows[@]}"; do
  read -r kind s <<<"$row"
  # shellcheck disable=SC2086  # word splitting intended: one value per round
  a=$(median ${rates["$row plain"]}); b=$(median ${rates["$row milter"]})
  printf '%-20s  %8d  %15.1f  %14.1f  %6.2f\n' "$kind, $s sessions" "${msgs[$s]}" "$a" "$b" \
    "$(awk -v a="$a" -v b="$b" 'BEGIN { print b / a }')"
done
echo
echo "CPU per message (utime+stime, ${clk_tck} ticks/s, from each run's start to its queue drained):"
printf '  batv milter              %7s us  (%d msgs through the milter)\n' \
  "$(us "$milter_cpu" "${side_msgs[milter]}")" "${side_msgs[milter]}"
printf '  Postfix smtpd            %7s us without the milter, %7s us with it\n' \
  "$(us "${smtpd_cpu[plain]}" "${side_msgs[plain]}")" "$(us "${smtpd_cpu[milter]}" "${side_msgs[milter]}")"
printf '  whole Postfix (master and children) %7s us without, %7s us with\n' \
  "$(us "${pcpu[plain]}" "${side_msgs[plain]}")" "$(us "${pcpu[milter]}" "${side_msgs[milter]}")"
printf '  milter / smtpd (with it) %7.2f\n' \
  "$(awk -v a="$milter_cpu" -v b="${smtpd_cpu[milter]}" 'BEGIN { print (b > 0) ? a / b : 0 }')"
echo "Delivered (maillog) with a signed sender: $signed of $want_signed; bounces with the tag stripped: $stripped of $want_stripped"
if [ "$signed" != "$want_signed" ] || [ "$stripped" != "$want_stripped" ]; then
  echo "bench: the milter did not sign or strip every message it should have" >&2; exit 1
fi
exit 0
