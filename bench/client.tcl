# client.tcl --
#
#	One benchmark run for a Tcl client: builds the mime tokens of one
#	scenario, sends them with smtp::sendmessage and prints one line
#
#	    RESULT secs=S msgs=N base_kb=K hwm_kb=H pkg=VERSION cpu=C
#
#	secs is the time spent in smtp::sendmessage only (tokens are built
#	before the clock starts and finalized after it stops); base_kb is
#	VmRSS just before the first send and hwm_kb is VmHWM after the last,
#	both from /proc/self/status; cpu is the CPU time (user and system,
#	all threads: Tcl 8.6's notifier thread too) of the same sends, from
#	/proc/self/task/*/schedstat (0 without /proc). On a busy machine
#	cpu varies less than secs.
#
#	Usage: tclsh client.tcl impl scenario port datadir count
#
#	impl	 "ours": package require smtp, which must be this package (run
#		 with TCLLIBPATH pointing at the build directory);
#		 "tcllib": source tcllib's smtp.tcl (BENCH_TCLLIB_SMTP, default
#		 the one beside the mime package loaded: Debian's tcllib 1.21
#		 under Tcl 8.6, tcllib 2.0 under Tcl 9), which must then be
#		 smtp 1.5.1 or 1.5.2;
#		 "write": send nothing, but write the first token with
#		 mime::copymessage (CRLF lines, not dot-stuffed) to the file
#		 named in place of the port: the pre-built message that
#		 smtplib and curl send.
#	scenario 1..6, as in README.md; the input files come from run.tcl.
#	count	 messages to send (scenarios 1 and 4); for scenario 5 the
#		 name of the data file to attach (s5.bin or s5probe.bin).
#
#	With BENCH_PROFILE=1 in the environment, every Tcl procedure in the
#	mime, smtp, base64, md5 and tcl::chan namespaces is wrapped to
#	measure it while the messages are sent, and the procedures with the
#	most inclusive time are listed on standard error (README.md uses it).
#	With BENCH_PERF=FILE, "perf record -e cpu-clock -g" samples this
#	process while the messages are sent (only then) into FILE.
#	With BENCH_MEMO=1, mime::buildmessage, mime::getheader and
#	mime::parseaddress compute their result once and return it again for
#	the same arguments on any token: an estimate of what sendmessage costs
#	once mime's Tcl work is gone (every message then carries the first
#	one's bytes; never use it for the real table).

package require Tcl 8.6-

lassign $argv impl scenario port datadir count
if {[llength $argv] != 5} {
    puts stderr "usage: tclsh client.tcl ours|tcllib scenario port datadir count"
    exit 2
}

package require mime
switch -- $impl {
    ours {
	set version [package require smtp]
	if {[package vsatisfies $version 1.5.1]
		&& ![package vsatisfies $version 1.6]} {
	    puts stderr "client.tcl: package require smtp gave tcllib's\
		    $version, not this package: is TCLLIBPATH set?"
	    exit 1
	}
    }
    tcllib {
	# tcllib's smtp.tcl beside the mime.tcl loaded (Debian's tcllib 1.21
	# under Tcl 8.6, tcllib 2.0 under Tcl 9).
	set path /usr/share/tcltk/tcllib1.21/mime/smtp.tcl
	if {[regexp {^source (.*)/mime\.tcl$} \
		[package ifneeded mime [package present mime]] -> mimedir]} {
	    set path [file join $mimedir smtp.tcl]
	}
	if {[info exists env(BENCH_TCLLIB_SMTP)]} {
	    set path $env(BENCH_TCLLIB_SMTP)
	}
	source $path
	set version [package provide smtp]
	if {$version ni {1.5.1 1.5.2} || [string match *smtp* [info loaded]]} {
	    puts stderr "client.tcl: $path is not tcllib's smtp 1.5.1 or 1.5.2"
	    exit 1
	}
    }
    write {
	set version [package require mime]
    }
    default {
	puts stderr "client.tcl: unknown client $impl"
	exit 2
    }
}

