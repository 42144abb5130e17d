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
#ifdef HAVE_LIBIDN2
#include <idn2.h>
#endif

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
#define EARLY_BODY_MAX	(64 * 1024)	/* Largest message sent in the batch
					 * with MAIL and RCPT (BDAT). */

/*
 * The ledger of replies owed by the server: every command written adds an
 * entry, every reply takes the head entry and nothing else. The entry says
 * which command the reply answers (and so the stage an error names) and
 * how long to wait for it.
 */

typedef enum Expect {
    EX_GREETING, EX_EHLO, EX_HELO, EX_STARTTLS, EX_ONEX, EX_QUED, EX_AUTH,
    EX_MAIL, EX_RCPT, EX_DATA, EX_DOT, EX_BDAT, EX_BDATLAST, EX_RSET,
    EX_QUIT
} Expect;

static const char *const expectStage[] = {
    "GREETING", "EHLO", "EHLO", "TLS", "ONEX", "QUED", "AUTH",
    "MAIL", "RCPT", "DATA", "DATA", "BDAT", "BDAT", "RSET",
    "QUIT"
};

typedef struct Owed {
    Expect kind;
    int secs;			/* Bound on the wait, in seconds. */
    int replies;		/* LMTP's final reply: replies still to come
				 * (0: not yet known). Else 1. */
    int lmtp;			/* One reply per accepted recipient. */
} Owed;

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

    int dsn;			/* The server offers DSN. */
    int txUtf8;			/* The message goes with SMTPUTF8. */
    int pipelining;		/* The server offers PIPELINING. */
    int chunking;		/* BDAT instead of DATA. */
    int quitSent;		/* QUIT went out behind the last message. */
    int pipeData;		/* DATA went out in the batch. */
    int pipeBody;		/* So did the whole message, in BDAT. */
    int mailCode;		/* Reply to MAIL (pipelined: kept until the
				 * batch's replies are in). */
    char mailEnh[16];
    Tcl_Obj *mailText;
    Tcl_Obj *accepted;		/* Recipients accepted (for LMTP). */
    Tcl_Obj *txSender;		/* Envelope addresses as sent (A-labels */
    Tcl_Obj *txRcpts;		/* where the server lacks SMTPUTF8). */
    int lmtpIdx;		/* Next LMTP per-recipient reply. */
    int rcptIdx;		/* Next recipient reply of the transaction. */
    int helloStep;		/* Where AfterHello is: ONEX, QUED, AUTH. */
    int clearAccepted;		/* The policy accepted a clear connection. */
    Tcl_Obj *authList;		/* Mechanisms still to try. */
    SmtpSasl *sasl;		/* The exchange under way. */
    const char *authMech;	/* Its name. */
    int authCode;		/* Last refusal of AUTH, kept for the error. */
    char authEnh[16];
    Tcl_Obj *authText;
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
    SmtpDoneProc *done;		/* Asynchronous: called when finished. */
    void *doneCd;
    Tcl_Obj *progress;		/* -progress command, or NULL. */
    Tcl_WideInt sent;		/* Message bytes written so far. */
    Tcl_WideInt lastSent;	/* ... when progress was last reported. */
    long long lastTime;		/* ... and when, in milliseconds. */
    Tcl_Obj *lastReply;		/* The final reply to the message. */
    int keepOpen;		/* A session: stay connected after the
				 * messages, for more. */
    int retried;		/* Reconnected once for this submission. */
    Tcl_Obj *errMsg;
    Tcl_Obj *errCode;

    Owed *owed;			/* The ledger: owed[owedHead..owedTail). */
    int owedHead, owedTail, owedCap;
    Expect lastKind;		/* What the last reply answered. */
    int desync;			/* The server sent more than was asked. */
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
static void	StartBody(SmtpSession *s);
static void	AfterEarlyBody(SmtpSession *s);
static void	StartTls(SmtpSession *s);
static void	TlsRefused(SmtpSession *s, int code, Tcl_Obj *text,
		    Tcl_Obj *why, int handshake);
static void	AfterHello(SmtpSession *s);
static void	MarkDone(SmtpSession *s);
static void	Reconnect(SmtpSession *s, Tcl_Obj *why);
static void	DoneIdle(void *cd);
static int	Owing(SmtpSession *s);
static int	Pipelining(SmtpSession *s);
static const char *Where(SmtpSession *s);

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

/*
 * The -servers and -ports lists the session tries, in order (malformed
 * lists were refused when the options were read).
 */

static void
ServerLists(
    SmtpSession *s,
    SmtpOptions *opts)
{
    if (Tcl_ListObjGetElements(NULL, opts->servers, &s->nservers,
	    &s->servers) != TCL_OK) {
	s->nservers = 0;
    }
    if (Tcl_ListObjGetElements(NULL, opts->ports, &s->nports, &s->ports)
	    != TCL_OK) {
	s->nports = 0;
    }
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
    ServerLists(s, opts);
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
    s->owedHead = s->owedTail = 0;
    s->desync = 0;
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
    SetObj(&s->mailText, NULL);
    SetObj(&s->accepted, NULL);
    SetObj(&s->authList, NULL);
    SetObj(&s->authText, NULL);
    SetObj(&s->txSender, NULL);
    SetObj(&s->txRcpts, NULL);
    if (s->sasl) {
	SmtpSaslFree(s->sasl);
    }
    SetObj(&s->errMsg, NULL);
    SetObj(&s->errCode, NULL);
    SmtpTlsContextFree(s->ctx);
    SetObj(&s->progress, NULL);
    SetObj(&s->lastReply, NULL);
    if (s->owed) {
	ckfree(s->owed);
    }
    if (s->done) {
	Tcl_CancelIdleCall(DoneIdle, s);
    }
    ckfree(s);
}

/*
 * Called (from the event loop, never in the middle of a callback) when an
 * asynchronous session has finished.
 */

static void
DoneIdle(
    void *cd)
{
    SmtpSession *s = (SmtpSession *) cd;
    SmtpDoneProc *done = s->done;

    if (s->keepOpen) {
	s->done = NULL;		/* One call per submission. */
    }
    done(s, s->doneCd);
}

static void
MarkDone(
    SmtpSession *s)
{
    if (s->finished) {
	return;
    }
    s->finished = 1;
    if (s->done) {
	Tcl_DoWhenIdle(DoneIdle, s);
    }
}

/*
 * Ends the session (after a MarkDone its result is read).
 */

static void
End(
    SmtpSession *s,
    int code)
{
    s->state = ST_DONE;
    s->code = code;
    MarkDone(s);
}

/*
 * Appends a refused-recipient entry, {address code diagnostic}, to list.
 */

static void
AddRefused(
    Tcl_Obj *list,
    Tcl_Obj *addr,
    int code,
    Tcl_Obj *text)
{
    Tcl_Obj *entry = Tcl_NewListObj(0, NULL);

    Tcl_ListObjAppendElement(NULL, entry, addr);
    Tcl_ListObjAppendElement(NULL, entry, Tcl_NewIntObj(code));
    Tcl_ListObjAppendElement(NULL, entry, text);
    Tcl_ListObjAppendElement(NULL, list, entry);
}

/*
 * Ends the session with success.
 */

static void
Finish(
    SmtpSession *s)
{
    CloseConn(s);
    End(s, TCL_OK);
}

/*
 * tcllib's abort: reset and quit without waiting for the replies, then
 * close. Both go in one write only to a server that offers PIPELINING;
 * to another one QUIT alone (which ends the transaction too) when no
 * reply is owed, and nothing when one is (RFC 2920: no command before the
 * previous reply). Nothing is written while the message is (it would be
 * part of it) or while DATA's reply is owed (a 354 would make it so).
 */

static void
Abort(
    SmtpSession *s)
{
    int i, dataOwed = 0;

    for (i = s->owedHead; i < s->owedTail; i++) {
	dataOwed |= s->owed[i].kind == EX_DATA;
    }
    if (s->conn && !s->quitSent && s->state != ST_BODY && !dataOwed) {
	if (Pipelining(s)) {
	    if (s->opts->debug) {
		Debug(s, Tcl_NewStringObj("--> RSET (wait upto 0 seconds)",
			-1));
		Debug(s, Tcl_NewStringObj("--> QUIT (wait upto 0 seconds)",
			-1));
	    }
	    SmtpConnWrite(s->conn, "RSET\r\nQUIT\r\n", 12);
	    SmtpConnFlush(s->conn);
	} else if (Owing(s) == 0) {
	    if (s->opts->debug) {
		Debug(s, Tcl_NewStringObj("--> QUIT (wait upto 0 seconds)",
			-1));
	    }
	    SmtpConnWrite(s->conn, "QUIT\r\n", 6);
	    SmtpConnFlush(s->conn);
	}
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
	Tcl_Obj *addr;

	for (j = 0; j < nr; j++) {
	    Tcl_ListObjIndex(NULL, already[j], 0, &addr);
	    if (strcmp(Tcl_GetString(addr), Tcl_GetString(rcpts[i])) == 0) {
		break;
	    }
	}
	if (j < nr) {
	    continue;		/* Refused individually already. */
	}
	AddRefused(s->refused, rcpts[i], code, text);
    }
    Tcl_DecrRefCount(text);
    SetObj(&s->txRefused, NULL);
    Abort(s);
    End(s, TCL_OK);
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
    End(s, TCL_ERROR);
}

