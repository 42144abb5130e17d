/*
 * smtpConn.c --
 *
 *	The transport: a non-blocking Tcl socket channel, connected
 *	asynchronously, whose readiness is reported to the protocol core
 *	through callbacks from Tcl's event loop. Nothing here blocks, so the
 *	caller's event loop (timers, file events, other servers) keeps running
 *	while a message is sent.
 *
 *	The bytes go past the channel's buffers, with Tcl_ReadRaw and
 *	Tcl_WriteRaw, and what the socket cannot take yet waits here (c->net).
 *	Tcl_Read, Tcl_Write and Tcl_Flush each end by renewing the socket's
 *	file handler, as does every change of a channel handler: Tcl 9's epoll
 *	notifier does that with two system calls (fstat, epoll_ctl), where Tcl
 *	8.6's select notifier changes a mask in memory. So the channel handler
 *	changes only when the events wanted change, and not at all while a
 *	synchronous send polls the socket itself (SmtpConnSetDirect): a short
 *	message had cost eighteen such calls more under Tcl 9 (bench/RESULTS.md).
 */

#include "smtpInt.h"
#include <errno.h>
#include <stdio.h>

struct SmtpConn {
    Tcl_Channel chan;
    const SmtpConnEvents *ev;
    void *cd;
    int connecting;		/* Async connect not yet completed. */
    int checking;		/* ConnectDone is asking Tcl for -error. */
    int mask;			/* Events wanted from the socket. */
    int tclMask;		/* Events the channel handler watches. */
    int direct;			/* A synchronous wait polls the socket
				 * itself (SmtpConnPollDirect): the channel
				 * handler is brought up to date only when
				 * the event loop is to run. */
    int wantWrite;		/* Core asked to hear when writable (once
				 * c->net has drained). */
    int dead;			/* Closed; no more callbacks. */
    Tcl_TimerToken timer;
    SmtpTls *tls;		/* TLS filter, once started. */
    int handshaking;		/* TLS handshake under way. */
    SmtpBuf net;		/* Bytes written (commands, message data,
				 * or the TLS filter's ciphertext) that the
				 * socket has not taken yet (SendNet). */
    SmtpBuf plain;		/* Plaintext decrypted from the server. */
    char err[200];
};

static void	ChannelProc(void *cd, int mask);
static void	TimerProc(void *cd);
static void	FeedTls(SmtpConn *c, const unsigned char *p, size_t n);
static void	SendNet(SmtpConn *c);

/*
 * The most handed to the socket in one call (Tcl_WriteRaw takes an int
 * in Tcl 8.6).
 */

#define MAX_WRITE	(1 << 24)

/*
 * Gives Tcl's channel handler the events wanted (none: no handler).
 * Tcl_CreateChannelHandler replaces the mask of the handler it already
 * has.
 */

static void
Register(
    SmtpConn *c)
{
    if (c->tclMask == c->mask) {
	return;
    }
    c->tclMask = c->mask;
    if (c->mask) {
	Tcl_CreateChannelHandler(c->chan, c->mask, ChannelProc, c);
    } else {
	Tcl_DeleteChannelHandler(c->chan, ChannelProc, c);
    }
}

/*
 * Wants the events in 'mask'. While a synchronous wait polls the socket
 * itself, Tcl hears of it only before the event loop runs
 * (SmtpConnSetDirect): with Tcl 9's epoll notifier each change of a
 * file handler costs two system calls, and a short message sent to a
 * quick server then needs none.
 */

static void
SetMask(
    SmtpConn *c,
    int mask)
{
    c->mask = mask;
    if (!c->direct || mask == 0) {
	Register(c);
    }
}

/*
 * Once connected: readable always, writable while output waits here or
 * the core wants to hear that it may write.
 */

static void
UpdateMask(
    SmtpConn *c)
{
    if (c->dead || c->connecting) {
	return;
    }
    SetMask(c, TCL_READABLE | ((c->wantWrite || SmtpBufAvail(&c->net) > 0)
	    ? TCL_WRITABLE : 0));
}

/*
 * Starts connecting to host:port. Returns the connection, or NULL with the
 * reason in the interpreter's result. The 'connected' callback follows from
 * the event loop, or 'closed' when the connection fails. 'direct' as for
 * SmtpConnSetDirect.
 */

