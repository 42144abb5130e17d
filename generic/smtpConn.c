/*
 * smtpConn.c --
 *
 *	The transport: a non-blocking Tcl socket channel, connected
 *	asynchronously, whose readiness is reported to the protocol core
 *	through callbacks from Tcl's event loop. Nothing here blocks, so the
 *	caller's event loop (timers, file events, other servers) keeps running
 *	while a message is sent.
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
    int mask;			/* Events the channel handler watches. */
    int wantWrite;		/* Core asked to hear when writable. */
    int dead;			/* Closed; no more callbacks. */
    Tcl_TimerToken timer;
    SmtpTls *tls;		/* TLS filter, once started. */
    int handshaking;		/* TLS handshake under way. */
    SmtpBuf net;		/* Ciphertext, or small plaintext writes,
				 * on their way out (SendNet). */
    SmtpBuf plain;		/* Plaintext decrypted from the server. */
    char err[200];
};

static void	ChannelProc(void *cd, int mask);
static void	TimerProc(void *cd);
static void	FeedTls(SmtpConn *c, const unsigned char *p, size_t n);

static void
SetMask(
    SmtpConn *c,
    int mask)
{
    if (mask == c->mask) {
	return;
    }
    if (c->mask) {
	Tcl_DeleteChannelHandler(c->chan, ChannelProc, c);
    }
    c->mask = mask;
    if (mask) {
	Tcl_CreateChannelHandler(c->chan, mask, ChannelProc, c);
    }
}

/*
 * Starts connecting to host:port. Returns the connection, or NULL with the
 * reason in the interpreter's result. The 'connected' callback follows from
 * the event loop, or 'closed' when the connection fails.
 */

SmtpConn *
SmtpConnOpen(
    Tcl_Interp *interp,
    const char *host,
    int port,
    const SmtpConnEvents *ev,
    void *cd)
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
    SetMask(c, TCL_READABLE | (c->wantWrite ? TCL_WRITABLE : 0));
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
    Tcl_Size n = Tcl_Read(c->chan, buf, sizeof(buf));

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
 * Hands what is queued in c->net (the TLS filter's ciphertext, or small
 * plaintext writes) to Tcl.
 */

static void
SendNet(
    SmtpConn *c)
{
    if (SmtpBufAvail(&c->net) > 0) {
	if (Tcl_Write(c->chan, (const char *) SmtpBufPtr(&c->net),
		(Tcl_Size) SmtpBufAvail(&c->net)) < 0) {
	    snprintf(c->err, sizeof(c->err), "error writing to server: %s",
		    Tcl_ErrnoMsg(Tcl_GetErrno()));
	}
	c->net.pos = c->net.len = 0;
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
    if (Tcl_Flush(c->chan) != TCL_OK && !c->err[0]) {
	snprintf(c->err, sizeof(c->err), "error writing to server: %s",
		Tcl_ErrnoMsg(Tcl_GetErrno()));
    }
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
    if (Tcl_Flush(c->chan) != TCL_OK) {
	*errPtr = Tcl_ObjPrintf("error writing to server: %s",
		Tcl_ErrnoMsg(Tcl_GetErrno()));
	return TCL_ERROR;
    }
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
 * The channel handler. Each callback into the core may close the
 * connection, so nothing of 'c' is touched after one unless it is still
 * alive (the core defers freeing through Tcl_EventuallyFree).
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
    Tcl_Preserve(c);
    if (c->connecting) {
	if (mask & TCL_WRITABLE) {
	    ConnectDone(c);
	}
    } else {
	if ((mask & TCL_READABLE) && !c->dead) {
	    ReadSome(c);
	}
	if ((mask & TCL_WRITABLE) && !c->dead && c->wantWrite) {
	    c->ev->writable(c->cd);
	}
    }
    Tcl_Release(c);
}

/*
 * For a caller that waits for the session to finish (a synchronous send):
 * waits up to 'usec' microseconds directly on the socket for a reply and,
 * when one is there, runs the handler at once. On loopback and fast
 * networks most replies arrive within that time, and each wait then
 * costs one system call instead of a round trip through Tcl 8.6's
 * notifier thread. Returns 1 when the handler ran, 0 when the caller
 * should wait in the event loop: nothing there yet, nothing watched, Tcl
 * holding output that only the event loop flushes, or the body being
 * written (a socket that is writable again takes only part of a block,
 * and Tcl's own flow control, a callback once its buffer has drained,
 * was measured faster: scenario 5 of bench/ took 3.5 s instead of 2).
 */

int
SmtpConnPollDirect(
    SmtpConn *c,
    long usec)
{
    int ready;

    if (c == NULL || c->dead || c->mask == 0 || c->wantWrite
	    || Tcl_OutputBuffered(c->chan) > 0 || SmtpBufAvail(&c->net) > 0) {
	return 0;
    }
    if ((c->mask & TCL_READABLE) && Tcl_InputBuffered(c->chan) > 0) {
	ready = TCL_READABLE;
    } else {
	ready = SmtpPlatformPoll(c->chan, c->mask, usec);
    }
    if (ready == 0) {
	return 0;
    }
    ChannelProc(c, ready);
    return 1;
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
 * Queues bytes for the server. They leave with the next SmtpConnFlush, so
 * a batch of commands goes out in one write. Small writes (commands) are
 * gathered here and given to Tcl in one Tcl_Write: with Tcl 9's epoll
 * notifier every Tcl_Write costs two system calls (Tcl updates the
 * socket's file handler), which made a short message 2.4 times slower
 * than under Tcl 8.6. Large ones (message data) go to Tcl as they are.
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
	    return;
	}
	SendNet(c);
	return;
    }
    if (n < SMALL_WRITE) {
	SmtpBufAppend(&c->net, p, n);
	return;
    }
    SendNet(c);
    if (Tcl_Write(c->chan, (const char *) p, (Tcl_Size) n) < 0) {
	snprintf(c->err, sizeof(c->err), "error writing to server: %s",
		Tcl_ErrnoMsg(Tcl_GetErrno()));
    }
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
    if (Tcl_Flush(c->chan) != TCL_OK) {
	snprintf(c->err, sizeof(c->err), "error writing to server: %s",
		Tcl_ErrnoMsg(Tcl_GetErrno()));
	return TCL_ERROR;
    }
    return TCL_OK;
}

/*
 * Bytes written but not yet handed to the operating system.
 */

Tcl_Size
SmtpConnPending(
    SmtpConn *c)
{
    return c->dead ? 0
	    : Tcl_OutputBuffered(c->chan) + (Tcl_Size) SmtpBufAvail(&c->net);
}

/*
 * Asks for the 'writable' callback (Tcl calls it only once its own output
 * buffer has drained, which is the flow control the body writer needs).
 */

void
SmtpConnWantWritable(
    SmtpConn *c,
    int on)
{
    c->wantWrite = on;
    if (!c->connecting && !c->dead) {
	SetMask(c, TCL_READABLE | (on ? TCL_WRITABLE : 0));
    }
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
	    SendNet(c);
	}
	SmtpTlsFree(c->tls);
	c->tls = NULL;
    } else if (!c->dead) {
	SendNet(c);		/* Commands queued and not flushed. */
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
