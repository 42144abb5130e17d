/*
 * smtpProto.c --
 *
 *	The protocol core: one client session as an explicit state machine.
 *	The transport feeds it events (connected, bytes, writable, closed,
 *	timeout); each server reply advances the state by one switch. It
 *	tries the servers in turn until one greets and accepts EHLO or HELO,
 *	then runs one mail transaction per message and says QUIT.
 */

#include "smtpInt.h"
#include <stdio.h>

/*
 * tcllib's bounds, in seconds, on each wait; no wait exceeds 600.
 */

#define WAIT_GREETING	600
#define WAIT_EHLO	300
#define WAIT_MAIL	600
#define WAIT_RCPT	3600	/* Shown as asked; waited at most 600. */
#define WAIT_DATA	300
#define WAIT_RSET	300
#define WAIT_QUIT	120
#define WAIT_MAX	600
#define WAIT_BODY	600	/* Without progress while writing DATA. */

#define BODY_CHUNK	(256 * 1024)	/* Input bytes encoded per write. */

struct SmtpSession {
    Tcl_Interp *interp;
    SmtpOptions *opts;
    SmtpMessage *msgs;
    int nmsgs;
    int cur;			/* Message being sent. */

    SmtpConn *conn;
    SmtpReplyParser parser;
    SmtpState state;
    int serverIdx;		/* Next server to try. */
    Tcl_Size nservers;
    Tcl_Obj **servers;
    Tcl_Size nports;
    Tcl_Obj **ports;
    Tcl_Obj *host;		/* Server being tried. */
    int port;
    Tcl_Obj *tried;		/* Why each server tried failed. */
    Tcl_Obj *caps;		/* EHLO capability lines. */

    struct ssl_ctx_st *ctx;	/* TLS context, made when first needed. */
    int verify;			/* Verify the server (-require). */
    Tcl_Obj *servername;	/* -servername, or NULL for the host. */
    int tlsActive;		/* This connection is encrypted. */
    int clearOnly;		/* Policy said insecure after a failed
				 * handshake: reconnect without TLS. */

    int rcptIdx;		/* Next recipient of the transaction. */
    Tcl_Size nrcpts;
    int good, bad;
    Tcl_Obj *refused;		/* Result: refused recipients. */
    Tcl_Obj *txRefused;		/* Refused in this transaction. */

    int bodyDone;		/* The source has given its last byte. */
    SmtpDataEnc enc;
    SmtpBuf raw;		/* Message bytes from the source. */
    SmtpBuf out;		/* The same, encoded for DATA. */

    int finished;
    int code;			/* TCL_OK or TCL_ERROR when finished. */
    Tcl_Obj *errMsg;
    Tcl_Obj *errCode;
};

static void	OnConnected(void *cd);
static void	OnBytes(void *cd, const unsigned char *p, size_t n);
static void	OnWritable(void *cd);
static void	OnClosed(void *cd, const char *why);
static void	OnTimeout(void *cd);
static void	OnTlsDone(void *cd, Tcl_Obj *err);

static const SmtpConnEvents sessionEvents = {
    OnConnected, OnBytes, OnWritable, OnClosed, OnTimeout, OnTlsDone
};

static void	TryNextServer(SmtpSession *s);
static void	StartTransaction(SmtpSession *s);
static void	StartTls(SmtpSession *s);
static void	TlsRefused(SmtpSession *s, int code, Tcl_Obj *text,
		    Tcl_Obj *why, int handshake);
static void	AfterHello(SmtpSession *s);

/*
 * Writes a line of the dialogue to stderr when -debug is on.
 */

static void
Debug(
    SmtpSession *s,
    Tcl_Obj *line)
{
    Tcl_Channel err;

    Tcl_IncrRefCount(line);
    if (s->opts->debug
	    && (err = Tcl_GetStdChannel(TCL_STDERR)) != NULL) {
	Tcl_WriteObj(err, line);
	Tcl_WriteChars(err, "\n", 1);
	Tcl_Flush(err);
    }
    Tcl_DecrRefCount(line);
}

SmtpSession *
SmtpSessionNew(
    Tcl_Interp *interp,
    SmtpOptions *opts,
    SmtpMessage *msgs,
    int nmsgs)
{
    SmtpSession *s = (SmtpSession *) ckalloc(sizeof(SmtpSession));

    memset(s, 0, sizeof(SmtpSession));
    s->interp = interp;
    s->opts = opts;
    s->msgs = msgs;
    s->nmsgs = nmsgs;
    s->state = ST_IDLE;
    SmtpReplyParserInit(&s->parser);
    SmtpBufInit(&s->raw);
    SmtpBufInit(&s->out);
    s->tried = Tcl_NewListObj(0, NULL);
    Tcl_IncrRefCount(s->tried);
    s->refused = Tcl_NewListObj(0, NULL);
    Tcl_IncrRefCount(s->refused);
    if (Tcl_ListObjGetElements(NULL, opts->servers, &s->nservers,
	    &s->servers) != TCL_OK) {
	s->nservers = 0;
    }
    if (Tcl_ListObjGetElements(NULL, opts->ports, &s->nports, &s->ports)
	    != TCL_OK) {
	s->nports = 0;
    }
    return s;
}