/*
 * FailReply for a reply kept from earlier (a pipelined MAIL, the last
 * refused AUTH).
 */

static void
FailSaved(
    SmtpSession *s,
    const char *stage,
    int code,
    const char *enhanced,
    Tcl_Obj *text)
{
    SmtpReply r;

    SmtpReplyInit(&r);
    r.code = code;
    memcpy(r.enhanced, enhanced, sizeof(r.enhanced));
    r.text = text;
    FailReply(s, stage, &r);
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
    if (pseudo) {
	/* Where it happened: the reply awaited. */
	Tcl_ListObjAppendElement(NULL, ec, Tcl_NewStringObj(Where(s), -1));
    }
    SetObj(&s->errCode, ec);
    SetObj(&s->errMsg, pseudo ? Tcl_ObjPrintf("400: %s", text)
	    : Tcl_NewStringObj(text, -1));
    if (strcmp(stage, "TIMEOUT") == 0) {
	Abort(s);		/* As tcllib, which still says goodbye. */
    } else {
	CloseConn(s);
    }
    End(s, TCL_ERROR);
}

/*
 * The bound on a wait: -timeout when given, else tcllib's (shown as tcllib
 * shows it, waited at most WAIT_MAX).
 */

static int
Shown(
    SmtpSession *s,
    int secs)
{
    return s->opts->timeout >= 0 ? s->opts->timeout : secs;
}

static int
Bound(
    SmtpSession *s,
    int secs)
{
    if (s->opts->timeout >= 0) {
	return s->opts->timeout;
    }
    return secs > WAIT_MAX ? WAIT_MAX : secs;
}

/*
 * The bound on the final reply to a message (after the final dot or the
 * last BDAT): -maxsecs, from 0 to WAIT_MAX as in tcllib.
 */

static int
FinalBound(
    SmtpSession *s)
{
    int secs = s->opts->maxsecs;

    return secs < 0 ? 0 : secs > WAIT_MAX ? WAIT_MAX : secs;
}

static int
IsFinal(
    Expect kind)
{
    return kind == EX_DOT || kind == EX_BDATLAST;
}

/*
 * The ledger of owed replies.
 */

static int
Owing(
    SmtpSession *s)
{
    return s->owedTail - s->owedHead;
}

static Owed *
OwedHead(
    SmtpSession *s)
{
    return Owing(s) > 0 ? &s->owed[s->owedHead] : NULL;
}

/*
 * A command has been written: its reply is owed, and waited for at most
 * 'secs' seconds once it is the next one due.
 */

static void
Owe(
    SmtpSession *s,
    Expect kind,
    int secs)
{
    Owed *o;

    if (s->owedHead == s->owedTail) {
	s->owedHead = s->owedTail = 0;
    }
    if (s->owedTail == s->owedCap && s->owedHead > 0) {
	memmove(s->owed, s->owed + s->owedHead,
		(size_t) Owing(s) * sizeof(Owed));
	s->owedTail -= s->owedHead;
	s->owedHead = 0;
    }
    if (s->owedTail == s->owedCap) {
	s->owedCap = s->owedCap ? 2 * s->owedCap : 16;
	s->owed = (Owed *) (s->owed
		? ckrealloc(s->owed, (size_t) s->owedCap * sizeof(Owed))
		: ckalloc((size_t) s->owedCap * sizeof(Owed)));
    }
    o = &s->owed[s->owedTail++];
    o->kind = kind;
    o->secs = secs;
    o->lmtp = s->opts->lmtp && IsFinal(kind);
    o->replies = o->lmtp ? 0 : 1;
}

/*
 * A reply has come: it answers the head entry, which is taken off (LMTP's
 * final entry once every accepted recipient has had its reply; the
 * recipients' replies all come before it). Returns what it answers.
 */

static Expect
Settle(
    SmtpSession *s)
{
    Owed *o = &s->owed[s->owedHead];
    Expect kind = o->kind;

    if (o->lmtp && o->replies == 0) {
	Tcl_Size na = 0;

	if (s->accepted) {
	    Tcl_ListObjLength(NULL, s->accepted, &na);
	}
	o->replies = na > 0 ? (int) na : 1;
    }
    if (--o->replies == 0) {
	s->owedHead++;
    }
    s->lastKind = kind;
    return kind;
}

/*
 * Arms the timeout for what the session waits for now: the head entry's
 * bound, or the progress of the message being written; nothing when no
 * reply is owed.
 */

static void
ArmWait(
    SmtpSession *s)
{
    if (s->conn == NULL) {
	return;
    }
    if (s->state == ST_BODY && !s->bodyDone) {
	SmtpConnSetTimeout(s->conn, Bound(s, WAIT_BODY));
    } else if (Owing(s) > 0) {
	SmtpConnSetTimeout(s->conn, OwedHead(s)->secs);
    } else {
	SmtpConnSetTimeout(s->conn, -1);
    }
}

/*
 * The stage an error names: the command whose reply is awaited, else the
 * one last answered; while the message is written, DATA or BDAT.
 */

static const char *
Where(
    SmtpSession *s)
{
    if (s->state == ST_BODY && !s->bodyDone) {
	return s->chunking ? "BDAT" : "DATA";
    }
    if (Owing(s) > 0) {
	return expectStage[OwedHead(s)->kind];
    }
    return expectStage[s->lastKind];
}

/*
 * Whether the server offers PIPELINING (RFC 2920): only then may a
 * command be written while a reply is still owed.
 */

static int
Pipelining(
    SmtpSession *s)
{
    return SmtpHasExtension(s->caps, "PIPELINING", NULL);
}

/*
 * Queues one command line (it leaves with the next flush) and enters its
 * reply in the ledger: 'secs' is tcllib's bound for it, the final reply's
 * is -maxsecs.
 */

static void
Put(
    SmtpSession *s,
    Expect kind,
    int secs,
    const char *cmd,
    Tcl_Size len)
{
    int wait = IsFinal(kind) ? FinalBound(s) : Bound(s, secs);

    if (len < 0) {
	len = (Tcl_Size) strlen(cmd);
    }
    if (s->opts->debug) {
	Debug(s, Tcl_ObjPrintf("--> %.*s (wait upto %d seconds)", (int) len,
		cmd, IsFinal(kind) ? wait : Shown(s, secs)));
    }
    SmtpConnWrite(s->conn, cmd, (size_t) len);
    SmtpConnWrite(s->conn, "\r\n", 2);
    Owe(s, kind, wait);
}

/*
 * Sends what is queued and arms the wait for the next reply.
 */

static void
Flush(
    SmtpSession *s,
    SmtpState next)
{
    s->state = next;
    ArmWait(s);
    if (SmtpConnFlush(s->conn) != TCL_OK) {
	OnClosed(s, SmtpConnError(s->conn));
    }
}

/*
 * Sends one command and arms the wait for its reply.
 */

static void
Send(
    SmtpSession *s,
    SmtpState next,
    Expect kind,
    int secs,
    const char *cmd,
    Tcl_Size len)
{
    Put(s, kind, secs, cmd, len);
    Flush(s, next);
}

static void
SendObj(
    SmtpSession *s,
    SmtpState next,
    Expect kind,
    int secs,
    Tcl_Obj *cmd)
{
    Tcl_Size len;
    const char *p;

    Tcl_IncrRefCount(cmd);
    p = Tcl_GetStringFromObj(cmd, &len);
    Send(s, next, kind, secs, p, len);
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
    s->clearAccepted = 0;
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
    End(s, TCL_ERROR);
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
	s->conn = SmtpConnOpen(s->interp, host, port, &sessionEvents, s,
		s->done == NULL);
	s->quitSent = 0;
	if (s->conn == NULL) {
	    Tcl_Obj *why = Tcl_GetObjResult(s->interp);

	    Tcl_IncrRefCount(why);
	    Tcl_ResetResult(s->interp);
	    ServerFailed(s, "CONNECT", why);
	    Tcl_DecrRefCount(why);
	    return;
	}
	s->state = ST_CONNECTING;
	SmtpConnSetTimeout(s->conn, Bound(s, WAIT_GREETING));
	return;
    }
    NoServer(s);
}

/*
 * Mail transactions.
 */

/*
 * Appends the xtext (RFC 3461 section 4) of a string to obj.
 */

static void
AppendXtext(
    Tcl_Obj *obj,
    Tcl_Obj *value)
{
    Tcl_Size len, i;
    const char *p = Tcl_GetStringFromObj(value, &len);

    for (i = 0; i < len; i++) {
	unsigned char c = (unsigned char) p[i];

	if (c < 33 || c > 126 || c == '+' || c == '=') {
	    Tcl_AppendPrintfToObj(obj, "+%02X", c);
	} else {
	    Tcl_AppendToObj(obj, (const char *) &p[i], 1);
	}
    }
}

/*
 * Tells whether an address needs SMTPUTF8 (has a non-ASCII character).
 */

static int
NeedsUtf8(
    Tcl_Obj *addr)
{
    Tcl_Size len, i;
    const char *p = Tcl_GetStringFromObj(addr, &len);

    for (i = 0; i < len; i++) {
	if ((unsigned char) p[i] >= 0x80) {
	    return 1;
	}
    }
    return 0;
}

