/*
 * smtpWin.c --
 *
 *	Windows specifics: socket options Tcl does not expose.
 */

#include "smtpInt.h"
#include <stdint.h>
#include <winsock2.h>

/*
 * Turns off Nagle's algorithm (see unix/smtpUnix.c). Best effort.
 */

void
SmtpPlatformNoDelay(
    Tcl_Channel chan)
{
    void *handle;
    BOOL on = TRUE;

    if (Tcl_GetChannelHandle(chan, TCL_READABLE, &handle) != TCL_OK) {
	return;
    }
    (void) setsockopt((SOCKET) (intptr_t) handle, IPPROTO_TCP, TCP_NODELAY,
	    (const char *) &on, sizeof(on));
}

/*
 * The Date header for now: left to mime::parsedatetime on Windows.
 */

int
SmtpPlatformDate(
    char *buf,
    size_t size)
{
    (void) buf;
    (void) size;
    return 0;
}

/*
 * No direct wait on Windows: the caller always waits in the event loop
 * (see unix/smtpUnix.c).
 */

int
SmtpPlatformPoll(
    Tcl_Channel chan,
    int mask,
    long usec)
{
    (void) chan;
    (void) mask;
    (void) usec;
    return 0;
}

/*
 * Numeric addresses go through Tcl_OpenTcpClient on Windows.
 */

Tcl_Channel
SmtpPlatformConnectNumeric(
    const char *host,
    int port)
{
    (void) host;
    (void) port;
    return NULL;
}
