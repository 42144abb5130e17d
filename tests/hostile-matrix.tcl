# hostile-matrix.tcl --
#
#	The matrix of hostile.test for one way of sending (sync, command or
#	session), run as a process of its own so that the three run side by
#	side:
#
#	    tclsh hostile-matrix.tcl mode
#
#	prints {runs failures}: how many sends misbehaved at, and for each
#	one judged wrong, why.

package require Tcl 8.6-
source [file join [file dirname [file normalize [info script]]] smtpd.tcl]
package require mime
package require smtp

set ::tok [mime::initialize -canonical text/plain -string "hello\n"]
set ::srv ""

# The server's replies to the final dot (or BDAT LAST) of each message
# it received.
proc verdicts {} {
    lmap m [smtpd::messages $::srv] {dict get $m reply}
}

# stage -> {server options, the rule's pattern, the reply expected there,
# ?client options?} (BDATNP: BDAT without PIPELINING; LMTP: the reply
# for the recipient after BDAT LAST).
# The misbehaving rule goes first and fires once; the next message meets
# a well-behaved server.
set ::stages {
    GREETING {{} greeting {220 localhost ESMTP}}
    EHLO     {{} EHLO* {250-localhost
250-PIPELINING
250 8BITMIME}}
    TLS      {{-ehlo {PIPELINING STARTTLS}} STARTTLS {220 2.0.0 go ahead}}
    AUTH     {{-ehlo {PIPELINING {AUTH PLAIN}}} AUTH* {235 2.7.0 ok}}
    MAIL     {{} MAIL* {250 2.1.0 ok}}
    RCPT     {{} RCPT* {250 2.1.5 ok}}
    DATA     {{} DATA {354 go ahead}}
    DOT      {{} enddata {250 2.0.0 queued}}
    BDAT     {{-ehlo {PIPELINING CHUNKING}} BDAT* {250 2.0.0 queued}}
    BDATNP   {{-ehlo {CHUNKING}} BDAT* {250 2.0.0 queued}}
    LMTP     {{-lmtp 1 -ehlo {PIPELINING CHUNKING}} {LMTP *}
              {250 2.1.5 delivered} {-protocol lmtp}}
    QUIT     {{-ehlo {}} QUIT {221 2.0.0 bye}}
    QUITP    {{} QUIT {221 2.0.0 bye}}
}

# kind -> the rule's action, given the reply expected (code first).
proc action {kind normal} {
    set c [string range $normal 0 2]
    switch -- $kind {
        close {return drop}
        stall {return hang}
        garbage {return [list reply "\x01\x7f\xfe\xff garbage"]}
        nul {return [list reply "[string index $c 0]\x00[string range $c 1 end] nul"]}
        long {return [list raw "$c $::long\r\n"]}
        mismatch {return [list reply "$c-first\n[expr {$c + 1}] second"]}
        endless {return [list reply [join [lrepeat 1500 "$c-more"] \n]]}
        nonnumeric {return [list reply "abc not a number"]}
        range {return [list reply "650 out of range"]}
        1xx {return [list reply "150 wait a moment"]}
        extra {return [list reply "$normal\n250 2.0.0 extra"]}
    }
}
# The text of a reply line of 10 MB.
set ::long [string repeat x 10000000]

set ::kinds {close stall garbage nul long mismatch endless nonnumeric range
    1xx extra}

# The stages in the order of the dialogue: an error may name the stage
# misbehaving or an earlier one (a server dropping the connection
# takes its queued replies with it), never a later one, but for the
# commands of a PIPELINING batch (MAIL, RCPT, DATA or BDAT), whose replies
# a server that skips or adds one moves on to the next command.
set ::order {GREETING EHLO TLS AUTH MAIL RCPT DATA BDAT QUIT}
set ::latest {GREETING GREETING EHLO EHLO TLS TLS AUTH AUTH MAIL BDAT
    RCPT BDAT DATA DATA DOT DATA BDAT BDAT BDATNP BDAT LMTP BDAT QUIT QUIT
    QUITP QUIT}