static void
SetObj(
    Tcl_Obj **slot,
    Tcl_Obj *value)
{
    if (value) {
	Tcl_IncrRefCount(value);
    }
    if (*slot) {
	Tcl_DecrRefCount(*slot);
    }
    *slot = value;
}

static void
CloseConn(
    SmtpSession *s)
{
    if (s->conn) {
	SmtpConnClose(s->conn);
	s->conn = NULL;
    }
    SmtpReplyParserFree(&s->parser);
    SmtpReplyParserInit(&s->parser);
}

void
SmtpSessionFree(
    SmtpSession *s)
{
    CloseConn(s);
    SmtpReplyParserFree(&s->parser);
    SmtpBufFree(&s->raw);
    SmtpBufFree(&s->out);
    SetObj(&s->tried, NULL);
    SetObj(&s->refused, NULL);
    SetObj(&s->txRefused, NULL);
    SetObj(&s->caps, NULL);
    SetObj(&s->host, NULL);
    SetObj(&s->errMsg, NULL);
    SetObj(&s->errCode, NULL);
    SmtpTlsContextFree(s->ctx);
    ckfree(s);
}

/*
 * Ends the session with success.
 */

static void
Finish(
    SmtpSession *s)
{
    CloseConn(s);
    s->state = ST_DONE;
    s->code = TCL_OK;
    s->finished = 1;
}

/*
 * tcllib's abort: reset and quit without waiting for replies, then close.
 */

static void
Abort(
    SmtpSession *s)
{
    if (s->conn) {
	if (s->opts->debug) {
	    Debug(s, Tcl_NewStringObj("--> RSET (wait upto 0 seconds)", -1));
	    Debug(s, Tcl_NewStringObj("--> QUIT (wait upto 0 seconds)", -1));
	}
	SmtpConnWrite(s->conn, "RSET\r\nQUIT\r\n", 12);
	SmtpConnFlush(s->conn);
    }
    CloseConn(s);
}

/*
 * The blind-copy transaction failed after the main message was delivered.
 * An error would make the caller send the main message again, so its
 * recipients are reported as refused, with the reply (or the pseudo-code
 * 400 and what happened), and the session ends.
 */

static void
BccFailed(
    SmtpSession *s,
    int code,
    Tcl_Obj *text)
{
    Tcl_Size n, i, nr, j;
    Tcl_Obj **rcpts, **already;

    Tcl_IncrRefCount(text);
    Tcl_ListObjAppendList(NULL, s->refused, s->txRefused);
    Tcl_ListObjGetElements(NULL, s->txRefused, &nr, &already);
    Tcl_ListObjGetElements(NULL, s->msgs[s->cur].recipients, &n, &rcpts);
    for (i = 0; i < n; i++) {
	Tcl_Obj *entry, *addr;

	for (j = 0; j < nr; j++) {
	    Tcl_ListObjIndex(NULL, already[j], 0, &addr);
	    if (strcmp(Tcl_GetString(addr), Tcl_GetString(rcpts[i])) == 0) {
		break;
	    }
	}
	if (j < nr) {
	    continue;		/* Refused individually already. */
	}
	entry = Tcl_NewListObj(0, NULL);
	Tcl_ListObjAppendElement(NULL, entry, rcpts[i]);
	Tcl_ListObjAppendElement(NULL, entry, Tcl_NewIntObj(code));
	Tcl_ListObjAppendElement(NULL, entry, text);
	Tcl_ListObjAppendElement(NULL, s->refused, entry);
    }
    Tcl_DecrRefCount(text);
    SetObj(&s->txRefused, NULL);
    Abort(s);
    s->state = ST_DONE;
    s->code = TCL_OK;
    s->finished = 1;
}

/*
 * Ends the session with an error. 'stage' names the step; the reply, if
 * any, gives the code, enhanced code and text.
 */

static void
FailReply(
    SmtpSession *s,
    const char *stage,
    const SmtpReply *r)
{
    Tcl_Obj *ec;

    if (s->cur > 0) {
	BccFailed(s, r->code, SmtpReplyDiagnostic(r));
	return;
    }
    ec = Tcl_NewListObj(0, NULL);

    Tcl_ListObjAppendElement(NULL, ec, Tcl_NewStringObj("SMTP", -1));
    Tcl_ListObjAppendElement(NULL, ec, Tcl_NewStringObj(stage, -1));
    Tcl_ListObjAppendElement(NULL, ec, Tcl_NewIntObj(r->code));
    Tcl_ListObjAppendElement(NULL, ec, Tcl_NewStringObj(r->enhanced, -1));
    Tcl_ListObjAppendElement(NULL, ec, SmtpReplyDiagnostic(r));
    SetObj(&s->errCode, ec);
    SetObj(&s->errMsg, Tcl_ObjPrintf("%d: %s", r->code,
	    Tcl_GetString(SmtpReplyDiagnostic(r))));
    Abort(s);
    s->state = ST_DONE;
    s->code = TCL_ERROR;
    s->finished = 1;
}

