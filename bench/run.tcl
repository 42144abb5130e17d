# run.tcl --
#
#	The benchmark driver behind "make bench".  It starts bench/sink.c,
#	makes the input files, runs every scenario for every client in turn
#	(several rounds, each a fresh process), checks with the sink that
#	every message arrived, and prints a table of medians and ratios that
#	it also writes to RESULTS.md, with a chart in results.png.
#	README.md in this directory says what the scenarios are.
#
#	tclsh run.tcl ?-option value ...?
#
#	-sink PATH	the compiled sink (default: <work>/smtp-sink)
#	-floor PATH	the compiled floor client, bench/floor.c (default:
#			<work>/smtp-floor)
#	-work DIR	input files, logs, raw rounds (default: ./bench-out)
#	-results DIR	where RESULTS.md and results.png go (default: this
#			directory for a full run, the work directory for a run
#			of only some scenarios or clients)
#	-rounds N	rounds per scenario and client, at most (BENCH_ROUNDS, 5)
#	-budget SECS	no further round once a cell has used this much time
#			(BENCH_BUDGET, 45); every cell runs at least once
#	-scenarios L	comma-separated subset of 1,2,3,4,5,6 (BENCH_SCENARIOS)
#	-clients L	subset of ours,tcllib,python,curl,smtp-source,floor
#			(BENCH_CLIENTS)
#	-s5bytes N	size of scenario 5's file (BENCH_S5_BYTES, 1 GiB)
#
#	This package is found through TCLLIBPATH (the Makefile points it at
#	the build directory); tcllib's client runs with TCLLIBPATH removed.

package require Tcl 8.6-

set here [file dirname [file normalize [info script]]]

# ---------------------------------------------------------------- options

proc envOr {name default} {
    if {[info exists ::env($name)] && $::env($name) ne ""} {
	return $::env($name)
    }
    return $default
}

array set opt [list \
    -sink      "" \
    -floor     "" \
    -work      [file normalize bench-out] \
    -results   "" \
    -rounds    [envOr BENCH_ROUNDS 5] \
    -budget    [envOr BENCH_BUDGET 45] \
    -scenarios [envOr BENCH_SCENARIOS 1,2,3,4,5,6] \
    -clients   [envOr BENCH_CLIENTS ours,tcllib,python,curl,smtp-source,floor] \
    -s5bytes   [envOr BENCH_S5_BYTES [expr {1 << 30}]] \
]
if {[llength $argv] % 2} {
    puts stderr "usage: tclsh run.tcl ?-option value ...? (see the top of run.tcl)"
    exit 2
}
foreach {k v} $argv {
    if {![info exists opt($k)]} {
	puts stderr "run.tcl: unknown option $k; known: [lsort [array names opt]]"
	exit 2
    }
    set opt($k) $v
}
set opt(-work) [file normalize $opt(-work)]
if {$opt(-sink) eq ""} {
    set opt(-sink) [file join $opt(-work) smtp-sink]
}
if {$opt(-floor) eq ""} {
    set opt(-floor) [file join $opt(-work) smtp-floor]
}
set allScenarios {1 2 3 4 5 6}
set allClients {ours tcllib python curl smtp-source floor}
set scenarios [split $opt(-scenarios) ", "]
set clients [split $opt(-clients) ", "]
foreach s $scenarios {
    if {$s ni $allScenarios} {
	puts stderr "run.tcl: no scenario $s (have $allScenarios)"
	exit 2
    }
}
foreach c $clients {
    if {$c ni $allClients} {
	puts stderr "run.tcl: no client $c (have $allClients)"
	exit 2
    }
}
set fullRun [expr {[llength [lsort -unique $scenarios]] == [llength $allScenarios]
		   && [llength [lsort -unique $clients]] == [llength $allClients]}]
if {$opt(-results) eq ""} {
    set opt(-results) [expr {$fullRun ? $here : $opt(-work)}]
}

# The message counts.  tcllib is slow enough that scenario 1 sends 100
# messages (its rate is still messages per second); curl is one process
# per message and sends 200.
array set count {
    1,ours 2000  1,tcllib 100  1,python 2000  1,curl 200  1,smtp-source 2000
    4,ours 20    4,tcllib 5    4,python 20    4,curl 5    4,smtp-source 20
    1,floor 2000 4,floor 20
}
set s5probe [expr {50 << 20}]

# Time limit of one run (the "timeout" command kills it after that).
proc runLimit {scenario client} {
    if {$scenario in {2 6} && $client eq "tcllib"} {
	return 420
    }
    return 240
}

