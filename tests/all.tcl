# all.tcl --
#
#	Runs every *.test file in this directory and prints, as the very last
#	line of output,
#
#	    N passed, N failed, N skipped
#
#	summed over all test files.  Exits 1 if any test failed or any test
#	file ended with an error, crashed, or timed out (each such file counts
#	as one failure), or if no test file matched; otherwise exits 0.
#
#	Usage:  tclsh tests/all.tcl ?tcltest options? ?-filetimeout SECONDS?
#
#	All tcltest options are accepted (e.g. -file smtpd.test, -match
#	smtpd-3.*, -verbose bpe, -constraints ..., -singleproc 1).  By default
#	each test file runs in its own tclsh process, so that a crash in the
#	C extension is reported as a failure of that file instead of ending
#	the run; -singleproc 1 sources the files into this interpreter.
#	-filetimeout (default 600, 0 = none) kills a test file that runs longer.
#
#	The package under test is found through TCLLIBPATH (the Makefile sets
#	it to the build directory); the smtp version and library that get
#	loaded are printed first.

package require Tcl 8.6-
package require tcltest 2.5

namespace eval ::alltests {
    variable testsDir [file dirname [file normalize [info script]]]
    variable fileTimeout 600
    variable total
    array set total {Total 0 Passed 0 Skipped 0 Failed 0}
    variable failFiles {}
    variable errorFiles {}
}

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

proc ::alltests::MakeTmpDir {} {
    foreach var {TMPDIR TEMP TMP} {
        if {[info exists ::env($var)] && [file isdirectory $::env($var)]} {
            set base $::env($var)
            break
        }
    }
    if {![info exists base]} {
        set base /tmp
    }
    set dir [file join $base smtp-tests-[pid]-[clock milliseconds]]
    file mkdir $dir
    return $dir
}

proc ::alltests::Configure {argv} {
    variable testsDir
    variable fileTimeout
    variable userArgs
    variable ownTmpDir ""

    # Options for this driver only.
    set userArgs {}
    foreach {opt val} $argv {
        if {$opt eq "-filetimeout"} {
            if {![string is double -strict $val]} {
                puts stderr "all.tcl: -filetimeout needs a number of seconds"
                exit 2
            }
            set fileTimeout $val
        } else {
            lappend userArgs $opt $val
        }
    }
    if {[llength $argv] % 2} {
        # let tcltest report the odd argument
        lappend userArgs [lindex $argv end]
    }

    set defaults [list -testdir $testsDir]
    if {"-tmpdir" ni $userArgs} {
        set ownTmpDir [MakeTmpDir]
        lappend defaults -tmpdir $ownTmpDir
    }
    if {[catch {tcltest::configure {*}$defaults {*}$userArgs} msg]} {
        if {$ownTmpDir ne ""} {
            catch {file delete -force $ownTmpDir}
        }
        puts stderr "all.tcl: $msg"
        exit 2
    }
}

# Arguments for each test file's process: the user's tcltest options
# except those that only concern this driver, plus the directories.
proc ::alltests::ChildArgs {} {
    variable userArgs
    set result {}
    foreach {opt val} $userArgs {
        if {$opt in {-file -notfile -singleproc -outfile -asidefromdir
                -relateddir -testdir -tmpdir}} {
            continue
        }
        lappend result $opt $val
    }
    lappend result -testdir [tcltest::testsDirectory] \
        -tmpdir [tcltest::temporaryDirectory]
    return $result
}

proc ::alltests::Out {text} {
    puts [tcltest::outputChannel] $text
    flush [tcltest::outputChannel]
}

# ---------------------------------------------------------------------------
# Which smtp package is tested
# ---------------------------------------------------------------------------

proc ::alltests::ReportPackage {} {
    # In a separate process, so that loading the extension cannot affect
    # (or crash) the driver.
    set script {
        if {[catch {package require smtp} v]} {
            puts "@@smtp@@ [list error $v]"
            exit 0
        }
        set files {}
        foreach l [info loaded] {
            if {[string match -nocase *smtp* [lindex $l 0]]} {
                lappend files [lindex $l 0]
            }
        }
        puts "@@smtp@@ [list ok $v [package ifneeded smtp $v] $files]"
        exit 0
    }
    if {[catch {exec [tcltest::interpreter] << $script 2>@1} out]} {
        set out [list error $out]
    }
    foreach var {TCLLIBPATH SMTP_BUILD_DIR} {
        if {[info exists ::env($var)]} {
            Out "$var=$::env($var)"
        } else {
            Out "$var is not set"
        }
    }
    set i [string first "@@smtp@@ " $out]
    if {$i >= 0} {
        set out [string range $out [expr {$i + 9}] end]
    } else {
        set out [list error $out]
    }
    if {[catch {lindex $out 0} status] || $status ne "ok"} {
        Out "smtp package: cannot be loaded: [lrange $out 1 end]"
        return
    }
    lassign $out -> version loadScript files
    Out "smtp package: version $version"
    Out "  package ifneeded: [join [lmap l [split [string trim $loadScript] \n] {string trim $l}] { }]"
    if {[llength $files]} {
        Out "  shared library:   [join $files {, }]"
    }
    if {$version ne "1.6.0"} {
        Out "  WARNING: expected smtp 1.6.0 (the C extension), got $version;\
                set TCLLIBPATH to the build directory (make test does)."
    }
}

