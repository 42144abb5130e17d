# postfix.tcl --
#
#	A private, throw-away Postfix instance on loopback for the tests: its
#	own config_directory (main.cf, master.cf), queue_directory and
#	data_directory under a temporary directory, listening on ports picked
#	at run time, delivering every accepted message to a file that the
#	tests read back. The system's Postfix (/etc/postfix, its queue, its
#	service) is neither used nor touched. Optionally TLS (STARTTLS on the
#	plain port, and an implicit-TLS "smtps" port) and SASL AUTH, checked
#	by a private Dovecot auth server (passwords, and OAuth bearer tokens)
#	or by Cyrus SASL inside smtpd (passwords, NTLM among them).
#
#	Needs root (Postfix's master runs as root and drops to the postfix
#	user), Debian's postfix package, for -auth the dovecot-core package,
#	for -sasl cyrus the sasl2-bin and libsasl2-modules packages, for
#	-oauth2 Dovecot 2.3.11 or later and tcllib's sha256. No network
#	access: everything is on 127.0.0.1 (and ::1 with -ipv6 1).
#
#	    postfix::available            1 when an instance can be started
#	    postfix::authavailable        1 when -auth can be used too
#	    postfix::cyrusavailable       1 when -sasl cyrus can be used too
#	    postfix::oauth2available      1 when -oauth2 can be used too
#	    postfix::start ?options?      starts an instance (about 0.2 s, 0.5 s
#	                                  with Dovecot), returns a handle
#	        -tls {cert key ?cafile?}  STARTTLS (smtpd_tls_security_level may;
#	                                  with cafile, smtpd_tls_CAfile, and
#	                                  Postfix sends that CA in its chain)
#	        -smtps 1                  also an implicit-TLS port (needs -tls)
#	        -auth {user pass ...}     SASL AUTH for these users
#	        -sasl dovecot|cyrus       who checks them: a private Dovecot
#	                                  (default), or Cyrus SASL in smtpd
#	                                  with a private sasldb, the users in
#	                                  the realm example.org (so Postfix
#	                                  logs user@example.org as the name)
#	        -oauth2 KEY               Dovecot (not with cyrus) also takes
#	                                  OAuth 2.0 bearer tokens: JWTs signed
#	                                  with HS256 and KEY, whose "sub" is
#	                                  the user (postfix::token makes them),
#	                                  validated by Dovecot itself (its
#	                                  oauth2 passdb, introspection_mode
#	                                  local: no HTTP service)
#	        -mechanisms LIST          the SASL mechanisms offered (default:
#	                                  with -auth plain login cram-md5
#	                                  digest-md5 scram-sha-1 scram-sha-256,
#	                                  all that Dovecot 2.3 has for
#	                                  passwords, and ntlm with Cyrus; with
#	                                  -oauth2 oauthbearer xoauth2)
#	        -message_size_limit N     main.cf's message_size_limit
#	        -ipv6 1                   also listen on [::1], same ports
#	        -extra LINES              appended to main.cf (later wins)
#	        -extramaster LINES        appended to master.cf
#	        -lifetime SECONDS         master exits by itself then (600)
#	    postfix::port h ?plain|smtps? the port number
#	    postfix::ehlo h ?name?        EHLO on the plain port: the reply
#	                                  lines after the greeting line
#	    postfix::messages h ?ms?      waits until the queue is empty (at
#	                                  most ms, default 10000), returns the
#	                                  messages delivered so far, oldest
#	                                  first, as dicts (below)
#	    postfix::clear h              forgets the messages delivered so far
#	    postfix::logins h             the successful SASL logins of
#	                                  transactions, from the log: a list
#	                                  of {mechanism username}
#	    postfix::token key user ?s?   a bearer token for -oauth2 key: a
#	                                  JWT for user that expires in s
#	                                  seconds (600; negative: expired)
#	    postfix::log h                the instance's log (maillog_file, and
#	                                  the master's and Dovecot's output)
#	    postfix::dir h                the instance's directory
#	    postfix::stop h               stops it: no process is left behind,
#	                                  the directory is removed
#	    postfix::stopall              stops every instance still running
#
#	Each delivered message is a dict:
#	    sender    the envelope sender ("" for the null sender)
#	    rcpts     the envelope recipients of that delivery (all accepted
#	              recipients of the message: one delivery per message).
#	              Postfix's queue manager sorts them, by domain and then
#	              by address, and drops duplicates: not the RCPT order.
#	    message   the bytes delivered, exactly: CRLF line ends (the pipe
#	              service's eol=\r\n), no From_ line, no Return-Path,
#	              Delivered-To or X-Original-To (pipe flags= is empty),
#	              with the one header Postfix adds in front: smtpd's
#	              "Received:" field, folded, e.g.
#	                Received: from HELO (unknown [127.0.0.1])
#	                	by mail.example.org (Postfix) with ESMTPS id QID
#	                	for <bob@example.org>; DATE
#	              (the "for" part only for a single recipient; ESMTP,
#	              ESMTPS with TLS, ESMTPA/ESMTPSA after AUTH).
#	    received  that Received: field as delivered (CRLF included)
#	    data      message with the Received: field removed: the message
#	              as the client sent it in DATA (after dot-unstuffing),
#	              byte for byte. Postfix is set up not to change it:
#	              local_header_rewrite_clients is empty, so no header is
#	              added (Date, Message-ID, From, To) or rewritten, and
#	              message_drop_headers is empty, so Bcc:, Resent-Bcc:,
#	              Content-Length: and Return-Path: are kept. Lines longer
#	              than Postfix's line_length_limit (2048) are stored in
#	              pieces but delivered whole.
#	    queueid   Postfix's queue id
#
#	How it runs: "master -c CONFIG -d" in the foreground, started with
#	setsid so that it leads its own process group, with "-e lifetime" as
#	a safety net; stop sends SIGTERM to the master (which stops its
#	children), then SIGKILL to whatever is left in the group. Dovecot
#	("dovecot -c CONF -F") is run the same way. A watchdog shell process
#	kills both groups if this Tcl process dies without calling stop (a
#	crash, or all.tcl's timeout). Cyrus SASL is a library that smtpd
#	loads: it has no process, only files in the instance's directory.

