/*
 * smtpTls.c --
 *
 *	TLS with OpenSSL over memory BIOs: the TLS context built from
 *	-tlsoptions (in the tls package's option syntax, over the defaults an
 *	application set with tls::init), and a filter that turns ciphertext
 *	from the network into plaintext and back. It never touches a socket,
 *	so handshakes run inside the same event-driven transport as the rest.
 *
 *	Verification is on by default: the chain against the system's trust
 *	store (or -cafile/-cadir) and the server's name (or IP address).
 */

#include "smtpInt.h"
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <limits.h>

struct SmtpTls {
    SSL *ssl;
    BIO *rbio;			/* Ciphertext from the server. */
    BIO *wbio;			/* Ciphertext for the server. */
    int up;			/* Handshake completed. */
};

/*
 * Options of the tls package that a client can use. -request, -command and
 * the protocols below TLS 1.2 are accepted for compatibility with
 * tls::init settings but do not lower our floor.
 */

enum {
    TO_CADIR, TO_CAFILE, TO_CERTFILE, TO_CIPHER, TO_CIPHERSUITES,
    TO_COMMAND, TO_KEYFILE, TO_PASSWORD, TO_REQUEST, TO_REQUIRE,
    TO_SERVERNAME, TO_SSL2, TO_SSL3, TO_TLS1, TO_TLS11, TO_TLS12, TO_TLS13
};

static const char *const tlsOptionNames[] = {
    "-cadir", "-cafile", "-certfile", "-cipher", "-ciphersuites",
    "-command", "-keyfile", "-password", "-request", "-require",
    "-servername", "-ssl2", "-ssl3", "-tls1", "-tls1.1", "-tls1.2",
    "-tls1.3", NULL
};

/*
 * Collects the TLS settings: tls::init's defaults (when the tls package is
 * loaded) overridden by -tlsoptions. Unknown options in -tlsoptions are an
 * error; unknown ones among tls::init's defaults are skipped, since those
 * were written for the tls package.
 */

static int
CollectOptions(
    Tcl_Interp *interp,
    Tcl_Obj *tlsoptions,
    Tcl_Obj *values[],		/* Indexed by the enum above. */
    int debug)
{
    Tcl_Obj *defaults = NULL;
    int pass;

    if (Tcl_PkgPresent(interp, "tls", NULL, 0) != NULL) {
	defaults = Tcl_GetVar2Ex(interp, "::tls::defaults", NULL,
		TCL_GLOBAL_ONLY);
    }
    Tcl_ResetResult(interp);
    for (pass = 0; pass < 2; pass++) {
	Tcl_Obj *list = pass ? tlsoptions : defaults, **elems;
	Tcl_Size n, i;

	if (list == NULL) {
	    continue;
	}
	if (Tcl_ListObjGetElements(pass ? interp : NULL, list, &n, &elems)
		!= TCL_OK) {
	    if (pass) {
		Tcl_SetErrorCode(interp, "SMTP", "OPTION", NULL);
		return TCL_ERROR;
	    }
	    continue;
	}
	if (n % 2) {
	    if (pass) {
		Tcl_SetObjResult(interp, Tcl_ObjPrintf(
			"-tlsoptions must be a list of options and values,"
			" not \"%s\"", Tcl_GetString(list)));
		Tcl_SetErrorCode(interp, "SMTP", "OPTION", NULL);
		return TCL_ERROR;
	    }
	    n--;
	}
	for (i = 0; i < n; i += 2) {
	    int idx;

	    if (Tcl_GetIndexFromObj(NULL, elems[i], tlsOptionNames,
		    "TLS option", TCL_EXACT, &idx) != TCL_OK) {
		if (pass) {
		    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
			    "unknown TLS option \"%s\" in -tlsoptions: must"
			    " be -cadir, -cafile, -certfile, -cipher,"
			    " -ciphersuites, -keyfile, -password, -require,"
			    " -servername, -tls1.2 or -tls1.3",
			    Tcl_GetString(elems[i])));
		    Tcl_SetErrorCode(interp, "SMTP", "OPTION", NULL);
		    return TCL_ERROR;
		}
		if (debug) {
		    Tcl_Channel err = Tcl_GetStdChannel(TCL_STDERR);

		    if (err) {
			Tcl_WriteChars(err, "    ... tls::init option ", -1);
			Tcl_WriteObj(err, elems[i]);
			Tcl_WriteChars(err, " is not used ...\n", -1);
			Tcl_Flush(err);
		    }
		}
		continue;
	    }
	    values[idx] = elems[i + 1];
	}
    }
    return TCL_OK;
}