/*
 * Ends the session with an error that has no server reply. For a lost
 * connection or a timeout the message keeps tcllib's form, where such
 * failures carry the pseudo-code 400; other local failures (TLS set-up,
 * a message that cannot be read) say just what happened.
 */

static void
FailLocal(
    SmtpSession *s,
    const char *stage,
    const char *text)
{
    Tcl_Obj *ec;
    int pseudo = strcmp(stage, "EOF") == 0 || strcmp(stage, "TIMEOUT") == 0;

    if (s->cur > 0 && pseudo) {
	if (strcmp(stage, "EOF") == 0) {
	    CloseConn(s);
	}
	BccFailed(s, 400, Tcl_NewStringObj(text, -1));
	return;
    }
    ec = Tcl_NewListObj(0, NULL);

    Tcl_ListObjAppendElement(NULL, ec, Tcl_NewStringObj("SMTP", -1));
    Tcl_ListObjAppendElement(NULL, ec, Tcl_NewStringObj(stage, -1));
    Tcl_ListObjAppendElement(NULL, ec, Tcl_NewObj());
    Tcl_ListObjAppendElement(NULL, ec, Tcl_NewObj());
    Tcl_ListObjAppendElement(NULL, ec, Tcl_NewStringObj(text, -1));
    SetObj(&s->errCode, ec);
    SetObj(&s->errMsg, pseudo ? Tcl_ObjPrintf("400: %s", text)
	    : Tcl_NewStringObj(text, -1));
    if (strcmp(stage, "TIMEOUT") == 0) {
	Abort(s);		/* As tcllib, which still says goodbye. */
    } else {
	CloseConn(s);
    }
    s->state = ST_DONE;
    s->code = TCL_ERROR;
    s->finished = 1;
}

/*
 * Sends one command and arms the wait for its reply.
 */

static void
Send(
    SmtpSession *s,
    SmtpState next,
    int secs,
    const char *cmd,
    Tcl_Size len)
{
    if (len < 0) {
	len = (Tcl_Size) strlen(cmd);
    }
    if (secs > WAIT_MAX) {
	secs = WAIT_MAX;
    }
    if (s->opts->debug) {
	Debug(s, Tcl_ObjPrintf("--> %.*s (wait upto %d seconds)", (int) len,
		cmd, secs));
    }
    s->state = next;
    SmtpConnWrite(s->conn, cmd, (size_t) len);
    SmtpConnWrite(s->conn, "\r\n", 2);
    SmtpConnSetTimeout(s->conn, secs);
    if (SmtpConnFlush(s->conn) != TCL_OK) {
	OnClosed(s, SmtpConnError(s->conn));
    }
}

static void
SendObj(
    SmtpSession *s,
    SmtpState next,
    int secs,
    Tcl_Obj *cmd)
{
    Tcl_Size len;
    const char *p;

    Tcl_IncrRefCount(cmd);
    p = Tcl_GetStringFromObj(cmd, &len);
    Send(s, next, secs, p, len);
    Tcl_DecrRefCount(cmd);
}

/*
 * The current server cannot be used: note why and go on to the next one.
 */

static void
ServerFailed(
    SmtpSession *s,
    const char *stage,
    Tcl_Obj *why)
{
    Tcl_Obj *entry = Tcl_NewListObj(0, NULL);

    Tcl_ListObjAppendElement(NULL, entry, s->host ? s->host : Tcl_NewObj());
    Tcl_ListObjAppendElement(NULL, entry, Tcl_NewIntObj(s->port));
    Tcl_ListObjAppendElement(NULL, entry, Tcl_NewStringObj(stage, -1));
    Tcl_ListObjAppendElement(NULL, entry, why);
    Tcl_ListObjAppendElement(NULL, s->tried, entry);
    if (s->opts->debug) {
	Debug(s, Tcl_ObjPrintf("    ... %s ...", Tcl_GetString(why)));
    }
    CloseConn(s);
    s->clearOnly = 0;
    TryNextServer(s);
}

/*
 * Every server has failed: the error names each one and why.
 */