package require Tcl 8.6-

namespace eval ::postfix {
    variable daemondir /usr/lib/postfix/sbin
    variable seq 0
    variable live {}
}

proc ::postfix::available {} {
    variable daemondir
    expr {[file executable /usr/sbin/postfix]
          && [file executable [file join $daemondir master]]
          && [file executable [file join $daemondir pipe]]
          && ![catch {exec id -u} uid] && $uid == 0
          && ![catch {exec id -u postfix}]
          && ![catch {exec id -u nobody}]
          && [auto_execok setsid] ne ""}
}

proc ::postfix::authavailable {} {
    expr {[available] && [file executable /usr/sbin/dovecot]
          && ![catch {exec id -u dovecot}] && ![catch {exec id -u dovenull}]}
}

# The directory of Cyrus SASL's plugins, or "".
proc ::postfix::CyrusPluginDir {} {
    foreach dir [concat [glob -nocomplain -types d /usr/lib/*/sasl2] \
            /usr/lib/sasl2 /usr/lib64/sasl2] {
        if {[llength [glob -nocomplain -directory $dir libsasldb.so*]]} {
            return $dir
        }
    }
    return ""
}

proc ::postfix::cyrusavailable {} {
    if {![available] || ![file executable /usr/sbin/saslpasswd2]
            || [catch {exec /usr/sbin/postconf -a} types]
            || "cyrus" ni $types} {
        return 0
    }
    set dir [CyrusPluginDir]
    if {$dir eq ""} {return 0}
    foreach plugin {plain login crammd5 digestmd5 scram ntlm} {
        if {![llength [glob -nocomplain -directory $dir lib$plugin.so*]]} {
            return 0
        }
    }
    return 1
}

# Dovecot 2.3.11 or later validates JWTs itself (introspection_mode local);
# tcllib's sha256 signs them here.
proc ::postfix::oauth2available {} {
    expr {[authavailable] && ![catch {exec /usr/sbin/dovecot --version} v]
          && [regexp {^(\d+)\.(\d+)\.(\d+)} $v -> a b c]
          && [package vsatisfies $a.$b.$c 2.3.11-]
          && ![catch {package require sha256}]}
}

# ------------------------------------------------------------------------
# Starting
# ------------------------------------------------------------------------

proc ::postfix::start {args} {
    variable seq
    variable live
    set o [dict create -tls {} -smtps 0 -auth {} -sasl dovecot -oauth2 {} \
        -mechanisms {} -message_size_limit {} -ipv6 0 -extra {} \
        -extramaster {} -lifetime 600]
    if {[llength $args] % 2} {
        return -code error "wrong # args: should be \"postfix::start ?-option value ...?\""
    }
    foreach {k v} $args {
        if {![dict exists $o $k]} {
            return -code error "unknown option \"$k\": must be one of\
                [join [dict keys $o] {, }]"
        }
        dict set o $k $v
    }
    if {[dict get $o -smtps] && [llength [dict get $o -tls]] < 2} {
        return -code error "-smtps needs -tls {cert key ?cafile?}"
    }
    if {[llength [dict get $o -auth]] % 2} {
        return -code error "-auth needs {user pass ?user pass ...?}"
    }
    set sasl [dict get $o -sasl]
    if {$sasl ni {dovecot cyrus}} {
        return -code error "bad -sasl \"$sasl\": must be dovecot or cyrus"
    }
    set oauth [expr {[dict get $o -oauth2] ne ""}]
    if {$oauth && $sasl ne "dovecot"} {
        return -code error "-oauth2 needs -sasl dovecot"
    }
    if {$sasl eq "cyrus" && ![llength [dict get $o -auth]]} {
        return -code error "-sasl cyrus needs -auth {user pass ...}"
    }
    if {[dict get $o -mechanisms] eq ""} {
        set mechs {}
        if {[llength [dict get $o -auth]]} {
            lappend mechs plain login cram-md5 digest-md5 scram-sha-1 \
                scram-sha-256
            if {$sasl eq "cyrus"} {
                lappend mechs ntlm
            }
        }
        if {$oauth} {
            lappend mechs oauthbearer xoauth2
        }
        dict set o -mechanisms $mechs
    }
    if {![available]} {
        return -code error "cannot start Postfix: needs root, the postfix\
            package and setsid"
    }
    if {$sasl eq "cyrus" && ![cyrusavailable]} {
        return -code error "cannot use Cyrus SASL: needs Postfix with Cyrus\
            SASL support and the libsasl2-modules and sasl2-bin packages"
    }
    if {$sasl eq "dovecot" && ([llength [dict get $o -auth]] || $oauth)
            && ![authavailable]} {
        return -code error "cannot start Dovecot for -auth: needs the\
            dovecot-core package"
    }
    if {$oauth && ![oauth2available]} {
        return -code error "cannot use -oauth2: needs Dovecot 2.3.11 or\
            later and tcllib's sha256"
    }

    set h postfix[incr seq]
    upvar #0 ::postfix::$h st
    array unset st
    set st(opts) $o
    set st(dir) [NewDir $h]
    set st(mpid) {}
    set st(dpid) {}
    set st(watchdog) {}
    lappend live $h
    if {[catch {Launch $h} msg opts]} {
        set log [log $h]
        catch {stop $h}
        return -code error "cannot start Postfix: $msg\n--- log ---\n$log"
    }
    return $h
}

# A new directory for an instance, in tcltest's temporary directory when
# that is reachable by the postfix and nobody users, else in /tmp.
proc ::postfix::NewDir {h} {
    set bases {}
    if {[namespace exists ::tcltest]} {
        catch {lappend bases [::tcltest::temporaryDirectory]}
    }
    lappend bases /tmp
    foreach base $bases {
        set base [file normalize $base]
        if {[Traversable $base]} break
    }
    set dir [file join $base pf-[pid]-$h]
    file delete -force $dir
    file mkdir $dir
    file attributes $dir -permissions 0755
    return $dir
}

# Whether every directory from / to dir lets others search it.
proc ::postfix::Traversable {dir} {
    set path /
    foreach part [lrange [file split $dir] 1 end] {
        set path [file join $path $part]
        if {![file isdirectory $path]
                || !([file attributes $path -permissions] & 1)} {
            return 0
        }
    }
    return 1
}

proc ::postfix::FreePort {ipv6} {
    for {set i 0} {$i < 20} {incr i} {
        set s [socket -server {apply {args {}}} -myaddr 127.0.0.1 0]
        set p [lindex [fconfigure $s -sockname] 2]
        close $s
        if {!$ipv6} {return $p}
        if {![catch {socket -server {apply {args {}}} -myaddr ::1 $p} s]} {
            close $s
            return $p
        }
    }
    error "no free port"
}

proc ::postfix::PortFree {port} {
    if {[catch {socket -server {apply {args {}}} -myaddr 127.0.0.1 $port} s]} {
        return 0
    }
    close $s
    return 1
}

proc ::postfix::Launch {h} {
    upvar #0 ::postfix::$h st
    set o $st(opts)
    set d $st(dir)
    foreach sub {etc data out dovecot} {
        file mkdir [file join $d $sub]
    }
    exec chown postfix:postfix [file join $d data]
    file attributes [file join $d data] -permissions 0700
    exec chown nobody:nogroup [file join $d out]
    file attributes [file join $d out] -permissions 0700
    MakeQueue [file join $d queue]
    WriteDeliver [file join $d etc deliver.sh]

    if {[Auth $o] eq "dovecot"} {
        StartDovecot $h
    } elseif {[Auth $o] eq "cyrus"} {
        MakeCyrus $h
    }

    # The master exits at once when a port is taken: pick others then.
    for {set try 1} {1} {incr try} {
        set st(port) [FreePort [dict get $o -ipv6]]
        set st(sport) {}
        if {[dict get $o -smtps]} {
            while {[set st(sport) [FreePort [dict get $o -ipv6]]] == $st(port)} {}
        }
        WriteConfig $h
        StartMaster $h
        set r [WaitReady $h 10000]
        if {$r eq "ok"} break
        if {$r eq "bind" && $try < 4} {
            KillGroup $st(mpid)
            set st(mpid) {}
            continue
        }
        error "the master did not become ready ($r)"
    }
    StartWatchdog $h
}

# Which SASL server an instance has: dovecot, cyrus, or "" (no AUTH).
proc ::postfix::Auth {o} {
    if {![llength [dict get $o -auth]] && [dict get $o -oauth2] eq ""} {
        return ""
    }
    return [dict get $o -sasl]
}

# The queue directory and its subdirectories, as post-install makes them.
proc ::postfix::MakeQueue {q} {
    file mkdir $q
    file attributes $q -permissions 0755
    foreach sub {active bounce corrupt defer deferred flush hold incoming
                 private saved trace} {
        file mkdir [file join $q $sub]
        exec chown postfix:root [file join $q $sub]
        file attributes [file join $q $sub] -permissions 0700
    }
    file mkdir [file join $q pid]
    file attributes [file join $q pid] -permissions 0755
    file mkdir [file join $q maildrop] [file join $q public]
    exec chown postfix:postdrop [file join $q maildrop] [file join $q public]
    file attributes [file join $q maildrop] -permissions 0730
    file attributes [file join $q public] -permissions 0710
}

# The pipe service's command: writes the envelope and the message to a
# file in OUTDIR, made visible at once by a rename. Format: the sender on
# the first line, the number of recipients on the second, one recipient a
# line, then the message as delivered.
proc ::postfix::WriteDeliver {file} {
    set f [open $file w]
    puts $f {#!/bin/sh
# deliver.sh OUTDIR QUEUEID SENDER RECIPIENT... < message
umask 077
out=$1; id=$2; sender=$3
shift 3
tmp="$out/tmp.$id.$$"
{
    printf '%s\n%s\n' "$sender" "$#"
    for r in "$@"; do printf '%s\n' "$r"; done
    cat
} > "$tmp" || exit 75
mv "$tmp" "$out/msg.$(date +%s%N).$id.$$" || exit 75
exit 0}
    close $f
    file attributes $file -permissions 0755
}

proc ::postfix::WriteConfig {h} {
    upvar #0 ::postfix::$h st
    set o $st(opts)
    set d $st(dir)
    set etc [file join $d etc]
    set ipv6 [dict get $o -ipv6]

    set main [string map [list @D@ $d] {# A private Postfix instance for smtp's tests (tests/postfix.tcl).
compatibility_level = 3.6
queue_directory = @D@/queue
data_directory = @D@/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = @D@/maillog
maillog_file_prefixes = @D@
myhostname = mail.example.org
mydomain = example.org
myorigin = example.org
mydestination = example.org, example.com, localhost, mail.example.org
mynetworks = 127.0.0.0/8
relay_domains =
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions =
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP Postfix (smtp test instance)
smtputf8_enable = yes
local_transport = testpipe:localhost
testpipe_destination_recipient_limit = 1000
default_transport = error:5.7.1 test instance: no relaying
relay_transport = error:5.7.1 test instance: no relaying
local_recipient_maps =
alias_maps =
alias_database =
local_header_rewrite_clients =
append_dot_mydomain = no
biff = no
in_flow_delay = 0
smtpd_error_sleep_time = 0
mailbox_size_limit = 0
message_drop_headers =
virtual_mailbox_limit = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
delay_warning_time = 0
smtp_dns_support_level = disabled
}]
    if {$ipv6} {
        append main "inet_protocols = all\ninet_interfaces = 127.0.0.1, \[::1\]\n"
        append main "mynetworks = 127.0.0.0/8, \[::1\]/128\n"
    } else {
        append main "inet_protocols = ipv4\ninet_interfaces = 127.0.0.1\n"
    }
    if {[dict get $o -message_size_limit] ne ""} {
        append main "message_size_limit = [dict get $o -message_size_limit]\n"
    }
    set tls [dict get $o -tls]
    if {[llength $tls]} {
        lassign $tls cert key cafile
        append main "smtpd_tls_cert_file = $cert\n"
        append main "smtpd_tls_key_file = $key\n"
        if {$cafile ne ""} {append main "smtpd_tls_CAfile = $cafile\n"}
        append main "smtpd_tls_security_level = may\n"
        append main "smtpd_tls_loglevel = 1\n"
        append main "smtpd_tls_session_cache_database =\n"
        append main "tls_random_source = dev:/dev/urandom\n"
    }
    if {[Auth $o] ne ""} {
        append main "smtpd_sasl_auth_enable = yes\n"
        if {[Auth $o] eq "dovecot"} {
            append main "smtpd_sasl_type = dovecot\n"
            append main "smtpd_sasl_path = private/auth\n"
        } else {
            # Cyrus SASL in smtpd itself, with the configuration file
            # etc/sasl/smtpd.conf (smtpd_sasl_path names it; Debian's
            # Postfix looks in config_directory/sasl, and did so here even
            # with another cyrus_sasl_config_path); users are looked up
            # in the realm example.org.
            append main "smtpd_sasl_type = cyrus\n"
            append main "smtpd_sasl_path = smtpd\n"
            append main "cyrus_sasl_config_path = [file join $etc sasl]\n"
            append main "smtpd_sasl_local_domain = example.org\n"
        }
        append main "smtpd_sasl_security_options = noanonymous\n"
        append main "smtpd_sasl_tls_security_options = noanonymous\n"
        append main "smtpd_tls_auth_only = no\n"
        append main "broken_sasl_auth_clients = no\n"
    }
    append main [dict get $o -extra] \n

    set master "# service type private unpriv chroot wakeup maxproc command\n"
    set addrs 127.0.0.1
    if {$ipv6} {lappend addrs {[::1]}}
    foreach a $addrs {
        append master "$a:$st(port) inet n - n - - smtpd\n"
        if {$st(sport) ne ""} {
            append master "$a:$st(sport) inet n - n - - smtpd\
                -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt\n"
        }
    }
    append master [string map [list @D@ $d] {cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
testpipe  unix  - n n - - pipe
  flags= user=nobody null_sender= eol=\r\n
  argv=@D@/etc/deliver.sh @D@/out ${queue_id} ${sender} ${recipient}
}]
    append master [dict get $o -extramaster] \n

    foreach {name text} [list main.cf $main master.cf $master] {
        set f [open [file join $etc $name] w]
        puts -nonewline $f $text
        close $f
        # Postfix rereads a file changed in the current second (it might
        # be half written), 300 ms at a time: date it in the past.
        file mtime [file join $etc $name] [expr {[clock seconds] - 60}]
    }
}

proc ::postfix::StartMaster {h} {
    variable daemondir
    upvar #0 ::postfix::$h st
    set d $st(dir)
    set life [dict get $st(opts) -lifetime]
    # setsid: the master leads its own process group (Tcl's child is not a
    # group leader, so setsid does not fork and the pid is the master's).
    set st(mpid) [exec setsid [file join $daemondir master] \
        -c [file join $d etc] -d -e $life \
        < /dev/null >>& [file join $d master.out] &]
}

# ok, bind (a port was taken), or what went wrong.
proc ::postfix::WaitReady {h ms} {
    upvar #0 ::postfix::$h st
    set end [expr {[clock milliseconds] + $ms}]
    while {[clock milliseconds] < $end} {
        if {![Alive $st(mpid)]} {
            # A master that cannot bind exits before it can log why.
            foreach p [list $st(port) $st(sport)] {
                if {$p ne "" && ![PortFree $p]} {
                    return bind
                }
            }
            return "the master exited"
        }
        if {![catch {socket 127.0.0.1 $st(port)} s]} {
            fconfigure $s -translation crlf -buffering line
            set line ""
            catch {
                # Bounded: the banner comes at once or not at all.
                fconfigure $s -blocking 0
                set t [expr {[clock milliseconds] + 3000}]
                while {[gets $s line] < 0 && ![eof $s]
                        && [clock milliseconds] < $t} {
                    after 20
                }
                puts $s QUIT
            }
            catch {close $s}
            if {[string match 220* $line]} {return ok}
        }
        after 50
    }
    return "timeout"
}

# Whether a process is running (not gone, not a zombie).
proc ::postfix::Alive {pid} {
    if {$pid eq ""} {return 0}
    if {[catch {open /proc/$pid/stat r} f]} {return 0}
    set s [read $f]
    close $f
    set rest [string range $s [string last ) $s]+2 end]
    expr {[lindex $rest 0] ni {Z X}}
}

# The pids of the processes of a process group; with zombies 0, only
# those still running.
proc ::postfix::GroupPids {pgid {zombies 0}} {
    set pids {}
    foreach stat [glob -nocomplain /proc/\[0-9\]*/stat] {
        # A process may exit between glob and read: skip it.
        if {[catch {open $stat r} f]} continue
        if {[catch {read $f} s]} {
            close $f
            continue
        }
        close $f
        set rest [string range $s [string last ) $s]+2 end]
        # state ppid pgrp
        if {[lindex $rest 2] == $pgid
                && ($zombies || [lindex $rest 0] ni {Z X})} {
            lappend pids [lindex [split [file dirname $stat] /] end]
        }
    }
    return $pids
}

