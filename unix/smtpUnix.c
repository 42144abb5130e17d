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
#include <arpa/inet.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/select.h>
#include <sys/time.h>
#include <errno.h>

/*
 * Closes a connection's socket channel (see win/smtpWin.c for why this is
 * a platform matter).
 */

void
SmtpPlatformClose(
    Tcl_Channel chan)
{
    Tcl_Close(NULL, chan);
}

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

/*
 * Waits at most 'usec' microseconds for the channel's socket to become
 * ready for the events in 'mask' (TCL_READABLE, TCL_WRITABLE), directly
 * with select() rather than through Tcl's notifier (select, not ppoll,
 * which not every Unix has). Returns the events that are ready (0 after
 * the time, or on any doubt: the caller then waits in the event loop as
 * usual).
 */

int
SmtpPlatformPoll(
    Tcl_Channel chan,
    int mask,
    long usec)
{
    void *handle;
    int fd, ready = 0;
    fd_set rd, wr;
    struct timeval tv;

    if (Tcl_GetChannelHandle(chan, (mask & TCL_READABLE) ? TCL_READABLE
	    : TCL_WRITABLE, &handle) != TCL_OK) {
	return 0;
    }
    fd = (int) (intptr_t) handle;
    if (fd < 0 || fd >= FD_SETSIZE) {
	return 0;
    }
    FD_ZERO(&rd);
    FD_ZERO(&wr);
    if (mask & TCL_READABLE) {
	FD_SET(fd, &rd);
    }
    if (mask & TCL_WRITABLE) {
	FD_SET(fd, &wr);
    }
    tv.tv_sec = usec / 1000000;
    tv.tv_usec = usec % 1000000;
    if (select(fd + 1, &rd, &wr, NULL, &tv) <= 0) {
	return 0;
    }
    if (FD_ISSET(fd, &rd)) {
	ready |= TCL_READABLE;
    }
    if (FD_ISSET(fd, &wr)) {
	ready |= TCL_WRITABLE;
    }
    return ready;
}

/*
 * Starts a non-blocking connect to a numeric IPv4 or IPv6 address and
 * makes a Tcl channel of the socket. Tcl_OpenTcpClient would pass even a
 * numeric address through getaddrinfo(), whose AI_ADDRCONFIG asks the
 * kernel for the machine's addresses (a netlink socket and a UDP socket
 * per connection). Returns NULL for a host name, or when anything fails
 * at once: the caller then uses Tcl_OpenTcpClient, which reports errors
 * as usual.
 */

Tcl_Channel
SmtpPlatformConnectNumeric(
    const char *host,
    int port)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int fd, flags;
    Tcl_Channel chan;

    memset(&ss, 0, sizeof(ss));
    if (port <= 0 || port > 65535) {
	return NULL;
    }
    if (inet_pton(AF_INET, host, &((struct sockaddr_in *) &ss)->sin_addr)
	    == 1) {
	struct sockaddr_in *sin = (struct sockaddr_in *) &ss;

	sin->sin_family = AF_INET;
	sin->sin_port = htons((unsigned short) port);
	len = sizeof(struct sockaddr_in);
    } else if (inet_pton(AF_INET6, host,
	    &((struct sockaddr_in6 *) &ss)->sin6_addr) == 1) {
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *) &ss;

	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons((unsigned short) port);
	len = sizeof(struct sockaddr_in6);
    } else {
	return NULL;
    }
#if defined(SOCK_NONBLOCK) && defined(SOCK_CLOEXEC)
    /* Non-blocking and close-on-exec at once (three system calls less). */
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 && errno != EINVAL && errno != EPROTONOSUPPORT) {
	return NULL;
    }
#else
    fd = -1;
#endif
    if (fd < 0) {
	fd = socket(ss.ss_family, SOCK_STREAM, 0);
	if (fd < 0) {
	    return NULL;
	}
	flags = fcntl(fd, F_GETFL);
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 || flags < 0
		|| fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
	    close(fd);
	    return NULL;
	}
    }
    if (connect(fd, (struct sockaddr *) &ss, len) < 0 && errno != EINPROGRESS) {
	close(fd);
	return NULL;
    }
    chan = Tcl_MakeTcpClientChannel((void *) (intptr_t) fd);
    if (chan == NULL) {
	close(fd);
	return NULL;
    }
    return chan;
}

/*
 * The system's trusted certificates: on Unix OpenSSL's default paths
 * (SSL_CTX_set_default_verify_paths, done by the caller) are them.
 * Returns the number of certificates added: none.
 */

int
SmtpPlatformSystemCAs(
    struct x509_store_st *store)
{
    (void) store;
    return 0;
}

/*
 * Test commands for platform code: none on Unix.
 */

void
SmtpPlatformTestInit(
    Tcl_Interp *interp)
{
    (void) interp;
}