static void
NoServer(
    SmtpSession *s)
{
    Tcl_Size n, i;
    Tcl_Obj **entries, *msg, *ec, *last = NULL;

    Tcl_ListObjGetElements(NULL, s->tried, &n, &entries);
    if (n == 0) {
	msg = Tcl_NewStringObj("no SMTP server to try: -servers is empty",
		-1);
    } else {
	msg = Tcl_NewStringObj("no SMTP server could be used: ", -1);
	for (i = 0; i < n; i++) {
	    Tcl_Obj **f;
	    Tcl_Size nf;

	    Tcl_ListObjGetElements(NULL, entries[i], &nf, &f);
	    Tcl_AppendPrintfToObj(msg, "%s%s port %s (%s)", i ? "; " : "",
		    Tcl_GetString(f[0]), Tcl_GetString(f[1]),
		    Tcl_GetString(f[3]));
	    last = entries[i];
	}
    }
    ec = Tcl_NewListObj(0, NULL);
    Tcl_ListObjAppendElement(NULL, ec, Tcl_NewStringObj("SMTP", -1));
    if (last) {
	Tcl_Obj **f;
	Tcl_Size nf;

	Tcl_ListObjGetElements(NULL, last, &nf, &f);
	Tcl_ListObjAppendElement(NULL, ec, f[2]);
    } else {
	Tcl_ListObjAppendElement(NULL, ec, Tcl_NewStringObj("CONNECT", -1));
    }
    Tcl_ListObjAppendElement(NULL, ec, Tcl_NewObj());
    Tcl_ListObjAppendElement(NULL, ec, Tcl_NewObj());
    Tcl_ListObjAppendElement(NULL, ec, msg);
    SetObj(&s->errCode, ec);
    SetObj(&s->errMsg, msg);
    s->state = ST_DONE;
    s->code = TCL_ERROR;
    s->finished = 1;
}

static void
TryNextServer(
    SmtpSession *s)
{
    s->tlsActive = 0;
    if (s->clearOnly) {
	/* Once more to the same server, in the clear. */
	s->serverIdx--;
    }
    while (s->serverIdx < s->nservers) {
	int i = s->serverIdx++;
	int port = 25;
	const char *host = Tcl_GetString(s->servers[i]);

	if (*host == '\0') {
	    continue;
	}
	if (i < s->nports && Tcl_GetString(s->ports[i])[0] != '\0') {
	    Tcl_GetIntFromObj(NULL, s->ports[i], &port);
	}
	SetObj(&s->host, s->servers[i]);
	s->port = port;
	SetObj(&s->caps, NULL);
	if (s->opts->debug) {
	    Debug(s, Tcl_ObjPrintf("Trying %s...", host));
	}
	s->conn = SmtpConnOpen(s->interp, host, port, &sessionEvents, s);
	if (s->conn == NULL) {
	    Tcl_Obj *why = Tcl_GetObjResult(s->interp);

	    Tcl_IncrRefCount(why);
	    Tcl_ResetResult(s->interp);
	    ServerFailed(s, "CONNECT", why);
	    Tcl_DecrRefCount(why);
	    return;
	}
	s->state = ST_CONNECTING;
	SmtpConnSetTimeout(s->conn, WAIT_GREETING);
	return;
    }
    NoServer(s);
}

/*
 * Mail transactions.
 */

static void
StartTransaction(
    SmtpSession *s)
{
    SmtpMessage *m = &s->msgs[s->cur];
    Tcl_Obj *cmd = Tcl_ObjPrintf("MAIL FROM:<%s>", Tcl_GetString(m->sender));

    if (SmtpHasExtension(s->caps, "SIZE", NULL)) {
	Tcl_AppendPrintfToObj(cmd, " SIZE=%" TCL_LL_MODIFIER "d",
		(long long) m->size);
    }
    if (Tcl_ListObjLength(NULL, m->recipients, &s->nrcpts) != TCL_OK) {
	s->nrcpts = 0;
    }
    s->rcptIdx = 0;
    s->good = s->bad = 0;
    SetObj(&s->txRefused, Tcl_NewListObj(0, NULL));
    SendObj(s, ST_MAIL, WAIT_MAIL, cmd);
}

static void
SendRcpt(
    SmtpSession *s)
{
    Tcl_Obj *rcpt;

    Tcl_ListObjIndex(NULL, s->msgs[s->cur].recipients, s->rcptIdx, &rcpt);
    SendObj(s, ST_RCPT, WAIT_RCPT,
	    Tcl_ObjPrintf("RCPT TO:<%s>", Tcl_GetString(rcpt)));
}

/*
 * After the last RCPT: send the message, or reset when tcllib's rule says
 * it must not go (no recipient accepted, or one refused without
 * -atleastone).
 */

static void
AfterRecipients(
    SmtpSession *s)
{
    if (s->good && (!s->bad || s->opts->atleastone)) {
	Send(s, ST_DATA, WAIT_DATA, "DATA", 4);
    } else {
	Send(s, ST_RSET, WAIT_RSET, "RSET", 4);
    }
}