# Stops a process group whose leader is our child: SIGTERM to the leader
# (Postfix's master and Dovecot's both pass it on to their group), then
# SIGKILL to whatever still runs. (Children that outlive their leader are
# reaped by init.)
proc ::postfix::KillGroup {pgid} {
    if {$pgid eq ""} return
    catch {exec kill -TERM $pgid}
    set end [expr {[clock milliseconds] + 5000}]
    while {[llength [GroupPids $pgid]] && [clock milliseconds] < $end} {
        after 20
    }
    if {[llength [GroupPids $pgid]]} {
        catch {exec kill -KILL -- -$pgid}
        set end [expr {[clock milliseconds] + 2000}]
        while {[llength [GroupPids $pgid]] && [clock milliseconds] < $end} {
            after 20
        }
    }
    # Reaps the leader (Tcl reaps finished background children on exec).
    catch {exec true}
}

# A shell that kills the instance's process groups and removes its
# directory when this process goes away without stopping it (a crash,
# all.tcl's timeout): it reads a pipe whose other end only this process
# holds, so it sees end of file then; stop writes "cancel" instead.
proc ::postfix::StartWatchdog {h} {
    upvar #0 ::postfix::$h st
    set groups [concat $st(mpid) $st(dpid)]
    set script {
        dir=$1; shift
        read -r word
        [ "$word" = cancel ] && exit 0
        for g in "$@"; do kill -TERM "$g" 2>/dev/null; done
        sleep 2
        for g in "$@"; do kill -KILL -- "-$g" 2>/dev/null; done
        rm -rf "$dir"
        exit 0
    }
    set st(watchdog) [open |[list sh -c $script sh $st(dir) {*}$groups \
        >/dev/null 2>/dev/null] w]
}