static int
BoolOpt(
    Tcl_Interp *interp,
    Tcl_Obj *v,
    const char *name,
    int dflt,
    int *out)
{
    *out = dflt;
    if (v == NULL) {
	return TCL_OK;
    }
    if (Tcl_GetBooleanFromObj(NULL, v, out) != TCL_OK) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		"expected boolean value for TLS option %s but got \"%s\"",
		name, Tcl_GetString(v)));
	Tcl_SetErrorCode(interp, "SMTP", "OPTION", NULL);
	return TCL_ERROR;
    }
    return TCL_OK;
}

/*
 * The key passphrase: -password is, as in the tls package, a command to
 * call; a value that names no command is taken as the passphrase itself.
 */

typedef struct PassData {
    Tcl_Interp *interp;
    Tcl_Obj *password;
} PassData;

static int
PasswordCallback(
    char *buf,
    int size,
    int rwflag,
    void *userdata)
{
    PassData *pd = (PassData *) userdata;
    Tcl_Obj *cmd, **words;
    Tcl_Size nw, len;
    const char *pw;
    int fromCommand = 0;

    (void) rwflag;
    if (pd->password == NULL || size <= 0) {
	return 0;
    }
    cmd = pd->password;
    if (Tcl_ListObjGetElements(NULL, cmd, &nw, &words) == TCL_OK && nw > 0
	    && Tcl_FindCommand(pd->interp, Tcl_GetString(words[0]), NULL, 0)
		!= NULL) {
	if (Tcl_EvalObjEx(pd->interp, cmd, TCL_EVAL_GLOBAL) != TCL_OK) {
	    Tcl_ResetResult(pd->interp);
	    return 0;
	}
	fromCommand = 1;
    }
    pw = Tcl_GetStringFromObj(fromCommand ? Tcl_GetObjResult(pd->interp)
	    : cmd, &len);
    if (len >= size) {
	len = size - 1;
    }
    memcpy(buf, pw, (size_t) len);
    buf[len] = '\0';
    if (fromCommand) {
	Tcl_ResetResult(pd->interp);
    }
    return (int) len;
}

/*
 * Appends OpenSSL's queued error reasons (the last one) to msg.
 */

static void
AppendSslError(
    Tcl_Obj *msg)
{
    unsigned long e, last = 0;
    char buf[256];

    while ((e = ERR_get_error()) != 0) {
	last = e;
    }
    if (last) {
	ERR_error_string_n(last, buf, sizeof(buf));
	Tcl_AppendPrintfToObj(msg, ": %s", buf);
    }
}

/*
 * Checks -tlsoptions (and tls::init's defaults) without building
 * anything, so that a bad call fails before connecting.
 */

int
SmtpTlsCheckOptions(
    Tcl_Interp *interp,
    Tcl_Obj *tlsoptions)
{
    Tcl_Obj *v[TO_TLS13 + 1];
    int b;

    memset(v, 0, sizeof(v));
    if (CollectOptions(interp, tlsoptions, v, 0) != TCL_OK
	    || BoolOpt(interp, v[TO_REQUIRE], "-require", 1, &b) != TCL_OK
	    || BoolOpt(interp, v[TO_TLS12], "-tls1.2", 1, &b) != TCL_OK
	    || BoolOpt(interp, v[TO_TLS13], "-tls1.3", 1, &b) != TCL_OK) {
	return TCL_ERROR;
    }
    return TCL_OK;
}

/*
 * The trust when neither -cafile nor -cadir is given: OpenSSL's default
 * paths (SSL_CERT_FILE, SSL_CERT_DIR, its compiled-in directory) and, on
 * Windows, the system's certificate stores, which are only read when
 * the peer is to be verified.
 */

