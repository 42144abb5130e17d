/*
 * fuzz_sasl.c --
 *
 *	Each SASL mechanism (smtpSasl.c) against the server's side of the
 *	exchange: SCRAM-SHA-256/1, DIGEST-MD5, CRAM-MD5, NTLM, OAUTHBEARER
 *	and XOAUTH2 (their error JSON), PLAIN, LOGIN.
 *
 *	Input: the mechanism's name and a line end, then the server's
 *	messages as the session hands them over (the decoded text of each 334
 *	reply), separated by "\n~\n"; the last one is the additional data of
 *	the final 235 (SmtpSaslFinish), none when empty. The credentials and
 *	the client nonces are fixed, so that seeds can hold server messages
 *	that get through to the later steps; "plain" in lower case adds an
 *	authorization identity, "ntlm" a domain.
 *
 *	Checked besides memory and UB: the initial response is the same each
 *	time it is asked for, and no error message holds the password or the
 *	token (unless the input has them: errors quote server text). Inputs
 *	asking SCRAM for more than 100000 iterations are skipped (slow).
 */

#include "fuzz.h"

#define PASSWORD	"Pw-9f3a1c7e5b"
#define TOKEN		"Tok-5d2e8a41"

/* Whether the input itself holds the password or the token. */
static int echo;

static int
Has(
    const uint8_t *p,
    size_t n,
    const char *s)
{
    size_t k = strlen(s), i;

    for (i = 0; i + k <= n; i++) {
	if (p[i] == (uint8_t) s[0] && memcmp(p + i, s, k) == 0) {
	    return 1;
	}
    }
    return 0;
}

static void
CheckError(
    Tcl_Obj *err)
{
    const char *s;

    FUZZ_CHECK(err != NULL, "failure without a message");
    Tcl_IncrRefCount(err);
    s = Tcl_GetString(err);
    if (!echo) {
	FUZZ_CHECK(!Has((const uint8_t *) s, strlen(s), PASSWORD),
		"password in an error");
	FUZZ_CHECK(!Has((const uint8_t *) s, strlen(s), TOKEN),
		"token in an error");
    }
    Tcl_DecrRefCount(err);
}

/*
 * An iteration count over 100000 in a SCRAM message: honoured (up to
 * SCRAM_MAX_ITER) but slow, seconds per input; such inputs are skipped.
 */

static int
ManyIterations(
    const uint8_t *p,
    size_t n)
{
    size_t i;

    for (i = 0; i + 2 < n; i++) {
	if (p[i] == 'i' && p[i + 1] == '=') {
	    size_t j = i + 2, digits = 0;

	    while (j < n && p[j] == '0') {
		j++;
	    }
	    while (j < n && p[j] >= '0' && p[j] <= '9') {
		j++;
		digits++;
	    }
	    if (digits > 5) {
		return 1;
	    }
	}
    }
    return 0;
}

int
LLVMFuzzerTestOneInput(
    const uint8_t *data,
    size_t size)
{
    FuzzIn in = {data, size};
    const uint8_t *p;
    size_t n;
    char mech[32];
    SmtpSaslCreds c;
    SmtpSasl *s;
    SmtpBuf a, b;
    Tcl_Obj *err = NULL;
    int has = 0, failed = 0;

    FuzzTclInit();
    if (ManyIterations(data, size)) {
	return 0;
    }
    echo = Has(data, size, PASSWORD) || Has(data, size, TOKEN);
    if (!FuzzSplit(&in, "\n", &p, &n) || n == 0 || n >= sizeof(mech)) {
	return 0;
    }
    memcpy(mech, p, n);
    mech[n] = '\0';

    memset(&c, 0, sizeof(c));
    c.username = "user";
    c.password = PASSWORD;
    c.oauthToken = TOKEN;
    c.host = "mail.example.org";
    c.authzid = (mech[0] == 'p') ? "admin" : NULL;	/* "plain" */
    if (Tcl_UtfNcasecmp(mech, "NTLM", 5) == 0) {
	c.cnonce = "0123456789abcdef";
	c.timestamp = "130000000000000000";
	c.realm = (mech[0] == 'n') ? "EXAMPLE" : NULL;
    } else {
	c.cnonce = "fyko+d2lbbFgONRv9qkxdawL";
    }
    s = SmtpSaslNew(mech, &c, &err);
    if (s == NULL) {
	CheckError(err);
	return 0;
    }

    SmtpBufInit(&a);
    SmtpBufInit(&b);
    if (SmtpSaslStart(s, &a, &has, &err) != 0) {
	CheckError(err);
	failed = 1;
    } else if (has) {
	int has2 = 0;

	FUZZ_CHECK(SmtpSaslStart(s, &b, &has2, &err) == 0 && has2
		&& SmtpBufAvail(&a) == SmtpBufAvail(&b)
		&& memcmp(SmtpBufPtr(&a), SmtpBufPtr(&b),
			SmtpBufAvail(&a)) == 0,
		"initial response differs when asked again");
    }
    SmtpSaslBufWipe(&a);
    SmtpSaslBufWipe(&b);

    while (!failed && FuzzSplit(&in, "\n~\n", &p, &n)) {
	if (in.p != NULL) {
	    SmtpBufInit(&a);
	    if (SmtpSaslStep(s, p, n, &a, &err) != 0) {
		CheckError(err);
		failed = 1;
	    }
	    SmtpSaslBufWipe(&a);
	} else {
	    if (SmtpSaslFinish(s, n ? p : NULL, n, &err) != 0) {
		CheckError(err);
		failed = 1;
	    }
	}
    }
    if (failed) {
	/* A failed exchange stays failed. */
	SmtpBufInit(&a);
	err = NULL;
	FUZZ_CHECK(SmtpSaslStep(s, (const unsigned char *) "x", 1, &a, &err)
		!= 0, "step after a failure");
	CheckError(err);
	SmtpSaslBufWipe(&a);
    }
    SmtpSaslFree(s);
    return 0;
}
