/*
 * smtpInt.h --
 *
 *	Declarations shared by the parts of the smtp package: the reply
 *	parser, the DATA encoder, the protocol core, the transport and the
 *	Tcl command layer.
 */

#ifndef SMTPINT_H
#define SMTPINT_H

#include <tcl.h>
#include <string.h>
#include <stdlib.h>
#include <stdarg.h>		/* Tcl 9's tcl.h no longer includes it. */
#include <limits.h>

#ifndef TCL_SIZE_MAX
typedef int Tcl_Size;
#define TCL_SIZE_MAX INT_MAX
#endif

/*
 * The sanitizer and fuzz builds ("make test-sanitize", "make fuzz") define
 * SMTP_SYSTEM_ALLOC: the package's own blocks then come from malloc, where
 * AddressSanitizer sees every overflow, use after free and leak, instead of
 * from Tcl's allocator, which carves them out of larger blocks of its own.
 * A block Tcl frees for us (Tcl_EventuallyFree with TCL_DYNAMIC) must then
 * be freed with free() too.
 */

#ifdef SMTP_SYSTEM_ALLOC
#undef ckalloc
#undef ckrealloc
#undef ckfree
#define ckalloc(n)	((void *) malloc((size_t) (n) ? (size_t) (n) : 1))
#define ckrealloc(p, n)	((void *) realloc((p), (size_t) (n) ? (size_t) (n) : 1))
#define ckfree(p)	free((void *) (p))
#undef TCL_DYNAMIC
#define TCL_DYNAMIC	((Tcl_FreeProc *) free)
#endif

/*
 * Tcl 8.6.13's tclDecls.h (fixed in 8.6.16's), on Win64 with stubs,
 * replaces Tcl_GetTime by a macro meant for Cygwin64 callers: it
 * overlays the Tcl_Time on a 64-bit integer, and since a Win64 Tcl_Time
 * (two 32-bit longs) fills all of it, the macro always copies the seconds
 * into usec. Calling the stub entry directly is right for every Win64
 * Tcl 8 that is not Cygwin's (Tcl_Time has 32-bit longs both in tcl86.dll
 * and here), whether the headers have the bug or not.
 */

#if defined(_WIN64) && !defined(__CYGWIN__) && defined(USE_TCL_STUBS) \
	&& TCL_MAJOR_VERSION == 8
#undef Tcl_GetTime
#define Tcl_GetTime(timePtr) (tclStubsPtr->tcl_GetTime(timePtr))
#endif

#ifndef PACKAGE_NAME
#define PACKAGE_NAME "smtp"
#endif
#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "1.6.0"
#endif

/*
 * A growable byte buffer with a read position, used for bytes to and from
 * the network.
 */

typedef struct SmtpBuf {
    unsigned char *data;
    size_t len;			/* Bytes held. */
    size_t pos;			/* Bytes already consumed from the front. */
    size_t cap;
} SmtpBuf;

void		SmtpBufInit(SmtpBuf *b);
void		SmtpBufFree(SmtpBuf *b);
void		SmtpBufReserve(SmtpBuf *b, size_t more);
void		SmtpBufAppend(SmtpBuf *b, const void *p, size_t n);
void		SmtpBufAppendStr(SmtpBuf *b, const char *s);
void		SmtpBufConsume(SmtpBuf *b, size_t n);
#define SmtpBufAvail(b)	((b)->len - (b)->pos)

/*
 * The unread bytes. A buffer that never held a byte has no data (NULL),
 * and NULL + 0 is undefined in C: an empty buffer gives an empty string
 * instead, so that any buffer can be passed on as pointer and length.
 * After SmtpBufReserve (even of 0 bytes) data is never NULL, so writing at
 * data + len is safe too.
 */

#define SmtpBufPtr(b)	((b)->data ? (const unsigned char *) (b)->data \
			+ (b)->pos : (const unsigned char *) "")

/*
 * smtpReply.c: a server reply, possibly of several lines.
 */

#define SMTP_MAX_LINE	4096	/* Longest reply line accepted (RFC 5321
				 * asks for 512; servers write longer). */
#define SMTP_MAX_LINES	1000	/* Most lines in one reply. */

