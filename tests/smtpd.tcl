# smtpd.tcl --
#
#	A small, scriptable SMTP server written in pure Tcl, for testing SMTP
#	clients.  It records exactly what clients send and can be told to
#	misbehave (reject, stall, drop, delay) at chosen points.
#
#	It is fully event driven (fileevent, non-blocking sockets, binary
#	translation) and never blocks or enters the event loop by itself, so a
#	client under test may run in the same interpreter as long as that
#	client services the event loop (vwait/update) while it waits.
#
# IN-PROCESS USE
#
#	source tests/smtpd.tcl
#	set srv [smtpd::start ?option value ...?]
#	set port [smtpd::port $srv]
#	... run a client against 127.0.0.1:$port ...
#	smtpd::stop $srv
#
#   smtpd::start ?options?        Listen (default 127.0.0.1, port 0 = a free
#                                 port chosen by the OS); returns a handle.
#   smtpd::port $srv              The port actually listened on.
#   smtpd::configure $srv         All options as a dict;
#   smtpd::configure $srv -opt    one option's value;
#   smtpd::configure $srv -opt val ...   change options (take effect for the
#                                 next event; changing -rules resets the
#                                 rules' hit counters).
#   smtpd::stop $srv              Close the listener and every connection and
#                                 free all state (writes a last -record file
#                                 first).  The handle is invalid afterwards.
#
#   Options:
#     -greeting TEXT   Greeting reply.  Default "220 localhost ESMTP smtpd.tcl".
#     -hostname NAME   Name in the HELO/EHLO replies.  Default "localhost".
#     -ehlo LIST       EHLO extension lines, one list element per line.
#                      Default {PIPELINING 8BITMIME {SIZE 10240000}}, giving
#                        250-localhost / 250-PIPELINING / 250-8BITMIME /
#                        250 SIZE 10240000
#                      An empty list gives the single line "250 localhost".
#     -noehlo BOOL     If true, EHLO gets "500 ..." so clients fall back to
#                      HELO.  Default 0.
#     -rules LIST      Scripted behaviour, see RULES below.  Default {}.
#     -record FILE     Write the record (see RECORD) to FILE at start, after
#                      every completed DATA transaction, at every connection
#                      end, and at stop.  Written to FILE.tmp then renamed,
#                      so readers never see a partial file.  Default none.
#     -myaddr ADDR     Listen address (start only).  Default 127.0.0.1.
#     -port N          Listen port (start only).  Default 0 (any free port).
#     -tls OPTS        Server-side options for tls::import (the tcl-tls
#                      package), e.g. {-certfile c.pem -keyfile k.pem}.
#                      When given, EHLO offers STARTTLS and STARTTLS gets
#                      "220 2.0.0 Ready to start TLS" (rules may change
#                      that reply; only a 220 starts TLS).  Default {}.
#     -implicittls B   With -tls, speak TLS from the first byte (SMTPS):
#                      the handshake comes before the greeting.  Default 0.
#     -lmtp B          Speak LMTP (RFC 2033): LHLO is answered like EHLO,
#                      and after the final dot each accepted recipient
#                      gets its own reply, an event "LMTP <address>" that
#                      rules can match (e.g. {{LMTP bad@*} {reply {550 no}}}).
#                      Default 0.
#     BDAT (RFC 3030) is understood when CHUNKING is in -ehlo: each chunk
#     is answered as the command "BDAT n ?LAST?" and the chunks are
#     recorded as one message (raw = message, no dot-stuffing) at LAST
#     (with -lmtp, LAST gets the replies per recipient, as the dot does).
#     -tlsdelay MS     Start the server side of each TLS handshake MS
#                      milliseconds late (after the 220 to STARTTLS has
#                      been sent), so the client waits in its handshake.
#
#   smtpd::tlsinfo $srv conn          {} before/without TLS, else a dict:
#                                     done 1, or error MSG when the
#                                     handshake failed; after done, also
#                                     the tls::status of the connection
#                                     (with "version", the protocol, under
#                                     tcl-tls 1.7 and 1.8 alike).
#
# DEFAULT BEHAVIOUR (a correct, minimal, non-checking SMTP server)
#
#	greeting -greeting            HELO  250 <hostname>
#	EHLO  multi-line 250 (or 500 with -noehlo)
#	MAIL  250 (sender recorded)   RCPT  250 (recipient recorded if 2xx)
#	DATA  354, then 250 after the terminating <CRLF>.<CRLF>; 554 when
#	      no recipient has been accepted (as Postfix; so is a BDAT chunk)
#	RSET, NOOP  250               QUIT  221 then close
#	empty line 500, anything else 502.  No sequencing checks (no 503).
#	Command lines end at LF; one CR before the LF is removed.
#
# RULES
#
#	-rules is a list of rules, tried in order; the first that matches is
#	used.  Each rule is either
#	    {pattern action ?conn? ?times?}    with action a list {kw ?arg?}
#	or the flat form
#	    {pattern kw arg ?conn? ?times?}    (for kw = reply or delay only)
#	pattern   A glob matched case-insensitively against the command line
#	          (without CRLF), e.g. "RCPT TO:<bad@*>", "MAIL*", "DATA".
#	          Special patterns: "greeting" matches the connection start only;
#	          "." or "enddata" matches the end of DATA (the terminating dot)
#	          only.  These special patterns never match command lines and
#	          ordinary patterns never match those two events.
#	conn      Only for connection number conn (1-based); "" or * = any.
#	times     Fire at most this many times in total ("" = unlimited).
#	Actions:
#	  raw BYTES         Send BYTES exactly as given (no line end added,
#	                    nothing split or checked): for replies that are
#	                    not replies, e.g. a line of 10 MB.
#	  reply TEXT        Send TEXT instead of the default reply.  A
#	                    multi-line reply is given as a list of lines each
#	                    starting with a 3-digit code and "-" or " " (sent
#	                    verbatim, e.g. {{250-first} {250 last}}), or as text
#	                    containing newlines.  Otherwise TEXT is one line.
#	  stall             Do not reply to this command (keep reading and
#	                    answering later commands normally).  A stalled DATA
#	                    does not enter the data phase.
#	  hang              Do not reply to this nor to anything later on this
#	                    connection (keep reading and recording).
#	  drop              Close the connection at once, without replying.
#	  delay {ms ?TEXT?} Reply after ms milliseconds (TEXT, or the default
#	                    reply).  Replies stay in order: later replies on the
#	                    same connection wait behind a delayed one.
#	The effect of a command follows the reply that is decided for it: DATA
#	enters the data phase only if the reply code is 354; RCPT records the
#	recipient only on a 2xx code; MAIL sets the sender only on 2xx; QUIT
#	closes the connection after any reply (not after stall/hang).  A
#	message is always recorded when the terminating dot arrives, whatever
#	the enddata rule does.
#
# RECORD AND ACCESSORS
#
#	Connections are numbered from 1 in accept order.  Accessors taking
#	?conn? accept a number, "last", or "all" (the default): with "all"
#	commands are concatenated in connection order, transcripts are
#	concatenated, reads are summed, messages are all messages.
#
#   smtpd::connections $srv           Number of connections accepted so far.
#   smtpd::closed $srv ?conn?         Number of connections closed (all), or
#                                     0/1 for one connection.
#   smtpd::commands $srv ?conn?       Command lines received (no CRLF, DATA
#                                     payload excluded), in order.
#   smtpd::messages $srv ?conn?       List of dicts, one per completed DATA:
#                                       conn    connection number
#                                       from    MAIL FROM address (in <>)
#                                       rcpts   accepted RCPT TO addresses
#                                       raw     bytes exactly as received
#                                               after the 354 reply, dot
#                                               stuffing kept, ending with
#                                               the CRLF before the final dot
#                                               (the ".\r\n" line excluded)
#                                       message raw with dot-stuffing undone
#                                       reply   reply code sent for the dot
#                                               ("" if none, drop if dropped)
#   smtpd::transcript $srv ?conn?     Every byte the client sent.
#   smtpd::reads $srv ?conn?          Number of reads (readable callbacks
#                                     that got data) containing at least one
#                                     byte handled in command mode.
#   smtpd::partial $srv ?conn?        Bytes of an unfinished DATA phase left
#                                     when the connection ended.
#   smtpd::record $srv                The whole record as a dict:
#                                       port N connections N
#                                       messages {msgdict ...}
#                                       conns {conndict ...}
#                                     with conndict keys conn peer commands
#                                     transcript reads closed closedby
#                                     partial.
#   smtpd::loadrecord FILE            Read a -record file back as a dict
#                                     (the file is binary: read it with
#                                     -translation binary, as this does).
#   smtpd::wait $srv what ?ms?        Run the event loop until a condition
#                                     holds or ms (default 5000) pass;
#                                     returns 1 if it holds, else 0.  what:
#                                       {messages N}     >= N messages
#                                       {connections N}  >= N accepted
#                                       {closed N}       >= N closed
#                                       {commands N}     >= N command lines
#                                       {command PATTERN} a command line
#                                                        matching the glob
#                                     (N defaults to 1).  Meant for tests
#                                     whose client runs in another process;
#                                     never called by the server itself.
#
# SEPARATE PROCESS USE
#
#	tclsh tests/smtpd.tcl ?options? ?-record FILE? ?-forever 1?
#
#	Starts a server with the options, prints "port N" on stdout (flushed)
#	and serves until stdin reaches end of file (open it from Tcl with
#	[open |[list tclsh smtpd.tcl -record $f] r+] and close the channel to
#	stop it), or until killed.  With -forever 1 stdin is ignored.
#	Read the record with smtpd::loadrecord (or: open FILE, fconfigure
#	-translation binary, read: the file is one Tcl dict).
#
# CLOSING (WINDOWS)
#
#	Tcl's Windows socket driver learns of socket events from window
#	messages that name the socket by its handle only, and Windows (and
#	Wine) give a freed handle to the very next socket: a message still
#	queued for a connection just closed (its FD_CLOSE, when the client
#	ended it) marks the next connection closed, which then reads end of
#	file in the middle of its dialogue (Tcl 8.6.13 to 9.0, SocketProc in
#	win/tclWinSock.c; under Wine 1 to 3 in 500 back-to-back connections).
#	So on Windows a connection is ended with [close $chan write] (the
#	client sees the end exactly when it would have) and its socket kept
#	until the next one is ended or a second has passed (::smtpd::Release).
#	The package under test does the same for its own connections
#	(win/smtpWin.c, SmtpPlatformClose).