/*
 * For a server without SMTPUTF8: an address whose domain is
 * internationalised goes with the domain's A-labels (IDNA2008, through
 * libidn2); a non-ASCII local part cannot be sent. Returns the address to
 * send, or NULL with the reason in *whyPtr.
 */

static Tcl_Obj *
AsciiAddress(
    Tcl_Obj *addr,
    Tcl_Obj **whyPtr)
{
    const char *p = Tcl_GetString(addr), *at = strrchr(p, '@');
    size_t i;

    if (!NeedsUtf8(addr)) {
	return addr;
    }
    for (i = 0; at && p + i < at; i++) {
	if ((unsigned char) p[i] >= 0x80) {
	    break;
	}
    }
    if (at == NULL || p + i < at) {
	*whyPtr = Tcl_ObjPrintf("the address %s has a non-ASCII local part"
		" and the server does not offer SMTPUTF8", p);
	return NULL;
    }
#ifdef HAVE_LIBIDN2
    {
	char *ascii = NULL;
	int rc = idn2_to_ascii_8z(at + 1, &ascii, IDN2_NONTRANSITIONAL);
	Tcl_Obj *r;

	if (rc != IDN2_OK) {
	    *whyPtr = Tcl_ObjPrintf("the domain of %s is not a valid"
		    " internationalised domain name: %s", p, idn2_strerror(rc));
	    return NULL;
	}
	r = Tcl_ObjPrintf("%.*s@%s", (int) (at - p), p, ascii);
	idn2_free(ascii);
	return r;
    }
#else
    *whyPtr = Tcl_ObjPrintf("the address %s has a non-ASCII domain, the"
	    " server does not offer SMTPUTF8, and this build has no libidn2"
	    " for A-labels", p);
    return NULL;
#endif
}

static Tcl_Obj *
RcptCommand(
    SmtpSession *s,
    Tcl_Obj *rcpt)
{
    Tcl_Obj *cmd = Tcl_ObjPrintf("RCPT TO:<%s>", Tcl_GetString(rcpt));

    if (s->dsn && s->opts->dsnnotify) {
	Tcl_AppendPrintfToObj(cmd, " NOTIFY=%s",
		Tcl_GetString(s->opts->dsnnotify));
    }
    if (s->dsn && s->opts->dsnorcpt) {
	Tcl_AppendToObj(cmd, NeedsUtf8(rcpt) ? " ORCPT=utf-8;"
		: " ORCPT=rfc822;", -1);
	AppendXtext(cmd, rcpt);
    }
    return cmd;
}

/*
 * The size of the message in the rendition being sent.
 */

static Tcl_WideInt
TxSize(
    SmtpSession *s)
{
    SmtpMessage *m = &s->msgs[s->cur];

    return s->txUtf8 ? m->size8 : m->size;
}

/*
 * Fails the transaction before MAIL: the message cannot be offered to this
 * server at all.
 */

static void
Refuse(
    SmtpSession *s,
    const char *stage,
    Tcl_Obj *msg)
{
    Tcl_IncrRefCount(msg);
    if (s->cur > 0) {
	BccFailed(s, 554, msg);
    } else {
	if (s->conn && (Owing(s) == 0 || Pipelining(s))) {
	    Put(s, EX_QUIT, WAIT_QUIT, "QUIT", 4);
	    SmtpConnFlush(s->conn);
	}
	FailLocal(s, stage, Tcl_GetString(msg));
    }
    Tcl_DecrRefCount(msg);
}

/*
 * MAIL FROM with the parameters the server's extensions call for, then
 * the recipients: one command at a time, or all in one write when the
 * server offers PIPELINING (RFC 2920). The message joins the batch only
 * when the replies to the envelope cannot decide against it beyond what
 * the server itself enforces: with one recipient (a refused RCPT leaves
 * none, and the server then refuses the message) or with -atleastone.
 * Otherwise tcllib's rule (no message when any recipient is refused)
 * needs every RCPT reply first. Without CHUNKING DATA joins the batch and
 * the message follows the 354; with CHUNKING (RFC 3030 section 4.2) the
 * whole message joins it in one BDAT LAST, QUIT behind it, when it is at
 * most EARLY_BODY_MAX octets: what a refusal wastes stays small.
 */

static void
StartTransaction(
    SmtpSession *s)
{
    SmtpMessage *m = &s->msgs[s->cur];
    Tcl_Obj *cmd, *limit = NULL, **rcpts;
    int utf8 = NeedsUtf8(m->sender), i, early;
    int behindRset = Owing(s) > 0;	/* A session's RSET leads. */
    Tcl_Size n;

    if (Tcl_ListObjGetElements(NULL, m->recipients, &s->nrcpts, &rcpts)
	    != TCL_OK) {
	s->nrcpts = 0;
    }
    for (i = 0; i < s->nrcpts; i++) {
	utf8 |= NeedsUtf8(rcpts[i]);
    }

    /*
     * SMTPUTF8 (RFC 6531) when the envelope needs it and the server
     * offers it; the message's headers are then written as UTF-8
     * (RFC 6532), else in their ASCII forms (smtpHdr.c). The choice is
     * made here, where the server's extensions are known, before the
     * message is read.
     */

    s->txUtf8 = utf8 && SmtpHasExtension(s->caps, "SMTPUTF8", NULL);
    if (m->body.utf8) {
	m->body.utf8(m->body.cd, s->txUtf8);
    }
    if (SmtpHasExtension(s->caps, "SIZE", &limit)) {
	Tcl_WideInt max = 0;

	Tcl_IncrRefCount(limit);
	if (Tcl_ListObjLength(NULL, limit, &n) == TCL_OK && n > 0) {
	    Tcl_Obj *v;

	    Tcl_ListObjIndex(NULL, limit, 0, &v);
	    if (Tcl_GetWideIntFromObj(NULL, v, &max) != TCL_OK) {
		max = 0;
	    }
	}
	Tcl_DecrRefCount(limit);
	if (max > 0 && TxSize(s) > max) {
	    Refuse(s, "SIZE", Tcl_ObjPrintf("message size %" TCL_LL_MODIFIER
		    "d exceeds the server's limit of %" TCL_LL_MODIFIER
		    "d octets", (long long) TxSize(s), (long long) max));
	    return;
	}
    }
    SetObj(&s->txSender, m->sender);
    SetObj(&s->txRcpts, m->recipients);
    if (utf8 && !SmtpHasExtension(s->caps, "SMTPUTF8", NULL)) {
	Tcl_Obj *why = NULL, *a, *list = Tcl_NewListObj(0, NULL);

	Tcl_IncrRefCount(list);
	a = AsciiAddress(m->sender, &why);
	if (a) {
	    SetObj(&s->txSender, a);
	}
	for (i = 0; a && i < s->nrcpts; i++) {
	    a = AsciiAddress(rcpts[i], &why);
	    if (a) {
		Tcl_ListObjAppendElement(NULL, list, a);
	    }
	}
	if (a == NULL) {
	    Tcl_DecrRefCount(list);
	    Refuse(s, "SMTPUTF8", why);
	    return;
	}
	SetObj(&s->txRcpts, list);
	Tcl_DecrRefCount(list);
	utf8 = 0;
    }
    s->dsn = SmtpHasExtension(s->caps, "DSN", NULL);
    if (!s->dsn && s->opts->debug && (s->opts->dsnnotify || s->opts->dsnret
	    || s->opts->dsnenvid || s->opts->dsnorcpt)) {
	Debug(s, Tcl_NewStringObj("    ... the server does not offer DSN:"
		" -dsn options left out ...", -1));
    }
    s->pipelining = SmtpHasExtension(s->caps, "PIPELINING", NULL);
    s->chunking = s->opts->chunking
	    && SmtpHasExtension(s->caps, "CHUNKING", NULL);
    cmd = Tcl_ObjPrintf("MAIL FROM:<%s>", Tcl_GetString(s->txSender));
    if (SmtpHasExtension(s->caps, "SIZE", NULL)) {
	Tcl_AppendPrintfToObj(cmd, " SIZE=%" TCL_LL_MODIFIER "d",
		(long long) TxSize(s));
    }
    if ((s->txUtf8 ? m->eightbit8 : m->eightbit)
	    && SmtpHasExtension(s->caps, "8BITMIME", NULL)) {
	Tcl_AppendToObj(cmd, " BODY=8BITMIME", -1);
    }
    if (s->txUtf8) {
	Tcl_AppendToObj(cmd, " SMTPUTF8", -1);
    }
    if (s->dsn && s->opts->dsnret) {
	Tcl_AppendPrintfToObj(cmd, " RET=%s",
		Tcl_GetString(s->opts->dsnret));
    }
    if (s->dsn && s->opts->dsnenvid) {
	Tcl_AppendToObj(cmd, " ENVID=", -1);
	AppendXtext(cmd, s->opts->dsnenvid);
    }
    s->rcptIdx = 0;
    s->good = s->bad = 0;
    s->mailCode = 0;
    s->pipeData = 0;
    s->pipeBody = 0;
    SetObj(&s->mailText, NULL);
    SetObj(&s->accepted, Tcl_NewListObj(0, NULL));
    SetObj(&s->txRefused, Tcl_NewListObj(0, NULL));
    Tcl_IncrRefCount(cmd);
    Put(s, EX_MAIL, WAIT_MAIL, Tcl_GetString(cmd), -1);
    Tcl_DecrRefCount(cmd);
    Tcl_ListObjGetElements(NULL, s->txRcpts, &n, &rcpts);
    if (s->pipelining) {
	for (i = 0; i < s->nrcpts; i++) {
	    Tcl_Obj *rc = RcptCommand(s, rcpts[i]);

	    Tcl_IncrRefCount(rc);
	    Put(s, EX_RCPT, WAIT_RCPT, Tcl_GetString(rc), -1);
	    Tcl_DecrRefCount(rc);
	}
	early = s->nrcpts == 1 || (s->opts->atleastone && s->nrcpts > 0);
	if (early && !s->chunking) {
	    Put(s, EX_DATA, WAIT_DATA, "DATA", 4);
	    s->pipeData = 1;
	} else if (early && TxSize(s) <= EARLY_BODY_MAX && !behindRset) {
	    /*
	     * Not behind a session's RSET: a connection lost before the
	     * RSET is answered is taken as nothing sent, and tried again.
	     */

	    s->pipeBody = 1;
	    StartBody(s);
	    if (s->state != ST_BODY) {
		return;		/* Failed, or cancelled by -progress. */
	    }
	    s->state = ST_MAIL;
	    ArmWait(s);
	    return;
	}
    }
    Flush(s, ST_MAIL);
}