proc readFile {path {binary 0}} {
    set f [open $path rb]
    if {!$binary} {
	fconfigure $f -translation auto -encoding utf-8
    }
    set data [read $f]
    close $f
    return $data
}

proc procStatus {field} {
    set f [open /proc/self/status r]
    set text [read $f]
    close $f
    if {[regexp -line "^${field}:\\s+(\\d+) kB" $text -> kb]} {
	return $kb
    }
    return 0
}

proc headers {tok subject} {
    mime::setheader $tok Subject $subject
    mime::setheader $tok From a@example.com
    mime::setheader $tok To b@example.org
    return $tok
}

# The token (or tokens) of each scenario.  Every message is sent with
# the same options; scenario 4 adds its 1000 recipients.
set recipients b@example.org
set tokens {}
switch -- $scenario {
    1 {
	set body [readFile [file join $datadir s1.txt]]
	for {set i 0} {$i < $count} {incr i} {
	    lappend tokens [headers [mime::initialize -canonical text/plain \
		    -string $body] "Benchmark message $i"]
	}
    }
    2 {
	set text [readFile [file join $datadir s2.txt]]
	lappend tokens [headers [mime::initialize -canonical text/plain \
		-string $text] "Ten megabytes of long lines"]
	unset text
    }
    6 {
	# Read as characters: a plain Tcl string, not converted.
	set text [readFile [file join $datadir s6-intl.txt]]
	lappend tokens [headers [mime::initialize \
		-canonical "text/plain; charset=UTF-8" -string $text] \
		"Ten megabytes of text in many scripts"]
	unset text
    }
    3 {
	set text [readFile [file join $datadir s1.txt]]
	set bin [readFile [file join $datadir s3.bin] 1]
	set parts [list \
	    [mime::initialize -canonical text/plain -string $text] \
	    [mime::initialize -canonical application/octet-stream \
		-header [list Content-Disposition \
			"attachment; filename=\"s3.bin\""] \
		-string $bin]]
	lappend tokens [headers [mime::initialize -canonical multipart/mixed \
		-parts $parts] "An 8 MB attachment"]
	unset bin
    }
    4 {
	set body [readFile [file join $datadir s1.txt]]
	set list {}
	for {set i 1} {$i <= 1000} {incr i} {
	    lappend list [format r%04d@example.org $i]
	}
	set recipients [join $list ,]
	for {set i 0} {$i < $count} {incr i} {
	    lappend tokens [headers [mime::initialize -canonical text/plain \
		    -string $body] "A thousand recipients $i"]
	}
    }
    5 {
	set text [readFile [file join $datadir s1.txt]]
	set parts [list \
	    [mime::initialize -canonical text/plain -string $text] \
	    [mime::initialize -canonical application/octet-stream \
		-header [list Content-Disposition \
			"attachment; filename=\"$count\""] \
		-file [file join $datadir $count]]]
	lappend tokens [headers [mime::initialize -canonical multipart/mixed \
		-parts $parts] "A file-backed attachment"]
	set count 1
    }
    default {
	puts stderr "client.tcl: unknown scenario $scenario"
	exit 2
    }
}

if {$impl eq "write"} {
    set tok [lindex $tokens 0]
    mime::setheader $tok Date [mime::parsedatetime -now proper]
    mime::setheader $tok Message-ID [mime::uniqueID]
    set f [open $port.tmp w]
    # As mime::buildmessage writes, for tcllib's smtp: through a channel in
    # the system encoding (UTF-8), which leaves the octets of the other
    # scenarios' ASCII and base64 as they are and writes scenario 6's
    # characters in UTF-8.
    fconfigure $f -translation crlf \
	    -encoding [expr {$scenario == 6 ? "utf-8" : "iso8859-1"}]
    mime::copymessage $tok $f
    close $f
    file rename -force $port.tmp $port
    exit 0
}