package require Tcl 8.6-

namespace eval ::smtpd {
    variable counter 0
    # event($srv) is incremented on every state change (for wait).
    variable event
    variable waitid 0
    variable optionNames {
        -greeting -hostname -ehlo -noehlo -rules -record -myaddr -port
        -tls -implicittls -tlsdelay -lmtp
    }
    variable defaults {
        -greeting {220 localhost ESMTP smtpd.tcl}
        -hostname localhost
        -ehlo {PIPELINING 8BITMIME {SIZE 10240000}}
        -noehlo 0
        -rules {}
        -record {}
        -myaddr 127.0.0.1
        -port 0
        -tls {}
        -implicittls 0
        -tlsdelay 0
        -lmtp 0
    }
}

# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------

proc ::smtpd::start {args} {
    variable counter
    variable defaults
    variable event
    set srv smtpd[incr counter]
    upvar #0 [SVar $srv] S
    array set S $defaults
    set S(nconn) 0
    set S(conns) {}
    set S(messages) {}
    set S(hits) {}
    set S(listen) {}
    if {[catch {SetOptions $srv $args 1} msg]} {
        unset S
        return -code error $msg
    }
    set event($srv) 0
    if {[catch {
        socket -server [list ::smtpd::Accept $srv] -myaddr $S(-myaddr) $S(-port)
    } sock]} {
        unset S
        unset event($srv)
        return -code error "smtpd: cannot listen: $sock"
    }
    set S(listen) $sock
    set S(port) [lindex [fconfigure $sock -sockname] 2]
    WriteRecord $srv
    return $srv
}