set tclsh [info nameofexecutable]
if {[info exists env(TCLLIBPATH)]} {
    set ourPath $env(TCLLIBPATH)
} else {
    set ourPath [envOr SMTP_BUILD_DIR [pwd]]
}
set data [file join $opt(-work) data]
file mkdir $data
set log [file join $opt(-work) bench.log]
set logFd [open $log w]
fconfigure $logFd -buffering line

proc say {msg} {
    puts $msg
    puts $::logFd $msg
}

proc have {prog} {
    expr {[auto_execok $prog] ne ""}
}

# ---------------------------------------------------------------- inputs

# Writes a data file with client.py gen unless it is there at that size.
proc genFile {name bytes {exact 1}} {
    set path [file join $::data $name]
    if {[file exists $path]
	    && (!$exact || [file size $path] == $bytes)} {
	return $path
    }
    say "  generating $name ($bytes bytes)"
    exec python3 [file join $::here client.py] gen $::data $name $bytes
    return $path
}

# Writes the pre-built message of a scenario (what smtplib and curl send)
# with tcllib's mime, unless it is newer than its input.  Scenario 2's
# takes about a minute (tcllib's quoted-printable encoder) and is kept.
proc genMessage {scenario input arg name} {
    set out [file join $::data $name]
    if {[file exists $out] && [file mtime $out] >= [file mtime $input]
	    && [file mtime $out] >= [file mtime [file join $::here client.tcl]]} {
	return $out
    }
    say "  pre-building the scenario $scenario message with tcllib mime ->\
	    [file tail $out]"
    withoutOurs {
	exec $::tclsh [file join $::here client.tcl] write $scenario $out \
		$::data $arg 2>@stderr
    }
    return $out
}

# Runs body with TCLLIBPATH removed, so only Debian's tcllib is found.
proc withoutOurs {body} {
    set saved {}
    if {[info exists ::env(TCLLIBPATH)]} {
	set saved $::env(TCLLIBPATH)
	unset ::env(TCLLIBPATH)
    }
    set code [catch {uplevel 1 $body} res opts]
    if {$saved ne ""} {
	set ::env(TCLLIBPATH) $saved
    }
    return -options $opts $res
}

# ---------------------------------------------------------------- sink

proc startSink {} {
    if {![file executable $::opt(-sink)]} {
	puts stderr "run.tcl: no sink at $::opt(-sink) (make bench builds it)"
	exit 1
    }
    if {[catch {exec python3 [file join $::here sinktest.py] $::opt(-sink)} err]} {
	puts stderr "run.tcl: the sink fails its own test (sinktest.py):\n$err"
	exit 1
    }
    set ::sinkChan [open |[list $::opt(-sink) -w 2>@stderr] r+]
    if {[gets $::sinkChan line] < 0 || ![regexp {^port (\d+)$} $line -> port]} {
	puts stderr "run.tcl: the sink did not start: $line"
	exit 1
    }
    set ::sinkPid [pid $::sinkChan]
    return $port
}

# The sink's counters, as a dict, read with its XSTAT command.
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

# Seconds of CPU the sink has used (utime + stime from /proc/PID/stat).
proc sinkCpu {} {
    set f [open /proc/$::sinkPid/stat]
    set stat [read $f]
    close $f
    set fields [split [string range $stat [expr {[string last ) $stat] + 2}] end]]
    set ticks [expr {[lindex $fields 11] + [lindex $fields 12]}]
    return [expr {$ticks / 100.0}]
}

# ---------------------------------------------------------------- cells

