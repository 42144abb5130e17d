/*
 * smtpUnix.c --
 *
 *	Unix specifics: socket options Tcl does not expose.
 */

#include "smtpInt.h"
#include <stdint.h>
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