SmtpConn *
SmtpConnOpen(
    Tcl_Interp *interp,
    const char *host,
    int port,
    const SmtpConnEvents *ev,
    void *cd,
    int direct)
{
    SmtpConn *c;
    Tcl_Channel chan = SmtpPlatformConnectNumeric(host, port);

    if (chan == NULL) {
	chan = Tcl_OpenTcpClient(interp, port, host, NULL, 0, 1);
    }
    if (chan == NULL) {
	return NULL;
    }
    if (Tcl_SetChannelOption(interp, chan, "-blocking", "0") != TCL_OK
	    || Tcl_SetChannelOption(interp, chan, "-translation", "binary")
		!= TCL_OK
	    || Tcl_SetChannelOption(interp, chan, "-buffering", "full")
		!= TCL_OK
	    || Tcl_SetChannelOption(interp, chan, "-buffersize", "65536")
		!= TCL_OK) {
	Tcl_Close(NULL, chan);
	return NULL;
    }
    c = (SmtpConn *) ckalloc(sizeof(SmtpConn));
    memset(c, 0, sizeof(SmtpConn));
    c->chan = chan;
    c->ev = ev;
    c->cd = cd;
    c->connecting = 1;
    c->direct = direct;
    SetMask(c, TCL_WRITABLE);
    return c;
}

/*
 * Called when the async connect has finished, one way or the other.
 */

static void
ConnectDone(
    SmtpConn *c)
{
    Tcl_DString ds;
    const char *err;

    /*
     * Tcl 9 finishes the connect inside this query and notifies the
     * channel from there: ChannelProc ignores that nested call, or the
     * core would hear of the connection twice (and owe two greetings).
     */
    Tcl_DStringInit(&ds);
    c->checking = 1;
    if (Tcl_GetChannelOption(NULL, c->chan, "-error", &ds) != TCL_OK) {
	Tcl_DStringSetLength(&ds, 0);
    }
    c->checking = 0;
    err = Tcl_DStringValue(&ds);
    if (*err) {
	snprintf(c->err, sizeof(c->err), "couldn't open socket: %s", err);
	Tcl_DStringFree(&ds);
	c->dead = 1;
	SetMask(c, 0);
	c->ev->closed(c->cd, c->err);
	return;
    }
    Tcl_DStringFree(&ds);
    c->connecting = 0;
    SmtpPlatformNoDelay(c->chan);
    UpdateMask(c);
    c->ev->connected(c->cd);
}

/*
 * Reads what the socket has and hands it to the core.
 */

static void
ReadSome(
    SmtpConn *c)
{
    char buf[65536];
    Tcl_Size n = Tcl_ReadRaw(c->chan, buf, sizeof(buf));

    if (n > 0 && c->tls) {
	FeedTls(c, (const unsigned char *) buf, (size_t) n);
	return;
    }
    if (n > 0) {
	c->ev->readable(c->cd, (const unsigned char *) buf, (size_t) n);
	return;
    }
    if (n < 0 && Tcl_GetErrno() == EAGAIN) {
	return;
    }
    if (n < 0) {
	snprintf(c->err, sizeof(c->err), "error reading from server: %s",
		Tcl_ErrnoMsg(Tcl_GetErrno()));
    } else if (Tcl_Eof(c->chan)) {
	snprintf(c->err, sizeof(c->err), "premature end-of-file from server");
    } else {
	return;
    }
    c->dead = 1;
    SetMask(c, 0);
    if (c->handshaking) {
	c->handshaking = 0;
	c->ev->tlsDone(c->cd, Tcl_ObjPrintf("TLS handshake failed: %s",
		c->err));
	return;
    }
    c->ev->closed(c->cd, c->err);
}

/*
 * Hands what waits in c->net to the socket, as much as it takes now. A
 * failure is kept in c->err (and what waits is dropped): the next
 * SmtpConnFlush reports it, or the read that finds the connection gone.
 */

static int
WouldBlock(
    int e)
{
#ifdef EWOULDBLOCK
    if (e == EWOULDBLOCK) {
	return 1;		/* Tcl's Windows sockets say this. */
    }
#endif
    return e == EAGAIN;
}

static void
SendNet(
    SmtpConn *c)
{
    while (SmtpBufAvail(&c->net) > 0) {
	size_t n = SmtpBufAvail(&c->net);
	Tcl_Size w;

	if (c->err[0]) {
	    c->net.pos = c->net.len = 0;
	    return;
	}
	if (n > MAX_WRITE) {
	    n = MAX_WRITE;
	}
	w = Tcl_WriteRaw(c->chan, (const char *) SmtpBufPtr(&c->net),
		(Tcl_Size) n);
	if (w < 0) {
	    int e = Tcl_GetErrno();

	    if (e == EINTR) {
		continue;
	    }
	    if (WouldBlock(e)) {
		return;
	    }
	    snprintf(c->err, sizeof(c->err), "error writing to server: %s",
		    Tcl_ErrnoMsg(e));
	    c->net.pos = c->net.len = 0;
	    return;
	}
	SmtpBufConsume(&c->net, (size_t) w);
	if ((size_t) w < n) {
	    return;			/* The socket is full. */
	}
    }
}