proc ::smtpd::port {srv} {
    upvar #0 [Check $srv] S
    return $S(port)
}

proc ::smtpd::configure {srv args} {
    variable optionNames
    upvar #0 [Check $srv] S
    if {[llength $args] == 0} {
        set result {}
        foreach o $optionNames {
            dict set result $o $S($o)
        }
        return $result
    }
    if {[llength $args] == 1} {
        set o [lindex $args 0]
        if {$o ni $optionNames} {
            return -code error "smtpd: unknown option \"$o\", must be one of\
                    [join $optionNames {, }]"
        }
        return $S($o)
    }
    SetOptions $srv $args 0
    Notify $srv
    return
}

proc ::smtpd::stop {srv} {
    variable event
    upvar #0 [Check $srv] S
    catch {close $S(listen)}
    set S(listen) {}
    foreach n $S(conns) {
        upvar #0 [CVar $srv $n] C
        if {!$C(closed)} {
            CloseConn $srv $n server 0
        }
    }
    WriteRecord $srv
    foreach n $S(conns) {
        unset -nocomplain [CVar $srv $n]
    }
    unset S
    # Wake up any wait on this server.
    if {[info exists event($srv)]} {
        incr event($srv)
        unset event($srv)
    }
    return
}

proc ::smtpd::connections {srv} {
    upvar #0 [Check $srv] S
    return $S(nconn)
}

proc ::smtpd::closed {srv {conn all}} {
    set count 0
    foreach n [ConnList $srv $conn] {
        upvar #0 [CVar $srv $n] C
        incr count $C(closed)
    }
    return $count
}

proc ::smtpd::commands {srv {conn all}} {
    set result {}
    foreach n [ConnList $srv $conn] {
        upvar #0 [CVar $srv $n] C
        lappend result {*}$C(commands)
    }
    return $result
}

proc ::smtpd::messages {srv {conn all}} {
    upvar #0 [Check $srv] S
    if {$conn eq "all"} {
        return $S(messages)
    }
    set ns [ConnList $srv $conn]
    set result {}
    foreach m $S(messages) {
        if {[dict get $m conn] in $ns} {
            lappend result $m
        }
    }
    return $result
}

proc ::smtpd::transcript {srv {conn all}} {
    set result {}
    foreach n [ConnList $srv $conn] {
        upvar #0 [CVar $srv $n] C
        append result [join $C(tchunks) ""]
    }
    return $result
}

proc ::smtpd::reads {srv {conn all}} {
    set count 0
    foreach n [ConnList $srv $conn] {
        upvar #0 [CVar $srv $n] C
        incr count $C(reads)
    }
    return $count
}

proc ::smtpd::partial {srv {conn all}} {
    set result {}
    foreach n [ConnList $srv $conn] {
        upvar #0 [CVar $srv $n] C
        append result $C(partial)
    }
    return $result
}

proc ::smtpd::record {srv} {
    upvar #0 [Check $srv] S
    set conns {}
    foreach n $S(conns) {
        upvar #0 [CVar $srv $n] C
        set partial $C(partial)
        if {$C(mode) eq "data"} {
            set partial [join $C(dchunks) ""]
        }
        lappend conns [dict create \
                conn $n \
                peer $C(peer) \
                commands $C(commands) \
                transcript [join $C(tchunks) ""] \
                reads $C(reads) \
                closed $C(closed) \
                closedby $C(closedby) \
                partial $partial]
    }
    return [dict create \
            port $S(port) \
            connections $S(nconn) \
            messages $S(messages) \
            conns $conns]
}

proc ::smtpd::loadrecord {file} {
    set f [open $file rb]
    set data [read $f]
    close $f
    return $data
}