# What one run of a client in a scenario is: a dict with cmd (argument
# list), env ("ours" or "tcllib": whether our build directory is on
# TCLLIBPATH), msgs and rcpts (what the sink must count), work (messages
# for scenarios 1 and 4, input bytes otherwise) and note.  Empty when the
# client has no part in the scenario.
proc cell {scenario client {size full}} {
    global data here tclsh port count
    set py [list python3 [file join $here client.py]]
    set clientTcl [file join $here client.tcl]
    set note ""
    set rcpts 1
    set msgs 1
    switch -- $scenario {
	1 - 4 {
	    set msgs $count($scenario,$client)
	    set work $msgs
	    set eml [file join $data s1.eml]
	    if {$scenario == 4} {
		set rcpts 1000
	    }
	}
	2 {
	    set work [file size [file join $data s2.txt]]
	    set eml [file join $data s2.eml]
	}
	3 {
	    set work [file size [file join $data s3.bin]]
	    set eml [file join $data s3.eml]
	}
	6 {
	    set work [file size [file join $data s6-intl.txt]]
	    set eml [file join $data s6.eml]
	}
	5 {
	    set file [expr {$size eq "probe" ? "s5probe.bin" : "s5.bin"}]
	    set work [file size [file join $data $file]]
	    set eml [file join $data s5.eml]
	}
    }
    switch -- $client {
	ours - tcllib {
	    set arg [expr {$scenario == 5 ? $file : $msgs}]
	    set cmd [list $tclsh $clientTcl $client $scenario $port $data $arg]
	    set env $client
	}
	python {
	    set cmd [list {*}$py smtplib $port $eml $msgs $rcpts]
	    set env tcllib
	}
	curl {
	    if {![have curl]} {
		return {}
	    }
	    set one [list curl -sS --fail smtp://127.0.0.1:$port/client.example \
		    --mail-from a@example.com --upload-file $eml]
	    if {$rcpts == 1} {
		lappend one --mail-rcpt b@example.org
	    } else {
		lappend one -K [file join $data rcpts.curlrc]
	    }
	    if {$msgs == 1} {
		set cmd [list {*}$py exec --rss {*}$one]
	    } else {
		set cmd [list {*}$py exec sh -c \
		    "i=0; while \[ \$i -lt $msgs \]; do $one || exit 1;\
		     i=\$((i+1)); done"]
		set note "one curl process per message"
	    }
	    set env tcllib
	}
	smtp-source {
	    if {$scenario ni {1 4} || ![file executable /usr/sbin/smtp-source]} {
		return {}
	    }
	    # No -d: a new connection for every message, as sendmessage does.
	    set cmd [list {*}$py exec --rss /usr/sbin/smtp-source -s 1 -m $msgs \
		    -r $rcpts -l [file size [file join $data s1.txt]] \
		    -f a@example.com -t b@example.org -M client.example \
		    127.0.0.1:$port]
	    set note "-s 1 -m $msgs -r $rcpts -l [file size [file join $data s1.txt]]"
	    set env tcllib
	}
	floor {
	    # bench/floor.c: the message file smtplib and curl send, ours'
	    # connections and commands, and nothing else. With one recipient
	    # BDAT LAST goes in the batch with MAIL and RCPT, as ours does;
	    # with more (scenario 4), -w waits for the MAIL and RCPT replies
	    # before BDAT, as ours must (a refused recipient stops the
	    # message unless -atleastone).
	    if {$scenario ni {1 4}} {
		return {}
	    }
	    if {![file executable $::opt(-floor)]} {
		say "  floor: no client at $::opt(-floor) (make bench builds it)"
		return {}
	    }
	    set cmd [list $::opt(-floor) {*}[expr {$rcpts > 1 ? "-w" : ""}] \
		    $port $eml $msgs $rcpts]
	    set note "bare C, blocking sockets, ours' dialogue and round\
		    trips: this machine's and the sink's limit"
	    set env tcllib
	}
    }
    if {$client eq "tcllib" && $scenario == 1} {
	set note "$msgs messages, not 2000"
    }
    if {$client eq "tcllib" && $scenario == 4} {
	set note "$msgs messages, not 20"
    }
    return [dict create cmd $cmd env $env msgs $msgs rcpts $rcpts \
	    work $work note $note]
}

# Runs one round.  Returns a dict: secs, base_kb, hwm_kb, pkg, data (octets
# the sink counted) or error (a message).
proc runOnce {scenario client spec} {
    set before [sinkStats]
    set limit [runLimit $scenario $client]
    set cmd [list timeout -k 5 $limit {*}[dict get $spec cmd]]
    set errFile [file join $::opt(-work) last-stderr.txt]
    puts $::logFd "RUN s$scenario $client: $cmd"
    set script [list exec {*}$cmd 2> $errFile]
    if {[dict get $spec env] eq "tcllib"} {
	set code [catch {withoutOurs $script} out opts]
    } else {
	set code [catch {eval $script} out opts]
    }
    set err ""
    if {[file exists $errFile]} {
	set f [open $errFile]
	set err [string trim [read $f]]
	close $f
	if {$err ne ""} {
	    puts $::logFd "stderr: $err"
	}
    }
    set after [sinkStats]
    if {$code} {
	set ec [dict get $opts -errorcode]
	if {[lindex $ec 0] eq "CHILDSTATUS" && [lindex $ec 2] in {124 137}} {
	    return [dict create error "timeout (>${limit} s)"]
	}
	set why [lindex [split [string trim "$err\n$out"] \n] end]
	return [dict create error "failed: $why"]
    }
    if {![regexp {RESULT secs=([\d.]+) msgs=\d+ base_kb=(\d+) hwm_kb=(\d+) pkg=(\S+)} \
	    $out -> secs base hwm pkg]} {
	return [dict create error "no RESULT line: $out"]
    }
    set msgs [expr {[dict get $after msgs] - [dict get $before msgs]}]
    set rcpts [expr {[dict get $after rcpts] - [dict get $before rcpts]}]
    set wantRcpts [expr {[dict get $spec msgs] * [dict get $spec rcpts]}]
    if {$msgs != [dict get $spec msgs] || $rcpts != $wantRcpts} {
	return [dict create error "sink counted $msgs messages, $rcpts\
		recipients; expected [dict get $spec msgs], $wantRcpts"]
    }
    # One connection per message (the XSTAT connection after the run is
    # counted too), so that no client is measured reusing a session.
    set conns [expr {[dict get $after conns] - [dict get $before conns] - 1}]
    if {$conns != $msgs} {
	return [dict create error "$conns connections for $msgs messages"]
    }
    set octets [expr {[dict get $after data] - [dict get $before data]}]
    return [dict create secs $secs base_kb $base hwm_kb $hwm pkg $pkg \
	    data $octets]
}