# ------------------------------------------------------------------------
# Dovecot, for SASL AUTH
# ------------------------------------------------------------------------

proc ::postfix::StartDovecot {h} {
    upvar #0 ::postfix::$h st
    set d $st(dir)
    set dd [file join $d dovecot]
    file mkdir [file join $dd run] [file join $dd state]
    set f [open [file join $dd users] w]
    foreach {user pass} [dict get $st(opts) -auth] {
        # (A glob in braces would take \n for the letter n.)
        if {[string match "*\[:\n\]*" $user$pass]} {
            close $f
            error "-auth: a user or password may not contain : or newline"
        }
        puts $f "$user:{PLAIN}${pass}::::::"
    }
    close $f
    exec chown root:dovecot [file join $dd users]
    file attributes [file join $dd users] -permissions 0640
    set passdbs ""
    if {[dict get $st(opts) -oauth2] ne ""} {
        append passdbs [OAuth2Passdb $h]
    }
    if {[llength [dict get $st(opts) -auth]]} {
        # With -oauth2, not for the token mechanisms: a token is not a
        # password.
        set only ""
        if {[dict get $st(opts) -oauth2] ne ""} {
            set only "  mechanisms = plain login cram-md5 digest-md5\
                scram-sha-1 scram-sha-256\n"
        }
        append passdbs [string map [list @DD@ $dd @O@ $only] {passdb {
  driver = passwd-file
  args = scheme=PLAIN @DD@/users
@O@}
}]
    }
    set conf [string map [list @DD@ $dd @Q@ [file join $d queue] @N@ $h-[pid] \
            @M@ [join [dict get $st(opts) -mechanisms]] @P@ $passdbs] {# A private Dovecot auth server for smtp's tests (tests/postfix.tcl).
instance_name = smtptest-@N@
base_dir = @DD@/run
state_dir = @DD@/state
protocols =
ssl = no
log_path = @DD@/log
auth_verbose = yes
auth_failure_delay = 0
auth_mechanisms = @M@
disable_plaintext_auth = no
@P@userdb {
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}
service auth {
  unix_listener @Q@/private/auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}
# No growing delay after failed authentications (the auth penalty).
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
service stats {
  unix_listener stats-reader {
    mode = 0600
  }
  unix_listener stats-writer {
    mode = 0600
  }
}
}]
    set f [open [file join $dd dovecot.conf] w]
    puts -nonewline $f $conf
    close $f
    set st(dpid) [exec setsid /usr/sbin/dovecot -c [file join $dd dovecot.conf] \
        -F < /dev/null >>& [file join $dd out] &]
    set sock [file join $d queue private auth]
    set end [expr {[clock milliseconds] + 10000}]
    while {![file exists $sock]} {
        if {![Alive $st(dpid)] || [clock milliseconds] > $end} {
            error "Dovecot did not start"
        }
        after 20
    }
}

