#!/bin/sh
# tests/sanitize.sh COMMAND ARGS...
#
#	Runs COMMAND (the test suite, from "make test-sanitize", in the tclsh
#	built with the sanitizers, tests/sanitize-tclsh.c) with the options
#	below.  Every sanitizer report also goes to a log file; the run fails
#	when COMMAND fails or when any log was written, so that a report in a
#	process whose exit status no test looks at (a server in a child
#	tclsh) fails the run too.
#
#	What counts:
#	- every AddressSanitizer error (overflow, use after free, double
#	  free ...) and every UndefinedBehaviorSanitizer report, in any
#	  process that runs the package: it aborts at the first one
#	  (halt_on_error; the package is built with -fno-sanitize-recover=all);
#	- a leak (LeakSanitizer) of any block: the package's blocks come from
#	  malloc in this build (SMTP_SYSTEM_ALLOC), so each one it loses is
#	  seen.  The check runs when Tcl exits (an exit handler of the
#	  package's, generic/smtp.c), in each process that loaded the
#	  package, and nowhere else (leak_check_at_exit=0: a tclsh of the
#	  tests that never loads the package, such as smtpd.tcl's server, is
#	  not checked; the other programs, Python, Postfix, Dovecot, run
#	  without the sanitizers).  Tcl keeps its own memory reachable at
#	  exit, so a tclsh reports nothing of Tcl's.  A process killed by a
#	  signal is not checked.
#	ASan's quarantine of freed blocks is 8 MB instead of 256, so that the
#	tests bounding the package's memory (mime-memory-*) measure the
#	package and not the quarantine.
#
#	SMTP_DETECT_LEAKS=0 turns leak checking off.
set -u
logs=$(mktemp -d "${TMPDIR:-/tmp}/smtp-sanitize.XXXXXX")

ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:exitcode=23:disable_coredump=1"
ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=${SMTP_DETECT_LEAKS:-1}:leak_check_at_exit=0"
ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$logs/asan"
ASAN_OPTIONS="$ASAN_OPTIONS:quarantine_size_mb=8:malloc_context_size=20"
ASAN_OPTIONS="$ASAN_OPTIONS:detect_odr_violation=0"
UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$logs/ubsan"
export ASAN_OPTIONS UBSAN_OPTIONS

"$@"
rc=$?

bad=0
for f in "$logs"/*; do
    [ -f "$f" ] || continue
    bad=$((bad + 1))
    echo "==== sanitizer report: $f"
    cat "$f"
done
rm -rf "$logs"
if [ "$bad" -gt 0 ]; then
    echo "sanitize.sh: $bad sanitizer report(s) (above): failing" >&2
    [ "$rc" != 0 ] || rc=1
fi
exit $rc