proc median {list} {
    set l [lsort -real $list]
    set n [llength $l]
    if {$n % 2} {
	return [lindex $l [expr {$n / 2}]]
    }
    return [expr {([lindex $l [expr {$n / 2 - 1}]] + [lindex $l [expr {$n / 2}]]) / 2.0}]
}

# Runs the rounds of one scenario, the clients taking turns within each
# round so that a change in the machine's load falls on all of them alike
# (the targets are ratios).  A client leaves the rotation after an error or
# once it has used the time budget.  sizes maps a client to "full" or
# "probe" (scenario 5).  Stores the medians in result(s,c,*).
proc runScenario {scenario clients sizes} {
    global result opt
    set active {}
    foreach c $clients {
	set size [expr {[dict exists $sizes $c] ? [dict get $sizes $c] : "full"}]
	set spec [cell $scenario $c $size]
	if {$spec ne ""} {
	    dict set specs $c $spec
	    dict set sizeOf $c $size
	    dict set spent $c 0.0
	    dict set times $c {}
	    dict set growth $c {}
	    lappend active $c
	}
    }
    for {set r 1} {$r <= $opt(-rounds) && [llength $active]} {incr r} {
	set still {}
	foreach c $active {
	    set spec [dict get $specs $c]
	    set t0 [clock milliseconds]
	    set res [runOnce $scenario $c $spec]
	    dict set spent $c [expr {[dict get $spent $c]
				    + ([clock milliseconds] - $t0) / 1000.0}]
	    if {[dict exists $res error]} {
		say [format "  %-12s round %d: %s" $c $r [dict get $res error]]
		set result($scenario,$c,error) [dict get $res error]
		continue
	    }
	    dict lappend times $c [dict get $res secs]
	    dict lappend growth $c \
		[expr {max(0, [dict get $res hwm_kb] - [dict get $res base_kb])}]
	    set result($scenario,$c,rssKnown) [expr {[dict get $res hwm_kb] > 0}]
	    set result($scenario,$c,rssWhole) [expr {[dict get $res base_kb] == 0}]
	    set result($scenario,$c,octets) \
		[expr {[dict get $res data] / double([dict get $spec msgs])}]
	    set result($scenario,$c,pkg) [dict get $res pkg]
	    puts $::rawFd [join [list $scenario $c [dict get $sizeOf $c] $r \
		    [dict get $res secs] [dict get $res base_kb] \
		    [dict get $res hwm_kb] [dict get $res data]] \t]
	    flush $::rawFd
	    say [format "  %-12s round %d: %.3f s" $c $r [dict get $res secs]]
	    if {[dict get $spent $c] + [dict get $res secs] <= $opt(-budget)} {
		lappend still $c
	    }
	}
	set active $still
    }
    foreach c [dict keys $specs] {
	if {[info exists result($scenario,$c,error)]
		|| ![llength [dict get $times $c]]} {
	    continue
	}
	set spec [dict get $specs $c]
	set result($scenario,$c,secs) [median [dict get $times $c]]
	set result($scenario,$c,growth_kb) [median [dict get $growth $c]]
	set result($scenario,$c,rounds) [llength [dict get $times $c]]
	set result($scenario,$c,work) [dict get $spec work]
	set result($scenario,$c,msgs) [dict get $spec msgs]
	set result($scenario,$c,note) [dict get $spec note]
	set result($scenario,$c,size) [dict get $sizeOf $c]
    }
}

# ---------------------------------------------------------------- the run

set started [clock seconds]
set load0 [lrange [split [string trim [exec cat /proc/loadavg]]] 0 2]
say "smtp benchmarks: scenarios [join $scenarios ,]; clients [join $clients ,];\
	at most $opt(-rounds) rounds, $opt(-budget) s per cell"
say "work directory $opt(-work)"

set rawFd [open [file join $opt(-work) rounds.tsv] w]
puts $rawFd "scenario\tclient\tsize\tround\tsecs\tbase_kb\thwm_kb\tsink_octets"

