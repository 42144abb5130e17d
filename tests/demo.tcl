# demo.tcl --
#
#	"make demo": send one message with smtp::sendmessage and one with
#	smtp::send to the embedded test server (smtpd.tcl, in this process)
#	and show what the server received.  Exits 0 on success, 1 (with the
#	error) on failure.
#
#	The smtp package is found through TCLLIBPATH (the Makefile points it
#	at the build directory).

package require Tcl 8.6-

set here [file dirname [file normalize [info script]]]

proc fail {msg} {
    puts stderr "demo failed: $msg"
    exit 1
}

if {[catch {package require mime} err]} {
    fail "package require mime: $err"
}
if {[catch {package require smtp} version]} {
    fail "package require smtp: $version"
}
puts "smtp package version: $version"
puts "loaded by:            [package ifneeded smtp $version]"
foreach l [info loaded] {
    if {[string match -nocase *smtp* [lindex $l 0]]} {
        puts "shared library:       [lindex $l 0]"
    }
}

source [file join $here smtpd.tcl]
set srv [smtpd::start]
set port [smtpd::port $srv]
puts "test server:          127.0.0.1 port $port"

# Watchdog, for a client that waits forever while running the event loop.
after 60000 {
    puts stderr "demo failed: no result after 60 seconds"
    exit 1
}

set tok [mime::initialize -canonical text/plain \
        -string "Hello from the smtp package.\n.\nA line with a leading dot above.\n"]
mime::setheader $tok Subject "smtp demo"

set code [catch {
    smtp::sendmessage $tok \
        -servers 127.0.0.1 -ports $port \
        -originator alice@example.com \
        -recipients bob@example.org
} result]
catch {mime::finalize $tok}
if {$code} {
    smtpd::stop $srv
    fail $result
}

puts ""
if {[llength $result] == 0} {
    puts "smtp::sendmessage returned {}: all recipients accepted"
} else {
    puts "smtp::sendmessage returned refused recipients: $result"
}

# The client may still be closing the connection (QUIT); let the server
# see the end of it.
smtpd::wait $srv {closed 1} 2000

puts ""
puts "--- SMTP commands received by the server ---"
foreach c [smtpd::commands $srv] {
    puts "  $c"
}

set messages [smtpd::messages $srv]
if {[llength $messages] != 1} {
    smtpd::stop $srv
    fail "the server received [llength $messages] messages, expected 1"
}
set m [lindex $messages 0]
set raw [dict get $m raw]
set crlf [regexp -all {\r\n} $raw]
set bareLF [expr {[regexp -all {\n} $raw] - $crlf}]

puts ""
puts "envelope: from <[dict get $m from]> to [join [lmap r [dict get $m rcpts] {string cat < $r >}] {, }]"
puts ""
puts "--- message as received on the wire (CRLF line ends shown as line\
        breaks, dot-stuffing kept) ---"
fconfigure stdout -translation lf
puts -nonewline [string map {"\r\n" "\n"} $raw]
puts "--- end of message ([string length $raw] bytes, $crlf CRLF line ends,\
        $bareLF bare LF) ---"

if {[dict get $m rcpts] ne {bob@example.org}} {
    smtpd::stop $srv
    fail "server recorded recipients [dict get $m rcpts], expected bob@example.org"
}
if {[llength $result]} {
    smtpd::stop $srv
    fail "recipients refused: $result"
}

# The same in one command, with smtp::send (library/smtp.tcl): plain text
# and HTML, a blind copy that only the envelope names.
puts ""
puts "--- smtp::send ---"
if {[catch {
    smtp::send -servers 127.0.0.1 -ports $port \
        -from "Alice <alice@example.com>" -to "Bob <bob@example.org>" \
        -bcc carol@example.net -subject "smtp::send demo" \
        -text "Hello from smtp::send.\n" \
        -html "<p>Hello from <b>smtp::send</b>.</p>\n"
} result]} {
    smtpd::stop $srv
    fail "smtp::send: $result"
}
smtpd::wait $srv {closed 2} 2000
set m [lindex [smtpd::messages $srv] end]
puts "smtp::send returned {[join $result]}"
puts "envelope: from <[dict get $m from]> to [join [lmap r [dict get $m rcpts] {string cat < $r >}] {, }]"
puts ""
puts -nonewline [string map {"\r\n" "\n"} [dict get $m raw]]
puts "--- end of message ---"
smtpd::stop $srv
if {[dict get $m rcpts] ne {bob@example.org carol@example.net}} {
    fail "server recorded recipients [dict get $m rcpts] for smtp::send"
}
exit 0
