#!/bin/sh
# fuzz/run.sh BUILD SRC SECONDS TARGET...
#
#	Runs each libFuzzer target BUILD/fuzz_TARGET for SECONDS seconds
#	(make fuzz FUZZ_SECONDS=N), starting from its seed corpus
#	SRC/corpus/TARGET (read only) and BUILD/corpus/TARGET (where the
#	inputs it finds are kept, so a later run goes on from there).  Every
#	seed is run first, so an input that once found a bug, kept among the
#	seeds, fails the target again if the bug comes back.
#
#	A crash, a sanitizer report, a leak, a failed check (FUZZ_CHECK), an
#	input running longer than 10 seconds or a process over 2 GB fails
#	the target; the input is saved as BUILD/artifacts/TARGET-*, and the
#	command that replays it is printed.  The last line is
#
#	    fuzz: N passed, N failed
#
#	and the exit status is 1 if any target failed.
set -u
build=$1 src=$2 secs=$3
shift 3

passed=0 failed=0 bad=
mkdir -p "$build/artifacts"
for t in "$@"; do
    exe=$build/fuzz_$t
    mkdir -p "$build/corpus/$t"
    seeds=
    [ -d "$src/corpus/$t" ] && seeds=$src/corpus/$t
    log=$build/fuzz_$t.log
    echo "---- fuzz_$t: $secs s"
    start=$(date +%s)
    # Leaks are checked after each input (libFuzzer's -detect_leaks, on
    # by default): the blocks Tcl keeps for reuse stay reachable.
    ASAN_OPTIONS="${ASAN_OPTIONS:-}${ASAN_OPTIONS:+:}detect_leaks=1:halt_on_error=1" \
    UBSAN_OPTIONS="${UBSAN_OPTIONS:-}${UBSAN_OPTIONS:+:}halt_on_error=1:print_stacktrace=1" \
    "$exe" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$build/artifacts/$t-" \
        "$build/corpus/$t" $seeds >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ "$rc" = 0 ]; then
        passed=$((passed + 1))
        echo "fuzz_$t: ok, ${runs:-?} inputs in $took s"
    else
        failed=$((failed + 1))
        bad="$bad $t"
        tail -n 60 "$log"
        echo "fuzz_$t: FAILED (exit $rc after $took s); full log: $log"
        for a in "$build/artifacts/$t-"*; do
            [ -f "$a" ] && echo "  replay: $exe $a"
        done
    fi
done
[ -z "$bad" ] || echo "failed targets:$bad"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