typedef struct SmtpReply {
    int code;			/* Three-digit reply code. */
    char enhanced[16];		/* RFC 3463 status code or "". */
    Tcl_Obj *text;		/* Text of the first line (after the code
				 * and separator), trimmed. */
    Tcl_Obj *lines;		/* List: text of the second and later lines. */
    Tcl_Obj *raw;		/* List: every line as received, without
				 * its line end (for -debug). */
} SmtpReply;

typedef struct SmtpReplyParser {
    SmtpBuf line;		/* Bytes of the line being assembled. */
    SmtpReply cur;		/* Reply being assembled. */
    int nlines;
    int started;
} SmtpReplyParser;

enum {
    SMTP_PARSE_MORE = 0,	/* Need more bytes. */
    SMTP_PARSE_REPLY = 1,	/* A complete reply is available. */
    SMTP_PARSE_ERROR = -1	/* Malformed input; message in errbuf. */
};

void		SmtpReplyParserInit(SmtpReplyParser *p);
void		SmtpReplyParserFree(SmtpReplyParser *p);
int		SmtpReplyParse(SmtpReplyParser *p, const unsigned char *bytes,
		    size_t len, size_t *used, SmtpReply *out,
		    Tcl_Obj **errOut);
void		SmtpReplyClear(SmtpReply *r);
void		SmtpReplyInit(SmtpReply *r);
int		SmtpHasExtension(Tcl_Obj *caps, const char *keyword,
		    Tcl_Obj **paramsOut);
Tcl_Obj *	SmtpReplyDiagnostic(const SmtpReply *r);

/*
 * smtpData.c: DATA encoding (CRLF normalisation and dot-stuffing).
 */

typedef struct SmtpDataEnc {
    int bol;			/* At the beginning of a line. */
    int cr;			/* Last byte was a CR not yet followed. */
    int bdat;			/* For BDAT: no dot-stuffing, no final dot. */
} SmtpDataEnc;

void		SmtpDataInit(SmtpDataEnc *e);
void		SmtpDataInitBdat(SmtpDataEnc *e);
int		SmtpDataHas8bit(const unsigned char *p, size_t n);
void		SmtpDataEncode(SmtpDataEnc *e, const unsigned char *p,
		    size_t n, SmtpBuf *out);
void		SmtpDataEncodeClean(SmtpDataEnc *e, const unsigned char *p,
		    size_t n, SmtpBuf *out);
void		SmtpDataFinish(SmtpDataEnc *e, SmtpBuf *out);
Tcl_WideInt	SmtpDataSize(const unsigned char *p, size_t n);

/*
 * Bytes of a Tcl value as the mime package treats them: each character's
 * low 8 bits.
 */

const unsigned char *SmtpGetBytes(Tcl_Obj *obj, Tcl_Size *lenPtr,
		    Tcl_DString *scratch);

/*
 * smtpText.c: the octets of a text part's value in its charset.
 */

#define SMTP_CS_DECLARED 0	/* In the charset declared (or ASCII). */
#define SMTP_CS_UTF8	1	/* In UTF-8, which the part must declare. */
#define SMTP_TEXT_CHARS	2	/* Flag: UTF-8 made from the characters. */

int		SmtpTextBytes(Tcl_Obj *obj, const char *cs, size_t csLen,
		    const unsigned char **bytesPtr, size_t *lenPtr,
		    Tcl_DString *scratch);
int		SmtpBinaryBytes(Tcl_Obj *obj, const unsigned char **bytesPtr,
		    size_t *lenPtr, Tcl_DString *scratch);
int		SmtpUtf8Valid(const unsigned char *p, size_t n);

/*
 * smtpProto.c: one SMTP client session, an explicit state machine fed with
 * events by the transport.
 */

/*
 * Where a message's bytes come from: pulled a block at a time while DATA
 * is written, so a message need not be held whole in memory.
 */

typedef struct SmtpSource {
    /*
     * Appends about 'want' more bytes of the message to 'out'. Returns 1
     * when the message is complete, 0 when more follows, -1 on error with
     * *errPtr set (a new object).
     */
    int (*read)(void *cd, SmtpBuf *out, size_t want, Tcl_Obj **errPtr);
    void (*close)(void *cd);	/* Frees cd. */
    /*
     * Or NULL. Before the first read: 1 for the headers as a message
     * sent with SMTPUTF8 carries them (RFC 6532), 0 (the default) for
     * them as one sent without it does.
     */
    void (*utf8)(void *cd, int on);
    void *cd;
    int clean;			/* Every line end is CRLF, no bare CR or LF
				 * (the C writer's output): DATA needs only
				 * the dots stuffed. */
} SmtpSource;