# The oauth2 passdb: Dovecot validates the bearer token itself, as a JWT
# signed with HS256 and the key -oauth2 (introspection_mode local), the
# key read from a dict of files: dovecot/keys/AZP/ALG/KID holds it in
# base64, and a token without azp and kid uses default/HS256/default. The
# token's "sub" must be the user name that logs in.
proc ::postfix::OAuth2Passdb {h} {
    upvar #0 ::postfix::$h st
    set dd [file join $st(dir) dovecot]
    set keys [file join $dd keys]
    set kdir [file join $keys default HS256]
    file mkdir $kdir
    set f [open [file join $kdir default] w]
    puts -nonewline $f [binary encode base64 [dict get $st(opts) -oauth2]]
    close $f
    exec chown -R root:dovecot $keys
    foreach sub [list $keys [file join $keys default] $kdir] {
        file attributes $sub -permissions 0750
    }
    file attributes [file join $kdir default] -permissions 0640
    set f [open [file join $dd oauth2.conf] w]
    puts $f "introspection_mode = local"
    puts $f "local_validation_key_dict = fs:posix:prefix=$keys/"
    puts $f "username_attribute = sub"
    close $f
    return [string map [list @DD@ $dd] {passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = @DD@/oauth2.conf
}
}]
}

# ------------------------------------------------------------------------
# Cyrus SASL, for SASL AUTH inside smtpd
# ------------------------------------------------------------------------