say "inputs:"
set s1txt [genFile s1.txt 440 0]
genFile s2.txt [expr {10 << 20}] 0
genFile s3.bin [expr {8 << 20}]
set f [open [file join $data rcpts.curlrc] w]
for {set i 1} {$i <= 1000} {incr i} {
    puts $f [format {mail-rcpt = "r%04d@example.org"} $i]
}
close $f
if {1 in $scenarios || 4 in $scenarios} {
    genMessage 1 $s1txt 1 s1.eml
}
if {2 in $scenarios} {
    genMessage 2 [file join $data s2.txt] 1 s2.eml
}
if {3 in $scenarios} {
    genMessage 3 [file join $data s3.bin] 1 s3.eml
}
if {6 in $scenarios} {
    genFile s6-intl.txt [expr {10 << 20}] 0
    if {"python" in $clients || "curl" in $clients} {
	genMessage 6 [file join $data s6-intl.txt] 1 s6.eml
    }
}
if {5 in $scenarios} {
    genFile s5probe.bin $s5probe
    genFile s5.bin $opt(-s5bytes)
    if {"python" in $clients || "curl" in $clients} {
	genMessage 5 [file join $data s5.bin] s5.bin s5.eml
    }
}

set prepSecs [expr {[clock seconds] - $started}]
set port [startSink]
say "sink: $opt(-sink) on 127.0.0.1 port $port (pid $sinkPid)"

# Scenario 5 runs our client on the small probe first, and on the full
# file only when the probe says that ends within the time limit and without
# needing more memory than a Tcl value can hold.  Returns "full" or "probe".
proc probeScenario5 {} {
    global result opt s5probe
    set keep $opt(-rounds)
    set opt(-rounds) 1
    say "  (probe: our client on the [expr {$s5probe >> 20}] MiB file)"
    runScenario 5 ours {ours probe}
    set opt(-rounds) $keep
    if {![info exists result(5,ours,secs)]} {
	return probe
    }
    set scale [expr {double($opt(-s5bytes)) / $s5probe}]
    set projSecs [expr {$result(5,ours,secs) * $scale}]
    set projKb [expr {$result(5,ours,growth_kb) * $scale}]
    if {$projSecs > [runLimit 5 ours] * 0.8 || $projKb > (1 << 21)} {
	set result(5,ours,projection) [format \
	    "full size not run: the probe projects %.0f s and %.0f MB RSS" \
	    $projSecs [expr {$projKb / 1024.0}]]
	say "  $result(5,ours,projection)"
	return probe
    }
    foreach k [array names result 5,ours,*] {
	unset result($k)
    }
    return full
}

foreach scenario $scenarios {
    say "scenario $scenario:"
    set sizes {}
    set rotation $clients
    if {$scenario == 5} {
	# Read the file once so that every client finds it in the page cache.
	exec cat [file join $data s5.bin] > /dev/null
	dict set sizes tcllib probe
	if {"ours" in $clients && [probeScenario5] eq "probe"} {
	    set rotation [lsearch -all -inline -not -exact $clients ours]
	}
    }
    runScenario $scenario $rotation $sizes
}

set sinkCpuSecs [sinkCpu]
set sinkTotals [sinkStats]
close $sinkChan
close $rawFd
set elapsed [expr {[clock seconds] - $started}]
set load1 [lrange [split [string trim [exec cat /proc/loadavg]]] 0 2]

# ---------------------------------------------------------------- report

proc have3 {s c k} {
    info exists ::result($s,$c,$k)
}
proc res {s c k} {
    return $::result($s,$c,$k)
}

# Work per second: messages/s (1, 4) or MB/s of input (2, 3, 5, 6).
proc rate {s c} {
    expr {[res $s $c work] / [res $s $c secs]}
}

proc fmtNum {x} {
    if {$x >= 1000} {
	return [format %.0f $x]
    } elseif {$x >= 100} {
	return [format %.0f $x]
    } elseif {$x >= 10} {
	return [format %.1f $x]
    } elseif {$x >= 1} {
	return [format %.2f $x]
    }
    return [format %.3g $x]
}

proc fmtRatio {x} {
    if {$x >= 10} {
	return [format %.0f× $x]
    }
    return [format %.2f× $x]
}

set scenarioTitle {
    1 "2000 small messages, one connection each"
    2 "10 MiB text/plain, quoted-printable"
    3 "8 MiB base64 attachment in a multipart"
    4 "one message to 1000 recipients"
    5 "file-backed attachment (mime::initialize -file)"
    6 "10 MiB text in many scripts, a plain Tcl string"
}