proc ::smtpd::wait {srv what {timeout 5000}} {
    variable event
    variable waitid
    Check $srv
    set kind [lindex $what 0]
    set arg [lindex $what 1]
    if {$kind ni {messages connections closed commands command}} {
        return -code error "smtpd: bad wait condition \"$what\", must be\
                messages, connections, closed, commands or command"
    }
    if {$arg eq ""} {
        set arg [expr {$kind eq "command" ? "*" : 1}]
    }
    set id [incr waitid]
    set flag ::smtpd::waitTimedOut($id)
    set $flag 0
    set timer [after $timeout [list ::smtpd::WaitTimeout $srv $flag]]
    set result 0
    while 1 {
        if {![info exists event($srv)]} {
            break                              ;# server stopped
        }
        if {[WaitCond $srv $kind $arg]} {
            set result 1
            break
        }
        if {[set $flag]} {
            break
        }
        vwait ::smtpd::event($srv)
    }
    after cancel $timer
    unset $flag
    return $result
}

# ---------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------

proc ::smtpd::SVar {srv} {
    return ::smtpd::S_$srv
}

proc ::smtpd::CVar {srv n} {
    return ::smtpd::C_${srv}_$n
}

proc ::smtpd::Check {srv} {
    set v [SVar $srv]
    if {![info exists ${v}(port)]} {
        return -code error "smtpd: no such server \"$srv\""
    }
    return $v
}

# Resolve a ?conn? argument to a list of connection numbers.
proc ::smtpd::ConnList {srv conn} {
    upvar #0 [Check $srv] S
    switch -- $conn {
        all {
            return $S(conns)
        }
        last {
            if {$S(nconn) == 0} {
                return {}
            }
            return [list $S(nconn)]
        }
    }
    if {![string is integer -strict $conn] || $conn < 1 || $conn > $S(nconn)} {
        return -code error "smtpd: no connection \"$conn\" (have $S(nconn))"
    }
    return [list $conn]
}

proc ::smtpd::SetOptions {srv optlist atStart} {
    variable optionNames
    upvar #0 [SVar $srv] S
    if {[llength $optlist] % 2} {
        return -code error "smtpd: options must be given as -option value pairs"
    }
    foreach {o v} $optlist {
        if {$o ni $optionNames} {
            return -code error "smtpd: unknown option \"$o\", must be one of\
                    [join $optionNames {, }]"
        }
        if {!$atStart && $o in {-myaddr -port}} {
            return -code error "smtpd: option $o can only be given at start"
        }
        if {$o eq "-noehlo" && ![string is boolean -strict $v]} {
            return -code error "smtpd: -noehlo needs a boolean, got \"$v\""
        }
        if {$o eq "-rules"} {
            foreach rule $v {
                ParseRule $rule
            }
            set S(hits) {}
        }
        set S($o) $v
    }
}

proc ::smtpd::Notify {srv} {
    variable event
    if {[info exists event($srv)]} {
        incr event($srv)
    }
}

proc ::smtpd::WaitTimeout {srv flag} {
    variable event
    set $flag 1
    if {[info exists event($srv)]} {
        incr event($srv)
    }
}

proc ::smtpd::WaitCond {srv kind arg} {
    upvar #0 [SVar $srv] S
    switch -- $kind {
        messages    { return [expr {[llength $S(messages)] >= $arg}] }
        connections { return [expr {$S(nconn) >= $arg}] }
        closed      { return [expr {[closed $srv] >= $arg}] }
        commands    { return [expr {[llength [commands $srv]] >= $arg}] }
        command {
            foreach c [commands $srv] {
                if {[string match -nocase $arg $c]} {
                    return 1
                }
            }
            return 0
        }
    }
}

# Split a rule into {pattern kw arg conn times}; errors on bad rules.
proc ::smtpd::ParseRule {rule} {
    if {[llength $rule] < 2} {
        return -code error "smtpd: bad rule \"$rule\": need {pattern action ?conn? ?times?}"
    }
    set pattern [lindex $rule 0]
    set action [lindex $rule 1]
    if {[llength $action] == 1 && $action in {reply delay}} {
        # flat form: pattern kw arg ?conn? ?times?
        if {[llength $rule] < 3} {
            return -code error "smtpd: bad rule \"$rule\": $action needs an argument"
        }
        set kw $action
        set arg [lindex $rule 2]
        set rest [lrange $rule 3 end]
    } else {
        set kw [lindex $action 0]
        set arg [lindex $action 1]
        set rest [lrange $rule 2 end]
    }
    if {$kw ni {reply raw stall hang drop delay}} {
        return -code error "smtpd: bad rule \"$rule\": unknown action \"$kw\",\
                must be reply, raw, stall, hang, drop or delay"
    }
    if {$kw eq "delay" && ![string is integer -strict [lindex $arg 0]]} {
        return -code error "smtpd: bad rule \"$rule\": delay needs {ms ?reply?}"
    }
    if {[llength $rest] > 2} {
        return -code error "smtpd: bad rule \"$rule\": too many elements"
    }
    lassign $rest conn times
    if {$conn ni {"" *} && ![string is integer -strict $conn]} {
        return -code error "smtpd: bad rule \"$rule\": conn must be a number or *"
    }
    if {$times ne "" && ![string is integer -strict $times]} {
        return -code error "smtpd: bad rule \"$rule\": times must be a number"
    }
    return [list $pattern $kw $arg $conn $times]
}

