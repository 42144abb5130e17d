#!/usr/bin/env bash
# alternate.sh -- this package in several build directories (e.g. one for
# Tcl 8.6 and one for Tcl 9), sending the same scenario in alternated
# runs, so that a busy machine slows them alike.  Prints every run and
# then, per build, the median and the least of the send time (secs) and
# of the CPU time of the sends (cpu: user and system, all threads), with
# the load average at the start and at the end.
#
# Usage: bench/alternate.sh ROUNDS SCENARIO COUNT BUILDDIR...
#
#   ROUNDS    runs per build directory (each a fresh process)
#   SCENARIO  1, 2, 3, 4 or 6 (bench/README.md)
#   COUNT     messages for scenarios 1 and 4 (ignored otherwise)
#   BUILDDIR  a configured and built directory: its Makefile names the
#             tclsh, and the package is loaded from it (TCLLIBPATH)
#
# The sink and the input files are the first directory's, from an
# earlier "make bench" there (bench-out/smtp-sink, bench-out/data).
# Example, from the top of the tree:
#
#   bench/alternate.sh 15 1 2000 build-86 build-tcl9
set -euo pipefail

if [ $# -lt 4 ]; then
    sed -n '8,20p' "$0" >&2
    exit 2
fi
rounds=$1 scenario=$2 count=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
first=$(cd "$1" && pwd)
sink=$first/bench-out/smtp-sink
data=$first/bench-out/data
[ -x "$sink" ] && [ -d "$data" ] || {
    echo "alternate.sh: no $sink or $data: run make bench in $1 first" >&2
    exit 1
}

dirs=() tclshs=()
for d in "$@"; do
    d=$(cd "$d" && pwd)
    t=$(sed -n 's/^TCLSH[[:space:]]*=[[:space:]]*//p' "$d/Makefile")
    [ -n "$t" ] || { echo "alternate.sh: no TCLSH in $d/Makefile" >&2; exit 1; }
    dirs+=("$d") tclshs+=("$t")
done

# The sink prints "port N" once it listens.
coproc SINK { exec "$sink" -w; }
read -r word port <&"${SINK[0]}"
[ "$word" = port ] || { echo "alternate.sh: the sink did not start" >&2; exit 1; }
trap 'kill $SINK_PID 2>/dev/null || true' EXIT

out=$(mktemp)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= rounds; r++)); do
    for i in "${!dirs[@]}"; do
        line=$(TCLLIBPATH=${dirs[$i]} "${tclshs[$i]}" "$here/client.tcl" ours \
            "$scenario" "$port" "$data" "$count" | grep '^RESULT')
        echo "$i $line" >> "$out"
        echo "round $r ${dirs[$i]}: $line"
    done
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

echo "load average (1/5/15 min): at start $load0, at end $load1"
for i in "${!dirs[@]}"; do
    for f in secs cpu; do
        sed -n "s/^$i .* $f=\([0-9.]*\).*/\1/p" "$out" | sort -n \
            | awk -v d="${dirs[$i]}" -v f=$f '{v[NR] = $1}
                END {printf "%s (%s): %s median %.4f, least %.4f, of %d\n",
                    d, "'"${tclshs[$i]##*/}"'", f,
                    (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2,
                    v[1], NR}'
    done
done
rm -f "$out"