proc rateText {s c} {
    set r [rate $s $c]
    switch -- $s {
	1 {return "[fmtNum $r] msg/s"}
	4 {return "[fmtNum [expr {1000.0 * [res $s $c secs] / [res $s $c work]}]] ms/msg"}
	default {return "[fmtNum [expr {$r / 1e6}]] MB/s"}
    }
}

proc workText {s c} {
    switch -- $s {
	1 - 4 {return "[res $s $c work] msgs"}
	default {
	    set mib [expr {[res $s $c work] / 1048576.0}]
	    return "[fmtNum $mib] MiB"
	}
    }
}

set rows {}
lappend rows [list Scenario Client Work Rounds "Median time" Rate "Octets/msg" \
	"Peak RSS growth" "vs tcllib" Notes]
foreach s $scenarios {
    foreach c $clients {
	if {[have3 $s $c error]} {
	    lappend rows [list $s $c - - [res $s $c error] - - - - ""]
	    continue
	}
	if {![have3 $s $c secs]} {
	    continue
	}
	set vs -
	if {$c ne "tcllib" && [have3 $s tcllib secs]} {
	    set vs [fmtRatio [expr {[rate $s $c] / [rate $s tcllib]}]]
	}
	set notes [res $s $c note]
	if {$s == 5 && [res $s $c size] eq "probe"} {
	    set n "[expr {$s5probe >> 20}] MiB probe, rate scaled"
	    if {[have3 $s $c projection]} {
		append n "; [res $s $c projection]"
	    }
	    set notes [string trim "$notes $n"]
	}
	if {$c in {curl smtp-source}} {
	    set notes [string trim "$notes; wall time includes process start" "; "]
	}
	set rss [format "%.1f MB" [expr {[res $s $c growth_kb] / 1024.0}]]
	if {![res $s $c rssKnown]} {
	    set rss -
	} elseif {[res $s $c rssWhole]} {
	    append rss " (whole process)"
	}
	lappend rows [list $s $c [workText $s $c] [res $s $c rounds] \
		[format "%.3f s" [res $s $c secs]] [rateText $s $c] \
		[format %.0f [res $s $c octets]] \
		$rss $vs $notes]
    }
}

# Targets from issues 9 and 14.  Each: scenario, text, measured text, pass?
proc ratioOf {s a b} {
    if {![have3 $s $a secs] || ![have3 $s $b secs]} {
	return ""
    }
    expr {[rate $s $a] / [rate $s $b]}
}
set targets {}
# A reference row: shown with the targets, passes or misses nothing.
proc addInfo {s text value fmt} {
    if {$value eq ""} {
	lappend ::targets [list $s $text "not measured" info]
	return
    }
    lappend ::targets [list $s $text [format $fmt $value] info]
}
proc addTarget {s text value cond fmt} {
    if {$value eq ""} {
	lappend ::targets [list $s $text "not measured" n/a]
	return
    }
    set v $value
    set ok [expr $cond]
    lappend ::targets [list $s $text [format $fmt $value] \
	    [expr {$ok ? "pass" : "MISS"}]]
}
if {1 in $scenarios} {
    addTarget 1 "≥ 100× tcllib messages/s" [ratioOf 1 ours tcllib] {$v >= 100} %.1f×
    addTarget 1 "≥ 0.6× smtp-source messages/s" [ratioOf 1 ours smtp-source] {$v >= 0.6} %.2f×
    if {"floor" in $clients && "tcllib" in $clients} {
	addInfo 1 "reference: floor ÷ tcllib messages/s (this machine's\
		limit)" [ratioOf 1 floor tcllib] %.1f×
    }
}
if {2 in $scenarios} {
    addTarget 2 "≥ 1000× tcllib" [ratioOf 2 ours tcllib] {$v >= 1000} %.1f×
}
if {3 in $scenarios} {
    addTarget 3 "≥ 20× tcllib" [ratioOf 3 ours tcllib] {$v >= 20} %.1f×
}
if {4 in $scenarios} {
    set v [ratioOf 4 smtp-source ours]
    addTarget 4 "time ≤ 1.2× smtp-source -r 1000" $v {$v <= 1.2} %.2f×
    addTarget 4 "≥ 5× faster than tcllib" [ratioOf 4 ours tcllib] {$v >= 5} %.1f×
}
if {5 in $scenarios} {
    set g ""
    set r ""
    if {[have3 5 ours secs]} {
	set g [expr {[res 5 ours growth_kb] / 1024.0}]
	set r [expr {[rate 5 ours] / 1e6}]
    }
    set full [expr {[have3 5 ours size] && [res 5 ours size] eq "full"}]
    set suffix [expr {$full || $g eq "" ? "" : " (50 MiB probe only)"}]
    addTarget 5 "peak RSS growth < 32 MB" $g "\$v < 32 && $full" "%.1f MB$suffix"
    addTarget 5 "≥ 500 MB/s" $r "\$v >= 500 && $full" "%.0f MB/s$suffix"
}