# ---------------------------------------------------------------------------
# Running the test files
# ---------------------------------------------------------------------------

proc ::alltests::Count {file t p s f} {
    variable total
    variable failFiles
    incr total(Total) $t
    incr total(Passed) $p
    incr total(Skipped) $s
    incr total(Failed) $f
    if {$f > 0} {
        lappend failFiles [file tail $file]
    }
}

proc ::alltests::FileError {file msg} {
    variable errorFiles
    variable total
    Out "Test file error: [file tail $file]: $msg"
    lappend errorFiles [file tail $file]
    incr total(Failed)
}

set ::alltests::summaryRE \
    {^([^:]+):\tTotal\t([0-9]+)\tPassed\t([0-9]+)\tSkipped\t([0-9]+)\tFailed\t([0-9]+)}

proc ::alltests::RunInChild {file} {
    variable fileTimeout
    variable state
    array unset state
    set state(summary) {}
    set state(done) 0
    set state(timedout) 0
    set cmd [list | [tcltest::interpreter] $file {*}[ChildArgs] 2>@1]
    if {[catch {open $cmd r} fd]} {
        FileError $file $fd
        return
    }
    fconfigure $fd -blocking 0 -buffering line
    fileevent $fd readable [list ::alltests::ChildOutput $fd]
    set timer {}
    if {$fileTimeout > 0} {
        set timer [after [expr {int($fileTimeout * 1000)}] \
                [list ::alltests::ChildTimeout $fd]]
    }
    vwait ::alltests::state(done)
    after cancel $timer
    fconfigure $fd -blocking 1
    set closeError [catch {close $fd} closeMsg]
    if {$state(timedout)} {
        FileError $file "killed after $fileTimeout seconds"
    } elseif {$closeError} {
        if {[llength $state(summary)]} {
            Count $file {*}$state(summary)
        }
        FileError $file "exited abnormally: $closeMsg"
    } elseif {![llength $state(summary)]} {
        FileError $file "ended without a test summary (error while sourcing?)"
    } else {
        Count $file {*}$state(summary)
    }
}

proc ::alltests::ChildOutput {fd} {
    variable state
    variable summaryRE
    while {[gets $fd line] >= 0} {
        if {[regexp $summaryRE $line -> name t p s f]} {
            set state(summary) [list $t $p $s $f]
        }
        Out $line
    }
    if {[eof $fd]} {
        fileevent $fd readable {}
        set state(done) 1
    }
}

proc ::alltests::ChildTimeout {fd} {
    variable state
    set state(timedout) 1
    foreach p [pid $fd] {
        if {$::tcl_platform(platform) eq "windows"} {
            catch {exec taskkill /F /PID $p}
        } else {
            catch {exec kill -KILL $p}
        }
    }
}

proc ::alltests::RunInProcess {file} {
    variable summaryRE
    set before {}
    foreach i {Total Passed Skipped Failed} {
        lappend before $tcltest::numTests($i)
    }
    set code [catch {uplevel #0 [list source $file]} msg]
    set counts {}
    foreach i {Total Passed Skipped Failed} b $before {
        lappend counts [expr {$tcltest::numTests($i) - $b}]
    }
    Out "[file tail $file]:\tTotal\t[lindex $counts 0]\tPassed\t[lindex $counts 1]\tSkipped\t[lindex $counts 2]\tFailed\t[lindex $counts 3]"
    Count $file {*}$counts
    if {$code == 1} {
        FileError $file $msg
    }
}

proc ::alltests::Main {argv} {
    variable total
    variable failFiles
    variable errorFiles
    variable ownTmpDir

    Configure $argv
    set single [tcltest::singleProcess]
    # cleanupTests in test files must accumulate, not print and reset,
    # when they are sourced here.
    set ::tcltest::testSingleFile false

    Out "Tests located in:  [tcltest::testsDirectory]"
    Out "Temporary files:   [tcltest::temporaryDirectory]"
    Out "Interpreter:       [tcltest::interpreter] (Tcl [info patchlevel])"
    Out "Test files run [expr {$single ? {in this process} : {each in its own process}}]"
    ReportPackage

    set files [lsort [tcltest::GetMatchingFiles [tcltest::testsDirectory]]]
    if {![llength $files]} {
        Out "No test files match."
    }
    set t0 [clock seconds]
    foreach file $files {
        Out "---- [file tail $file]"
        if {$single} {
            RunInProcess $file
        } else {
            RunInChild $file
        }
    }
    Out "Total time: [expr {[clock seconds] - $t0}] s"
    if {[llength $failFiles]} {
        Out "Files with failing tests: [join $failFiles { }]"
    }
    if {[llength $errorFiles]} {
        Out "Test files exiting with errors: [join $errorFiles { }]"
    }
    if {$ownTmpDir ne ""} {
        catch {file delete -force $ownTmpDir}
    }
    set last "$total(Passed) passed, $total(Failed) failed, $total(Skipped) skipped"
    if {[tcltest::outputChannel] ne "stdout"} {
        Out $last
    }
    puts stdout $last
    flush stdout
    # No matching test file (e.g. a mistyped -file) is not a success.
    exit [expr {($total(Failed) > 0 || [llength $errorFiles] > 0
                 || [llength $files] == 0) ? 1 : 0}]
}

::alltests::Main $::argv