static void
EndTransaction(
    SmtpSession *s)
{
    Tcl_ListObjAppendList(NULL, s->refused, s->txRefused);
    SetObj(&s->txRefused, NULL);
    if (++s->cur < s->nmsgs) {
	StartTransaction(s);
    } else {
	Send(s, ST_QUIT, WAIT_QUIT, "QUIT", 4);
    }
}

/*
 * Writes the message, pulled from its source and encoded for DATA, as fast
 * as the socket takes it without holding more than a chunk or two in
 * memory.
 */

static void
PumpBody(
    SmtpSession *s)
{
    SmtpSource *src = &s->msgs[s->cur].body;

    while (!s->bodyDone && SmtpConnPending(s->conn) < BODY_CHUNK) {
	Tcl_Obj *err = NULL;
	int st;

	s->raw.pos = s->raw.len = 0;
	st = src->read(src->cd, &s->raw, BODY_CHUNK, &err);
	if (st < 0) {
	    /*
	     * The message cannot be completed. Without the final dot the
	     * server discards what it has, so the connection is dropped
	     * rather than a truncated message delivered.
	     */

	    Tcl_IncrRefCount(err);
	    FailLocal(s, "MESSAGE", Tcl_GetString(err));
	    Tcl_DecrRefCount(err);
	    return;
	}
	s->bodyDone = st;
	s->out.pos = s->out.len = 0;
	SmtpDataEncode(&s->enc, SmtpBufPtr(&s->raw), SmtpBufAvail(&s->raw),
		&s->out);
	if (s->bodyDone) {
	    SmtpDataFinish(&s->enc, &s->out);
	}
	SmtpConnWrite(s->conn, SmtpBufPtr(&s->out), SmtpBufAvail(&s->out));
	if (SmtpConnFlush(s->conn) != TCL_OK) {
	    OnClosed(s, SmtpConnError(s->conn));
	    return;
	}
    }
    if (!s->bodyDone) {
	SmtpConnSetTimeout(s->conn, WAIT_BODY);
	SmtpConnWantWritable(s->conn, 1);
	return;
    }
    SmtpConnWantWritable(s->conn, 0);
    SmtpBufFree(&s->raw);
    SmtpBufFree(&s->out);
    {
	int secs = s->opts->maxsecs > WAIT_MAX ? WAIT_MAX : s->opts->maxsecs;

	if (s->opts->debug) {
	    Debug(s, Tcl_ObjPrintf("--> . (wait upto %d seconds)", secs));
	}
	s->state = ST_DOT;
	SmtpConnSetTimeout(s->conn, secs);
    }
}

static void
StartBody(
    SmtpSession *s)
{
    s->state = ST_BODY;
    s->bodyDone = 0;
    SmtpDataInit(&s->enc);
    PumpBody(s);
}

/*
 * Starts the TLS handshake on the current connection.
 */

static void
StartTls(
    SmtpSession *s)
{
    Tcl_Obj *err = NULL;
    const char *name;

    if (s->ctx == NULL) {
	Tcl_Obj *servername = NULL;

	s->ctx = SmtpTlsContext(s->interp, s->opts->tlsoptions,
		s->opts->debug, &s->verify, &servername);
	if (s->ctx == NULL) {
	    /* A configuration error: no server would do better. */
	    Tcl_Obj *msg = Tcl_GetObjResult(s->interp);

	    Tcl_IncrRefCount(msg);
	    Tcl_ResetResult(s->interp);
	    FailLocal(s, "TLS", Tcl_GetString(msg));
	    Tcl_DecrRefCount(msg);
	    return;
	}
	SetObj(&s->servername, servername);
	if (!s->verify && s->opts->debug) {
	    Debug(s, Tcl_NewStringObj("    ... TLS certificate verification"
		    " is off (-tlsoptions -require 0) ...", -1));
	}
    }
    name = Tcl_GetString(s->servername ? s->servername : s->host);
    s->state = ST_TLS;
    SmtpConnSetTimeout(s->conn, WAIT_EHLO);
    if (SmtpConnStartTls(s->conn, s->ctx, name, s->verify, &err)
	    != TCL_OK) {
	Tcl_Obj *why;

	Tcl_IncrRefCount(err);
	why = Tcl_ObjPrintf("TLS with %s failed: %s",
		Tcl_GetString(s->host), Tcl_GetString(err));
	Tcl_DecrRefCount(err);
	Tcl_IncrRefCount(why);
	TlsRefused(s, 454, why, why, 1);
	Tcl_DecrRefCount(why);
    }
}

/*
 * Asks -tlspolicy what to do now that TLS cannot be had: returns 1 for
 * insecure (go on without TLS), 0 for secure. Without a policy, a refused
 * STARTTLS is insecure (as in tcllib) and a failed handshake secure.
 */

