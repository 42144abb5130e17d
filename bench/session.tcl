# session.tcl --
#
#	"make bench-session": many small messages over ONE connection, this
#	package's smtp::session against Postfix's smtp-source -d (which also
#	keeps its connection), on the same fast sink (bench/sink.c). Prints a
#	table, the ratio against issue 8's target (>= 0.8x smtp-source -d),
#	and writes the same to bench/RESULTS-session.md.
#
#	tclsh bench/session.tcl ?-sink PATH? ?-messages N? ?-rounds N?
#	    ?-results FILE?
#
#	Our package comes from TCLLIBPATH, as with "make bench".

package require Tcl 8.6-

set here [file dirname [file normalize [info script]]]
array set opt [list -sink bench-out/smtp-sink -messages 10000 -rounds 3 \
    -results [file join $here RESULTS-session.md]]
foreach {k v} $argv {
    if {![info exists opt($k)]} {
	puts stderr "session.tcl: unknown option $k"
	exit 2
    }
    set opt($k) $v
}

set sink [open |[list $opt(-sink) -w 2>@stderr] r+]
if {[gets $sink line] < 0 || ![regexp {^port (\d+)$} $line -> port]} {
    puts stderr "session.tcl: the sink did not start: $line"
    exit 1
}

# Counts what the sink has received, so every run can be checked.
proc sinkStats {} {
    set s [socket 127.0.0.1 $::port]
    fconfigure $s -translation crlf -buffering line
    gets $s
    puts $s XSTAT
    gets $s line
    puts $s QUIT
    gets $s
    close $s
    set d {}
    foreach kv [lrange [split $line] 1 end] {
	lassign [split $kv =] k v
	dict set d $k $v
    }
    return $d
}

# The same small message for both: 440 octets of text.
set body [string repeat "Benchmark text of a small message, line.\n" 10]

set ours [string map [list %PORT% $port %N% $opt(-messages) \
	%BODY% [list $body]] {
    package require mime
    package require smtp
    set tok [mime::initialize -canonical text/plain -string %BODY%]
    mime::setheader $tok Subject "Session benchmark"
    set s [smtp::session -servers 127.0.0.1 -ports %PORT% -usetls 0]
    set t [clock microseconds]
    for {set i 0} {$i < %N%} {incr i} {
	$s send $tok -originator a@example.com -recipients b@example.org
    }
    $s close
    puts [expr {([clock microseconds] - $t) / 1e6}]
}]

proc runOurs {} {
    set before [dict get [sinkStats] msgs]
    set secs [exec [info nameofexecutable] << $::ours]
    set got [expr {[dict get [sinkStats] msgs] - $before}]
    if {$got != $::opt(-messages)} {
	error "ours: the sink counted $got messages, not $::opt(-messages)"
    }
    return $secs
}

proc runSource {} {
    set before [dict get [sinkStats] msgs]
    set t [clock microseconds]
    exec /usr/sbin/smtp-source -d -s 1 -m $::opt(-messages) \
	-l [string length $::body] -f a@example.com -t b@example.org \
	-M client.example 127.0.0.1:$::port
    set secs [expr {([clock microseconds] - $t) / 1e6}]
    set got [expr {[dict get [sinkStats] msgs] - $before}]
    if {$got != $::opt(-messages)} {
	error "smtp-source: the sink counted $got messages"
    }
    return $secs
}

proc median {l} {
    set l [lsort -real $l]
    lindex $l [expr {[llength $l] / 2}]
}

set times(ours) {}
set times(source) {}
for {set r 1} {$r <= $opt(-rounds)} {incr r} {
    lappend times(ours) [runOurs]
    lappend times(source) [runSource]
    puts "round $r: ours [lindex $times(ours) end] s,\
	smtp-source -d [lindex $times(source) end] s"
}
close $sink

set n $opt(-messages)
set mo [median $times(ours)]
set ms [median $times(source)]
set rateO [expr {$n / $mo}]
set rateS [expr {$n / $ms}]
set ratio [expr {$rateO / $rateS}]
set verdict [expr {$ratio >= 0.8 ? "pass" : "MISS"}]
set load [exec cat /proc/loadavg]
set table [format {# Session benchmark (issue 8)

Written by `make bench-session` (bench/session.tcl): %d messages of %d
octets over one connection, medians of %d rounds, on bench/sink.c.
smtp-source is timed from outside (process start included).

- Date: %s
- Load average at the end: %s

| Client | Median time | Messages/s |
| --- | --- | --- |
| ours (smtp::session) | %.3f s | %.0f |
| smtp-source -d -s 1 | %.3f s | %.0f |

Target: >= 0.8x smtp-source -d. Measured: %.2fx: **%s**.
} $n [string length $body] $opt(-rounds) \
    [clock format [clock seconds] -format "%Y-%m-%d %H:%M:%S UTC" -gmt 1] \
    [lrange $load 0 2] $mo $rateO $ms $rateS $ratio $verdict]
puts $table
set f [open $opt(-results) w]
puts -nonewline $f $table
close $f