if {6 in $scenarios} {
    set r ""
    if {[have3 6 ours secs]} {
	set r [expr {[rate 6 ours] / 1e6}]
    }
    addTarget 6 "≥ 100 MB/s" $r {$v >= 100} "%.0f MB/s"
}

proc mdTable {rows} {
    set out {}
    set head [lindex $rows 0]
    lappend out "| [join $head { | }] |"
    set sep {}
    foreach h $head {
	lappend sep ---
    }
    lappend out "| [join $sep { | }] |"
    foreach r [lrange $rows 1 end] {
	lappend out "| [join $r { | }] |"
    }
    return [join $out \n]
}

# A plain-text rendering for the terminal.
proc textTable {rows} {
    set widths {}
    foreach r $rows {
	set i 0
	foreach cellText $r {
	    set w [string length $cellText]
	    if {$i >= [llength $widths]} {
		lappend widths $w
	    } elseif {$w > [lindex $widths $i]} {
		lset widths $i $w
	    }
	    incr i
	}
    }
    set out {}
    foreach r $rows {
	set line {}
	set i 0
	foreach cellText $r {
	    lappend line [format %-*s [lindex $widths $i] $cellText]
	    incr i
	}
	lappend out [string trimright [join $line "  "]]
    }
    return [join $out \n]
}

set targetRows [list [list Scenario Target Measured Result] {*}$targets]

# Machine and versions.
proc firstLine {cmd} {
    if {[catch {exec {*}$cmd 2>@1} out]} {
	return "unavailable"
    }
    return [lindex [split $out \n] 0]
}
set cpu unknown
catch {
    set f [open /proc/cpuinfo]
    regexp -line {^model name\s*:\s*(.*)$} [read $f] -> cpu
    close $f
}
set ourPkg [expr {[have3 1 ours pkg] ? [res 1 ours pkg] : ""}]
foreach s $scenarios {
    if {$ourPkg eq "" && [have3 $s ours pkg]} {
	set ourPkg [res $s ours pkg]
    }
}
set mimeVersion [withoutOurs {
    firstLine [list $tclsh << {puts [package require mime]}]
}]
# tcllib's smtp: 1.5.1 in tcllib 1.21, 1.5.2 in tcllib 2.0 (Tcl 9).
set tcllibSmtpVersion [withoutOurs {
    firstLine [list $tclsh << {puts [package require smtp 1.5-1.6]}]
}]
set commit [firstLine [list git -C $here rev-parse --short HEAD]]
if {![catch {exec git -C $here status --porcelain -- [file dirname $here]} st]
	&& $st ne ""} {
    append commit " (with uncommitted changes)"
}
set machine [list \
    "Date: [clock format $started -format {%Y-%m-%d %H:%M:%S UTC} -gmt 1]" \
    "Run time: [expr {$elapsed / 60}] min [expr {$elapsed % 60}] s, of which\
	    $prepSecs s making input files (kept in the work directory for the\
	    next run)" \
    "Machine: [firstLine nproc] CPUs, $cpu, Linux [firstLine {uname -r}],\
	    [expr {[firstLine {getconf _PHYS_PAGES}] * [firstLine {getconf PAGE_SIZE}] >> 20}] MiB RAM" \
    "Load average (1/5/15 min): at start [join $load0 /], at end [join $load1 /]" \
    "Tcl [info patchlevel] ($tclsh); this package: smtp $ourPkg at commit $commit;\
	    tcllib smtp $tcllibSmtpVersion with mime $mimeVersion" \
    "[firstLine {python3 --version}];\
	    [lrange [firstLine {curl --version}] 0 1];\
	    Postfix smtp-source [firstLine {postconf -dh mail_version}]" \
    "Sink: bench/sink.c, [format %.1f $sinkCpuSecs] s of CPU for [format %.0f \
	    [expr {[dict get $sinkTotals wire] / 1e6}]] MB over\
	    [dict get $sinkTotals conns] connections" \
]

set md {}
lappend md "# Benchmark results" ""
lappend md "Written by \`make bench\` (bench/run.tcl); see README.md for what the" \
    "scenarios are and how to rerun them. Times are medians over the rounds;" \
    "Rate is messages/s (1), ms per message (4) or MB/s of input, 1 MB = 10^6" \
    "octets (2, 3, 5, 6). \"vs tcllib\" is the rate over tcllib's rate. Octets/msg" \
    "is what the sink received per message (dot-stuffed DATA or BDAT chunks)." \
    "Times of Tcl and Python clients and of floor (bench/floor.c, a bare C" \
    "client: the limit of this machine and sink) cover the sends only" \
    "(tokens and message files are ready before the clock starts); curl and" \
    "smtp-source are timed from outside, process start included." ""
