# smtp.tcl --
#
#	The Tcl half of the smtp package, sourced by pkgIndex.tcl once the
#	shared library is loaded: smtp::send, a message made and sent in one
#	command. The message is built with tcllib's mime package and sent (or
#	written, for -dryrun) by the C commands, with smtp::sendmessage's rules
#	and options.

namespace eval ::smtp {
    namespace export send

    # smtp::send's own options; any other must be one of sendmessage's.
    variable SendOwnOptions {
	-to -from -cc -bcc -replyto -subject -text -html -attach -header
	-dryrun
    }
}

# The helpers of smtp::send, beside the C commands that are not part of
# the package's interface either.
namespace eval ::smtp::internal {
    # Content types of attachments, by file name extension (lower case).
    # Anything else is application/octet-stream.
    variable MimeTypes {
	txt text/plain  text text/plain  log text/plain
	html text/html  htm text/html  css text/css  csv text/csv
	tsv text/tab-separated-values  md text/markdown
	ics text/calendar  vcf text/vcard  xml application/xml
	json application/json  js text/javascript  rtf application/rtf
	pdf application/pdf  ps application/postscript
	zip application/zip  gz application/gzip  tgz application/gzip
	tar application/x-tar  bz2 application/x-bzip2  xz application/x-xz
	7z application/x-7z-compressed  zst application/zstd
	doc application/msword
	docx application/vnd.openxmlformats-officedocument.wordprocessingml.document
	xls application/vnd.ms-excel
	xlsx application/vnd.openxmlformats-officedocument.spreadsheetml.sheet
	ppt application/vnd.ms-powerpoint
	pptx application/vnd.openxmlformats-officedocument.presentationml.presentation
	odt application/vnd.oasis.opendocument.text
	ods application/vnd.oasis.opendocument.spreadsheet
	odp application/vnd.oasis.opendocument.presentation
	epub application/epub+zip
	png image/png  jpg image/jpeg  jpeg image/jpeg  gif image/gif
	webp image/webp  svg image/svg+xml  bmp image/bmp  tif image/tiff
	tiff image/tiff  ico image/vnd.microsoft.icon  heic image/heic
	avif image/avif
	mp3 audio/mpeg  wav audio/wav  ogg audio/ogg  oga audio/ogg
	flac audio/flac  m4a audio/mp4  opus audio/ogg
	mp4 video/mp4  m4v video/mp4  mpeg video/mpeg  mpg video/mpeg
	webm video/webm  mov video/quicktime  avi video/x-msvideo
	mkv video/x-matroska
    }
}

# ::smtp::send ?option value ...?
#
#	Builds a message from the options (text, html, attachments, headers)
#	and sends it with smtp::sendmessage, to which every option that is not
#	smtp::send's own is passed. Returns what sendmessage returns (with
#	-command, its handle); with -dryrun true, the message instead, as the
#	octets the server would receive. Every mime token made here is
#	finalized before the command returns, also on error.

proc ::smtp::send {args} {
    variable SendOwnOptions

    if {[llength $args] % 2} {
	internal::SendError OPTION "value for \"[lindex $args end]\" missing"
    }
    set addrs [dict create -to {} -cc {} -bcc {}]
    set one [dict create]
    set attach {}
    set pass {}
    set dryrun 0
    set recipientsGiven 0
    set toHeader 0
    set senders [::smtp::internal::sendoptions]
    foreach {opt value} $args {
	switch -exact -- $opt {
	    -to - -cc - -bcc {
		if {[string trim $value] ne ""} {
		    dict lappend addrs $opt [internal::AddressList $value]
		}
	    }
	    -from - -replyto - -subject - -text - -html {
		dict set one $opt $value
	    }
	    -attach {
		lappend attach $value
	    }
	    -dryrun {
		if {![string is boolean -strict $value]} {
		    internal::SendError OPTION "expected boolean value for -dryrun\
			    but got \"$value\""
		}
		set dryrun [expr {!!$value}]
	    }
	    default {
		if {$opt ni $senders} {
		    internal::SendError OPTION "unknown option \"$opt\": must be\
			    [join [lrange $SendOwnOptions 0 end-1] {, }],\
			    [lindex $SendOwnOptions end] or an option of\
			    smtp::sendmessage"
		}
		if {$opt eq "-recipients" && [string trim $value] ne ""} {
		    set recipientsGiven 1
		}
		if {$opt eq "-header" && ![catch {lindex $value 0} name]
			&& [string tolower $name] in {to resent-to}} {
		    set toHeader 1
		}
		lappend pass $opt $value
	    }
	}
    }

    # The envelope: every -to, -cc and -bcc address, unless -recipients
    # says otherwise. Bcc goes nowhere else.
    set all [concat {*}[dict values $addrs]]
    if {!$recipientsGiven} {
	if {[llength $all]} {
	    lappend pass -recipients [join $all ", "]
	} elseif {!$toHeader} {
	    internal::SendError OPTION "no recipient: give -to, -cc or -bcc"
	}
    }
    set headers {}
    if {[dict exists $one -from]} {
	lappend headers -header [list From [dict get $one -from]]
    }
    foreach {opt name} {-to To -cc Cc} {
	if {[llength [dict get $addrs $opt]]} {
	    lappend headers -header [list $name [join [dict get $addrs $opt] ", "]]
	}
    }
    if {[dict exists $one -replyto]} {
	lappend headers -header [list Reply-To [dict get $one -replyto]]
    }
    if {[dict exists $one -subject]} {
	lappend headers -header [list Subject [dict get $one -subject]]
    }

    # Attachments are checked before anything is made or sent, and taken
    # by their full name: a background send reads them later.
    set files {}
    foreach path $attach {
	lappend files [internal::AttachmentCheck $path]
    }

    set made {}
    try {
	set top [internal::SendBuild made $one $files]
	if {$dryrun} {
	    set result [::smtp::internal::message $top {*}$headers {*}$pass]
	} else {
	    set result [::smtp::sendmessage $top {*}$headers {*}$pass]
	}
    } finally {
	foreach token $made {
	    catch {::mime::finalize $token -subordinates none}
	}
    }
    return $result
}

