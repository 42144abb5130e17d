/*
 * fuzz_reply.c --
 *
 *	The reply parser (smtpReply.c) fed server bytes in pieces of every
 *	size, and each reply's later lines taken as an EHLO capability list:
 *	SmtpHasExtension with parameters, the SIZE limit as the session
 *	reads it, and the AUTH mechanisms as the session collects them
 *	(OfferedMechanisms, static in smtpProto.c, hence the #include).
 *
 *	Input: one byte choosing the piece size (0: all at once), then the
 *	bytes from the server. A malformed reply resets the parser, as the
 *	session drops the connection.
 */

#include "fuzz.h"
#include "smtpProto.c"

static const char *const keywords[] = {
    "SIZE", "AUTH", "PIPELINING", "STARTTLS", "TLS", "8BITMIME",
    "SMTPUTF8", "DSN", "CHUNKING", "ONEX", "XQUE", "ENHANCEDSTATUSCODES",
    NULL
};

static void
Capabilities(
    Tcl_Obj *caps)
{
    const char *const *k;
    Tcl_Obj *params = NULL, *mechs, **elems;
    SmtpSession sess;
    Tcl_Size n, i;

    for (k = keywords; *k; k++) {
	params = NULL;
	if (SmtpHasExtension(caps, *k, &params)) {
	    FUZZ_CHECK(params != NULL, "extension without a parameter list");
	    Tcl_IncrRefCount(params);
	    FUZZ_CHECK(Tcl_ListObjGetElements(NULL, params, &n, &elems)
		    == TCL_OK, "parameters not a list");
	    for (i = 0; i < n; i++) {
		Tcl_Size len;
		const char *s = Tcl_GetStringFromObj(elems[i], &len);

		FUZZ_CHECK(len > 0 && strchr(s, ' ') == NULL,
			"empty parameter or one with a space");
	    }
	    if (strcmp(*k, "SIZE") == 0 && n > 0) {
		Tcl_WideInt max;

		(void) Tcl_GetWideIntFromObj(NULL, elems[0], &max);
	    }
	    Tcl_DecrRefCount(params);
	} else {
	    FUZZ_CHECK(params == NULL, "parameters of a missing extension");
	}
    }

    memset(&sess, 0, sizeof(sess));
    sess.caps = caps;
    mechs = OfferedMechanisms(&sess);
    Tcl_IncrRefCount(mechs);
    FUZZ_CHECK(Tcl_ListObjGetElements(NULL, mechs, &n, &elems) == TCL_OK,
	    "mechanisms not a list");
    for (i = 0; i < n; i++) {
	Tcl_Size len;
	const char *s = Tcl_GetStringFromObj(elems[i], &len);

	FUZZ_CHECK(len > 0 && strchr(s, ' ') == NULL, "empty mechanism");
	(void) InList(mechs, s);
    }
    Tcl_DecrRefCount(mechs);
}

int
LLVMFuzzerTestOneInput(
    const uint8_t *data,
    size_t size)
{
    FuzzIn in = {data, size};
    unsigned piece = FuzzByte(&in);
    SmtpReplyParser p;
    SmtpReply r;
    size_t off = 0;

    FuzzTclInit();
    SmtpReplyParserInit(&p);
    SmtpReplyInit(&r);
    while (off < in.n) {
	size_t n = piece ? piece : in.n - off, used = 0;
	Tcl_Obj *err = NULL;
	int rc;

	if (n > in.n - off) {
	    n = in.n - off;
	}
	rc = SmtpReplyParse(&p, in.p + off, n, &used, &r, &err);
	FUZZ_CHECK(used <= n, "consumed more than given");
	off += used;
	if (rc == SMTP_PARSE_REPLY) {
	    Tcl_Size len;
	    Tcl_Obj *diag;

	    FUZZ_CHECK(r.code >= 100 && r.code <= 599, "reply code range");
	    FUZZ_CHECK(strlen(r.enhanced) < sizeof(r.enhanced),
		    "enhanced code");
	    FUZZ_CHECK(r.enhanced[0] == '\0'
		    || r.enhanced[0] - '0' == r.code / 100,
		    "enhanced code of another class");
	    FUZZ_CHECK(Tcl_ListObjLength(NULL, r.raw, &len) == TCL_OK
		    && len >= 1 && len <= SMTP_MAX_LINES, "raw lines");
	    diag = SmtpReplyDiagnostic(&r);
	    Tcl_IncrRefCount(diag);
	    Tcl_DecrRefCount(diag);
	    Capabilities(r.lines);
	    SmtpReplyClear(&r);
	} else if (rc == SMTP_PARSE_ERROR) {
	    FUZZ_CHECK(err != NULL, "error without a message");
	    Tcl_IncrRefCount(err);
	    Tcl_DecrRefCount(err);
	    SmtpReplyParserFree(&p);
	    SmtpReplyParserInit(&p);
	} else {
	    FUZZ_CHECK(used == n, "more wanted, bytes left over");
	}
    }
    SmtpReplyParserFree(&p);
    SmtpReplyClear(&r);
    return 0;
}
