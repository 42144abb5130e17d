/*
 * smtpWin.c --
 *
 *	Windows specifics: socket options Tcl does not expose, the Date
 *	header made in C, and the Windows certificate store as the default
 *	trust for TLS (OpenSSL's default paths mean nothing on Windows).
 */

#include "smtpInt.h"
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <limits.h>
#include <winsock2.h>
#include <windows.h>
#include <wincrypt.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/err.h>

/*
 * Closing a connection's socket. Tcl's Windows socket driver learns of
 * socket events from window messages (WSAAsyncSelect) that name the
 * socket by its handle only, and a message still queued when the socket
 * is closed goes to whichever socket has that handle when it is read:
 * Windows (and Wine) give a freed handle to the very next socket. So when
 * the server has just ended a connection, its FD_CLOSE, still queued,
 * can mark the next connection closed, which then reads end-of-file in
 * the middle of its dialogue ("premature end-of-file from server"; Tcl
 * 8.6.13 to 9.0, SocketProc in win/tclWinSock.c). Under Wine this took 1
 * to 3 in 500 back-to-back connections (tests/smtpd.tcl, "Closing").
 *
 * So the connection's write side is closed at once (the server sees the
 * connection end exactly as before) and its socket is kept open, one per
 * thread, until the next connection's socket is closed or a second has
 * passed (in an event loop) or the thread ends: by then whatever was
 * queued for it has reached it, and the next socket gets another handle.
 */

#define PARK_MS 1000

typedef struct {
    Tcl_Channel parked;		/* The socket kept, or NULL. */
    Tcl_TimerToken timer;	/* Closes it after PARK_MS. */
    int exitHandler;		/* Whether ParkExit is registered. */
} ParkData;

static Tcl_ThreadDataKey parkKey;

static void
ParkFlush(
    ParkData *pd)
{
    Tcl_Channel chan = pd->parked;

    if (pd->timer != NULL) {
	Tcl_DeleteTimerHandler(pd->timer);
	pd->timer = NULL;
    }
    if (chan != NULL) {
	pd->parked = NULL;
	Tcl_Close(NULL, chan);
    }
}

static void
ParkTimer(
    void *clientData)
{
    ParkData *pd = (ParkData *) clientData;

    pd->timer = NULL;
    ParkFlush(pd);
}

static void
ParkExit(
    void *clientData)
{
    ParkFlush((ParkData *) clientData);
}

void
SmtpPlatformClose(
    Tcl_Channel chan)
{
    ParkData *pd = (ParkData *) Tcl_GetThreadData(&parkKey,
	    sizeof(ParkData));

    /*
     * Tcl_CloseEx writes its errors into the interpreter, without checking
     * for one, in the cases ruled out here: a stacked channel, or one
     * whose write side is not open.
     */

    if (Tcl_GetTopChannel(chan) != chan
	    || !(Tcl_GetChannelMode(chan) & TCL_WRITABLE)) {
	Tcl_Close(NULL, chan);
	return;
    }

    /*
     * A failure (the connection was reset) leaves the write side closed
     * all the same; the socket is kept either way.
     */

    (void) Tcl_CloseEx(NULL, chan, TCL_CLOSE_WRITE);
    ParkFlush(pd);
    pd->parked = chan;
    pd->timer = Tcl_CreateTimerHandler(PARK_MS, ParkTimer, pd);
    if (!pd->exitHandler) {
	pd->exitHandler = 1;
	Tcl_CreateThreadExitHandler(ParkExit, pd);
    }
}

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
 * The Date header for now, as mime::parsedatetime -now proper writes it
 * (see unix/smtpUnix.c): local time and its offset from UTC, which is
 * the local broken-down time read as UTC (_mkgmtime) minus the time.
 * Returns 1, or 0 when the caller should ask mime instead: also when TZ
 * is set, which Tcl's clock reads as a POSIX rule or an Olson name and
 * the C runtime only in its own way ("EST5EDT").
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
    __time64_t now = _time64(NULL), asUtc;
    struct tm tm, copy;
    long long off, mins;
    const char *tz = getenv("TZ");

    if (tz != NULL && *tz != '\0') {
	return 0;
    }
    if (now == (__time64_t) -1 || _localtime64_s(&tm, &now) != 0) {
	return 0;
    }
    copy = tm;
    asUtc = _mkgmtime64(&copy);
    if (asUtc == (__time64_t) -1) {
	return 0;
    }
    off = (long long) (asUtc - now);
    mins = (off < 0 ? -off : off) / 60;
    snprintf(buf, size, "%s, %02d %s %04d %02d:%02d:%02d %c%02lld%02lld",
	    days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
	    tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec,
	    off < 0 ? '-' : '+', mins / 60, mins % 60);
    return 1;
}

