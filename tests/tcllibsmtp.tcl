# tcllibsmtp.tcl --
#
#	Runs comparison cases through an smtp package's sendmessage, so that
#	tcllib's smtp 1.5.1 and this package can be given exactly the same
#	calls.  Used two ways:
#
#	Sourced (by compare.test and addresses.test) it defines
#	::smtpcase::run, with which the test process runs a case through this
#	package, and ::smtpcase::tcllib::start, call and stop, which start
#	the child process below, run cases in it and end it.  The test process
#	keeps the event loop running while it waits for the child, so servers
#	in the test process keep serving the child's connections.
#
#	Run as a program (in a child process, started WITHOUT this package on
#	TCLLIBPATH) it loads tcllib's smtp 1.5.1, answers "ready <version>
#	<load script>" (or "error <message>") and then serves requests on
#	stdin until end of file:
#
#	    request:  <length>\n<length bytes: a UTF-8 Tcl list of cases>
#	    reply:    <length>\n<length bytes: a UTF-8 Tcl list of results>
#
#	A case is a dict:
#	    build    script run at global level that returns a mime token
#	    opts     the sendmessage options (ports already filled in)
#	    stderr   if true, what sendmessage writes on stderr is captured
#	A result is a dict:
#	    code       the return code of sendmessage, as it came (tcllib
#	               1.5.1 lets its internal code 7 out; the tests
#	               normalise it)
#	    result     the result or error message
#	    errorcode  -errorcode when code is 1, else ""
#	    stderr     the captured stderr text ("" when not captured)
#	    before     the token's headers before the call and after it, as
#	    after      {name values ...} in order (is the token given back
#	               unchanged?)
#	    ms         how long sendmessage took, in milliseconds (for the
#	               few cases that say something must happen without
#	               waiting for the server)

namespace eval ::smtpcase {
    variable captured ""
}

# The headers of a token as {name {values} ...}, in the token's order.
proc ::smtpcase::headers {tok} {
    set r {}
    foreach n [mime::getheader $tok -names] {
        lappend r $n [mime::getheader $tok $n]
    }
    return $r
}

# A reflected channel transform that keeps what is written and lets
# nothing through.
proc ::smtpcase::Capture {cmd chan args} {
    variable captured
    switch -- $cmd {
        initialize { return {initialize finalize write flush} }
        write      { append captured [lindex $args 0]; return "" }
        default    { return "" }
    }
}