# Find the first applicable rule for an event on connection n; counts the
# hit.  event is greeting, enddata or cmd (then line is the command line).
# Returns {kw arg} or {} when no rule applies.
proc ::smtpd::FindRule {srv n event line} {
    upvar #0 [SVar $srv] S
    set i -1
    foreach rule $S(-rules) {
        incr i
        lassign [ParseRule $rule] pattern kw arg conn times
        set special [string tolower $pattern]
        switch -- $event {
            greeting {
                if {$special ne "greeting"} continue
            }
            enddata {
                if {$special ni {. enddata}} continue
            }
            default {
                if {$special in {greeting . enddata}} continue
                if {![string match -nocase $pattern $line]} continue
            }
        }
        if {$conn ni {"" *} && $conn != $n} continue
        if {$times ne ""} {
            if {[dict exists $S(hits) $i] && [dict get $S(hits) $i] >= $times} {
                continue
            }
        }
        dict incr S(hits) $i
        return [list $kw $arg]
    }
    return {}
}

# Turn a user-given reply text into a list of reply lines.
proc ::smtpd::ReplyLines {text} {
    if {[string first \n $text] >= 0} {
        set lines {}
        foreach l [split [string trimright $text \r\n] \n] {
            lappend lines [string trimright $l \r]
        }
        return $lines
    }
    if {![catch {llength $text} len]} {
        if {$len == 1} {
            return [list [lindex $text 0]]
        }
        if {$len > 1} {
            set multi 1
            foreach l $text {
                if {![regexp {^[0-9]{3}[- ]} $l]} {
                    set multi 0
                    break
                }
            }
            if {$multi} {
                return $text
            }
        }
    }
    return [list $text]
}

# Decide and queue the reply to an event.  default is a list of reply
# lines.  Returns the reply code ("" if no reply, "drop" if the
# connection was dropped).
proc ::smtpd::Respond {srv n event line default {closeAfter 0}} {
    upvar #0 [CVar $srv $n] C
    if {$C(closed) || $C(hang)} {
        return ""
    }
    lassign [FindRule $srv $n $event $line] kw arg
    set delay 0
    set raw 0
    switch -- $kw {
        "" {
            set lines $default
        }
        reply {
            set lines [ReplyLines $arg]
        }
        raw {
            set lines [list $arg]
            set raw 1
        }
        delay {
            set delay [lindex $arg 0]
            set text [lrange $arg 1 end]
            if {[llength $text] == 0} {
                set lines $default
            } else {
                if {[llength $text] == 1} {
                    set text [lindex $text 0]
                }
                set lines [ReplyLines $text]
            }
        }
        stall {
            return ""
        }
        hang {
            set C(hang) 1
            return ""
        }
        drop {
            CloseConn $srv $n server
            return drop
        }
    }
    Queue $srv $n $lines $delay $closeAfter $raw
    return [string range [lindex $lines end] 0 2]
}

proc ::smtpd::Queue {srv n lines delay closeAfter {raw 0}} {
    upvar #0 [CVar $srv $n] C
    set due [expr {[clock milliseconds] + $delay}]
    lappend C(outq) [list $due $lines $closeAfter $raw]
    # Replies to commands that came in one read leave in one write, as a
    # pipelining server sends them (Readable flushes after Process).
    if {!$C(reading)} {
        Flush $srv $n
    }
}

# Write out every queued reply that is due, in order.
proc ::smtpd::Flush {srv n} {
    upvar #0 [CVar $srv $n] C
    if {![info exists C(closed)] || $C(closed)} {
        return
    }
    if {$C(afterid) ne ""} {
        after cancel $C(afterid)
        set C(afterid) ""
    }
    set now [clock milliseconds]
    set out ""
    set closeNow 0
    while {[llength $C(outq)]} {
        lassign [lindex $C(outq) 0] due lines closeAfter raw
        if {$due > $now} {
            set C(afterid) [after [expr {$due - $now}] \
                    [list ::smtpd::Flush $srv $n]]
            break
        }
        set C(outq) [lrange $C(outq) 1 end]
        if {$raw} {
            append out [lindex $lines 0]
        } else {
            foreach l $lines {
                append out $l\r\n
            }
        }
        if {$closeAfter} {
            set closeNow 1
            break
        }
    }
    if {$out ne ""} {
        if {[catch {
            puts -nonewline $C(chan) $out
            flush $C(chan)
        }]} {
            CloseConn $srv $n client
            return
        }
    }
    if {$closeNow} {
        CloseConn $srv $n server
        return
    }
    if {![llength $C(outq)] && [llength $C(afterflush)]
            && $C(mode) eq "tls"} {
        set script $C(afterflush)
        set C(afterflush) {}
        uplevel #0 $script
    }
}

proc ::smtpd::CloseConn {srv n by {record 1}} {
    upvar #0 [CVar $srv $n] C
    if {$C(closed)} {
        return
    }
    set C(closed) 1
    set C(closedby) $by
    if {$C(mode) eq "data"} {
        set C(partial) [join $C(dchunks) ""]
        set C(dchunks) {}
    }
    set C(mode) closed
    set C(outq) {}
    if {$C(afterid) ne ""} {
        after cancel $C(afterid)
        set C(afterid) ""
    }
    catch {fileevent $C(chan) readable {}}
    Release $C(chan)
    Notify $srv
    if {$record} {
        WriteRecord $srv
    }
}