static void
DefaultVerifyPaths(
    SSL_CTX *ctx,
    int require)
{
    SSL_CTX_set_default_verify_paths(ctx);
    if (require) {
	(void) SmtpPlatformSystemCAs(SSL_CTX_get_cert_store(ctx));
    }
    ERR_clear_error();
}

/*
 * Builds the TLS context for a send. Returns NULL with an error in the
 * interpreter. *requirePtr tells whether the peer is verified;
 * *servernamePtr receives -servername, if given (not owned).
 */

SSL_CTX *
SmtpTlsContext(
    Tcl_Interp *interp,
    Tcl_Obj *tlsoptions,
    int debug,
    int *requirePtr,
    Tcl_Obj **servernamePtr)
{
    Tcl_Obj *v[TO_TLS13 + 1];
    SSL_CTX *ctx;
    int require, tls12, tls13;
    PassData pd;
    Tcl_Obj *msg;

    memset(v, 0, sizeof(v));
    if (CollectOptions(interp, tlsoptions, v, debug) != TCL_OK
	    || BoolOpt(interp, v[TO_REQUIRE], "-require", 1, &require)
		!= TCL_OK
	    || BoolOpt(interp, v[TO_TLS12], "-tls1.2", 1, &tls12) != TCL_OK
	    || BoolOpt(interp, v[TO_TLS13], "-tls1.3", 1, &tls13) != TCL_OK) {
	return NULL;
    }
    if (!tls12 && !tls13) {
	Tcl_SetObjResult(interp, Tcl_NewStringObj(
		"-tlsoptions turn off both TLS 1.2 and TLS 1.3: no protocol"
		" left", -1));
	Tcl_SetErrorCode(interp, "SMTP", "OPTION", NULL);
	return NULL;
    }
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
	msg = Tcl_NewStringObj("cannot create a TLS context", -1);

	AppendSslError(msg);
	Tcl_SetObjResult(interp, msg);
	Tcl_SetErrorCode(interp, "SMTP", "TLS", "CONTEXT", NULL);
	return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, tls12 ? TLS1_2_VERSION
	    : TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, tls13 ? TLS1_3_VERSION
	    : TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, require ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
	    NULL);
    if (v[TO_CAFILE] || v[TO_CADIR]) {
	const char *cafile = v[TO_CAFILE] ? Tcl_GetString(v[TO_CAFILE]) : NULL;
	const char *cadir = v[TO_CADIR] ? Tcl_GetString(v[TO_CADIR]) : NULL;

	if (cafile && !*cafile) {
	    cafile = NULL;
	}
	if (cadir && !*cadir) {
	    cadir = NULL;
	}
	if ((cafile || cadir)
		&& !SSL_CTX_load_verify_locations(ctx, cafile, cadir)) {
	    msg = Tcl_ObjPrintf("cannot load CA certificates from"
		    " %s", cafile ? cafile : cadir);

	    AppendSslError(msg);
	    goto fail;
	}
	if (!cafile && !cadir) {
	    DefaultVerifyPaths(ctx, require);
	}
    } else {
	DefaultVerifyPaths(ctx, require);
    }
    if (v[TO_CIPHER] && Tcl_GetCharLength(v[TO_CIPHER]) > 0
	    && !SSL_CTX_set_cipher_list(ctx, Tcl_GetString(v[TO_CIPHER]))) {
	msg = Tcl_ObjPrintf("invalid -cipher \"%s\"",
		Tcl_GetString(v[TO_CIPHER]));

	AppendSslError(msg);
	goto fail;
    }
    if (v[TO_CIPHERSUITES] && Tcl_GetCharLength(v[TO_CIPHERSUITES]) > 0
	    && !SSL_CTX_set_ciphersuites(ctx,
		Tcl_GetString(v[TO_CIPHERSUITES]))) {
	msg = Tcl_ObjPrintf("invalid -ciphersuites \"%s\"",
		Tcl_GetString(v[TO_CIPHERSUITES]));

	AppendSslError(msg);
	goto fail;
    }
    if (v[TO_CERTFILE] && Tcl_GetCharLength(v[TO_CERTFILE]) > 0) {
	const char *cert = Tcl_GetString(v[TO_CERTFILE]);
	const char *key = (v[TO_KEYFILE]
		&& Tcl_GetCharLength(v[TO_KEYFILE]) > 0)
		? Tcl_GetString(v[TO_KEYFILE]) : cert;

	pd.interp = interp;
	pd.password = v[TO_PASSWORD];
	SSL_CTX_set_default_passwd_cb(ctx, PasswordCallback);
	SSL_CTX_set_default_passwd_cb_userdata(ctx, &pd);
	if (!SSL_CTX_use_certificate_chain_file(ctx, cert)) {
	    msg = Tcl_ObjPrintf("cannot load client certificate %s",
		    cert);

	    AppendSslError(msg);
	    goto fail;
	}
	if (!SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM)) {
	    msg = Tcl_ObjPrintf("cannot load private key %s", key);

	    AppendSslError(msg);
	    goto fail;
	}
	if (!SSL_CTX_check_private_key(ctx)) {
	    msg = Tcl_ObjPrintf("private key %s does not match the"
		    " certificate %s", key, cert);

	    AppendSslError(msg);
	    goto fail;
	}
	SSL_CTX_set_default_passwd_cb(ctx, NULL);
	SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
    }
    *requirePtr = require;
    *servernamePtr = (v[TO_SERVERNAME]
	    && Tcl_GetCharLength(v[TO_SERVERNAME]) > 0) ? v[TO_SERVERNAME]
	    : NULL;
    return ctx;

  fail:
    Tcl_SetObjResult(interp, msg);
    Tcl_SetErrorCode(interp, "SMTP", "TLS", "CONFIG", NULL);
    SSL_CTX_free(ctx);
    return NULL;
}