void		SmtpSourceFromObj(SmtpSource *src, Tcl_Obj *bytes);
void		SmtpSourceClose(SmtpSource *src);

typedef struct SmtpMessage {
    Tcl_Obj *sender;		/* Envelope sender (may be empty). */
    Tcl_Obj *recipients;	/* List of envelope recipients. */
    SmtpSource body;		/* The message, as the mime package means
				 * it. Owned by the message. */
    Tcl_WideInt size;		/* Octets as carried by DATA (RFC 1870). */
    int eightbit;		/* Has octets above 127 (RFC 6152). */
    Tcl_WideInt size8;		/* The same for the message as sent with */
    int eightbit8;		/* SMTPUTF8 (body.utf8). */
} SmtpMessage;

typedef struct SmtpOptions {
    Tcl_Obj *servers;		/* List of host names. */
    Tcl_Obj *ports;		/* List of ports, paired with servers. */
    Tcl_Obj *client;		/* Name for EHLO/HELO. */
    int debug;
    int queue;
    int atleastone;
    int multiple;		/* More than one message on the connection. */
    int maxsecs;		/* Bound on the reply after the final dot. */
    int usetls;
    int tlsimport;
    Tcl_Obj *tlspolicy;
    Tcl_Obj *tlsoptions;	/* In the tls package's syntax. */
    int timeout;		/* -timeout seconds, or -1: tcllib's. */
    int chunking;		/* Use BDAT when offered. */
    int lmtp;			/* -protocol lmtp. */
    Tcl_Obj *dsnnotify;		/* NOTIFY= value, or NULL. */
    Tcl_Obj *dsnret;		/* RET= value, or NULL. */
    Tcl_Obj *dsnenvid;		/* ENVID (not yet xtext), or NULL. */
    int dsnorcpt;		/* Add ORCPT=rfc822;addr. */
    Tcl_Obj *authmechs;		/* -authmechs: allowed, in order; or NULL. */
    Tcl_Obj *oauthtoken;	/* Bearer token for OAUTHBEARER/XOAUTH2. */
    Tcl_Obj *username;
    Tcl_Obj *password;
} SmtpOptions;

typedef enum SmtpState {
    ST_IDLE, ST_CONNECTING, ST_TLS, ST_GREETING, ST_EHLO, ST_HELO,
    ST_STARTTLS, ST_ONEX, ST_AUTH,
    ST_QUED, ST_MAIL, ST_RCPT, ST_DATA, ST_BODY, ST_DOT, ST_LMTP, ST_RSET,
    ST_QUIT,
    ST_BDATDROP,		/* Refused, with BDAT replies still to come. */
    ST_READY,			/* Kept open between messages (sessions). */
    ST_RSETNEXT,		/* RSET before the next message. */
    ST_DONE
} SmtpState;

typedef struct SmtpSession SmtpSession;

SmtpSession *	SmtpSessionNew(Tcl_Interp *interp, SmtpOptions *opts,
		    SmtpMessage *msgs, int nmsgs);
int		SmtpSessionRun(SmtpSession *s);
void		SmtpSessionConnect(SmtpSession *s);
void		SmtpSessionFree(SmtpSession *s);

typedef void (SmtpDoneProc)(SmtpSession *s, void *cd);

void		SmtpSessionStart(SmtpSession *s, SmtpDoneProc *done,
		    void *cd);
void		SmtpSessionSetProgress(SmtpSession *s, Tcl_Obj *cmd);
int		SmtpSessionResult(SmtpSession *s, Tcl_Obj **refusedPtr,
		    Tcl_Obj **replyPtr, Tcl_Obj **msgPtr, Tcl_Obj **codePtr);
void		SmtpSessionCancel(SmtpSession *s);
void		SmtpSessionKeepOpen(SmtpSession *s);
void		SmtpSessionSubmit(SmtpSession *s, SmtpOptions *opts,
		    SmtpMessage *msgs, int nmsgs);
void		SmtpSessionSubmitAsync(SmtpSession *s, SmtpOptions *opts,
		    SmtpMessage *msgs, int nmsgs, SmtpDoneProc *done,
		    void *cd);
int		SmtpSessionWait(SmtpSession *s);
void		SmtpSessionClose(SmtpSession *s);
int		SmtpSessionConnected(SmtpSession *s);