# Closes a connection's channel; on Windows its write side only, keeping
# the socket until the next one is closed or a second has passed (see
# CLOSING above).
proc ::smtpd::Release {chan} {
    variable parked
    if {$::tcl_platform(platform) ne "windows"} {
        catch {close $chan}
        return
    }
    # A failure (the connection was reset) leaves the write side closed
    # all the same.  What the client still writes is read and dropped, as
    # a closed socket would drop it.
    catch {close $chan write}
    catch {fileevent $chan readable [list ::smtpd::Drain $chan]}
    ReleaseParked
    set parked [list $chan [after 1000 ::smtpd::ReleaseParked]]
}

proc ::smtpd::Drain {chan} {
    if {[catch {read $chan}] || [eof $chan]} {
        fileevent $chan readable {}
    }
}

proc ::smtpd::ReleaseParked {} {
    variable parked
    if {[info exists parked]} {
        lassign $parked chan id
        unset parked
        after cancel $id
        catch {close $chan}
    }
}

proc ::smtpd::WriteRecord {srv} {
    upvar #0 [SVar $srv] S
    if {$S(-record) eq ""} {
        return
    }
    set tmp $S(-record).tmp
    set f [open $tmp wb]
    puts -nonewline $f [record $srv]
    close $f
    file rename -force $tmp $S(-record)
}

proc ::smtpd::Accept {srv chan host port} {
    upvar #0 [SVar $srv] S
    set n [incr S(nconn)]
    lappend S(conns) $n
    upvar #0 [CVar $srv $n] C
    array set C {
        mode cmd cmdbuf {} cmdscan 0
        dchunks {} dtail {} dlen 0
        from {} rcpts {}
        commands {} tchunks {} reads 0 gotcmd 0 partial {}
        closed 0 closedby {} outq {} afterid {} hang 0 afterflush {}
        reading 0
    }
    set C(chan) $chan
    set C(peer) [list $host $port]
    set C(tlsinfo) {}
    fconfigure $chan -blocking 0 -translation binary -buffering full \
            -buffersize 65536
    Notify $srv
    if {[llength $S(-tls)] && [string is true $S(-implicittls)]} {
        StartTls $srv $n [list ::smtpd::Respond $srv $n greeting "" \
                [ReplyLines $S(-greeting)]]
        return
    }
    fileevent $chan readable [list ::smtpd::Readable $srv $n]
    Respond $srv $n greeting "" [ReplyLines $S(-greeting)]
}

# Put TLS on a connection (server side) and run the handshake from the
# event loop; 'then' runs once it is done.
proc ::smtpd::StartTls {srv n then} {
    upvar #0 [SVar $srv] S
    upvar #0 [CVar $srv $n] C
    if {![info exists C(closed)] || $C(closed)} {
        return
    }
    package require tls
    fileevent $C(chan) readable {}
    if {[catch {
        tls::import $C(chan) -server 1 -command ::smtpd::TlsCallback {*}$S(-tls)
    } err]} {
        set C(tlsinfo) [list error $err]
        CloseConn $srv $n server
        return
    }
    fconfigure $C(chan) -blocking 0 -translation binary -buffering full
    fileevent $C(chan) readable [list ::smtpd::Handshake $srv $n $then]
}

# tls package callback: quiet (the default one prints alerts), and
# verification left to OpenSSL's own verdict.
proc ::smtpd::TlsCallback {option args} {
    if {$option eq "verify"} {
        return [lindex $args 3]
    }
    return 1
}

proc ::smtpd::Handshake {srv n then} {
    upvar #0 [CVar $srv $n] C
    if {![info exists C(closed)] || $C(closed)} {
        return
    }
    if {[catch {tls::handshake $C(chan)} done]} {
        set C(tlsinfo) [list error $done]
        CloseConn $srv $n client
        return
    }
    if {!$done} {
        if {[eof $C(chan)]} {
            set C(tlsinfo) [list error "eof during handshake"]
            CloseConn $srv $n client
        }
        return
    }
    set st [tls::status $C(chan)]
    if {![dict exists $st version] && [dict exists $st protocol]} {
        # tcl-tls 1.7 calls the protocol version "version", 1.8 "protocol".
        dict set st version [dict get $st protocol]
    }
    set C(tlsinfo) [list done 1 {*}$st]
    fileevent $C(chan) readable [list ::smtpd::Readable $srv $n]
    Notify $srv
    {*}$then
}

proc ::smtpd::tlsinfo {srv n} {
    Check $srv
    upvar #0 [CVar $srv $n] C
    return $C(tlsinfo)
}

proc ::smtpd::Readable {srv n} {
    upvar #0 [CVar $srv $n] C
    if {![info exists C(closed)] || $C(closed)} {
        return
    }
    if {[catch {read $C(chan)} data]} {
        CloseConn $srv $n client
        return
    }
    if {$data eq ""} {
        if {[eof $C(chan)]} {
            CloseConn $srv $n client
        }
        return
    }
    lappend C(tchunks) $data
    set C(gotcmd) 0
    set C(reading) 1
    Process $srv $n $data
    if {[info exists C(reading)]} {
        set C(reading) 0
        Flush $srv $n
    }
    Notify $srv
}