/*
 * Waits at most 'usec' microseconds for the channel's socket to become
 * ready for the events in 'mask', directly with select() (see
 * unix/smtpUnix.c). Tcl's Windows socket driver reads and writes with
 * plain recv() and send() on its non-blocking socket and learns of
 * readiness from window messages it asks for again after every recv(),
 * so a direct look does not confuse it. Returns the events that are
 * ready, 0 after the time or on any doubt.
 */

int
SmtpPlatformPoll(
    Tcl_Channel chan,
    int mask,
    long usec)
{
    void *handle;
    SOCKET s;
    fd_set rd, wr;
    struct timeval tv;
    int ready = 0;

    if (Tcl_GetChannelHandle(chan, (mask & TCL_READABLE) ? TCL_READABLE
	    : TCL_WRITABLE, &handle) != TCL_OK) {
	return 0;
    }
    s = (SOCKET) (intptr_t) handle;
    if (s == INVALID_SOCKET) {
	return 0;
    }
    FD_ZERO(&rd);
    FD_ZERO(&wr);
    if (mask & TCL_READABLE) {
	FD_SET(s, &rd);
    }
    if (mask & TCL_WRITABLE) {
	FD_SET(s, &wr);
    }
    tv.tv_sec = usec / 1000000;
    tv.tv_usec = usec % 1000000;
    if (select(0, &rd, &wr, NULL, &tv) <= 0) {
	return 0;
    }
    if (FD_ISSET(s, &rd)) {
	ready |= TCL_READABLE;
    }
    if (FD_ISSET(s, &wr)) {
	ready |= TCL_WRITABLE;
    }
    return ready;
}

/*
 * Numeric addresses go through Tcl_OpenTcpClient on Windows: Tcl's
 * Windows socket driver has no Tcl_MakeTcpClientChannel that takes over
 * a connect still in progress (its channel would not learn when the
 * connect completes), and Windows' getaddrinfo() answers a numeric
 * address without asking anything (win/README has the measurement).
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

/*
 * Appends the certificates of the current user's view of the system store
 * 'name' (which includes the machine's) to 'sk'. With 'intermediates'
 * (the "CA" store), self-signed certificates are left out: OpenSSL would
 * take them as trust anchors, Windows takes only those in "ROOT".
 * Returns the number appended, or -1 when the store cannot be opened.
 */

static int
LoadSystemStore(
    STACK_OF(X509) *sk,
    const char *name,
    int intermediates)
{
    HCERTSTORE hs;
    PCCERT_CONTEXT cc = NULL;
    int n = 0;

    /*
     * Not CERT_STORE_OPEN_EXISTING_FLAG: the user's part of the store
     * need not exist (a new Wine prefix has no user ROOT store), and the
     * machine's certificates come through the user's view only.
     */
    hs = CertOpenStore(CERT_STORE_PROV_SYSTEM_A, 0, 0,
	    CERT_SYSTEM_STORE_CURRENT_USER | CERT_STORE_READONLY_FLAG, name);
    if (hs == NULL) {
	return -1;
    }
    while ((cc = CertEnumCertificatesInStore(hs, cc)) != NULL) {
	const unsigned char *p = cc->pbCertEncoded;
	X509 *x;

	if (cc->dwCertEncodingType != X509_ASN_ENCODING
		|| cc->cbCertEncoded > LONG_MAX) {
	    continue;
	}
	x = d2i_X509(NULL, &p, (long) cc->cbCertEncoded);
	if (x == NULL) {
	    continue;
	}
	if ((intermediates && X509_check_issued(x, x) == X509_V_OK)
		|| !sk_X509_push(sk, x)) {
	    X509_free(x);
	    continue;
	}
	n++;
    }
    ERR_clear_error();
    CertCloseStore(hs, 0);
    return n;
}

/*
 * Adds every certificate of 'sk' to 'store'; returns how many were added
 * (one already there, the same in both system stores, is no error worth
 * keeping).
 */