/*
 * Ciphertext from the server: on through the TLS filter, and the
 * plaintext on to the core. The end of the handshake is reported first,
 * then any plaintext that came with it.
 */

static void
FeedTls(
    SmtpConn *c,
    const unsigned char *p,
    size_t n)
{
    Tcl_Obj *err = NULL;
    int st;

    c->plain.pos = c->plain.len = 0;
    st = SmtpTlsFeed(c->tls, p, n, c->handshaking ? NULL : &c->plain,
	    &c->net, &err);
    SendNet(c);
    if (st < 0) {
	Tcl_IncrRefCount(err);
	if (!c->handshaking && SmtpBufAvail(&c->plain) > 0) {
	    /*
	     * The server's last replies came in the same read as its
	     * close_notify (a QUIT sent behind the message is answered and
	     * the connection closed at once): they count first.
	     */

	    c->ev->readable(c->cd, SmtpBufPtr(&c->plain),
		    SmtpBufAvail(&c->plain));
	    if (c->dead) {
		Tcl_DecrRefCount(err);
		return;
	    }
	}
	c->dead = 1;
	SetMask(c, 0);
	if (c->handshaking) {
	    c->handshaking = 0;
	    c->ev->tlsDone(c->cd, err);
	} else {
	    snprintf(c->err, sizeof(c->err), "%s", Tcl_GetString(err));
	    c->ev->closed(c->cd, c->err);
	}
	Tcl_DecrRefCount(err);
	return;
    }
    UpdateMask(c);
    if (c->handshaking) {
	if (st == 0) {
	    return;
	}
	c->handshaking = 0;
	c->ev->tlsDone(c->cd, NULL);
	if (c->dead) {
	    return;
	}
	/* Application data may have come with the end of the handshake. */
	c->plain.pos = c->plain.len = 0;
	st = SmtpTlsFeed(c->tls, NULL, 0, &c->plain, &c->net, &err);
	SendNet(c);
	UpdateMask(c);
	if (st < 0) {
	    c->dead = 1;
	    SetMask(c, 0);
	    Tcl_IncrRefCount(err);
	    snprintf(c->err, sizeof(c->err), "%s", Tcl_GetString(err));
	    Tcl_DecrRefCount(err);
	    c->ev->closed(c->cd, c->err);
	    return;
	}
    }
    if (SmtpBufAvail(&c->plain) > 0) {
	c->ev->readable(c->cd, SmtpBufPtr(&c->plain),
		SmtpBufAvail(&c->plain));
    }
}

/*
 * Starts TLS on the connection (after the server's 220 to STARTTLS, or at
 * once for implicit TLS). The 'tlsDone' callback follows. Returns TCL_OK,
 * or TCL_ERROR with *errPtr set when TLS cannot even be set up.
 */

int
SmtpConnStartTls(
    SmtpConn *c,
    struct ssl_ctx_st *ctx,
    const char *host,
    int verify,
    Tcl_Obj **errPtr)
{
    c->tls = SmtpTlsNew(ctx, host, verify, &c->net, errPtr);
    if (c->tls == NULL) {
	return TCL_ERROR;
    }
    c->handshaking = 1;
    SendNet(c);
    if (c->err[0]) {
	*errPtr = Tcl_NewStringObj(c->err, -1);
	return TCL_ERROR;
    }
    UpdateMask(c);
    return TCL_OK;
}

/*
 * Protocol and cipher of the TLS session, or NULL without TLS.
 */

Tcl_Obj *
SmtpConnTlsInfo(
    SmtpConn *c)
{
    return c->tls ? SmtpTlsDescribe(c->tls) : NULL;
}

/*
 * The socket is writable: what waits goes on, and once nothing waits the
 * core hears of it if it asked (the flow control of the body writer: it
 * is called when all it wrote has gone, as Tcl calls a channel handler
 * once the channel's own buffers have drained).
 */

static void
WriteSome(
    SmtpConn *c)
{
    if (SmtpBufAvail(&c->net) > 0) {
	SendNet(c);
	if (SmtpBufAvail(&c->net) > 0) {
	    return;
	}
    }
    if (c->wantWrite) {
	c->ev->writable(c->cd);
    } else {
	UpdateMask(c);
    }
}