# Handle newly read bytes, switching between command and data mode.
proc ::smtpd::Process {srv n data} {
    upvar #0 [CVar $srv $n] C
    while {$data ne ""} {
        switch -- $C(mode) {
            data {
                set data [DataBytes $srv $n $data]
            }
            bdat {
                set take [string range $data 0 [expr {$C(bdatleft) - 1}]]
                set data [string range $data $C(bdatleft) end]
                lappend C(bchunks) $take
                incr C(bdatleft) -[string length $take]
                if {$C(bdatleft) == 0} {
                    set C(mode) cmd
                    BdatDone $srv $n
                }
            }
            cmd {
                # count this read once, before any reply or record is made
                if {!$C(gotcmd)} {
                    set C(gotcmd) 1
                    incr C(reads)
                }
                append C(cmdbuf) $data
                set data ""
                set buf $C(cmdbuf)
                set pos 0
                set scan $C(cmdscan)
                while {$C(mode) eq "cmd"} {
                    set i [string first \n $buf $scan]
                    if {$i < 0} {
                        break
                    }
                    set line [string range $buf $pos [expr {$i - 1}]]
                    set pos [expr {$i + 1}]
                    set scan $pos
                    if {[string index $line end] eq "\r"} {
                        set line [string range $line 0 end-1]
                    }
                    Command $srv $n $line
                }
                set rest [string range $buf $pos end]
                if {$C(mode) eq "cmd"} {
                    set C(cmdbuf) $rest
                    set C(cmdscan) [string length $rest]
                } else {
                    set C(cmdbuf) ""
                    set C(cmdscan) 0
                    if {$C(mode) in {data bdat}} {
                        set data $rest
                    }
                }
            }
            default {
                # quit, closed: ignore further input (it is in the
                # transcript already)
                return
            }
        }
    }
}

# Data phase: look for <CRLF>.<CRLF> in the already received tail (at most
# 4 bytes) plus the new bytes only, so the cost is linear in the size of
# the message.  Returns the bytes following the terminator, if any.
proc ::smtpd::DataBytes {srv n data} {
    upvar #0 [CVar $srv $n] C
    set s $C(dtail)$data
    set i [string first "\r\n.\r\n" $s]
    if {$i < 0} {
        lappend C(dchunks) $data
        incr C(dlen) [string length $data]
        set C(dtail) [string range $s end-3 end]
        return ""
    }
    # Positions in V = "\r\n" + D, D being all data bytes received.
    set vlen [expr {$C(dlen) + 2}]
    set p [expr {$vlen - [string length $C(dtail)] + $i}]
    lappend C(dchunks) $data
    set d [join $C(dchunks) ""]
    set raw [string range $d 0 [expr {$p - 1}]]
    set rest [string range $d [expr {$p + 3}] end]
    unset d
    set C(dchunks) {}
    set C(dtail) {}
    set C(dlen) 0
    set C(mode) cmd
    set message [string range [string map [list "\r\n." "\r\n"] "\r\n$raw"] 2 end]

    set msg [dict create conn $n from $C(from) rcpts $C(rcpts) \
            raw $raw message $message reply ""]
    Deliver $srv $n $msg enddata ""
    return $rest
}

# Records a message that has arrived whole (end of DATA, or BDAT LAST) and
# answers it: with LMTP a reply for each accepted recipient (RFC 2033,
# with RFC 3030 for BDAT), else one reply as the command (kind, line)
# that ended it.
proc ::smtpd::Deliver {srv n msg kind line} {
    upvar #0 [CVar $srv $n] C
    upvar #0 [SVar $srv] S
    lappend S(messages) $msg
    set idx [expr {[llength $S(messages)] - 1}]
    set C(from) {}
    set C(rcpts) {}
    if {[string is true $S(-lmtp)]} {
        set code {}
        foreach r [dict get $msg rcpts] {
            lappend code [Respond $srv $n lmtp "LMTP $r" \
                    [list "250 2.1.5 <$r> delivered"]]
        }
    } else {
        set code [Respond $srv $n $kind $line \
                [list "250 2.0.0 Ok: queued as [llength $S(messages)]"]]
    }
    lset S(messages) $idx [dict replace $msg reply $code]
    Notify $srv
    WriteRecord $srv
}

# A BDAT chunk has arrived in full: answer it; at LAST record the message.
proc ::smtpd::BdatDone {srv n} {
    upvar #0 [CVar $srv $n] C
    if {![llength $C(rcpts)]} {
        # As Postfix: the chunk is read and dropped.
        set C(bchunks) {}
        Respond $srv $n cmd $C(bdatline) \
                [list "554 5.5.1 Error: no valid recipients"]
        return
    }
    if {!$C(bdatlast)} {
        Respond $srv $n cmd $C(bdatline) [list "250 2.0.0 Ok: chunk received"]
        return
    }
    set body [join $C(bchunks) ""]
    set C(bchunks) {}
    set msg [dict create conn $n from $C(from) rcpts $C(rcpts) \
            raw $body message $body reply "" bdat 1]
    Deliver $srv $n $msg cmd $C(bdatline)
}