# etc/sasl/smtpd.conf and the user database etc/sasl/sasldb2 (made by
# saslpasswd2, the users in the realm example.org), both readable by the
# postfix user that smtpd runs as. Cyrus's plugins check the passwords in
# smtpd itself: there is no process to start.
proc ::postfix::MakeCyrus {h} {
    upvar #0 ::postfix::$h st
    set dir [file join $st(dir) etc sasl]
    file mkdir $dir
    set db [file join $dir sasldb2]
    foreach {user pass} [dict get $st(opts) -auth] {
        if {[string match "*\[@\n\]*" $user] || [string match *\n* $pass]} {
            error "-auth: a user may not contain @ or newline, a password\
                no newline"
        }
        exec /usr/sbin/saslpasswd2 -f $db -c -p -u example.org $user \
            << $pass 2>@1
    }
    set f [open [file join $dir smtpd.conf] w]
    puts $f "pwcheck_method: auxprop"
    puts $f "auxprop_plugin: sasldb"
    puts $f "sasldb_path: $db"
    puts $f "mech_list: [join [dict get $st(opts) -mechanisms]]"
    puts $f "log_level: 3"
    close $f
    exec chown -R postfix:postfix $dir
    file attributes $dir -permissions 0700
    file attributes $db -permissions 0600
}