static void
SendRcpt(
    SmtpSession *s)
{
    Tcl_Obj *rcpt, *cmd;

    Tcl_ListObjIndex(NULL, s->txRcpts, s->rcptIdx, &rcpt);
    cmd = RcptCommand(s, rcpt);
    Tcl_IncrRefCount(cmd);
    Send(s, ST_RCPT, EX_RCPT, WAIT_RCPT, Tcl_GetString(cmd), -1);
    Tcl_DecrRefCount(cmd);
}

static void QuitDebug(SmtpSession *s);

/*
 * After the last RCPT reply: send the message, or reset when tcllib's
 * rule says it must not go (no recipient accepted, or one refused without
 * -atleastone).
 */

static void
AfterRecipients(
    SmtpSession *s)
{
    if (s->good && (!s->bad || s->opts->atleastone)) {
	if (s->chunking) {
	    StartBody(s);
	} else {
	    Send(s, ST_DATA, EX_DATA, WAIT_DATA, "DATA", 4);
	}
    } else {
	Send(s, ST_RSET, EX_RSET, WAIT_RSET, "RSET", 4);
    }
}

/*
 * After the last RCPT reply when the message went in the batch: its BDAT
 * replies are next. When tcllib's rule says the message must not go
 * (none of the recipients accepted: the server refuses it too), those
 * replies are only read past, then the transaction ends as a refused one.
 */

static void
AfterEarlyBody(
    SmtpSession *s)
{
    if (s->mailCode != 250) {
	FailSaved(s, "MAIL", s->mailCode, s->mailEnh, s->mailText);
	return;
    }
    s->state = s->good && (!s->bad || s->opts->atleastone)
	    ? ST_BODY : ST_BDATDROP;
    ArmWait(s);
}

static void
EndTransaction(
    SmtpSession *s)
{
    Tcl_ListObjAppendList(NULL, s->refused, s->txRefused);
    SetObj(&s->txRefused, NULL);
    if (s->desync) {
	/*
	 * The message was accepted, but the server sent more than was
	 * asked: nothing more it says can be matched to a command. The
	 * connection is dropped; the message stays sent.
	 */

	CloseConn(s);
	if (++s->cur < s->nmsgs) {
	    SetObj(&s->txRefused, Tcl_NewListObj(0, NULL));
	    BccFailed(s, 400, Tcl_NewStringObj("the server sent a reply"
		    " that no command asked for", -1));
	} else if (s->keepOpen) {
	    s->state = ST_READY;
	    s->code = TCL_OK;
	    MarkDone(s);
	} else {
	    End(s, TCL_OK);
	}
	return;
    }
    if (++s->cur < s->nmsgs) {
	StartTransaction(s);
    } else if (s->keepOpen) {
	/* Done with these messages; the connection waits for more. */
	s->state = ST_READY;
	ArmWait(s);
	s->code = TCL_OK;
	MarkDone(s);
    } else if (s->quitSent) {
	/* QUIT went out with the message: its reply is next. */
	s->state = ST_QUIT;
	ArmWait(s);
    } else {
	Send(s, ST_QUIT, EX_QUIT, WAIT_QUIT, "QUIT", 4);
    }
}

/*
 * Ends the session when the only way out of a DATA is to drop the
 * connection: the refusals so far are the result.
 */

static void
EndTransactionDropped(
    SmtpSession *s)
{
    Tcl_ListObjAppendList(NULL, s->refused, s->txRefused);
    SetObj(&s->txRefused, NULL);
    CloseConn(s);
    End(s, TCL_OK);
}

/*
 * The reply to the final dot (or last BDAT) has come: with LMTP, one
 * reply per accepted recipient follows instead (RFC 2033).
 */

static void
AfterBody(
    SmtpSession *s)
{
    if (s->opts->debug && !s->chunking) {
	Debug(s, Tcl_ObjPrintf("--> . (wait upto %d seconds)",
		FinalBound(s)));
	if (s->quitSent) {
	    QuitDebug(s);
	}
    }
    s->lmtpIdx = 0;
    s->state = s->opts->lmtp ? ST_LMTP : ST_DOT;
    ArmWait(s);
}

/*
 * Tells -progress how far the message has gone: at most every 64 KB or
 * 100 ms, and once at the end. An error in the command is reported in the
 * background. Returns TCL_ERROR when the command cancelled the send.
 */

static int
Progress(
    SmtpSession *s)
{
    Tcl_Time now;
    long long ms;
    Tcl_Obj *cmd;

    Tcl_GetTime(&now);
    ms = (long long) now.sec * 1000 + now.usec / 1000;
    if (!s->bodyDone && s->sent - s->lastSent < 65536
	    && ms - s->lastTime < 100) {
	return TCL_OK;
    }
    s->lastSent = s->sent;
    s->lastTime = ms;
    cmd = Tcl_DuplicateObj(s->progress);
    Tcl_IncrRefCount(cmd);
    Tcl_ListObjAppendElement(NULL, cmd, Tcl_NewWideIntObj(s->sent));
    Tcl_ListObjAppendElement(NULL, cmd,
	    Tcl_NewWideIntObj(TxSize(s)));
    Tcl_Preserve(s->interp);
    if (Tcl_EvalObjEx(s->interp, cmd, TCL_EVAL_GLOBAL) != TCL_OK) {
	Tcl_BackgroundException(s->interp, TCL_ERROR);
    }
    Tcl_ResetResult(s->interp);
    Tcl_Release(s->interp);
    Tcl_DecrRefCount(cmd);
    return s->finished ? TCL_ERROR : TCL_OK;
}

/*
 * Whether QUIT may follow the last message in the same write (RFC 2920:
 * with PIPELINING, QUIT may end a group, and the message's content may
 * begin one): after the last message of a one-shot send, not on a kept
 * connection and not with LMTP, whose replies per recipient come first.
 * The message's reply is still awaited and reported; the one round trip
 * saved is QUIT's.
 */

static int
QuitBehind(
    SmtpSession *s)
{
    return s->pipelining && !s->keepOpen && !s->opts->lmtp
	    && s->cur == s->nmsgs - 1;
}

static void
QuitDebug(
    SmtpSession *s)
{
    if (s->opts->debug) {
	Debug(s, Tcl_ObjPrintf("--> QUIT (wait upto %d seconds)",
		Shown(s, WAIT_QUIT)));
    }
}

/*
 * Writes the message, pulled from its source and encoded for DATA (or cut
 * into BDAT chunks), as fast as the socket takes it without holding more
 * than a chunk or two in memory.
 */

static void
PumpBody(
    SmtpSession *s)
{
    SmtpSource *src = &s->msgs[s->cur].body;

    while (!s->bodyDone && SmtpConnPending(s->conn) < BODY_CHUNK
	    && (s->pipelining || Owing(s) == 0)) {
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
	s->sent += (Tcl_WideInt) SmtpBufAvail(&s->raw);
	s->out.pos = s->out.len = 0;
	if (src->clean) {
	    SmtpDataEncodeClean(&s->enc, SmtpBufPtr(&s->raw),
		    SmtpBufAvail(&s->raw), &s->out);
	} else {
	    SmtpDataEncode(&s->enc, SmtpBufPtr(&s->raw),
		    SmtpBufAvail(&s->raw), &s->out);
	}
	if (s->bodyDone) {
	    SmtpDataFinish(&s->enc, &s->out);
	}
	if (s->chunking) {
	    char head[64];

	    snprintf(head, sizeof(head), "BDAT %lu%s",
		    (unsigned long) SmtpBufAvail(&s->out),
		    s->bodyDone ? " LAST" : "");
	    Put(s, s->bodyDone ? EX_BDATLAST : EX_BDAT, WAIT_DATA, head, -1);
	}
	SmtpConnWrite(s->conn, SmtpBufPtr(&s->out), SmtpBufAvail(&s->out));
	if (s->bodyDone && !s->chunking) {
	    Owe(s, EX_DOT, FinalBound(s));
	}
	if (s->bodyDone && QuitBehind(s)) {
	    SmtpConnWrite(s->conn, "QUIT\r\n", 6);
	    Owe(s, EX_QUIT, Bound(s, WAIT_QUIT));
	    s->quitSent = 1;
	    if (s->chunking) {
		QuitDebug(s);
	    }
	}
	if (SmtpConnFlush(s->conn) != TCL_OK) {
	    OnClosed(s, SmtpConnError(s->conn));
	    return;
	}
	if (s->progress && Progress(s) != TCL_OK) {
	    return;
	}
    }
    if (!s->bodyDone) {
	ArmWait(s);
	SmtpConnWantWritable(s->conn, s->pipelining || Owing(s) == 0);
	return;
    }
    SmtpConnWantWritable(s->conn, 0);
    SmtpBufFree(&s->raw);
    SmtpBufFree(&s->out);
    if (!s->chunking) {
	AfterBody(s);
    } else {
	ArmWait(s);
    }
}