# Judges one send: the verdict against what the server did, and the time.
# Returns "" when fine, else what is wrong.
proc judge {stage kind code result errorcode ms} {
    set accepted [expr {[lsearch -glob [verdicts] 2*] >= 0}]
    if {$ms > 3500} {
        return "took $ms ms"
    }
    if {$code == 0} {
        if {$accepted} {
            return ""
        }
        # tcllib's rule: the only recipient refused (or, with LMTP, its
        # delivery) is a result.
        if {[llength $result] == 1
                && [lindex $result 0 0] eq "b@example.org"} {
            return ""
        }
        return "success, but the server accepted no message: [list $result]"
    }
    if {$stage eq "QUITP" && $kind eq "close"
            && [lrange $errorcode 0 1] eq {SMTP EOF}} {
        # QUIT went with the message, and the server dropping the
        # connection at QUIT took its reply to the message with it.
        return ""
    }
    if {$stage in {QUIT QUITP}} {
        return "an error after the message was accepted: [list $result $errorcode]"
    }
    lassign $errorcode smtp where
    if {$where in {TIMEOUT EOF}} {
        set where [lindex $errorcode 5]
    }
    set s [dict get $::latest $stage]
    if {$smtp ne "SMTP" || $where ni $::order
            || [lsearch $::order $where] > [lsearch $::order $s]} {
        return "error [list $result] with -errorcode [list $errorcode]"
    }
    return ""
}

# One send of ::tok to ::srv by mode (sync, command, session): {code
# result errorcode ms}. The session, when there is one, is in ::session.
proc viamode {mode {more {}}} {
    set opts [list -servers 127.0.0.1 -ports [smtpd::port $::srv] \
        -timeout 1 -username u -password p {*}$more]
    set msg [list -originator a@example.com -recipients b@example.org \
        -maxsecs 1]
    set t [clock milliseconds]
    switch -- $mode {
        sync {
            set code [catch {smtp::sendmessage $::tok {*}$opts {*}$msg} r o]
            set ec [expr {$code ? [dict get $o -errorcode] : ""}]
        }
        command {
            unset -nocomplain ::done
            smtp::sendmessage $::tok {*}$opts {*}$msg -command {set ::done}
            vwait ::done
            set code [expr {[dict get $::done status] ne "ok"}]
            if {$code} {
                set r [dict get $::done message]
                set ec [dict get $::done errorcode]
            } else {
                set r [dict get $::done refused]
                set ec ""
            }
        }
        session {
            if {$::session eq ""} {
                set ::session [smtp::session {*}$opts]
            }
            set code [catch {$::session send $::tok {*}$msg} r o]
            set ec [expr {$code ? [dict get $o -errorcode] : ""}]
        }
    }
    list $code $r $ec [expr {[clock milliseconds] - $t}]
}

# Runs every stage against every kind of misbehaviour by one way of
# sending; returns {runs failures}.
proc matrix {mode} {
    set bad {}
    set runs 0
    foreach {stage def} $::stages {
        lassign $def srvopts pattern normal more
        foreach kind $::kinds {
            catch {smtpd::stop $::srv}
            set ::srv [smtpd::start {*}$srvopts -rules [list \
                [list $pattern [action $kind $normal] {} 1] \
                {AUTH* {reply {235 2.7.0 ok}}}]]
            set ::session ""
            lassign [viamode $mode $more] code r ec ms
            incr runs
            set why [judge $stage $kind $code $r $ec $ms]
            if {$mode eq "session" && $why eq ""} {
                # Closing says QUIT: bounded, and no error.
                if {[catch {$::session close} m]} {
                    set why "close: $m"
                }
                set ::session ""
            }
            if {$why ne ""} {
                lappend bad "$mode $stage $kind: $why"
                continue
            }
            # The next message, as it comes.
            smtpd::configure $::srv -rules {{AUTH* {reply {235 2.7.0 ok}}}}
            set n [llength [lsearch -all -glob [verdicts] 2*]]
            lassign [viamode $mode $more] code r ec ms
            if {$code || $r ne ""
                    || [llength [lsearch -all -glob [verdicts] 2*]] != $n + 1} {
                lappend bad "$mode $stage $kind, next message: [list $code $r $ec]"
            }
            if {$::session ne ""} {
                $::session close
            }
        }
    }
    catch {smtpd::stop $::srv}
    list $runs $bad
}

puts [matrix [lindex $argv 0]]
mime::finalize $::tok
