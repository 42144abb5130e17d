/*
 * smtpUnix.c --
 *
 *	Unix specifics: socket options Tcl does not expose.
 */

#include "smtpInt.h"
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

/*
 * Turns off Nagle's algorithm, so a small command written after a small
 * command is not held back waiting for the server's delayed ACK. Best
 * effort: a failure only costs speed.
 */

void
SmtpPlatformNoDelay(
    Tcl_Channel chan)
{
    void *handle;
    int on = 1;

    if (Tcl_GetChannelHandle(chan, TCL_READABLE, &handle) != TCL_OK) {
	return;
    }
    (void) setsockopt((int) (intptr_t) handle, IPPROTO_TCP, TCP_NODELAY,
	    (const void *) &on, sizeof(on));
}

/*
 * The Date header for now, as mime::parsedatetime -now proper writes it:
 * "Sun, 29 Nov 2026 10:00:00 +0000" in local time. Returns 1, or 0 when
 * the caller should ask mime instead.
 */

int
SmtpPlatformDate(
    char *buf,
    size_t size)
{
    static const char *const days[] = {
	"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"
    };
    static const char *const months[] = {
	"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
	"Oct", "Nov", "Dec"
    };
    time_t now = time(NULL);
    struct tm tm;
    long off, mins;

    if (localtime_r(&now, &tm) == NULL) {
	return 0;
    }
    off = tm.tm_gmtoff;
    mins = (off < 0 ? -off : off) / 60;
    snprintf(buf, size, "%s, %02d %s %04d %02d:%02d:%02d %c%02ld%02ld",
	    days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
	    tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec,
	    off < 0 ? '-' : '+', mins / 60, mins % 60);
    return 1;
}