# Runs one case through whichever smtp package is loaded; returns the
# result dict described above.  The token is finalized afterwards.
proc ::smtpcase::run {case} {
    variable captured
    set tok [uplevel #0 [dict get $case build]]
    set before [headers $tok]
    set capture [expr {[dict exists $case stderr] && [dict get $case stderr]}]
    set captured ""
    if {$capture} {
        flush stderr
        chan push stderr ::smtpcase::Capture
    }
    set t0 [clock milliseconds]
    set code [catch {smtp::sendmessage $tok {*}[dict get $case opts]} res opts]
    set ms [expr {[clock milliseconds] - $t0}]
    if {$capture} {
        flush stderr
        chan pop stderr
    }
    # The transform sees stderr's line ends, CR LF on Windows.
    set captured [string map {\r\n \n} $captured]
    set after [headers $tok]
    mime::finalize $tok -subordinates all
    return [dict create code $code result $res \
            errorcode [expr {$code == 1 ? [dict get $opts -errorcode] : ""}] \
            stderr $captured before $before after $after ms $ms]
}

# The child's side of the protocol: one length-prefixed UTF-8 message.
proc ::smtpcase::Send {data} {
    set bytes [encoding convertto utf-8 $data]
    puts -nonewline stdout "[string length $bytes]\n$bytes"
    flush stdout
}

# Serves requests until stdin ends; a case that fails inside this
# driver is answered with the code "driver".
proc ::smtpcase::Serve {} {
    fconfigure stdin -translation binary
    fconfigure stdout -translation binary
    while {[gets stdin len] >= 0} {
        set req [encoding convertfrom utf-8 [read stdin $len]]
        set results {}
        foreach case $req {
            if {[catch {run $case} r]} {
                set r [dict create code driver result $r errorcode {} \
                        stderr {} before {} after {} ms 0]
            }
            lappend results $r
        }
        Send $results
    }
}

# ---------------------------------------------------------------------------
# The test process's side: the child running tcllib's smtp.
# ---------------------------------------------------------------------------

namespace eval ::smtpcase::tcllib {
    variable script [file normalize [info script]]
    variable chan ""
    variable buf ""
    variable done 0
}

# Reads one length-prefixed reply from the child, running the event loop
# while waiting (so that an SMTP server in this process keeps serving).
# Returns the decoded reply; an error after ms milliseconds.
# SMTP_TEST_TIMESCALE (a number, default 1) multiplies the time given:
# under Wine a tclsh takes about 30 s to start and read tcllib's package
# indexes on a loaded machine, and tcllib's smtp takes 0.5 s a send.
proc ::smtpcase::tcllib::Receive {ms} {
    variable chan
    variable buf
    variable done
    set done 0
    if {[info exists ::env(SMTP_TEST_TIMESCALE)]
            && [string is double -strict $::env(SMTP_TEST_TIMESCALE)]} {
        set ms [expr {round($ms * $::env(SMTP_TEST_TIMESCALE))}]
    }
    set timer [after $ms [list set [namespace current]::done timeout]]
    fileevent $chan readable [namespace code Readable]
    while {$done == 0} {
        vwait [namespace current]::done
    }
    after cancel $timer
    fileevent $chan readable {}
    if {$done ne "ok"} {
        set why $done
        Kill
        error "tcllib child: $why"
    }
    set nl [string first \n $buf]
    set len [string range $buf 0 [expr {$nl - 1}]]
    set data [string range $buf [expr {$nl + 1}] [expr {$nl + $len}]]
    set buf [string range $buf [expr {$nl + $len + 1}] end]
    return [encoding convertfrom utf-8 $data]
}

proc ::smtpcase::tcllib::Readable {} {
    variable chan
    variable buf
    variable done
    append buf [read $chan]
    set nl [string first \n $buf]
    if {$nl > 0} {
        set len [string range $buf 0 [expr {$nl - 1}]]
        if {[string is integer -strict $len]
                && [string length $buf] >= $nl + 1 + $len} {
            set done ok
            return
        }
    }
    if {[eof $chan]} {
        set done "ended unexpectedly: [string range $buf 0 500]"
    }
}

# Starts the child, with the directories that hold this package (their
# pkgIndex.tcl provides smtp) removed from TCLLIBPATH, so that it finds
# tcllib's smtp and not this package: tcllib is where the tclsh looks by
# itself (Debian) or in what stays on TCLLIBPATH (a tclsh without tcllib
# of its own, such as the Windows one the suite runs under Wine).
# Returns tcllib's smtp version and load script; an error when it cannot
# be loaded.
proc ::smtpcase::tcllib::start {} {
    variable script
    variable chan
    variable buf ""
    set had [info exists ::env(TCLLIBPATH)]
    if {$had} {
        set saved $::env(TCLLIBPATH)
        set keep {}
        foreach d $saved {
            set idx ""
            catch {
                set f [open [file join $d pkgIndex.tcl]]
                set idx [read $f]
                close $f
            }
            if {![regexp {package\s+ifneeded\s+smtp\s} $idx]} {
                lappend keep $d
            }
        }
        if {[llength $keep]} {
            set ::env(TCLLIBPATH) $keep
        } else {
            unset ::env(TCLLIBPATH)
        }
    }
    set code [catch {
        open |[list [info nameofexecutable] $script 2>@stderr] r+
    } chan]
    if {$had} {
        set ::env(TCLLIBPATH) $saved
    }
    if {$code} {
        set c $chan
        set chan ""
        error $c
    }
    fconfigure $chan -translation binary -blocking 0
    set r [Receive 20000]
    if {[lindex $r 0] ne "ready"} {
        stop
        error "tcllib child: [lindex $r 1]"
    }
    return [lrange $r 1 end]
}

# Runs a list of cases in the child; returns the list of results.  A
# child killed after a timeout is started again for the next call.
proc ::smtpcase::tcllib::call {cases {ms 30000}} {
    variable chan
    if {$chan eq ""} {
        start
    }
    set bytes [encoding convertto utf-8 $cases]
    puts -nonewline $chan "[string length $bytes]\n$bytes"
    flush $chan
    return [Receive $ms]
}

proc ::smtpcase::tcllib::Kill {} {
    variable chan
    if {$chan eq ""} {
        return
    }
    foreach p [pid $chan] {
        if {$::tcl_platform(platform) eq "windows"} {
            catch {exec taskkill /F /PID $p}
        } else {
            catch {exec kill -KILL $p}
        }
    }
    catch {close $chan}
    set chan ""
}

# Ends the child: it exits when its stdin is closed.
proc ::smtpcase::tcllib::stop {} {
    variable chan
    if {$chan eq ""} {
        return
    }
    fileevent $chan readable {}
    fconfigure $chan -blocking 1
    catch {close $chan}
    set chan ""
}

if {[info exists ::argv0] &&
        [file tail $::argv0] eq [file tail [info script]]} {
    # The child process: tcllib's smtp, never this package.
    if {[catch {
        package require mime
        # tcllib 1.21 ships smtp 1.5.1, tcllib 2.0 smtp 1.5.2 (the same
        # behaviour, marked for Tcl 9): either is tcllib's.
        set v [package require smtp 1.5.1-1.6]
        if {$v ni {1.5.1 1.5.2}} {
            error "tcllib's smtp is $v, not 1.5.1 or 1.5.2"
        }
        if {[info procs ::smtp::sendmessage] eq ""} {
            error "::smtp::sendmessage is not tcllib's Tcl procedure"
        }
    } msg]} {
        ::smtpcase::Send [list error $msg]
        exit 1
    }
    if {$::tcl_platform(platform) eq "windows"} {
        # tcllib's smtp closes its socket with [close], which resolves to
        # this procedure in its namespace.  Tcl's Windows socket driver
        # can give a message still queued for a socket just closed (its
        # FD_CLOSE) to the next socket, which Windows gives the same
        # handle: tcllib's next connection then reads end of file in the
        # middle of its dialogue (see tests/smtpd.tcl, CLOSING).  The
        # write side is closed at once, as [close] would, and the socket
        # kept until the next one is closed: the same bytes go to the
        # server at the same moments, and the server's replies to what
        # tcllib wrote without waiting (RSET and QUIT after a refusal)
        # reach an open socket instead of resetting the connection (a
        # reset connection on Windows drops what the server had not read
        # yet, tcllib's QUIT with it).
        proc ::smtp::close {chan args} {
            if {[llength $args] || ![string match sock* $chan]} {
                return [::close $chan {*}$args]
            }
            catch {::close $chan write}
            catch {fileevent $chan readable [list ::smtpcase::Drain $chan]}
            if {[info exists ::smtpcase::parked]} {
                catch {::close $::smtpcase::parked}
            }
            set ::smtpcase::parked $chan
            return
        }
        proc ::smtpcase::Drain {chan} {
            if {[catch {read $chan}] || [eof $chan]} {
                fileevent $chan readable {}
            }
        }
    }
    ::smtpcase::Send [list ready [package provide smtp] \
            [package ifneeded smtp [package provide smtp]]]
    ::smtpcase::Serve
    exit 0
}