static void
StartBody(
    SmtpSession *s)
{
    s->sent = s->lastSent = 0;
    s->lastTime = 0;
    s->state = ST_BODY;
    s->bodyDone = 0;
    if (s->chunking) {
	SmtpDataInitBdat(&s->enc);
    } else {
	SmtpDataInit(&s->enc);
    }
    PumpBody(s);
}

/*
 * A reply to BDAT. The last one ends the message like the reply to the
 * final dot.
 */

static void OnLmtpReply(SmtpSession *s, SmtpReply *r);

static void
OnBdatReply(
    SmtpSession *s,
    SmtpReply *r,
    Expect kind)
{
    if (kind == EX_BDATLAST && s->opts->lmtp) {
	/* RFC 2033 with RFC 3030: one reply per accepted recipient. */
	AfterBody(s);
	OnLmtpReply(s, r);
	return;
    }
    if (r->code != 250) {
	FailReply(s, "DATA", r);
	return;
    }
    if (!s->bodyDone) {
	PumpBody(s);
	return;
    }
    if (kind == EX_BDATLAST) {
	SetObj(&s->lastReply, Tcl_ObjPrintf("%d %s", r->code,
		Tcl_GetString(SmtpReplyDiagnostic(r))));
	AfterBody(s);
	EndTransaction(s);
    }
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
    SmtpConnSetTimeout(s->conn, Bound(s, WAIT_EHLO));
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
    if (s->opts->tlspolicy && Tcl_GetCharLength(s->opts->tlspolicy) > 0) {
	s->clearAccepted = 1;
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
 * SMTP AUTH (RFC 4954).
 */

/*
 * The mechanisms the server offers, from "AUTH a b" and the old
 * "AUTH=a b" lines, upper-cased.
 */

static Tcl_Obj *
OfferedMechanisms(
    SmtpSession *s)
{
    Tcl_Obj *r = Tcl_NewListObj(0, NULL), **lines;
    Tcl_Size n, i;

    if (s->caps == NULL
	    || Tcl_ListObjGetElements(NULL, s->caps, &n, &lines) != TCL_OK) {
	return r;
    }
    for (i = 0; i < n; i++) {
	const char *l = Tcl_GetString(lines[i]);

	if (Tcl_UtfNcasecmp(l, "AUTH", 4) == 0 && (l[4] == ' '
		|| l[4] == '=')) {
	    const char *q = l + 5;

	    while (*q) {
		const char *e;

		while (*q == ' ') {
		    q++;
		}
		e = q;
		while (*e && *e != ' ') {
		    e++;
		}
		if (e > q) {
		    /*
		     * ASCII letters only (SASL names are ASCII): the server's
		     * bytes need not be UTF-8, and Tcl_UtfToUpper writes past
		     * the end of a string that ends inside a sequence.
		     */

		    Tcl_DString ds;
		    char *b;
		    Tcl_Size k;

		    Tcl_DStringInit(&ds);
		    b = Tcl_DStringAppend(&ds, q, (Tcl_Size) (e - q));
		    for (k = 0; k < Tcl_DStringLength(&ds); k++) {
			if (b[k] >= 'a' && b[k] <= 'z') {
			    b[k] = (char) (b[k] - 'a' + 'A');
			}
		    }
		    Tcl_ListObjAppendElement(NULL, r, Tcl_NewStringObj(b,
			    Tcl_DStringLength(&ds)));
		    Tcl_DStringFree(&ds);
		}
		q = e;
	    }
	}
    }
    return r;
}

static int
InList(
    Tcl_Obj *list,
    const char *word)
{
    Tcl_Size n, i;
    Tcl_Obj **elems;

    Tcl_ListObjGetElements(NULL, list, &n, &elems);
    for (i = 0; i < n; i++) {
	if (Tcl_UtfNcasecmp(Tcl_GetString(elems[i]), word,
		(unsigned long) strlen(word) + 1) == 0) {
	    return 1;
	}
    }
    return 0;
}

static int
IsOauth(
    const char *mech)
{
    return strcmp(mech, "XOAUTH2") == 0 || strcmp(mech, "OAUTHBEARER") == 0;
}

static void TryNextMechanism(SmtpSession *s);

/*
 * Decides whether to authenticate, and starts. Returns 1 when it has taken
 * over (AUTH sent, or the session failed), 0 to go on without AUTH.
 */

static int
StartAuth(
    SmtpSession *s)
{
    Tcl_Obj *offered, *order, **names, *list;
    Tcl_Size n, i;
    int token = s->opts->oauthtoken
	    && Tcl_GetCharLength(s->opts->oauthtoken) > 0;

    if (s->opts->username == NULL
	    || Tcl_GetCharLength(s->opts->username) == 0) {
	return 0;
    }
    offered = OfferedMechanisms(s);
    Tcl_IncrRefCount(offered);
    Tcl_ListObjLength(NULL, offered, &n);
    if (n == 0) {
	Tcl_DecrRefCount(offered);
	if (s->opts->debug) {
	    Debug(s, Tcl_NewStringObj("    ... credentials given, but the"
		    " server offers no AUTH: going on without ...", -1));
	}
	return 0;
    }

    /*
     * Credentials are not sent in the clear by surprise: only over TLS, to
     * a loopback server, with -usetls 0, or when the policy agreed.
     */

    if (!s->tlsActive && s->opts->usetls && !s->clearAccepted
	    && !(SmtpConnPeerIsLoopback(s->conn) && !Tcl_GetAssocData(
		s->interp, SMTP_NOLOOPBACK_KEY, NULL))) {
	Tcl_Obj *why = Tcl_ObjPrintf("%s offers no STARTTLS: credentials"
		" would be sent in the clear (-usetls 0 allows it)",
		Tcl_GetString(s->host));

	Tcl_IncrRefCount(why);
	if (s->opts->tlspolicy == NULL
		|| Tcl_GetCharLength(s->opts->tlspolicy) == 0
		|| !AskPolicy(s, 538, why, 0)) {
	    Tcl_DecrRefCount(offered);
	    ServerFailed(s, "AUTH", why);
	    Tcl_DecrRefCount(why);
	    return 1;
	}
	Tcl_DecrRefCount(why);
    }

    list = Tcl_NewListObj(0, NULL);
    if (s->opts->authmechs) {
	order = s->opts->authmechs;
    } else {
	const char *const *m = SmtpSaslMechanisms();

	order = Tcl_NewListObj(0, NULL);
	for (; *m; m++) {
	    if (IsOauth(*m) == token) {
		Tcl_ListObjAppendElement(NULL, order, Tcl_NewStringObj(*m, -1));
	    }
	}
    }
    Tcl_IncrRefCount(order);
    Tcl_ListObjGetElements(NULL, order, &n, &names);
    for (i = 0; i < n; i++) {
	if (InList(offered, Tcl_GetString(names[i]))) {
	    Tcl_ListObjAppendElement(NULL, list, names[i]);
	}
    }
    Tcl_DecrRefCount(order);
    Tcl_DecrRefCount(offered);
    SetObj(&s->authList, list);
    s->authCode = 0;
    SetObj(&s->authText, NULL);
    Tcl_ListObjLength(NULL, list, &n);
    if (n == 0) {
	FailLocal(s, "AUTH", "the server offers no authentication mechanism"
		" that is allowed and supported");
	return 1;
    }
    TryNextMechanism(s);
    return 1;
}

/*
 * Every mechanism has been refused: the error carries the last reply.
 */

static void
AuthRefused(
    SmtpSession *s)
{
    FailSaved(s, "AUTH", s->authCode, s->authEnh, s->authText);
}

/*
 * Sends a SASL response (base64) without showing it under -debug.
 */

static void
SendSecret(
    SmtpSession *s,
    const char *prefix,
    SmtpBuf *raw,
    int hasRaw)
{
    SmtpBuf line;

    SmtpBufInit(&line);
    SmtpBufAppendStr(&line, prefix);
    if (hasRaw) {
	if (*prefix) {
	    SmtpBufAppend(&line, " ", 1);
	}
	if (SmtpBufAvail(raw) == 0 && *prefix) {
	    SmtpBufAppend(&line, "=", 1);	/* An empty initial response. */
	} else {
	    SmtpBase64Encode(SmtpBufPtr(raw), SmtpBufAvail(raw), &line);
	}
    }
    if (s->opts->debug) {
	Debug(s, Tcl_ObjPrintf("--> %s%s (wait upto %d seconds)", prefix,
		hasRaw ? (*prefix ? " ****" : "****") : "",
		Shown(s, WAIT_EHLO)));
    }
    SmtpConnWrite(s->conn, SmtpBufPtr(&line), SmtpBufAvail(&line));
    SmtpConnWrite(s->conn, "\r\n", 2);
    SmtpSaslBufWipe(&line);
    SmtpBufFree(&line);
    Owe(s, EX_AUTH, Bound(s, WAIT_EHLO));
    Flush(s, ST_AUTH);
}

static void
TryNextMechanism(
    SmtpSession *s)
{
    Tcl_Obj *mech, *err = NULL;
    SmtpSaslCreds cr;
    SmtpBuf initial;
    int hasInitial = 0;
    Tcl_Size n;
    char prefix[64];

    if (s->sasl) {
	SmtpSaslFree(s->sasl);
	s->sasl = NULL;
    }
    Tcl_ListObjLength(NULL, s->authList, &n);
    if (n == 0) {
	AuthRefused(s);
	return;
    }
    Tcl_ListObjIndex(NULL, s->authList, 0, &mech);
    Tcl_IncrRefCount(mech);
    Tcl_ListObjReplace(NULL, s->authList, 0, 1, 0, NULL);
    memset(&cr, 0, sizeof(cr));
    cr.username = Tcl_GetString(s->opts->username);
    cr.password = s->opts->password ? Tcl_GetString(s->opts->password) : "";
    cr.oauthToken = s->opts->oauthtoken
	    ? Tcl_GetString(s->opts->oauthtoken) : NULL;
    cr.service = "smtp";
    cr.host = Tcl_GetString(s->servername ? s->servername : s->host);
    s->sasl = SmtpSaslNew(Tcl_GetString(mech), &cr, &err);
    if (s->sasl == NULL) {
	Tcl_IncrRefCount(err);
	if (s->opts->debug) {
	    Debug(s, Tcl_ObjPrintf("    ... %s ...", Tcl_GetString(err)));
	}
	Tcl_DecrRefCount(err);
	Tcl_DecrRefCount(mech);
	TryNextMechanism(s);
	return;
    }
    s->authMech = NULL;
    snprintf(prefix, sizeof(prefix), "AUTH %s", Tcl_GetString(mech));
    Tcl_DecrRefCount(mech);
    SmtpBufInit(&initial);
    if (SmtpSaslStart(s->sasl, &initial, &hasInitial, &err) != 0) {
	SmtpBufFree(&initial);
	Tcl_IncrRefCount(err);
	FailLocal(s, "AUTH", Tcl_GetString(err));
	Tcl_DecrRefCount(err);
	return;
    }
    SendSecret(s, prefix, &initial, hasInitial);
    SmtpSaslBufWipe(&initial);
    SmtpBufFree(&initial);
}

/*
 * A reply during AUTH: a challenge, success, or refusal.
 */

static void
OnAuthReply(
    SmtpSession *s,
    SmtpReply *r)
{
    Tcl_Obj *err = NULL;

    if (r->code == 334) {
	SmtpBuf challenge, response;
	Tcl_Size len;
	const char *text = Tcl_GetStringFromObj(SmtpReplyDiagnostic(r), &len);

	SmtpBufInit(&challenge);
	SmtpBufInit(&response);
	if (SmtpBase64Decode(text, (size_t) len, &challenge) != 0) {
	    err = Tcl_NewStringObj("the server's challenge is not valid"
		    " base64", -1);
	} else if (SmtpSaslStep(s->sasl, SmtpBufPtr(&challenge),
		SmtpBufAvail(&challenge), &response, &err) == 0) {
	    SendSecret(s, "", &response, 1);
	    SmtpSaslBufWipe(&response);
	    SmtpBufFree(&response);
	    SmtpBufFree(&challenge);
	    return;
	}
	SmtpSaslBufWipe(&response);
	SmtpBufFree(&response);
	SmtpBufFree(&challenge);

	/* Cancel the exchange (RFC 4954 "*") and give up. */
	Tcl_IncrRefCount(err);
	if (s->opts->debug) {
	    Debug(s, Tcl_NewStringObj("--> * (wait upto 0 seconds)", -1));
	}
	SmtpConnWrite(s->conn, "*\r\n", 3);
	SmtpConnFlush(s->conn);
	FailLocal(s, "AUTH", Tcl_GetString(err));
	Tcl_DecrRefCount(err);
	return;
    }
    if (r->code == 235) {
	SmtpBuf data;
	Tcl_Size len;
	const char *text = Tcl_GetStringFromObj(SmtpReplyDiagnostic(r), &len);
	int has, bad;

	/*
	 * A server may put SCRAM's final message in the 235 (RFC 4954
	 * allows additional data there); a text that is not base64 is none.
	 */

	SmtpBufInit(&data);
	has = SmtpBase64Decode(text, (size_t) len, &data) == 0;
	bad = SmtpSaslFinish(s->sasl, has ? SmtpBufPtr(&data) : NULL,
		has ? SmtpBufAvail(&data) : 0, &err) != 0;
	SmtpBufFree(&data);
	if (bad) {
	    Tcl_IncrRefCount(err);
	    Abort(s);
	    FailLocal(s, "AUTH", Tcl_GetString(err));
	    Tcl_DecrRefCount(err);
	    return;
	}
	SmtpSaslFree(s->sasl);
	s->sasl = NULL;
	if (s->opts->debug) {
	    Debug(s, Tcl_NewStringObj("    ... authenticated ...", -1));
	}
	AfterHello(s);
	return;
    }
    s->authCode = r->code;
    memcpy(s->authEnh, r->enhanced, sizeof(s->authEnh));
    SetObj(&s->authText, SmtpReplyDiagnostic(r));
    TryNextMechanism(s);
}

/*
 * LMTP's reply for one accepted recipient after the message (RFC 2033),
 * in the order of the recipients.
 */

static void
OnLmtpReply(
    SmtpSession *s,
    SmtpReply *r)
{
    Tcl_Size na = 0;

    Tcl_ListObjLength(NULL, s->accepted, &na);
    if (r->code != 250 && r->code != 251 && s->lmtpIdx < na) {
	Tcl_Obj *rcpt;

	Tcl_ListObjIndex(NULL, s->accepted, s->lmtpIdx, &rcpt);
	AddRefused(s->txRefused, rcpt, r->code, SmtpReplyDiagnostic(r));
    }
    if (++s->lmtpIdx >= na) {
	SetObj(&s->lastReply, Tcl_ObjPrintf("%d %s", r->code,
		Tcl_GetString(SmtpReplyDiagnostic(r))));
	EndTransaction(s);
    } else {
	ArmWait(s);
    }
}

/*
 * After EHLO (again after TLS): ONEX and QUED as tcllib does, then AUTH,
 * then the first transaction. Each step's reply calls this again.
 */

static void
AfterHello(
    SmtpSession *s)
{
    switch (s->helloStep) {
    case 0:
	s->helloStep = 1;
	if (!s->opts->multiple && SmtpHasExtension(s->caps, "ONEX", NULL)) {
	    Send(s, ST_ONEX, EX_ONEX, WAIT_EHLO, "ONEX", 4);
	    return;
	}
	/* FALLTHRU */
    case 1:
	s->helloStep = 2;
	if (s->opts->queue && SmtpHasExtension(s->caps, "XQUE", NULL)) {
	    Send(s, ST_QUED, EX_QUED, WAIT_EHLO, "QUED", 4);
	    return;
	}
	/* FALLTHRU */
    case 2:
	s->helloStep = 3;
	if (StartAuth(s)) {
	    return;
	}
	/* FALLTHRU */
    default:
	s->cur = 0;
	StartTransaction(s);
    }
}

/*
 * One complete reply from the server, in the current state.
 */

static void
OnReply(
    SmtpSession *s,
    SmtpReply *r,
    Expect kind)
{
    switch (s->state) {
    case ST_GREETING:
	if (r->code == 220) {
	    SendObj(s, ST_EHLO, EX_EHLO, WAIT_EHLO, Tcl_ObjPrintf("%s %s",
		    s->opts->lmtp ? "LHLO" : "EHLO",
		    Tcl_GetString(s->opts->client)));
	} else {
	    ServerFailed(s, "GREETING", Tcl_ObjPrintf("greeting: %d %s",
		    r->code, Tcl_GetString(SmtpReplyDiagnostic(r))));
	}
	break;
    case ST_EHLO:
	if (r->code == 250) {
	    SetObj(&s->caps, r->lines);
	    s->helloStep = 0;
	    if (s->opts->usetls && !s->tlsActive && !s->clearOnly
		    && !s->opts->tlsimport
		    && (SmtpHasExtension(s->caps, "STARTTLS", NULL)
			|| SmtpHasExtension(s->caps, "TLS", NULL))) {
		Send(s, ST_STARTTLS, EX_STARTTLS, WAIT_EHLO, "STARTTLS", 8);
		break;
	    }
	    AfterHello(s);
	} else if (r->code >= 500 && r->code <= 599 && !s->opts->lmtp) {
	    SendObj(s, ST_HELO, EX_HELO, WAIT_EHLO, Tcl_ObjPrintf("HELO %s",
		    Tcl_GetString(s->opts->client)));
	} else {
	    ServerFailed(s, "EHLO", Tcl_ObjPrintf("EHLO: %d %s", r->code,
		    Tcl_GetString(SmtpReplyDiagnostic(r))));
	}
	break;
    case ST_HELO:
	if (r->code == 250) {
	    SetObj(&s->caps, Tcl_NewListObj(0, NULL));
	    s->helloStep = 0;
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
    case ST_AUTH:
	OnAuthReply(s, r);
	break;
    case ST_MAIL:
	if (kind == EX_RSET) {
	    /* The reply to the RSET that led the batch. */
	    if (r->code != 250) {
		Reconnect(s, Tcl_ObjPrintf("RSET: %d %s", r->code,
			Tcl_GetString(SmtpReplyDiagnostic(r))));
	    }
	    break;
	}
	s->mailCode = r->code;
	memcpy(s->mailEnh, r->enhanced, sizeof(s->mailEnh));
	SetObj(&s->mailText, SmtpReplyDiagnostic(r));
	if (r->code != 250 && !s->pipelining) {
	    FailReply(s, "MAIL", r);
	} else if (s->nrcpts > 0) {
	    if (s->pipelining) {
		s->state = ST_RCPT;
		ArmWait(s);
	    } else {
		SendRcpt(s);
	    }
	} else if (r->code != 250) {
	    FailReply(s, "MAIL", r);
	} else {
	    AfterRecipients(s);
	}
	break;
    case ST_RCPT:
	if (r->code == 250 || r->code == 251) {
	    Tcl_Obj *rcpt;

	    Tcl_ListObjIndex(NULL, s->msgs[s->cur].recipients, s->rcptIdx,
		    &rcpt);
	    Tcl_ListObjAppendElement(NULL, s->accepted, rcpt);
	    s->good++;
	} else if (s->mailCode == 250) {
	    Tcl_Obj *rcpt;

	    Tcl_ListObjIndex(NULL, s->msgs[s->cur].recipients, s->rcptIdx,
		    &rcpt);
	    AddRefused(s->txRefused, rcpt, r->code, SmtpReplyDiagnostic(r));
	    s->bad++;
	}
	if (++s->rcptIdx < s->nrcpts) {
	    if (s->pipelining) {
		ArmWait(s);
	    } else {
		SendRcpt(s);
	    }
	} else if (s->pipeData) {
	    s->state = ST_DATA;
	    ArmWait(s);
	} else if (s->pipeBody) {
	    AfterEarlyBody(s);
	} else if (s->mailCode != 250) {
	    FailSaved(s, "MAIL", s->mailCode, s->mailEnh, s->mailText);
	} else {
	    AfterRecipients(s);
	}
	break;
    case ST_DATA:
	if (s->mailCode != 250) {
	    if (r->code == 354) {
		/*
		 * The pipelined DATA was accepted although MAIL was not:
		 * anything written now would be message text, so the
		 * connection is dropped without the final dot.
		 */
		CloseConn(s);
	    }

	    FailSaved(s, "MAIL", s->mailCode, s->mailEnh, s->mailText);
	} else if (r->code == 354 && s->good > 0) {
	    StartBody(s);
	} else if (r->code == 354) {
	    /*
	     * Pipelined DATA accepted with no recipient: the message must
	     * not go, and DATA cannot be taken back, so the connection is
	     * closed without the final dot (the server discards it).
	     */
	    EndTransactionDropped(s);
	} else if (s->pipeData && s->good == 0) {
	    /* RFC 2920: DATA refused because every RCPT was. */
	    Send(s, ST_RSET, EX_RSET, WAIT_RSET, "RSET", 4);
	} else {
	    FailReply(s, "DATA", r);
	}
	break;
    case ST_DOT:
	if (r->code == 250 || r->code == 251) {
	    SetObj(&s->lastReply, Tcl_ObjPrintf("%d %s", r->code,
		    Tcl_GetString(SmtpReplyDiagnostic(r))));
	    EndTransaction(s);
	} else {
	    FailReply(s, "DATA", r);
	}
	break;
    case ST_LMTP:
	OnLmtpReply(s, r);
	break;
    case ST_RSET:
	EndTransaction(s);
	break;
    case ST_BDATDROP:
	if (kind != EX_BDATLAST) {
	    break;
	}
	if (s->quitSent) {
	    EndTransaction(s);
	} else {
	    Send(s, ST_RSET, EX_RSET, WAIT_RSET, "RSET", 4);
	}
	break;
    case ST_READY:
	/* Unasked: a 421 as the server goes away. Reconnect next time. */
	CloseConn(s);
	break;
    case ST_RSETNEXT:
	if (r->code == 250) {
	    s->cur = 0;
	    StartTransaction(s);
	} else {
	    Reconnect(s, Tcl_ObjPrintf("RSET: %d %s", r->code,
		    Tcl_GetString(SmtpReplyDiagnostic(r))));
	}
	break;
    case ST_QUIT:
	Finish(s);
	break;
    case ST_BODY:
	OnBdatReply(s, r, kind);
	break;
    default:
	break;
    }
}

/*
 * A kept-open connection turned out dead (closed, 421) before anything of
 * the next message was sent: connect again, once. Nothing can be sent
 * twice, since MAIL had not gone out.
 */

static void
Reconnect(
    SmtpSession *s,
    Tcl_Obj *why)
{
    Tcl_IncrRefCount(why);
    CloseConn(s);
    if (s->retried) {
	FailLocal(s, "EOF", Tcl_GetString(why));
    } else {
	if (s->opts->debug) {
	    Debug(s, Tcl_ObjPrintf("    ... %s: connecting again ...",
		    Tcl_GetString(why)));
	}
	s->retried = 1;
	s->serverIdx = 0;
	TryNextServer(s);
    }
    Tcl_DecrRefCount(why);
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
    Owe(s, EX_GREETING, Bound(s, WAIT_GREETING));
    ArmWait(s);
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
	Owe(s, EX_GREETING, Bound(s, WAIT_GREETING));
	ArmWait(s);
    } else {
	/* RFC 3207: forget what was heard before TLS; say EHLO again. */
	SetObj(&s->caps, NULL);
	SendObj(s, ST_EHLO, EX_EHLO, WAIT_EHLO, Tcl_ObjPrintf("%s %s",
		s->opts->lmtp ? "LHLO" : "EHLO",
		Tcl_GetString(s->opts->client)));
    }
}

/*
 * The server has broken the dialogue: a reply that cannot be read, or one
 * that no command asked for ('kind' is the command it came with). Nothing
 * more it says can be matched to a command, so the connection is dropped.
 * While the session is set up the next server is tried; a kept connection
 * being reset is opened again; once the message has been accepted (QUIT's
 * reply) nothing is wrong; else the message is not sent: an error naming
 * the stage (after the main message, the blind copies are refused).
 */

static void
ProtocolError(
    SmtpSession *s,
    Expect kind,
    Tcl_Obj *why)
{
    Tcl_IncrRefCount(why);
    if (s->opts->debug) {
	Debug(s, Tcl_ObjPrintf("    ... %s: %s ...", expectStage[kind],
		Tcl_GetString(why)));
    }
    if (s->state == ST_QUIT || kind == EX_QUIT) {
	Finish(s);
    } else if (s->state == ST_RSETNEXT) {
	Reconnect(s, why);
    } else if (kind <= EX_STARTTLS) {
	ServerFailed(s, expectStage[kind], why);
    } else if (s->cur > 0) {
	CloseConn(s);
	BccFailed(s, 400, why);
    } else {
	FailLocal(s, expectStage[kind], Tcl_GetString(why));
    }
    Tcl_DecrRefCount(why);
}

/*
 * Bytes from the server: each complete reply answers the head of the
 * ledger. A reply when none is owed, or more replies in one read than
 * were owed when the last of them was taken (a 250 sent with the 354
 * before any of the message, say), broke the dialogue.
 */

static void
OnBytes(
    void *cd,
    const unsigned char *p,
    size_t n)
{
    SmtpSession *s = (SmtpSession *) cd;
    SmtpConn *conn = s->conn;

    if (s->state == ST_READY) {
	/*
	 * A kept connection, nothing asked: a 421 as the server goes away,
	 * or worse. The next send connects again.
	 */

	if (s->opts->debug) {
	    Debug(s, Tcl_ObjPrintf("<-- %.*s", (int) (n > 512 ? 512 : n),
		    (const char *) p));
	}
	CloseConn(s);
	return;
    }
    while (n > 0 && !s->finished && s->conn == conn) {
	SmtpReply r;
	size_t used;
	Tcl_Obj *err = NULL;
	Owed *head;
	Expect kind;
	int st;

	SmtpReplyInit(&r);
	st = SmtpReplyParse(&s->parser, p, n, &used, &r, &err);
	p += used;
	n -= used;
	if (st == SMTP_PARSE_MORE) {
	    break;
	}
	head = OwedHead(s);
	if (st == SMTP_PARSE_ERROR) {
	    if (s->opts->debug) {
		Debug(s, Tcl_ObjPrintf("<-- %s", Tcl_GetString(err)));
	    }
	    ProtocolError(s, head ? head->kind : s->lastKind, err);
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
	if (head == NULL) {
	    if (s->state == ST_BODY && !s->chunking && r.code >= 400) {
		/* A refusal before the message has been written. */
		FailReply(s, "DATA", &r);
	    } else {
		ProtocolError(s, s->lastKind, Tcl_ObjPrintf("the server sent"
			" a reply that no command asked for: %d %s", r.code,
			Tcl_GetString(SmtpReplyDiagnostic(&r))));
	    }
	    SmtpReplyClear(&r);
	    break;
	}
	if (IsFinal(head->kind) && head->secs == 0) {
	    /* -maxsecs 0: the wait for the final reply ends at once. */
	    SmtpReplyClear(&r);
	    OnTimeout(s);
	    break;
	}
	if (s->state == ST_STARTTLS && r.code == 220 && n > 0) {
	    /*
	     * Bytes after the 220 came before the handshake, in the clear:
	     * someone is injecting commands (CVE-2011-0411 class).
	     */

	    SmtpReplyClear(&r);
	    FailLocal(s, "TLS", "server sent data after its 220 reply to"
		    " STARTTLS: plaintext injection, connection dropped");
	    break;
	}
	kind = Settle(s);
	if (n > 0 && Owing(s) == 0 && kind != EX_QUIT) {
	    if (IsFinal(kind)) {
		/* The verdict on the message stands; the connection not. */
		s->desync = 1;
	    } else {
		ProtocolError(s, kind, Tcl_ObjPrintf("the server sent more"
			" replies than commands were given, after: %d %s",
			r.code, Tcl_GetString(SmtpReplyDiagnostic(&r))));
		SmtpReplyClear(&r);
		break;
	    }
	}
	OnReply(s, &r, kind);
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
    case ST_READY:
	CloseConn(s);
	break;
    case ST_RSETNEXT:
	Reconnect(s, Tcl_NewStringObj(why, -1));
	break;
    default:
	if (Owing(s) > 0 && OwedHead(s)->kind == EX_RSET) {
	    /* Gone before even the RSET was answered: nothing was sent. */
	    Reconnect(s, Tcl_NewStringObj(why, -1));
	} else {
	    FailLocal(s, "EOF", why);
	}
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
    case ST_RSETNEXT:
	Reconnect(s, Tcl_NewStringObj(why, -1));
	break;
    case ST_BODY:
	FailLocal(s, "TIMEOUT", s->bodyDone ? why
		: "write to server timed out");
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
    SmtpSessionConnect(s);
    return SmtpSessionWait(s);
}

/*
 * Starts connecting to the first server and returns at once, without
 * serving any event: SmtpSessionWait goes on from there. The messages
 * are first read when the server has answered EHLO, so the caller may
 * still be writing them meanwhile.
 */

void
SmtpSessionConnect(
    SmtpSession *s)
{
    TryNextServer(s);
}

/*
 * Starts the session and returns at once; 'done' is called from the event
 * loop when it has finished (SmtpSessionResult then tells how).
 */

void
SmtpSessionStart(
    SmtpSession *s,
    SmtpDoneProc *done,
    void *cd)
{
    s->done = done;
    s->doneCd = cd;
    TryNextServer(s);
}

void
SmtpSessionSetProgress(
    SmtpSession *s,
    Tcl_Obj *cmd)
{
    SetObj(&s->progress, cmd);
}

/*
 * How a finished session ended: TCL_OK with the refused recipients and
 * the final reply, or TCL_ERROR with the message and error code. The
 * objects belong to the session.
 */

int
SmtpSessionResult(
    SmtpSession *s,
    Tcl_Obj **refusedPtr,
    Tcl_Obj **replyPtr,
    Tcl_Obj **msgPtr,
    Tcl_Obj **codePtr)
{
    *refusedPtr = s->refused;
    *replyPtr = s->lastReply;
    *msgPtr = s->errMsg;
    *codePtr = s->errCode;
    return s->code;
}

/*
 * Stops a session that has not finished: a transaction under way is
 * reset (RSET, QUIT) and the connection closed. Its 'done' still comes.
 */

void
SmtpSessionCancel(
    SmtpSession *s)
{
    if (s->finished) {
	return;
    }
    if (s->conn && s->state >= ST_GREETING && s->state != ST_BODY
	    && s->state != ST_TLS) {
	Abort(s);
    } else {
	CloseConn(s);
    }
    SetObj(&s->errMsg, Tcl_NewStringObj("cancelled", -1));
    SetObj(&s->errCode, Tcl_NewStringObj("SMTP CANCELLED {} {} cancelled",
	    -1));
    End(s, TCL_BREAK);
}

/*
 * Sessions: one connection for many messages.
 */

void
SmtpSessionKeepOpen(
    SmtpSession *s)
{
    s->keepOpen = 1;
}

int
SmtpSessionConnected(
    SmtpSession *s)
{
    return s->conn != NULL && s->state == ST_READY;
}

/*
 * Gives a session more messages (with the options of their send): over
 * the open connection after RSET, or on a new one (reconnecting once when
 * the kept one turns out dead). SmtpSessionWait then runs it.
 */

void
SmtpSessionSubmit(
    SmtpSession *s,
    SmtpOptions *opts,
    SmtpMessage *msgs,
    int nmsgs)
{
    s->opts = opts;
    s->msgs = msgs;
    s->nmsgs = nmsgs;
    s->cur = 0;
    s->finished = 0;
    s->code = TCL_OK;
    s->retried = 0;
    SetObj(&s->refused, Tcl_NewListObj(0, NULL));
    SetObj(&s->errMsg, NULL);
    SetObj(&s->errCode, NULL);
    SetObj(&s->lastReply, NULL);
    if (s->conn && s->state == ST_READY) {
	if (SmtpHasExtension(s->caps, "PIPELINING", NULL)) {
	    /* RFC 2920: RSET may lead the batch of MAIL and RCPT. */
	    Put(s, EX_RSET, WAIT_RSET, "RSET", 4);
	    StartTransaction(s);
	} else {
	    Send(s, ST_RSETNEXT, EX_RSET, WAIT_RSET, "RSET", 4);
	}
	return;
    }
    CloseConn(s);
    SetObj(&s->tried, Tcl_NewListObj(0, NULL));
    ServerLists(s, opts);
    s->serverIdx = 0;
    s->retried = 1;		/* A fresh connection: no second try. */
    TryNextServer(s);
}

/*
 * Submits in the background: 'done' is called when the messages are done
 * (for this submission only).
 */

void
SmtpSessionSubmitAsync(
    SmtpSession *s,
    SmtpOptions *opts,
    SmtpMessage *msgs,
    int nmsgs,
    SmtpDoneProc *done,
    void *cd)
{
    s->done = done;
    s->doneCd = cd;
    SmtpSessionSubmit(s, opts, msgs, nmsgs);
}

/*
 * How long a synchronous send first waits on the socket itself, and how
 * long it may go on that way before it turns the event loop once more,
 * so that the caller's other events (timers, file events, Tk) wait at
 * most that long for sends that the server answers quickly. The time of
 * the last turn is kept per thread, across calls: a script that sends
 * one quick message after another still has its events served. While it
 * waits on the socket, the connection's channel handler is left as it is
 * and brought up to date only before the event loop turns
 * (SmtpConnSetDirect): under Tcl 9 every change of it costs two system
 * calls.
 */

#define DIRECT_WAIT_USEC	200
#define DIRECT_SLICE_USEC	10000

typedef struct WaitTsd {
    Tcl_Time lastTurn;		/* Zero: never turned here. */
} WaitTsd;

static Tcl_ThreadDataKey waitKey;

static void
WaitFinished(
    SmtpSession *s)
{
    WaitTsd *t = (WaitTsd *) Tcl_GetThreadData(&waitKey, sizeof(WaitTsd));
    Tcl_Time now;

    SmtpConnSetDirect(s->conn, 1);
    while (!s->finished) {
	Tcl_GetTime(&now);
	if ((now.sec - t->lastTurn.sec) * 1000000L
		+ (now.usec - t->lastTurn.usec) < DIRECT_SLICE_USEC
		&& SmtpConnPollDirect(s->conn, DIRECT_WAIT_USEC)) {
	    continue;
	}
	SmtpConnSetDirect(s->conn, 0);
	Tcl_DoOneEvent(TCL_ALL_EVENTS);
	Tcl_GetTime(&t->lastTurn);
	SmtpConnSetDirect(s->conn, 1);
    }
    SmtpConnSetDirect(s->conn, 0);
}

/*
 * Waits (WaitFinished) until the submitted messages are done; the result
 * or error goes to the interpreter as with SmtpSessionRun.
 */

int
SmtpSessionWait(
    SmtpSession *s)
{
    WaitFinished(s);
    if (s->code == TCL_OK) {
	Tcl_SetObjResult(s->interp, s->refused);
	return TCL_OK;
    }
    Tcl_SetObjResult(s->interp, s->errMsg);
    Tcl_SetObjErrorCode(s->interp, s->errCode);
    return TCL_ERROR;
}

/*
 * Says QUIT on a kept connection and waits (bounded) for the reply.
 */

void
SmtpSessionClose(
    SmtpSession *s)
{
    if (s->conn && s->state == ST_READY) {
	s->keepOpen = 0;
	s->finished = 0;
	Send(s, ST_QUIT, EX_QUIT, WAIT_QUIT, "QUIT", 4);
	WaitFinished(s);
    }
    CloseConn(s);
}