static int
AskPolicy(
    SmtpSession *s,
    int code,
    Tcl_Obj *text,
    int handshake)
{
    Tcl_Obj *cmd;
    int insecure;

    if (s->opts->tlspolicy == NULL
	    || Tcl_GetCharLength(s->opts->tlspolicy) == 0) {
	return !handshake;
    }
    cmd = Tcl_DuplicateObj(s->opts->tlspolicy);
    Tcl_IncrRefCount(cmd);
    if (Tcl_ListObjAppendElement(s->interp, cmd, Tcl_NewIntObj(code))
	    != TCL_OK
	    || Tcl_ListObjAppendElement(s->interp, cmd, text) != TCL_OK) {
	Tcl_DecrRefCount(cmd);
	Tcl_ResetResult(s->interp);
	return 0;
    }
    insecure = Tcl_EvalObjEx(s->interp, cmd, TCL_EVAL_GLOBAL) == TCL_OK
	    && strcmp(Tcl_GetStringResult(s->interp), "insecure") == 0;
    Tcl_DecrRefCount(cmd);
    Tcl_ResetResult(s->interp);
    if (s->opts->debug) {
	Debug(s, Tcl_ObjPrintf("    ... -tlspolicy says %s ...",
		insecure ? "insecure" : "secure"));
    }
    return insecure;
}

/*
 * TLS could not be set up on this server: STARTTLS refused (handshake 0)
 * or the handshake failed. The policy decides between going on in the
 * clear and the next server.
 */

static void
TlsRefused(
    SmtpSession *s,
    int code,
    Tcl_Obj *text,		/* For the policy command. */
    Tcl_Obj *why,		/* For the error. */
    int handshake)
{
    if (!AskPolicy(s, code, text, handshake)) {
	ServerFailed(s, "TLS", why);
	return;
    }
    if (s->opts->debug) {
	Debug(s, Tcl_ObjPrintf("    ... %s: going on without TLS ...",
		Tcl_GetString(why)));
    }
    if (!handshake) {
	AfterHello(s);
	return;
    }
    /* A failed handshake leaves the connection unusable: reconnect. */
    CloseConn(s);
    s->clearOnly = 1;
    TryNextServer(s);
}

/*
 * Whether to follow EHLO with ONEX / QUED, as tcllib does.
 */

static void
AfterHello(
    SmtpSession *s)
{
    if (s->state == ST_EHLO || s->state == ST_HELO
	    || s->state == ST_STARTTLS) {
	if (!s->opts->multiple && SmtpHasExtension(s->caps, "ONEX", NULL)) {
	    Send(s, ST_ONEX, WAIT_EHLO, "ONEX", 4);
	    return;
	}
    }
    if (s->state != ST_QUED && s->opts->queue
	    && SmtpHasExtension(s->caps, "XQUE", NULL)) {
	Send(s, ST_QUED, WAIT_EHLO, "QUED", 4);
	return;
    }
    if (s->opts->username && Tcl_GetCharLength(s->opts->username) > 0
	    && s->opts->debug) {
	Debug(s, Tcl_NewStringObj(
		"    ... credentials given, but this release does not"
		" authenticate ...", -1));
    }
    s->cur = 0;
    StartTransaction(s);
}

/*
 * One complete reply from the server, in the current state.
 */