# Wraps each procedure so that its calls and inclusive time are counted.
proc profileProcs {} {
    namespace eval ::prof {variable us; variable calls}
    set procs {}
    foreach ns {::mime ::smtp ::base64 ::md5 ::tcl::chan} {
	if {[namespace exists $ns]} {
	    lappend procs {*}[info procs ${ns}::*]
	}
    }
    foreach p $procs {
	set p [namespace which -command $p]
	rename $p ${p}__profiled
	set ::prof::us($p) 0
	set ::prof::calls($p) 0
	proc $p args [string map [list %P [list $p]] {
	    set t0 [clock microseconds]
	    try {
		uplevel 1 [list %P__profiled {*}$args]
	    } finally {
		incr ::prof::us(%P) [expr {[clock microseconds] - $t0}]
		incr ::prof::calls(%P)
	    }
	}]
    }
}

proc profileReport {total} {
    set rows {}
    foreach p [array names ::prof::us] {
	if {$::prof::calls($p)} {
	    lappend rows [list $p $::prof::calls($p) $::prof::us($p)]
	}
    }
    puts stderr [format "%-34s %8s %10s %6s" procedure calls "incl. ms" "%"]
    foreach r [lrange [lsort -integer -decreasing -index 2 $rows] 0 19] {
	lassign $r p n us
	puts stderr [format "%-34s %8d %10.1f %5.1f%%" $p $n [expr {$us / 1000.0}] \
		[expr {100.0 * $us / $total}]]
    }
    puts stderr [format "%-34s %8s %10.1f" "(all of sendmessage)" "" \
	    [expr {$total / 1000.0}]]
}

# Answers each mime procedure from a cache keyed by its arguments after
# the token.
proc memoizeMime {} {
    foreach p {buildmessage getheader parseaddress} {
	rename ::mime::$p ::mime::${p}__computed
	proc ::mime::$p args [string map [list %P $p] {
	    set key [list %P {*}[lrange $args 1 end]]
	    if {![info exists ::memo($key)]} {
		set ::memo($key) [uplevel 1 [list ::mime::%P__computed {*}$args]]
	    }
	    return $::memo($key)
	}]
    }
}

if {[info exists env(BENCH_MEMO)] && $env(BENCH_MEMO)} {
    memoizeMime
}
set profiling [expr {[info exists env(BENCH_PROFILE)] && $env(BENCH_PROFILE)}]
if {$profiling} {
    profileProcs
}

# Starts perf on this process; returns its pid.
proc perfStart {file} {
    set pid [exec perf record -q -e cpu-clock -F 4000 -g -p [pid] \
	    -o $file 2>@stderr &]
    after 500
    return $pid
}

# Stops perf and waits until it has written its file.
proc perfStop {pid} {
    exec kill -INT $pid
    for {set i 0} {$i < 200} {incr i} {
	if {[catch {open /proc/$pid/stat} f]} {
	    return
	}
	set state [lindex [split [read $f]] 2]
	close $f
	if {$state eq "Z"} {
	    return
	}
	after 50
    }
}

if {[info exists env(BENCH_PERF)] && $env(BENCH_PERF) ne ""} {
    set perfPid [perfStart $env(BENCH_PERF)]
}

# CPU time of all of this process's threads so far, in nanoseconds.
proc cpuNs {} {
    set ns 0
    foreach f [glob -nocomplain /proc/self/task/*/schedstat] {
	if {![catch {open $f r} ch]} {
	    incr ns [lindex [read $ch] 0]
	    close $ch
	}
    }
    return $ns
}

set base [procStatus VmRSS]
set cpu0 [cpuNs]
set t0 [clock microseconds]
foreach tok $tokens {
    smtp::sendmessage $tok -servers 127.0.0.1 -ports $port \
	    -originator a@example.com -recipients $recipients
}
set t1 [clock microseconds]
set cpu1 [cpuNs]
set hwm [procStatus VmHWM]
if {[info exists perfPid]} {
    perfStop $perfPid
}
if {$profiling} {
    profileReport [expr {$t1 - $t0}]
}

foreach tok $tokens {
    mime::finalize $tok -subordinates all
}
puts [format "RESULT secs=%.6f msgs=%d base_kb=%d hwm_kb=%d pkg=%s cpu=%.6f" \
	[expr {($t1 - $t0) / 1e6}] [llength $tokens] $base $hwm $version \
	[expr {($cpu1 - $cpu0) / 1e9}]]