/*
 * The events that have come, from the channel handler or from
 * SmtpConnPollDirect. Each callback into the core may close the
 * connection, so nothing of 'c' is touched after one unless it is still
 * alive (the core defers freeing through Tcl_EventuallyFree).
 */

static void
HandleEvents(
    SmtpConn *c,
    int mask)
{
    Tcl_Preserve(c);
    if (c->connecting) {
	if (mask & TCL_WRITABLE) {
	    ConnectDone(c);
	}
    } else {
	if ((mask & TCL_READABLE) && !c->dead) {
	    ReadSome(c);
	}
	if ((mask & TCL_WRITABLE) && !c->dead) {
	    WriteSome(c);
	}
    }
    Tcl_Release(c);
}

/*
 * The channel handler.
 */

static void
ChannelProc(
    void *cd,
    int mask)
{
    SmtpConn *c = (SmtpConn *) cd;

    if (c->checking) {
	return;
    }

    /*
     * The handler may be out of date when a script called back during a
     * synchronous send turns the event loop: bring it up to date, and
     * take only what is wanted.
     */

    Register(c);
    mask &= c->mask;
    if (mask) {
	HandleEvents(c, mask);
    }
}

/*
 * For a caller that waits for the session to finish (a synchronous send):
 * waits up to 'usec' microseconds directly on the socket for a reply and,
 * when one is there, runs the handler at once. On loopback and fast
 * networks most replies arrive within that time, and each wait then
 * costs one system call instead of a round trip through Tcl 8.6's
 * notifier thread. Returns 1 when the handler ran, 0 when the caller
 * should wait in the event loop: nothing there yet, nothing watched,
 * output waiting for the socket, or the body being
 * written (a socket that is writable again takes only part of a block,
 * and flow control by a callback once all that was written has gone, as
 * WriteSome does, was measured faster: scenario 5 of bench/ took 3.5 s instead of 2).
 */

int
SmtpConnPollDirect(
    SmtpConn *c,
    long usec)
{
    int ready;

    if (c == NULL || c->dead || c->mask == 0 || c->wantWrite
	    || SmtpBufAvail(&c->net) > 0) {
	return 0;
    }
    ready = SmtpPlatformPoll(c->chan, c->mask, usec);
    if (ready == 0) {
	return 0;
    }
    HandleEvents(c, ready);
    return 1;
}

/*
 * On (1): a synchronous wait drives the connection with
 * SmtpConnPollDirect, and the channel handler may stay out of date. Off
 * (0): Tcl's event loop is to run, so the handler watches what is wanted
 * from now on.
 */

void
SmtpConnSetDirect(
    SmtpConn *c,
    int on)
{
    if (c == NULL) {
	return;
    }
    c->direct = on;
    if (!on && !c->dead) {
	Register(c);
    }
}

static void
TimerProc(
    void *cd)
{
    SmtpConn *c = (SmtpConn *) cd;

    c->timer = NULL;
    if (!c->dead) {
	Tcl_Preserve(c);
	c->ev->timeout(c->cd);
	Tcl_Release(c);
    }
}

/*
 * Queues bytes for the server. Small ones (commands) wait in c->net for
 * the next SmtpConnFlush, so a batch of commands goes out in one system
 * call; large ones (message data) go to the socket at once, and what it
 * does not take waits. Under TLS everything is encrypted into c->net and
 * leaves with the flush.
 */

#define SMALL_WRITE	4096

void
SmtpConnWrite(
    SmtpConn *c,
    const void *p,
    size_t n)
{
    if (c->dead || n == 0) {
	return;
    }
    if (c->tls) {
	Tcl_Obj *err = NULL;

	if (SmtpTlsWrite(c->tls, p, n, &c->net, &err) != 0) {
	    Tcl_IncrRefCount(err);
	    snprintf(c->err, sizeof(c->err), "%s", Tcl_GetString(err));
	    Tcl_DecrRefCount(err);
	}
	return;
    }
    if (n >= SMALL_WRITE && SmtpBufAvail(&c->net) > 0) {
	SendNet(c);
    }
    if (n < SMALL_WRITE || SmtpBufAvail(&c->net) > 0 || c->err[0]) {
	if (!c->err[0]) {
	    SmtpBufAppend(&c->net, p, n);
	}
	return;
    }
    while (n > 0) {
	size_t chunk = n > MAX_WRITE ? MAX_WRITE : n;
	Tcl_Size w = Tcl_WriteRaw(c->chan, (const char *) p,
		(Tcl_Size) chunk);

	if (w < 0) {
	    int e = Tcl_GetErrno();

	    if (e == EINTR) {
		continue;
	    }
	    if (!WouldBlock(e)) {
		snprintf(c->err, sizeof(c->err),
			"error writing to server: %s", Tcl_ErrnoMsg(e));
		return;
	    }
	    w = 0;
	}
	p = (const char *) p + w;
	n -= (size_t) w;
	if ((size_t) w < chunk) {
	    break;			/* The socket is full. */
	}
    }
    SmtpBufAppend(&c->net, p, n);
}