static void
OnReply(
    SmtpSession *s,
    SmtpReply *r)
{
    switch (s->state) {
    case ST_GREETING:
	if (r->code == 220) {
	    SendObj(s, ST_EHLO, WAIT_EHLO, Tcl_ObjPrintf("EHLO %s",
		    Tcl_GetString(s->opts->client)));
	} else {
	    ServerFailed(s, "GREETING", Tcl_ObjPrintf("greeting: %d %s",
		    r->code, Tcl_GetString(SmtpReplyDiagnostic(r))));
	}
	break;
    case ST_EHLO:
	if (r->code == 250) {
	    SetObj(&s->caps, r->lines);
	    if (s->opts->usetls && !s->tlsActive && !s->clearOnly
		    && !s->opts->tlsimport
		    && (SmtpHasExtension(s->caps, "STARTTLS", NULL)
			|| SmtpHasExtension(s->caps, "TLS", NULL))) {
		Send(s, ST_STARTTLS, WAIT_EHLO, "STARTTLS", 8);
		break;
	    }
	    AfterHello(s);
	} else if (r->code >= 500 && r->code <= 599) {
	    SendObj(s, ST_HELO, WAIT_EHLO, Tcl_ObjPrintf("HELO %s",
		    Tcl_GetString(s->opts->client)));
	} else {
	    ServerFailed(s, "EHLO", Tcl_ObjPrintf("EHLO: %d %s", r->code,
		    Tcl_GetString(SmtpReplyDiagnostic(r))));
	}
	break;
    case ST_HELO:
	if (r->code == 250) {
	    SetObj(&s->caps, Tcl_NewListObj(0, NULL));
	    AfterHello(s);
	} else {
	    ServerFailed(s, "EHLO", Tcl_ObjPrintf("HELO: %d %s", r->code,
		    Tcl_GetString(SmtpReplyDiagnostic(r))));
	}
	break;
    case ST_STARTTLS:
	if (r->code == 220) {
	    StartTls(s);
	} else {
	    Tcl_Obj *why = Tcl_ObjPrintf("STARTTLS refused: %d %s", r->code,
		    Tcl_GetString(SmtpReplyDiagnostic(r)));

	    Tcl_IncrRefCount(why);
	    TlsRefused(s, r->code, SmtpReplyDiagnostic(r), why, 0);
	    Tcl_DecrRefCount(why);
	}
	break;
    case ST_ONEX:
    case ST_QUED:
	AfterHello(s);
	break;
    case ST_MAIL:
	if (r->code == 250) {
	    if (s->nrcpts > 0) {
		SendRcpt(s);
	    } else {
		AfterRecipients(s);
	    }
	} else {
	    FailReply(s, "MAIL", r);
	}
	break;
    case ST_RCPT:
	if (r->code == 250 || r->code == 251) {
	    s->good++;
	} else {
	    Tcl_Obj *entry = Tcl_NewListObj(0, NULL), *rcpt;

	    Tcl_ListObjIndex(NULL, s->msgs[s->cur].recipients, s->rcptIdx,
		    &rcpt);
	    Tcl_ListObjAppendElement(NULL, entry, rcpt);
	    Tcl_ListObjAppendElement(NULL, entry, Tcl_NewIntObj(r->code));
	    Tcl_ListObjAppendElement(NULL, entry, SmtpReplyDiagnostic(r));
	    Tcl_ListObjAppendElement(NULL, s->txRefused, entry);
	    s->bad++;
	}
	if (++s->rcptIdx < s->nrcpts) {
	    SendRcpt(s);
	} else {
	    AfterRecipients(s);
	}
	break;
    case ST_DATA:
	if (r->code == 354) {
	    StartBody(s);
	} else {
	    FailReply(s, "DATA", r);
	}
	break;
    case ST_DOT:
	if (r->code == 250 || r->code == 251) {
	    EndTransaction(s);
	} else {
	    FailReply(s, "DATA", r);
	}
	break;
    case ST_RSET:
	EndTransaction(s);
	break;
    case ST_QUIT:
	Finish(s);
	break;
    case ST_BODY:
	/* A reply before the message has been written is a refusal. */
	FailReply(s, "DATA", r);
	break;
    default:
	break;
    }
}

/*
 * Transport events.
 */

static void
OnConnected(
    void *cd)
{
    SmtpSession *s = (SmtpSession *) cd;

    if (s->opts->tlsimport && !s->clearOnly) {
	StartTls(s);
	return;
    }
    s->state = ST_GREETING;
    SmtpConnSetTimeout(s->conn, WAIT_GREETING);
}

/*
 * The TLS handshake has ended.
 */

static void
OnTlsDone(
    void *cd,
    Tcl_Obj *err)
{
    SmtpSession *s = (SmtpSession *) cd;

    if (err) {
	Tcl_Obj *why = Tcl_ObjPrintf("TLS with %s failed: %s",
		Tcl_GetString(s->host), Tcl_GetString(err));

	Tcl_IncrRefCount(why);
	TlsRefused(s, 454, why, why, 1);
	Tcl_DecrRefCount(why);
	return;
    }
    s->tlsActive = 1;
    if (s->opts->debug) {
	Tcl_Obj *info = SmtpConnTlsInfo(s->conn);

	Tcl_IncrRefCount(info);
	Debug(s, Tcl_ObjPrintf("    ... TLS established: %s, %s ...",
		Tcl_GetString(info), s->verify
		? "server certificate verified"
		: "server certificate NOT verified (-tlsoptions -require 0)"));
	Tcl_DecrRefCount(info);
    }
    if (s->opts->tlsimport) {
	s->state = ST_GREETING;
	SmtpConnSetTimeout(s->conn, WAIT_GREETING);
    } else {
	/* RFC 3207: forget what was heard before TLS; say EHLO again. */
	SetObj(&s->caps, NULL);
	SendObj(s, ST_EHLO, WAIT_EHLO, Tcl_ObjPrintf("EHLO %s",
		Tcl_GetString(s->opts->client)));
    }
}