# Raises an smtp::send error: the message, and SMTP code ?detail ...? as
# the error code.

proc ::smtp::internal::SendError {code message args} {
    return -code error -level 2 -errorcode [list SMTP $code {*}$args] \
	    $message
}

# An address option's value as a header value: a Tcl list of addresses
# (two or more elements, each with an "@", no comma anywhere) joined with
# commas; anything else as given.

proc ::smtp::internal::AddressList {value} {
    if {[string first , $value] < 0 && ![catch {llength $value} n] && $n > 1} {
	foreach a $value {
	    if {[string first @ $a] < 0} {
		return $value
	    }
	}
	return [join $value ", "]
    }
    return $value
}

# Checks that an attachment is a regular file that can be opened for
# reading (opened and closed at once; it is read when the message is
# written). Returns its full name.

proc ::smtp::internal::AttachmentCheck {path} {
    if {[file exists $path] && ![file isfile $path]} {
	SendError ATTACH "cannot read attachment \"$path\": not a regular\
		file" $path
    }
    if {[catch {open $path rb} chan opts]} {
	set code [dict get $opts -errorcode]
	set why [expr {[lindex $code 0] eq "POSIX" ? [lindex $code end] : $chan}]
	SendError ATTACH "cannot read attachment \"$path\": $why" $path
    }
    close $chan
    return [file normalize $path]
}

# The content type of an attachment, from its file name.

proc ::smtp::internal::AttachmentType {path} {
    variable MimeTypes
    set ext [string tolower [string range [file extension $path] 1 end]]
    if {[dict exists $MimeTypes $ext]} {
	return [dict get $MimeTypes $ext]
    }
    return application/octet-stream
}

# The Content-Disposition value for an attachment: its file name as a
# quoted string. A name that is not ASCII stays as it is: the message
# writer puts it in RFC 2231 form. Control characters become "_".

proc ::smtp::internal::AttachmentDisposition {path} {
    set name [regsub -all {[\x00-\x1f\x7f]} [file tail $path] _]
    set name [string map {\\ \\\\ \" \\\"} $name]
    return "attachment; filename=\"$name\""
}

# Makes the mime tokens of the message; each is appended to the variable
# madeVar as soon as it exists, for the caller to finalize. Returns the
# top one: the text (text/plain), the html (text/html), both
# (multipart/alternative), and around that the attachments
# (multipart/mixed).

proc ::smtp::internal::SendBuild {madeVar one files} {
    upvar 1 $madeVar made
    set body {}
    if {[dict exists $one -text]} {
	lappend made [::mime::initialize -canonical text/plain \
		-string [dict get $one -text]]
	lappend body [lindex $made end]
    } elseif {![dict exists $one -html] && ![llength $files]} {
	# Nothing at all: an empty text.
	lappend made [::mime::initialize -canonical text/plain -string ""]
	lappend body [lindex $made end]
    }
    if {[dict exists $one -html]} {
	lappend made [::mime::initialize -canonical text/html \
		-string [dict get $one -html]]
	lappend body [lindex $made end]
    }
    if {[llength $body] == 2} {
	lappend made [::mime::initialize -canonical multipart/alternative \
		-parts $body]
	set body [list [lindex $made end]]
    }
    if {![llength $files]} {
	return [lindex $body 0]
    }
    set parts $body
    foreach path $files {
	lappend made [::mime::initialize -canonical [AttachmentType $path] \
		-file $path \
		-header [list Content-Disposition \
		    [AttachmentDisposition $path]]]
	lappend parts [lindex $made end]
    }
    lappend made [::mime::initialize -canonical multipart/mixed \
	    -parts $parts]
    return [lindex $made end]
}