proc ::smtpd::Command {srv n line} {
    upvar #0 [CVar $srv $n] C
    upvar #0 [SVar $srv] S
    lappend C(commands) $line
    Notify $srv
    set verb ""
    regexp {^[A-Za-z]+} $line verb
    set verb [string toupper $verb]
    switch -- $verb {
        HELO {
            Respond $srv $n cmd $line [list "250 $S(-hostname)"]
        }
        EHLO - LHLO {
            if {[string is true $S(-noehlo)]} {
                set lines [list "500 5.5.1 Command unrecognized: EHLO"]
            } else {
                set all [list $S(-hostname) {*}$S(-ehlo)]
                if {[llength $S(-tls)] && $C(tlsinfo) eq ""} {
                    lappend all STARTTLS
                }
                set lines {}
                set last [expr {[llength $all] - 1}]
                for {set i 0} {$i <= $last} {incr i} {
                    set sep [expr {$i == $last ? " " : "-"}]
                    lappend lines "250$sep[lindex $all $i]"
                }
            }
            Respond $srv $n cmd $line $lines
        }
        MAIL {
            set code [Respond $srv $n cmd $line [list "250 2.1.0 Ok"]]
            if {[string match 2* $code]} {
                set C(from) [Address $line]
                set C(rcpts) {}
            }
        }
        RCPT {
            set code [Respond $srv $n cmd $line [list "250 2.1.5 Ok"]]
            if {[string match 2* $code]} {
                lappend C(rcpts) [Address $line]
            }
        }
        DATA {
            # As Postfix: no DATA without an accepted recipient (this is
            # what a pipelining client sees when every RCPT was refused).
            set default [expr {[llength $C(rcpts)]
                ? "354 End data with <CR><LF>.<CR><LF>"
                : "554 5.5.1 Error: no valid recipients"}]
            set code [Respond $srv $n cmd $line [list $default]]
            if {$code eq "354" && !$C(closed)} {
                set C(mode) data
                set C(dchunks) {}
                set C(dtail) "\r\n"
                set C(dlen) 0
            }
        }
        BDAT {
            if {![regexp -nocase {^BDAT (\d+)( LAST)?$} $line -> size last]} {
                Respond $srv $n cmd $line [list "501 5.5.4 Syntax: BDAT count \[LAST\]"]
                return
            }
            if {![info exists C(bchunks)]} {
                set C(bchunks) {}
            }
            set C(bdatline) $line
            set C(bdatlast) [expr {$last ne ""}]
            if {$size == 0} {
                BdatDone $srv $n
            } else {
                set C(bdatleft) $size
                set C(mode) bdat
            }
        }
        RSET {
            set code [Respond $srv $n cmd $line [list "250 2.0.0 Ok"]]
            set C(from) {}
            set C(rcpts) {}
        }
        NOOP {
            Respond $srv $n cmd $line [list "250 2.0.0 Ok"]
        }
        STARTTLS {
            if {[llength $S(-tls)] && $C(tlsinfo) eq ""} {
                # TLS starts once the 220 has been written (it may be
                # delayed by a rule); whatever the client sent after
                # STARTTLS in the clear is dropped, as a careful server
                # does.
                set C(afterflush) [list after $S(-tlsdelay) [list \
                        ::smtpd::StartTls $srv $n \
                        [list set [CVar $srv $n](mode) cmd]]]
                set code [Respond $srv $n cmd $line \
                        [list "220 2.0.0 Ready to start TLS"]]
                if {$code eq "220" && !$C(closed)} {
                    set C(cmdbuf) ""
                    set C(cmdscan) 0
                    set C(mode) tls
                    # The ClientHello must stay unread for the handshake.
                    fileevent $C(chan) readable {}
                    Flush $srv $n
                } else {
                    set C(afterflush) {}
                }
            } else {
                Respond $srv $n cmd $line \
                        [list "502 5.5.2 Error: command not recognized"]
            }
        }
        QUIT {
            set code [Respond $srv $n cmd $line [list "221 2.0.0 Bye"] 1]
            if {$code ni {"" drop} && !$C(closed)} {
                set C(mode) quit
            }
        }
        default {
            if {$line eq ""} {
                Respond $srv $n cmd $line [list "500 5.5.2 Error: bad syntax"]
            } else {
                Respond $srv $n cmd $line \
                        [list "502 5.5.2 Error: command not recognized"]
            }
        }
    }
}

# The address in <...> after the colon of MAIL FROM:/RCPT TO:, or the
# first word after the colon if there are no angle brackets.
proc ::smtpd::Address {line} {
    set i [string first : $line]
    if {$i < 0} {
        return ""
    }
    set rest [string trim [string range $line [expr {$i + 1}] end]]
    if {[regexp {^<([^>]*)>} $rest -> addr]} {
        return $addr
    }
    return [lindex [split $rest " "] 0]
}

# ---------------------------------------------------------------------------
# Separate process mode
# ---------------------------------------------------------------------------

proc ::smtpd::Main {argv} {
    set forever 0
    set opts {}
    foreach {o v} $argv {
        if {$o eq "-forever"} {
            set forever $v
        } else {
            lappend opts $o $v
        }
    }
    if {[llength $argv] % 2} {
        puts stderr "usage: tclsh smtpd.tcl ?-option value ...? ?-record FILE? ?-forever 1?"
        exit 2
    }
    if {[catch {start {*}$opts} srv]} {
        puts stderr $srv
        exit 2
    }
    puts stdout "port [port $srv]"
    flush stdout
    if {![string is true $forever]} {
        fconfigure stdin -blocking 0
        fileevent stdin readable [list ::smtpd::MainStdin $srv]
    }
    vwait ::smtpd::mainDone
    exit 0
}

proc ::smtpd::MainStdin {srv} {
    if {[catch {read stdin}] || [eof stdin]} {
        fileevent stdin readable {}
        catch {stop $srv}
        set ::smtpd::mainDone 1
    }
}

if {[info exists ::argv0] && [info script] ne ""
        && [file normalize $::argv0] eq [file normalize [info script]]} {
    ::smtpd::Main $::argv
}