foreach l $machine {
    lappend md "- $l"
}
if {!$fullRun} {
    lappend md "- Partial run: scenarios [join $scenarios ,], clients [join $clients ,]"
}
lappend md "" "## Targets (issues 9 and 14)" "" [mdTable $targetRows] ""
lappend md "## All results" "" [mdTable $rows] ""
lappend md {![chart](results.png)} ""

file mkdir $opt(-results)
set f [open [file join $opt(-results) RESULTS.md] w]
fconfigure $f -encoding utf-8
puts -nonewline $f [join $md \n]
close $f

# ---------------------------------------------------------------- chart

proc chart {} {
    global scenarios clients opt result
    if {![have gnuplot]} {
	say "gnuplot not found: no chart (install it with\
		apt-get install -y gnuplot-nox); the table is written"
	return
    }
    set panels {}
    foreach s $scenarios {
	set rows {}
	foreach c $clients {
	    if {![have3 $s $c secs]} {
		continue
	    }
	    set r [rate $s $c]
	    switch -- $s {
		1 - 4 {set v $r}
		default {set v [expr {$r / 1e6}]}
	    }
	    lappend rows [list $c $v]
	}
	if {[llength $rows]} {
	    lappend panels [list $s $rows]
	}
    }
    if {5 in $scenarios} {
	set rows {}
	foreach c $clients {
	    if {[have3 5 $c secs] && [res 5 $c rssKnown]} {
		lappend rows [list $c [expr {max(0.1, [res 5 $c growth_kb] / 1024.0)}]]
	    }
	}
	if {[llength $rows]} {
	    lappend panels [list rss $rows]
	}
    }
    if {![llength $panels]} {
	return
    }
    set titles {
	1 "1: 2000 small messages (msg/s)"
	2 "2: 10 MiB quoted-printable (MB/s)"
	3 "3: 8 MiB base64 attachment (MB/s)"
	4 "4: 1000 recipients (msg/s)"
	5 "5: file attachment (MB/s)"
	6 "6: 10 MiB non-ASCII text (MB/s)"
	rss "5: peak RSS growth (MB, lower is better)"
    }
    set colors {ours #1b9e77 tcllib #d95f02 python #7570b3 curl #e7298a
	smtp-source #66a61e floor #666666}
    set gp {}
    lappend gp "set terminal pngcairo size 2000,900 font 'sans,10'" \
	"set output '[file join $opt(-results) results.png]'" \
	"set multiplot layout 2,4 title 'smtp benchmarks (log scale; higher is better except RSS)'" \
	"set style fill solid 0.85 border -1" "set boxwidth 0.6" \
	"set logscale y" "unset key" "set grid ytics" "set xtics nomirror" \
	"set ytics nomirror"
    set i 0
    foreach p $panels {
	lassign $p s rows
	set dat [file join $opt(-work) chart-$s.dat]
	set f [open $dat w]
	set n 0
	set maxv 0
	set minv 1e30
	foreach r $rows {
	    lassign $r c v
	    puts $f "$n \"$c\" $v [scan [string range [dict get $colors $c] 1 end] %x]"
	    incr n
	    set maxv [expr {max($maxv, $v)}]
	    set minv [expr {min($minv, $v)}]
	}
	close $f
	set lo [expr {10 ** floor(log10($minv) - 0.3)}]
	set hi [expr {10 ** ceil(log10($maxv) + 0.3)}]
	lappend gp "set title '[dict get $titles $s]'" \
	    "set xrange \[-0.6:[expr {$n - 0.4}]\]" \
	    "set yrange \[$lo:$hi\]" \
	    "plot '$dat' using 1:3:4:xtic(2) with boxes lc rgb variable,\
		 '' using 1:3:(\$3 >= 100 ? sprintf('%.0f', \$3) : sprintf('%.3g', \$3))\
		 with labels offset 0,0.8"
	incr i
    }
    lappend gp "unset multiplot"
    set gpFile [file join $opt(-work) results.gp]
    set f [open $gpFile w]
    puts $f [join $gp \n]
    close $f
    if {[catch {exec gnuplot $gpFile 2>@1} err]} {
	say "gnuplot failed: $err"
    } else {
	say "chart: [file join $opt(-results) results.png]"
    }
}
chart

say ""
say [textTable $targetRows]
say ""
say [textTable $rows]
say ""
foreach l $machine {
    say $l
}
say "results: [file join $opt(-results) RESULTS.md]; raw rounds:\
	[file join $opt(-work) rounds.tsv]; log: $log"
close $logFd