# ------------------------------------------------------------------------
# Bearer tokens for -oauth2
# ------------------------------------------------------------------------

# A JWT for user, signed (HS256) with key, that expires in seconds (in the
# past when negative).
proc ::postfix::token {key user {seconds 600}} {
    package require sha256
    set now [clock seconds]
    set header {{"alg":"HS256","typ":"JWT"}}
    set claims [format {{"sub":"%s","iat":%d,"exp":%d}} \
        [string map {\\ \\\\ \" \\\"} $user] \
        [expr {min($now, $now + $seconds) - 60}] [expr {$now + $seconds}]]
    set data [B64url $header].[B64url [encoding convertto utf-8 $claims]]
    return $data.[B64url [sha2::hmac -bin -key $key $data]]
}

proc ::postfix::B64url {bytes} {
    string map {+ - / _ = {}} [binary encode base64 $bytes]
}

# ------------------------------------------------------------------------
# Using an instance
# ------------------------------------------------------------------------

proc ::postfix::Check {h} {
    variable live
    if {$h ni $live} {
        return -code error "no Postfix instance \"$h\""
    }
}

proc ::postfix::port {h {which plain}} {
    Check $h
    upvar #0 ::postfix::$h st
    switch -- $which {
        plain {return $st(port)}
        smtps {
            if {$st(sport) eq ""} {
                return -code error "$h has no smtps port (start it with -smtps 1)"
            }
            return $st(sport)
        }
        default {return -code error "bad port \"$which\": must be plain or smtps"}
    }
}

proc ::postfix::dir {h} {
    Check $h
    upvar #0 ::postfix::$h st
    return $st(dir)
}

# EHLO on the plain port; the reply lines after the first, without the
# "250-" / "250 " prefix.
proc ::postfix::ehlo {h {name client.example.com}} {
    Check $h
    upvar #0 ::postfix::$h st
    set s [socket 127.0.0.1 $st(port)]
    fconfigure $s -translation crlf -buffering line -blocking 0
    try {
        set end [expr {[clock milliseconds] + 5000}]
        ReadReply $s $end
        puts $s "EHLO $name"
        set lines [ReadReply $s $end]
        puts $s QUIT
        ReadReply $s $end
    } finally {
        catch {close $s}
    }
    lmap l [lrange $lines 1 end] {string range $l 4 end}
}

# The lines of one reply, read until the time end (in ms).
proc ::postfix::ReadReply {s end} {
    set lines {}
    while 1 {
        if {[gets $s line] >= 0} {
            lappend lines $line
            if {[string index $line 3] ne "-"} {
                return $lines
            }
        } elseif {[eof $s]} {
            error "connection closed by Postfix: [join $lines \n]"
        } elseif {[clock milliseconds] > $end} {
            error "no reply from Postfix in time: [join $lines \n]"
        } else {
            after 10
        }
    }
}

# Whether Postfix's queue holds no message.
proc ::postfix::QueueEmpty {q} {
    foreach sub {incoming active deferred hold maildrop} {
        if {[llength [Files [file join $q $sub]]]} {return 0}
    }
    return 1
}

proc ::postfix::Files {dir} {
    set files [glob -nocomplain -types f -directory $dir *]
    foreach sub [glob -nocomplain -types d -directory $dir *] {
        lappend files {*}[Files $sub]
    }
    return $files
}

proc ::postfix::messages {h {ms 10000}} {
    Check $h
    upvar #0 ::postfix::$h st
    set q [file join $st(dir) queue]
    set end [expr {[clock milliseconds] + $ms}]
    while {![QueueEmpty $q] && [clock milliseconds] < $end} {
        after 20
    }
    set result {}
    set files [glob -nocomplain -directory [file join $st(dir) out] msg.*]
    foreach file [lsort -dictionary $files] {
        set f [open $file rb]
        set raw [read $f]
        close $f
        set i [string first \n $raw]
        set sender [string range $raw 0 $i-1]
        set j [string first \n $raw $i+1]
        set n [string range $raw $i+1 $j-1]
        set rcpts {}
        for {set k 0} {$k < $n} {incr k} {
            set i $j
            set j [string first \n $raw $i+1]
            lappend rcpts [string range $raw $i+1 $j-1]
        }
        set message [string range $raw $j+1 end]
        # The first header field is Postfix's Received:, with its
        # continuation lines.
        set received ""
        set data $message
        if {[regexp {^Received:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*} $message received]} {
            set data [string range $message [string length $received] end]
        }
        lappend result [dict create sender $sender rcpts $rcpts \
            message $message received $received data $data \
            queueid [lindex [split [file tail $file] .] 2]]
    }
    return $result
}

proc ::postfix::clear {h} {
    Check $h
    upvar #0 ::postfix::$h st
    foreach file [glob -nocomplain -directory [file join $st(dir) out] msg.*] {
        file delete $file
    }
}

proc ::postfix::log {h} {
    upvar #0 ::postfix::$h st
    if {![info exists st(dir)]} {return ""}
    set out ""
    foreach {title file} [list maillog maillog master.out master.out \
            "dovecot log" dovecot/log "dovecot output" dovecot/out] {
        set path [file join $st(dir) $file]
        if {[file exists $path] && ![catch {open $path r} f]} {
            set text [read $f]
            close $f
            if {$text ne ""} {
                append out "== $title ==\n$text"
                if {[string index $text end] ne "\n"} {append out \n}
            }
        }
    }
    return $out
}

# The log once it has caught up: it comes through postlogd, which on a busy
# machine can be seconds behind the sessions. Waits (at most 15 s) until
# the readiness probe's session and at least one more have been logged
# and every session logged has its disconnect line.
proc ::postfix::SettledLog {h} {
    set end [expr {[clock milliseconds] + 15000}]
    while 1 {
        set log [log $h]
        set connects [regexp -all {postfix/smtpd\[\d+\]: connect from} $log]
        set disconnects [regexp -all {postfix/smtpd\[\d+\]: disconnect from} $log]
        if {($connects >= 2 && $disconnects >= $connects)
                || [clock milliseconds] > $end} {
            return $log
        }
        after 20
    }
}

proc ::postfix::logins {h} {
    Check $h
    set result {}
    foreach line [split [SettledLog $h] \n] {
        if {[regexp {postfix/smtpd\[\d+\]: \w+: client=.*, sasl_method=([^,]+), sasl_username=(\S+)} \
                $line -> method user]} {
            lappend result [list $method $user]
        }
    }
    return $result
}

proc ::postfix::stop {h} {
    variable live
    upvar #0 ::postfix::$h st
    if {![info exists st(dir)]} {
        return -code error "no Postfix instance \"$h\""
    }
    # Postfix first: its smtpd talks to Dovecot.
    KillGroup $st(mpid)
    KillGroup $st(dpid)
    if {$st(watchdog) ne ""} {
        catch {puts $st(watchdog) cancel}
        catch {close $st(watchdog)}
    }
    catch {file delete -force $st(dir)}
    set i [lsearch -exact $live $h]
    if {$i >= 0} {set live [lreplace $live $i $i]}
    unset st
    return
}

proc ::postfix::stopall {} {
    variable live
    foreach h $live {
        catch {stop $h}
    }
    set live {}
}