static void
OnBytes(
    void *cd,
    const unsigned char *p,
    size_t n)
{
    SmtpSession *s = (SmtpSession *) cd;
    SmtpConn *conn = s->conn;

    while (n > 0 && !s->finished && s->conn == conn) {
	SmtpReply r;
	size_t used;
	Tcl_Obj *err = NULL;
	int st;

	SmtpReplyInit(&r);
	st = SmtpReplyParse(&s->parser, p, n, &used, &r, &err);
	p += used;
	n -= used;
	if (st == SMTP_PARSE_MORE) {
	    break;
	}
	if (st == SMTP_PARSE_ERROR) {
	    Tcl_IncrRefCount(err);
	    if (s->opts->debug) {
		Debug(s, Tcl_ObjPrintf("<-- %s", Tcl_GetString(err)));
	    }
	    if (s->state <= ST_HELO) {
		ServerFailed(s, "GREETING", err);
	    } else {
		FailLocal(s, "PROTOCOL", Tcl_GetString(err));
	    }
	    Tcl_DecrRefCount(err);
	    break;
	}
	if (s->opts->debug) {
	    Tcl_Size nl, i;
	    Tcl_Obj **lines;

	    Tcl_ListObjGetElements(NULL, r.raw, &nl, &lines);
	    for (i = 0; i < nl; i++) {
		Debug(s, Tcl_ObjPrintf("<-- %s", Tcl_GetString(lines[i])));
	    }
	}
	SmtpConnSetTimeout(conn, -1);
	if (s->state == ST_STARTTLS && r.code == 220
		&& (n > 0 || SmtpBufAvail(&s->parser.line) > 0)) {
	    /*
	     * Bytes after the 220 came before the handshake, in the clear:
	     * someone is injecting commands (CVE-2011-0411 class).
	     */

	    SmtpReplyClear(&r);
	    FailLocal(s, "TLS", "server sent data after its 220 reply to"
		    " STARTTLS: plaintext injection, connection dropped");
	    break;
	}
	OnReply(s, &r);
	SmtpReplyClear(&r);
    }
}

static void
OnWritable(
    void *cd)
{
    SmtpSession *s = (SmtpSession *) cd;

    if (s->state == ST_BODY) {
	PumpBody(s);
    } else {
	SmtpConnWantWritable(s->conn, 0);
    }
}

static void
OnClosed(
    void *cd,
    const char *why)
{
    SmtpSession *s = (SmtpSession *) cd;

    if (s->opts->debug && s->state > ST_STARTTLS) {
	Debug(s, Tcl_ObjPrintf("    ... %s ...", why));
    }
    switch (s->state) {
    case ST_CONNECTING:
	ServerFailed(s, "CONNECT", Tcl_NewStringObj(why, -1));
	break;
    case ST_GREETING:
	ServerFailed(s, "GREETING", Tcl_NewStringObj(why, -1));
	break;
    case ST_EHLO:
    case ST_HELO:
	ServerFailed(s, "EHLO", Tcl_NewStringObj(why, -1));
	break;
    case ST_STARTTLS:
    case ST_TLS:
	ServerFailed(s, "TLS", Tcl_NewStringObj(why, -1));
	break;
    case ST_QUIT:
	Finish(s);
	break;
    default:
	FailLocal(s, "EOF", why);
	break;
    }
}

static void
OnTimeout(
    void *cd)
{
    SmtpSession *s = (SmtpSession *) cd;
    const char *why = "read from server timed out";

    if (s->opts->debug && s->state > ST_STARTTLS) {
	Debug(s, Tcl_ObjPrintf("    ... %s ...", why));
    }
    switch (s->state) {
    case ST_CONNECTING:
	ServerFailed(s, "CONNECT", Tcl_NewStringObj("connect timed out", -1));
	break;
    case ST_GREETING:
	ServerFailed(s, "GREETING", Tcl_NewStringObj(why, -1));
	break;
    case ST_EHLO:
    case ST_HELO:
	ServerFailed(s, "EHLO", Tcl_NewStringObj(why, -1));
	break;
    case ST_STARTTLS:
    case ST_TLS:
	ServerFailed(s, "TLS", Tcl_NewStringObj(why, -1));
	break;
    case ST_QUIT:
	Finish(s);
	break;
    case ST_BODY:
	FailLocal(s, "TIMEOUT", "write to server timed out");
	break;
    default:
	FailLocal(s, "TIMEOUT", why);
	break;
    }
}

/*
 * Runs the session to its end, keeping the event loop going meanwhile (as
 * tcllib's vwait did). Leaves the refused recipients, or the error, in the
 * interpreter and returns TCL_OK or TCL_ERROR.
 */

int
SmtpSessionRun(
    SmtpSession *s)
{
    TryNextServer(s);
    while (!s->finished) {
	Tcl_DoOneEvent(TCL_ALL_EVENTS);
    }
    if (s->code == TCL_OK) {
	Tcl_SetObjResult(s->interp, s->refused);
	return TCL_OK;
    }
    Tcl_SetObjResult(s->interp, s->errMsg);
    Tcl_SetObjErrorCode(s->interp, s->errCode);
    return TCL_ERROR;
}