void
SmtpTlsContextFree(
    SSL_CTX *ctx)
{
    if (ctx) {
	SSL_CTX_free(ctx);
    }
}

/*
 * Tells whether a host string is an IPv4 or IPv6 literal.
 */

static int
IsIpLiteral(
    const char *host)
{
    ASN1_OCTET_STRING *ip = a2i_IPADDRESS(host);

    if (ip) {
	ASN1_OCTET_STRING_free(ip);
	return 1;
    }
    return 0;
}

/*
 * Starts a client TLS session for 'host' (a name or an IP address). The
 * ClientHello is left in 'net' for the caller to send.
 */

SmtpTls *
SmtpTlsNew(
    SSL_CTX *ctx,
    const char *host,
    int verify,
    SmtpBuf *net,
    Tcl_Obj **errPtr)
{
    SmtpTls *t;
    int ip = IsIpLiteral(host);

    ERR_clear_error();
    t = (SmtpTls *) ckalloc(sizeof(SmtpTls));
    memset(t, 0, sizeof(SmtpTls));
    t->ssl = SSL_new(ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
	goto fail;
    }
    BIO_set_mem_eof_return(t->rbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_connect_state(t->ssl);
    if (!ip && !SSL_set_tlsext_host_name(t->ssl, host)) {
	goto fail;
    }
    if (verify) {
	if (ip) {
	    if (!X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl),
		    host)) {
		goto fail;
	    }
	} else if (!SSL_set1_host(t->ssl, host)) {
	    goto fail;
	}
    }
    if (SmtpTlsFeed(t, NULL, 0, NULL, net, errPtr) < 0) {
	SmtpTlsFree(t);
	return NULL;
    }
    return t;

  fail:
    *errPtr = Tcl_NewStringObj("cannot set up TLS", -1);
    AppendSslError(*errPtr);
    if (t->ssl) {
	SSL_free(t->ssl);		/* Frees the BIOs it holds. */
    } else {
	if (t->rbio) {
	    BIO_free(t->rbio);
	}
	if (t->wbio) {
	    BIO_free(t->wbio);
	}
    }
    ckfree(t);
    return NULL;
}

/*
 * Moves the ciphertext OpenSSL has produced into 'net'.
 */

static void
Drain(
    SmtpTls *t,
    SmtpBuf *net)
{
    size_t pending;

    while ((pending = BIO_ctrl_pending(t->wbio)) > 0) {
	int n;

	SmtpBufReserve(net, pending);
	n = BIO_read(t->wbio, net->data + net->len, (int) pending);
	if (n <= 0) {
	    break;
	}
	net->len += (size_t) n;
    }
}

/*
 * Explains a failed handshake: the verification result when the
 * certificate was refused, else OpenSSL's reason.
 */