static int
AddAll(
    X509_STORE *store,
    STACK_OF(X509) *sk)
{
    int i, n = 0;

    for (i = 0; i < sk_X509_num(sk); i++) {
	if (X509_STORE_add_cert(store, sk_X509_value(sk, i))) {
	    n++;
	}
    }
    ERR_clear_error();
    return n;
}

/*
 * The system's certificates, read once and kept for SYSTEM_CAS_MAX_AGE
 * seconds: reading the stores costs about half a second under Wine
 * (149 certificates, on a loaded machine), more than a connection.
 * Guarded by systemCAsMutex; freed when the process exits.
 */

#define SYSTEM_CAS_MAX_AGE 300

TCL_DECLARE_MUTEX(systemCAsMutex)
static STACK_OF(X509) *systemCAs = NULL;
static __time64_t systemCAsTime;
static int systemCAsExitHandler = 0;

static void
FreeSystemCAs(
    void *clientData)
{
    (void) clientData;
    Tcl_MutexLock(&systemCAsMutex);
    sk_X509_pop_free(systemCAs, X509_free);
    systemCAs = NULL;
    Tcl_MutexUnlock(&systemCAsMutex);
}

/*
 * The default trust when neither -cafile nor -cadir is given: the
 * Windows "ROOT" store (trusted roots) and "CA" store (intermediate
 * authorities, which complete chains whose server leaves them out).
 * Returns the number of certificates added to 'store'. With 'fresh',
 * the stores are read again whatever the age of what is kept.
 */

static int
SystemCAs(
    X509_STORE *store,
    int fresh)
{
    __time64_t now = _time64(NULL);
    int n = 0;

    Tcl_MutexLock(&systemCAsMutex);
    if (systemCAs == NULL || fresh || now < systemCAsTime
	    || now - systemCAsTime > SYSTEM_CAS_MAX_AGE) {
	STACK_OF(X509) *sk = sk_X509_new_null();

	if (sk != NULL) {
	    (void) LoadSystemStore(sk, "ROOT", 0);
	    (void) LoadSystemStore(sk, "CA", 1);
	    sk_X509_pop_free(systemCAs, X509_free);
	    systemCAs = sk;
	    systemCAsTime = now;
	    if (!systemCAsExitHandler) {
		systemCAsExitHandler = 1;
		Tcl_CreateExitHandler(FreeSystemCAs, NULL);
	    }
	}
    }
    if (systemCAs != NULL) {
	n = AddAll(store, systemCAs);
    }
    Tcl_MutexUnlock(&systemCAsMutex);
    return n;
}

int
SmtpPlatformSystemCAs(
    struct x509_store_st *store)
{
    return SystemCAs(store, 0);
}

/*
 * ::smtp::internal::winstore (test suite only; Windows only)
 *
 *   winstore add STORE PEM	adds the certificate to the current user's
 *				system store STORE (made when missing)
 *   winstore delete STORE PEM	removes it again; 1 if it was there
 *   winstore verify STORE CA PEM
 *				loads system store STORE the way
 *				SmtpPlatformSystemCAs loads "ROOT" (CA 0) or
 *				"CA" (CA 1) into an empty OpenSSL store and
 *				verifies the certificate against it: returns
 *				{count ok} or {count {error text}}
 *   winstore system PEM	the same with what SmtpPlatformSystemCAs loads,
 *				read from the stores afresh
 */

static X509 *
PemCert(
    Tcl_Interp *interp,
    Tcl_Obj *pem)
{
    Tcl_Size len;
    const char *s = Tcl_GetStringFromObj(pem, &len);
    BIO *bio = BIO_new_mem_buf(s, (int) len);
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;

    BIO_free(bio);
    ERR_clear_error();
    if (x == NULL) {
	Tcl_SetObjResult(interp, Tcl_NewStringObj("not a PEM certificate",
		-1));
    }
    return x;
}