/*
 * smtpAsync.c: sends in the background (-command), smtp::cancel.
 */

int		SmtpAsyncStart(Tcl_Interp *interp, SmtpOptions *opts,
		    SmtpMessage *msgs, int nmsgs, Tcl_Obj *command,
		    Tcl_Obj *progress, void (*freeProc)(void *),
		    void *freeData);
int		SmtpAsyncSubmit(Tcl_Interp *interp, SmtpSession *sess,
		    SmtpOptions *opts, SmtpMessage *msgs, int nmsgs,
		    Tcl_Obj *command, void (*freeProc)(void *),
		    void *freeData);
void		SmtpAsyncInit(Tcl_Interp *interp);

/*
 * smtpConn.c: transport over a Tcl channel, driven by the event loop.
 */

typedef struct SmtpConn SmtpConn;

typedef struct SmtpConnEvents {
    void (*connected)(void *cd);
    void (*readable)(void *cd, const unsigned char *p, size_t n);
    void (*writable)(void *cd);
    void (*closed)(void *cd, const char *why);
    void (*timeout)(void *cd);
    /* The TLS handshake has ended: err is NULL on success. */
    void (*tlsDone)(void *cd, Tcl_Obj *err);
} SmtpConnEvents;

struct ssl_ctx_st;

SmtpConn *	SmtpConnOpen(Tcl_Interp *interp, const char *host, int port,
		    const SmtpConnEvents *ev, void *cd, int direct);
void		SmtpConnWrite(SmtpConn *c, const void *p, size_t n);
int		SmtpConnFlush(SmtpConn *c);
Tcl_Size	SmtpConnPending(SmtpConn *c);
void		SmtpConnWantWritable(SmtpConn *c, int on);
void		SmtpConnSetTimeout(SmtpConn *c, int secs);
const char *	SmtpConnError(SmtpConn *c);
void		SmtpConnClose(SmtpConn *c);
int		SmtpConnPollDirect(SmtpConn *c, long usec);
void		SmtpConnSetDirect(SmtpConn *c, int on);
int		SmtpConnStartTls(SmtpConn *c, struct ssl_ctx_st *ctx,
		    const char *host, int verify, Tcl_Obj **errPtr);
Tcl_Obj *	SmtpConnTlsInfo(SmtpConn *c);
int		SmtpConnPeerIsLoopback(SmtpConn *c);

/*
 * smtpTls.c: the TLS context from -tlsoptions, and a TLS filter over
 * memory buffers.
 */

typedef struct SmtpTls SmtpTls;

struct ssl_ctx_st *SmtpTlsContext(Tcl_Interp *interp, Tcl_Obj *tlsoptions,
		    int debug, int *requirePtr, Tcl_Obj **servernamePtr);
void		SmtpTlsContextFree(struct ssl_ctx_st *ctx);
int		SmtpTlsCheckOptions(Tcl_Interp *interp, Tcl_Obj *tlsoptions);
SmtpTls *	SmtpTlsNew(struct ssl_ctx_st *ctx, const char *host,
		    int verify, SmtpBuf *net, Tcl_Obj **errPtr);
int		SmtpTlsFeed(SmtpTls *t, const unsigned char *in, size_t n,
		    SmtpBuf *plain, SmtpBuf *net, Tcl_Obj **errPtr);
int		SmtpTlsWrite(SmtpTls *t, const void *p, size_t n,
		    SmtpBuf *net, Tcl_Obj **errPtr);
void		SmtpTlsShutdown(SmtpTls *t, SmtpBuf *net);
Tcl_Obj *	SmtpTlsDescribe(SmtpTls *t);
void		SmtpTlsFree(SmtpTls *t);

/*
 * Platform (unix/, win/).
 */

void		SmtpPlatformNoDelay(Tcl_Channel chan);
int		SmtpPlatformDate(char *buf, size_t size);
int		SmtpPlatformPoll(Tcl_Channel chan, int mask, long usec);
Tcl_Channel	SmtpPlatformConnectNumeric(const char *host, int port);
void		SmtpPlatformClose(Tcl_Channel chan);
struct x509_store_st;
int		SmtpPlatformSystemCAs(struct x509_store_st *store);
void		SmtpPlatformTestInit(Tcl_Interp *interp);

/*
 * smtpCmd.c.
 */