static Tcl_Obj *
HandshakeError(
    SmtpTls *t)
{
    long vr = SSL_get_verify_result(t->ssl);
    Tcl_Obj *msg;

    if (vr != X509_V_OK) {
	msg = Tcl_ObjPrintf("certificate verify failed: %s",
		X509_verify_cert_error_string(vr));
	ERR_clear_error();
    } else {
	msg = Tcl_NewStringObj("TLS handshake failed", -1);
	AppendSslError(msg);
    }
    return msg;
}

/*
 * Feeds ciphertext from the server. Plaintext goes to 'plain' (NULL only
 * before the handshake can have produced any), ciphertext to send goes to
 * 'net'. Returns 1 when the handshake has completed (now or before), 0
 * while it goes on, -1 on failure with *errPtr set; a clean close_notify
 * from the server counts as failure ("connection closed").
 */

int
SmtpTlsFeed(
    SmtpTls *t,
    const unsigned char *in,
    size_t n,
    SmtpBuf *plain,
    SmtpBuf *net,
    Tcl_Obj **errPtr)
{
    while (n > 0) {
	int w = BIO_write(t->rbio, in, n > INT_MAX ? INT_MAX : (int) n);

	if (w <= 0) {
	    *errPtr = Tcl_NewStringObj("TLS buffer error", -1);
	    return -1;
	}
	in += w;
	n -= (size_t) w;
    }
    ERR_clear_error();
    if (!t->up) {
	int r = SSL_do_handshake(t->ssl);

	Drain(t, net);
	if (r == 1) {
	    t->up = 1;
	} else {
	    int e = SSL_get_error(t->ssl, r);

	    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		return 0;
	    }
	    *errPtr = HandshakeError(t);
	    return -1;
	}
    }
    if (plain) {
	for (;;) {
	    int r;

	    SmtpBufReserve(plain, 16384);
	    r = SSL_read(t->ssl, plain->data + plain->len, 16384);
	    if (r > 0) {
		plain->len += (size_t) r;
		continue;
	    }
	    switch (SSL_get_error(t->ssl, r)) {
	    case SSL_ERROR_WANT_READ:
	    case SSL_ERROR_WANT_WRITE:
		Drain(t, net);
		return 1;
	    case SSL_ERROR_ZERO_RETURN:
		Drain(t, net);
		*errPtr = Tcl_NewStringObj("premature end-of-file from server"
			" (TLS closed)", -1);
		return -1;
	    default:
		Drain(t, net);
		*errPtr = Tcl_NewStringObj("TLS error", -1);
		AppendSslError(*errPtr);
		return -1;
	    }
	}
    }
    Drain(t, net);
    return 1;
}

/*
 * Encrypts plaintext for the server into 'net'.
 */

int
SmtpTlsWrite(
    SmtpTls *t,
    const void *p,
    size_t n,
    SmtpBuf *net,
    Tcl_Obj **errPtr)
{
    const unsigned char *q = (const unsigned char *) p;

    ERR_clear_error();
    while (n > 0) {
	int chunk = n > 65536 ? 65536 : (int) n;
	int r = SSL_write(t->ssl, q, chunk);

	if (r <= 0) {
	    *errPtr = Tcl_NewStringObj("TLS write error", -1);
	    AppendSslError(*errPtr);
	    return -1;
	}
	q += r;
	n -= (size_t) r;
	Drain(t, net);
    }
    return 0;
}

/*
 * Says goodbye (close_notify) into 'net'.
 */

void
SmtpTlsShutdown(
    SmtpTls *t,
    SmtpBuf *net)
{
    if (t->up) {
	ERR_clear_error();
	SSL_shutdown(t->ssl);
	Drain(t, net);
	ERR_clear_error();
    }
}

/*
 * The negotiated protocol and cipher, and whether the peer was verified,
 * for -debug.
 */

Tcl_Obj *
SmtpTlsDescribe(
    SmtpTls *t)
{
    return Tcl_ObjPrintf("%s %s", SSL_get_version(t->ssl),
	    SSL_get_cipher_name(t->ssl));
}

void
SmtpTlsFree(
    SmtpTls *t)
{
    if (t) {
	SSL_free(t->ssl);
	ckfree(t);
    }
}