static int
WinStoreObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    static const char *const subs[] = {
	"add", "delete", "system", "verify", NULL
    };
    enum { SUB_ADD, SUB_DELETE, SUB_SYSTEM, SUB_VERIFY };
    static const int nargs[] = {4, 4, 3, 5};
    static const char *const usage[] = {
	"store pem", "store pem", "pem", "store ca pem"
    };
    int sub, code = TCL_ERROR;
    X509 *x;
    const char *name;

    (void) clientData;
    if (objc < 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "subcommand ?arg ...?");
	return TCL_ERROR;
    }
    if (Tcl_GetIndexFromObj(interp, objv[1], subs, "subcommand", 0, &sub)
	    != TCL_OK) {
	return TCL_ERROR;
    }
    if (objc != nargs[sub]) {
	Tcl_WrongNumArgs(interp, 2, objv, usage[sub]);
	return TCL_ERROR;
    }
    name = Tcl_GetString(objv[2]);
    x = PemCert(interp, objv[objc - 1]);
    if (x == NULL) {
	return TCL_ERROR;
    }
    if (sub == SUB_VERIFY || sub == SUB_SYSTEM) {
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	int ca = 0, n;
	Tcl_Obj *res[2];

	if (store == NULL || ctx == NULL) {
	    Tcl_SetObjResult(interp, Tcl_NewStringObj("out of memory", -1));
	} else if (sub == SUB_SYSTEM || Tcl_GetBooleanFromObj(interp,
		objv[3], &ca) == TCL_OK) {
	    STACK_OF(X509) *sk = NULL;

	    if (sub == SUB_SYSTEM) {
		n = SystemCAs(store, 1);
	    } else if ((sk = sk_X509_new_null()) == NULL) {
		n = -1;
	    } else if ((n = LoadSystemStore(sk, name, ca)) >= 0) {
		n = AddAll(store, sk);
	    }
	    sk_X509_pop_free(sk, X509_free);
	    if (n < 0) {
		Tcl_SetObjResult(interp, Tcl_ObjPrintf(
			"cannot open system store \"%s\"", name));
	    } else if (X509_STORE_CTX_init(ctx, store, x, NULL) != 1) {
		Tcl_SetObjResult(interp, Tcl_NewStringObj(
			"X509_STORE_CTX_init failed", -1));
	    } else {
		res[0] = Tcl_NewIntObj(n);
		res[1] = X509_verify_cert(ctx) == 1 ? Tcl_NewStringObj("ok", -1)
			: Tcl_NewStringObj(X509_verify_cert_error_string(
			    X509_STORE_CTX_get_error(ctx)), -1);
		Tcl_SetObjResult(interp, Tcl_NewListObj(2, res));
		code = TCL_OK;
	    }
	}
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
    } else {
	unsigned char *der = NULL;
	int len = i2d_X509(x, &der);
	HCERTSTORE hs = NULL;

	/*
	 * The user's registry part of the system store only, not the
	 * collection that CERT_STORE_PROV_SYSTEM opens: Wine does not
	 * pass a deletion through a collection to where it is kept.
	 */
	if (len > 0) {
	    hs = CertOpenStore(CERT_STORE_PROV_SYSTEM_REGISTRY_A, 0, 0,
		    CERT_SYSTEM_STORE_CURRENT_USER, name);
	}
	if (hs == NULL) {
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "cannot open system store \"%s\"", name));
	} else if (sub == SUB_ADD) {
	    if (CertAddEncodedCertificateToStore(hs, X509_ASN_ENCODING, der,
		    (DWORD) len, CERT_STORE_ADD_REPLACE_EXISTING, NULL)) {
		code = TCL_OK;
	    } else {
		Tcl_SetObjResult(interp, Tcl_ObjPrintf(
			"cannot add to \"%s\": error %lu", name,
			(unsigned long) GetLastError()));
	    }
	} else {
	    PCCERT_CONTEXT want = CertCreateCertificateContext(
		    X509_ASN_ENCODING, der, (DWORD) len);
	    PCCERT_CONTEXT found = want == NULL ? NULL
		    : CertFindCertificateInStore(hs, X509_ASN_ENCODING, 0,
			CERT_FIND_EXISTING, want, NULL);

	    /* CertDeleteCertificateFromStore frees 'found'. */
	    Tcl_SetObjResult(interp, Tcl_NewBooleanObj(found != NULL
		    && CertDeleteCertificateFromStore(found)));
	    if (want != NULL) {
		CertFreeCertificateContext(want);
	    }
	    code = TCL_OK;
	}
	if (hs != NULL) {
	    CertCloseStore(hs, 0);
	}
	OPENSSL_free(der);
    }
    X509_free(x);
    return code;
}

void
SmtpPlatformTestInit(
    Tcl_Interp *interp)
{
    Tcl_CreateObjCommand(interp, "::smtp::internal::winstore",
	    WinStoreObjCmd, NULL, NULL);
}