/*
 * Sends what is queued; what the socket cannot take now goes out in the
 * background. Returns TCL_ERROR (with SmtpConnError set) when the
 * connection has failed.
 */

int
SmtpConnFlush(
    SmtpConn *c)
{
    if (c->dead) {
	return TCL_ERROR;
    }
    SendNet(c);
    if (c->err[0]) {
	return TCL_ERROR;
    }
    UpdateMask(c);
    return TCL_OK;
}

/*
 * Bytes written but not yet taken by the socket.
 */

Tcl_Size
SmtpConnPending(
    SmtpConn *c)
{
    return c->dead ? 0 : (Tcl_Size) SmtpBufAvail(&c->net);
}

/*
 * Asks for the 'writable' callback (WriteSome: once all that was written
 * has gone, which is the flow control the body writer needs).
 */

void
SmtpConnWantWritable(
    SmtpConn *c,
    int on)
{
    c->wantWrite = on;
    UpdateMask(c);
}

/*
 * Arms the timeout: 'timeout' is called after secs seconds unless this is
 * called again first. A negative value disarms it.
 */

void
SmtpConnSetTimeout(
    SmtpConn *c,
    int secs)
{
    if (c->timer) {
	Tcl_DeleteTimerHandler(c->timer);
	c->timer = NULL;
    }
    if (secs >= 0 && !c->dead) {
	c->timer = Tcl_CreateTimerHandler(secs * 1000, TimerProc, c);
    }
}

const char *
SmtpConnError(
    SmtpConn *c)
{
    return c->err[0] ? c->err : "connection closed";
}

/*
 * Closes the socket (queued output still drains in the background) and
 * frees the connection once no callback is using it.
 */

void
SmtpConnClose(
    SmtpConn *c)
{
    if (c == NULL) {
	return;
    }
    SetMask(c, 0);
    if (c->timer) {
	Tcl_DeleteTimerHandler(c->timer);
	c->timer = NULL;
    }
    if (c->tls) {
	if (!c->dead && !c->handshaking) {
	    SmtpTlsShutdown(c->tls, &c->net);
	}
	SmtpTlsFree(c->tls);
	c->tls = NULL;
    }
    if (!c->dead) {
	/*
	 * What is still queued (commands not flushed, TLS's close_notify,
	 * the rest of a write the socket could not take): what the socket
	 * does not take now goes to the channel's buffer, which Tcl_Close
	 * drains in the background.
	 */

	SendNet(c);
	if (SmtpBufAvail(&c->net) > 0 && !c->err[0]) {
	    Tcl_Write(c->chan, (const char *) SmtpBufPtr(&c->net),
		    (Tcl_Size) SmtpBufAvail(&c->net));
	}
    }
    SmtpBufFree(&c->net);
    SmtpBufFree(&c->plain);
    c->dead = 1;
    SmtpPlatformClose(c->chan);
    Tcl_EventuallyFree(c, TCL_DYNAMIC);
}

/*
 * Tells whether the server's address is a loopback one (127.0.0.0/8 or
 * ::1, also as an IPv4-mapped address).
 */

int
SmtpConnPeerIsLoopback(
    SmtpConn *c)
{
    Tcl_DString ds;
    Tcl_Size argc;
    int loop = 0;
    const char **argv;

    Tcl_DStringInit(&ds);
    if (!c->dead && Tcl_GetChannelOption(NULL, c->chan, "-peername", &ds)
	    == TCL_OK && Tcl_SplitList(NULL, Tcl_DStringValue(&ds), &argc,
		&argv) == TCL_OK) {
	if (argc > 0) {
	    const char *ip = argv[0];

	    loop = strncmp(ip, "127.", 4) == 0 || strcmp(ip, "::1") == 0
		    || strncmp(ip, "::ffff:127.", 11) == 0;
	}
	Tcl_Free((char *) argv);
    }
    Tcl_DStringFree(&ds);
    return loop;
}