Tcl_ObjCmdProc	SmtpSendmessageObjCmd;
Tcl_ObjCmdProc	SmtpSessionObjCmd;
Tcl_ObjCmdProc	SmtpMessageObjCmd;
Tcl_ObjCmdProc	SmtpSendOptionsObjCmd;

/*
 * smtpTest.c: ::smtp::internal commands for the test suite.
 */

void		SmtpTestInit(Tcl_Interp *interp);

/*
 * Set (by ::smtp::internal::loopback 0) in an interpreter whose tests need
 * a loopback server treated as remote.
 */

#define SMTP_NOLOOPBACK_KEY "smtp::noloopback"


/*
 * smtpSasl.c: SASL mechanisms for AUTH, client side. Pure step functions:
 * the caller sends "AUTH mech [initial]", base64-decodes each 334 text and
 * hands it to SmtpSaslStep, base64-encodes what comes back, and calls
 * SmtpSaslFinish on 235. Nothing here touches a socket or an interpreter.
 * Credentials are NUL-terminated UTF-8; they never appear in messages.
 */

typedef struct SmtpSaslCreds {
    const char *username;	/* Authentication identity. */
    const char *password;
    const char *authzid;	/* Authorization identity, or NULL. */
    const char *oauthToken;	/* Bearer token for OAUTHBEARER, XOAUTH2. */
    const char *service;	/* For DIGEST-MD5's digest-uri; NULL means
				 * "smtp". */
    const char *host;		/* Server's host name (DIGEST-MD5). */
    const char *realm;		/* DIGEST-MD5 realm; NTLM domain. NULL:
				 * the server's. */
    const char *workstation;	/* NTLM workstation name, or NULL. */
    /* Test hooks; NULL in real use. */
    const char *cnonce;		/* Fixed client nonce (SCRAM, DIGEST-MD5);
				 * for NTLM 16 hex digits of the client
				 * challenge. */
    const char *timestamp;	/* NTLM: FILETIME in decimal to use when the
				 * server sends none. */
} SmtpSaslCreds;

typedef struct SmtpSasl SmtpSasl;

const char *const *SmtpSaslMechanisms(void);
SmtpSasl *	SmtpSaslNew(const char *mech, const SmtpSaslCreds *c,
		    Tcl_Obj **errPtr);
int		SmtpSaslStart(SmtpSasl *s, SmtpBuf *initial, int *hasInitial,
		    Tcl_Obj **errPtr);
int		SmtpSaslStep(SmtpSasl *s, const unsigned char *challenge,
		    size_t len, SmtpBuf *response, Tcl_Obj **errPtr);
int		SmtpSaslFinish(SmtpSasl *s, const unsigned char *data,
		    size_t len, Tcl_Obj **errPtr);
void		SmtpSaslFree(SmtpSasl *s);
void		SmtpSaslBufWipe(SmtpBuf *b);
void		SmtpBase64Encode(const unsigned char *p, size_t n,
		    SmtpBuf *out);
int		SmtpBase64Decode(const char *p, size_t n, SmtpBuf *out);
void		SmtpSaslTestInit(Tcl_Interp *interp);

/*
 * smtpHdr.c: header fields, in the two renditions of a message sent with
 * SMTPUTF8 and without (RFC 6532; RFC 2047, 2231, IDNA2008 A-labels).
 */

int		SmtpHeaderOctets(Tcl_Obj *obj, Tcl_DString *ds);
void		SmtpHeaderLine(SmtpBuf *out, const unsigned char *in,
		    size_t inLen);
void		SmtpHeaderWrite(SmtpBuf *ascii, SmtpBuf *utf8,
		    Tcl_Obj *name, Tcl_Obj *value);
void		SmtpParamAppend(Tcl_DString *ds, const char *key,
		    size_t keyLen, const unsigned char *val, size_t valLen,
		    int ascii);
void		SmtpParamsAppend(Tcl_DString *line, const unsigned char *v,
		    size_t n, int ascii);

/*
 * smtpMime.c: the message writer. A mime token becomes a source of the
 * message's bytes (CRLF line ends, exact size), planned and snapshotted
 * when made; file content is streamed.
 */

int		SmtpMimeWriter(Tcl_Interp *interp, Tcl_Obj *token,
		    SmtpMessage *m, Tcl_Obj **whyPtr);
int		SmtpMimeMessage(Tcl_Interp *interp, Tcl_Obj *token, int debug,
		    SmtpMessage *m);

#endif /* SMTPINT_H */
