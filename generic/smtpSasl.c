/*
 * smtpSasl.c --
 *
 *	SASL mechanisms for SMTP AUTH, client side: PLAIN, LOGIN, CRAM-MD5,
 *	DIGEST-MD5, SCRAM-SHA-1, SCRAM-SHA-256, XOAUTH2, OAUTHBEARER and
 *	NTLM (NTLMv2). Each is a pure step function from a decoded server
 *	challenge to a response; the protocol core does the talking. Also
 *	strict base64, MD4 (RFC 1320, for NTLM) and the ::smtp::internal
 *	commands that let the test suite drive all of it.
 *
 *	OpenSSL does the hashing, HMAC, PBKDF2 and random numbers. MD4 is our
 *	own: OpenSSL 3 keeps it in the legacy provider, which may be missing,
 *	and loading a provider changes library state for the whole process.
 *
 *	No state is shared between SmtpSasl objects, so several threads may
 *	authenticate at once. Secrets are wiped before memory is released,
 *	and no message ever quotes a credential.
 */

#include "smtpInt.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

/*
 * SCRAM iteration counts accepted from a server. Below the floor RFC 7677
 * recommends, a man in the middle could ask for a proof that is cheap to
 * attack offline; above the ceiling a server could make us compute for
 * many seconds (10 million rounds of PBKDF2 take about 4 s).
 */

#define SCRAM_MIN_ITER	4096
#define SCRAM_MAX_ITER	10000000

/*
 * NTLM negotiate flags (MS-NLMP 2.2.2.5) we use.
 */

#define NTLM_UNICODE		0x00000001u
#define NTLM_OEM		0x00000002u
#define NTLM_REQUEST_TARGET	0x00000004u
#define NTLM_NTLM		0x00000200u
#define NTLM_ALWAYS_SIGN	0x00008000u
#define NTLM_EXTENDED_SESSION	0x00080000u
#define NTLM_TARGET_INFO	0x00800000u
#define NTLM_OUR_FLAGS		(NTLM_UNICODE | NTLM_OEM | NTLM_REQUEST_TARGET \
				| NTLM_NTLM | NTLM_ALWAYS_SIGN \
				| NTLM_EXTENDED_SESSION)

/* Seconds from 1601-01-01 (FILETIME's epoch) to 1970-01-01. */
#define FILETIME_UNIX_OFFSET	11644473600ULL

typedef struct MechType MechType;

struct SmtpSasl {
    const MechType *type;
    char *user, *pass, *authzid, *token;
    char *service, *host, *realm, *workstation;
    char *cnonce, *timestamp;
    SmtpBuf initial;		/* The initial response, once made. */
    int started;		/* 'initial' is made. */
    int answeredEmpty;		/* 'initial' went out as the answer to an
				 * empty challenge. */
    int step;			/* Challenges the mechanism has handled. */
    int failed;			/* An error ended the exchange. */
    int rejected;		/* OAuth: the server sent its error. */
    int verified;		/* SCRAM, DIGEST-MD5: the server proved
				 * that it knows the password. */
    SmtpBuf gs2;		/* SCRAM: gs2-header. */
    SmtpBuf bare;		/* SCRAM: client-first-message-bare. */
    size_t nonceLen;		/* SCRAM: our nonce ends 'bare'. */
    unsigned char expect[EVP_MAX_MD_SIZE];
				/* SCRAM: ServerSignature; DIGEST-MD5: the
				 * rspauth value in lower-case hex. */
    size_t expectLen;
};

typedef int (MechStartProc)(SmtpSasl *s, SmtpBuf *out, Tcl_Obj **errPtr);
typedef int (MechStepProc)(SmtpSasl *s, const unsigned char *p, size_t n,
	SmtpBuf *out, Tcl_Obj **errPtr);
typedef int (MechFinishProc)(SmtpSasl *s, const unsigned char *p, size_t n,
	Tcl_Obj **errPtr);

enum { NEED_PASSWORD = 1, NEED_TOKEN = 2, NEED_USER = 4 };

struct MechType {
    const char *name;
    int needs;			/* NEED_* bits. */
    MechStartProc *start;	/* Makes the initial response; NULL when
				 * the server speaks first. */
    MechStepProc *step;		/* Answers challenge number s->step. */
    MechFinishProc *finish;	/* Checks the outcome on 235; may be
				 * NULL. */
    const EVP_MD *(*md)(void);	/* SCRAM's hash. */
};

static MechStartProc PlainStart, XOAuth2Start, OAuthBearerStart, ScramStart,
	NtlmStart;
static MechStepProc PlainStep, LoginStep, CramStep, DigestStep,
	ScramStep, OAuthStep, NtlmStep;
static MechFinishProc DigestFinish, ScramFinish;

/*
 * Strongest first. SCRAM proves both sides and the server keeps only a
 * salted, iterated verifier. DIGEST-MD5 also proves the server (rspauth)
 * but rests on MD5 and is historic (RFC 6331). CRAM-MD5 proves only the
 * client and the server must keep the password. NTLM proves only the
 * client, its hash is an unsalted MD4 of the password and it can be
 * relayed; it is also the most fragile to set up (domains), so it comes
 * after the other challenge-response mechanisms. The bearer-token
 * mechanisms send a token, which is scoped and expires, and are preferred
 * to sending the password itself: OAUTHBEARER (a standard) before
 * XOAUTH2. PLAIN before LOGIN: one round trip, a standard, authzid.
 */

static const MechType mechTypes[] = {
    {"SCRAM-SHA-256", NEED_USER | NEED_PASSWORD, ScramStart, ScramStep,
	    ScramFinish, EVP_sha256},
    {"SCRAM-SHA-1", NEED_USER | NEED_PASSWORD, ScramStart, ScramStep,
	    ScramFinish, EVP_sha1},
    {"DIGEST-MD5", NEED_USER | NEED_PASSWORD, NULL, DigestStep,
	    DigestFinish, NULL},
    {"CRAM-MD5", NEED_USER | NEED_PASSWORD, NULL, CramStep, NULL, NULL},
    {"NTLM", NEED_USER | NEED_PASSWORD, NtlmStart, NtlmStep, NULL, NULL},
    {"OAUTHBEARER", NEED_TOKEN, OAuthBearerStart, OAuthStep, NULL, NULL},
    {"XOAUTH2", NEED_USER | NEED_TOKEN, XOAuth2Start, OAuthStep, NULL,
	    NULL},
    {"PLAIN", NEED_USER | NEED_PASSWORD, PlainStart, PlainStep, NULL, NULL},
    {"LOGIN", NEED_USER | NEED_PASSWORD, NULL, LoginStep, NULL, NULL},
};

#define NUM_MECHS ((int) (sizeof(mechTypes) / sizeof(mechTypes[0])))

static const char *const mechNames[] = {
    "SCRAM-SHA-256", "SCRAM-SHA-1", "DIGEST-MD5", "CRAM-MD5", "NTLM",
    "OAUTHBEARER", "XOAUTH2", "PLAIN", "LOGIN", NULL
};

/*
 * ----------------------------------------------------------------------
 * Small helpers.
 * ----------------------------------------------------------------------
 */

/*
 * Marks the exchange failed and stores "MECH: message" in *errPtr.
 * Returns -1. Callers never pass credentials; server text goes through
 * Printable first.
 */

static int
Fail(
    SmtpSasl *s,
    Tcl_Obj **errPtr,
    const char *fmt,
    ...)
{
    char buf[300];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    s->failed = 1;
    if (errPtr) {
	*errPtr = Tcl_ObjPrintf("%s: %s", s->type->name, buf);
    }
    return -1;
}

/*
 * Copies server text for an error message: printable ASCII only, at most
 * 'size' - 4 bytes, "..." when cut.
 */

static void
Printable(
    const unsigned char *p,
    size_t n,
    char *out,
    size_t size)
{
    size_t i, o = 0;

    for (i = 0; i < n && o + 4 < size; i++) {
	out[o++] = (p[i] >= 0x20 && p[i] < 0x7f) ? (char) p[i] : '?';
    }
    if (i < n) {
	memcpy(out + o, "...", 3);
	o += 3;
    }
    out[o] = '\0';
}

static char *
Dup(
    const char *s)
{
    size_t n;
    char *d;

    if (s == NULL) {
	return NULL;
    }
    n = strlen(s);
    d = (char *) ckalloc(n + 1);
    memcpy(d, s, n + 1);
    return d;
}

static void
WipeStr(
    char *s)
{
    if (s) {
	OPENSSL_cleanse(s, strlen(s));
	ckfree(s);
    }
}

/*
 * Zeroes the whole allocation of a buffer that held secrets, then frees it.
 */

void
SmtpSaslBufWipe(
    SmtpBuf *b)
{
    if (b->data) {
	OPENSSL_cleanse(b->data, b->cap);
    }
    SmtpBufFree(b);
}

/*
 * Is p[0..n) 'name', ignoring ASCII case?
 */

static int
NameIs(
    const unsigned char *p,
    size_t n,
    const char *name)
{
    size_t i;

    if (strlen(name) != n) {
	return 0;
    }
    for (i = 0; i < n; i++) {
	int a = p[i], b = (unsigned char) name[i];

	if (a >= 'A' && a <= 'Z') {
	    a += 'a' - 'A';
	}
	if (b >= 'A' && b <= 'Z') {
	    b += 'a' - 'A';
	}
	if (a != b) {
	    return 0;
	}
    }
    return 1;
}

static void
Hex(
    const unsigned char *p,
    size_t n,
    char *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < n; i++) {
	out[2 * i] = digits[p[i] >> 4];
	out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static int
HexVal(
    int c)
{
    if (c >= '0' && c <= '9') {
	return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
	return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
	return c - 'A' + 10;
    }
    return -1;
}

static int
Digest(
    const EVP_MD *md,
    const void *p,
    size_t n,
    unsigned char *out)
{
    unsigned int len;

    return EVP_Digest(p, n, out, &len, md, NULL) == 1 ? 0 : -1;
}

static int
Hmac(
    const EVP_MD *md,
    const void *key,
    size_t keyLen,
    const void *p,
    size_t n,
    unsigned char *out)
{
    unsigned int len;

    if (keyLen > INT_MAX) {
	return -1;
    }
    return HMAC(md, key, (int) keyLen, (const unsigned char *) p, n, out,
	    &len) != NULL ? 0 : -1;
}

/*
 * Appends the base64 text of 'nbytes' random bytes (a multiple of 3, so
 * no padding). Returns 0, or -1 when the random generator fails.
 */

static int
AppendRandom(
    SmtpBuf *b,
    int nbytes)
{
    unsigned char r[48];

    if (nbytes > (int) sizeof(r) || RAND_bytes(r, nbytes) != 1) {
	return -1;
    }
    SmtpBase64Encode(r, (size_t) nbytes, b);
    return 0;
}

/*
 * Decodes one character of UTF-8 (Tcl's flavour: C0 80 is NUL) at p[0..n),
 * n > 0. Stores the code point in *chPtr and returns the bytes used. A
 * byte that does not start a valid sequence stands for itself (Latin-1).
 */

static size_t
Utf8Next(
    const unsigned char *p,
    size_t n,
    int *chPtr)
{
    int c = p[0], need, ch, min;
    size_t i;

    if (c < 0x80) {
	*chPtr = c;
	return 1;
    }
    if (c >= 0xC0 && c < 0xE0) {
	need = 1; ch = c & 0x1F; min = 0x80;
    } else if (c >= 0xE0 && c < 0xF0) {
	need = 2; ch = c & 0x0F; min = 0x800;
    } else if (c >= 0xF0 && c < 0xF5) {
	need = 3; ch = c & 0x07; min = 0x10000;
    } else {
	*chPtr = c;
	return 1;
    }
    if ((size_t) need >= n) {
	*chPtr = c;
	return 1;
    }
    for (i = 1; i <= (size_t) need; i++) {
	if ((p[i] & 0xC0) != 0x80) {
	    *chPtr = c;
	    return 1;
	}
	ch = (ch << 6) | (p[i] & 0x3F);
    }
    if ((ch < min && !(c == 0xC0 && p[1] == 0x80)) || ch > 0x10FFFF
	    || (ch >= 0xD800 && ch < 0xE000)) {
	*chPtr = c;
	return 1;
    }
    *chPtr = ch;
    return (size_t) need + 1;
}

/*
 * Appends p[0..n) as UTF-16LE, upper-cased when 'upper' (NTOWFv2 wants
 * the user name so).
 */

static void
AppendUtf16(
    SmtpBuf *b,
    const unsigned char *p,
    size_t n,
    int upper)
{
    size_t i = 0;

    while (i < n) {
	int ch;
	unsigned char u[4];

	i += Utf8Next(p + i, n - i, &ch);
	if (upper && ch < 0x10000) {
	    ch = Tcl_UniCharToUpper(ch) & 0xFFFF;
	}
	if (ch >= 0x10000) {
	    int hi = 0xD800 + ((ch - 0x10000) >> 10);
	    int lo = 0xDC00 + ((ch - 0x10000) & 0x3FF);

	    u[0] = (unsigned char) hi; u[1] = (unsigned char) (hi >> 8);
	    u[2] = (unsigned char) lo; u[3] = (unsigned char) (lo >> 8);
	    SmtpBufAppend(b, u, 4);
	} else {
	    u[0] = (unsigned char) ch; u[1] = (unsigned char) (ch >> 8);
	    SmtpBufAppend(b, u, 2);
	}
    }
}

/*
 * Appends p[0..n) converted to ISO 8859-1 when every character fits, else
 * unchanged (RFC 2831 2.1.2.1, as Cyrus SASL reads it). Returns 1 when
 * converted.
 */

static int
AppendLatin1(
    SmtpBuf *b,
    const unsigned char *p,
    size_t n)
{
    size_t i = 0, start = b->len;

    while (i < n) {
	int ch;
	size_t used = Utf8Next(p + i, n - i, &ch);
	unsigned char c = (unsigned char) ch;

	if (ch > 0xFF || (used == 1 && p[i] >= 0x80)) {
	    if (b->len > start) {
		OPENSSL_cleanse(b->data + start, b->len - start);
	    }
	    b->len = start;
	    SmtpBufAppend(b, p, n);
	    return 0;
	}
	SmtpBufAppend(b, &c, 1);
	i += used;
    }
    return 1;
}

/*
 * Appends a SCRAM saslname: ',' and '=' escaped (RFC 5802 5.1).
 */

static void
AppendSaslName(
    SmtpBuf *b,
    const char *s)
{
    for (; *s; s++) {
	if (*s == ',') {
	    SmtpBufAppendStr(b, "=2C");
	} else if (*s == '=') {
	    SmtpBufAppendStr(b, "=3D");
	} else {
	    SmtpBufAppend(b, s, 1);
	}
    }
}

/*
 * ----------------------------------------------------------------------
 * Base64 (RFC 4648), strict: no line breaks, no white space, padding
 * exactly as needed, unused bits zero.
 * ----------------------------------------------------------------------
 */

static const char b64Chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void
SmtpBase64Encode(
    const unsigned char *p,
    size_t n,
    SmtpBuf *out)
{
    size_t i;
    unsigned char *o;

    SmtpBufReserve(out, (n + 2) / 3 * 4);
    o = out->data + out->len;
    for (i = 0; i + 3 <= n; i += 3) {
	unsigned long v = ((unsigned long) p[i] << 16) | (p[i + 1] << 8)
		| p[i + 2];

	*o++ = b64Chars[(v >> 18) & 63];
	*o++ = b64Chars[(v >> 12) & 63];
	*o++ = b64Chars[(v >> 6) & 63];
	*o++ = b64Chars[v & 63];
    }
    if (n - i == 1) {
	*o++ = b64Chars[p[i] >> 2];
	*o++ = b64Chars[(p[i] & 3) << 4];
	*o++ = '=';
	*o++ = '=';
    } else if (n - i == 2) {
	*o++ = b64Chars[p[i] >> 2];
	*o++ = b64Chars[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
	*o++ = b64Chars[(p[i + 1] & 15) << 2];
	*o++ = '=';
    }
    out->len = (size_t) (o - out->data);
}

static int
B64Val(
    int c)
{
    if (c >= 'A' && c <= 'Z') {
	return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
	return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
	return c - '0' + 52;
    }
    if (c == '+') {
	return 62;
    }
    if (c == '/') {
	return 63;
    }
    return -1;
}

/*
 * Appends the bytes that p[0..n) encodes. Returns 0, or -1 (and appends
 * nothing) when the text is not canonical base64.
 */

int
SmtpBase64Decode(
    const char *p,
    size_t n,
    SmtpBuf *out)
{
    size_t i, pad = 0;
    unsigned char *o;

    if (n % 4 != 0) {
	return -1;
    }
    if (n == 0) {
	return 0;
    }
    if (p[n - 1] == '=') {
	pad = (p[n - 2] == '=') ? 2 : 1;
    }
    SmtpBufReserve(out, n / 4 * 3);
    o = out->data + out->len;
    for (i = 0; i < n; i += 4) {
	int a = B64Val(p[i]), b = B64Val(p[i + 1]), c, d;
	int last = (i + 4 == n);

	c = (last && pad == 2) ? 0 : B64Val(p[i + 2]);
	d = (last && pad >= 1) ? 0 : B64Val(p[i + 3]);
	if (a < 0 || b < 0 || c < 0 || d < 0) {
	    return -1;
	}
	if (last && pad == 2 && (b & 15) != 0) {
	    return -1;
	}
	if (last && pad == 1 && (c & 3) != 0) {
	    return -1;
	}
	*o++ = (unsigned char) ((a << 2) | (b >> 4));
	if (!(last && pad == 2)) {
	    *o++ = (unsigned char) ((b << 4) | (c >> 2));
	}
	if (!(last && pad >= 1)) {
	    *o++ = (unsigned char) ((c << 6) | d);
	}
    }
    out->len = (size_t) (o - out->data);
    return 0;
}

/*
 * ----------------------------------------------------------------------
 * MD4 (RFC 1320), for NTLM's NT hash.
 * ----------------------------------------------------------------------
 */

#define MD4_ROTL(x, s)	(((x) << (s)) | ((x) >> (32 - (s))))
#define MD4_F(x, y, z)	(((x) & (y)) | (~(x) & (z)))
#define MD4_G(x, y, z)	(((x) & (y)) | ((x) & (z)) | ((y) & (z)))
#define MD4_H(x, y, z)	((x) ^ (y) ^ (z))

static void
Md4Block(
    uint32_t st[4],
    const unsigned char *p)
{
    static const int order2[16] = {
	0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15
    };
    static const int order3[16] = {
	0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15
    };
    static const int shift1[4] = {3, 7, 11, 19};
    static const int shift2[4] = {3, 5, 9, 13};
    static const int shift3[4] = {3, 9, 11, 15};
    uint32_t x[16], v[4], t;
    int i;

    for (i = 0; i < 16; i++) {
	x[i] = (uint32_t) p[4 * i] | ((uint32_t) p[4 * i + 1] << 8)
		| ((uint32_t) p[4 * i + 2] << 16)
		| ((uint32_t) p[4 * i + 3] << 24);
    }
    memcpy(v, st, sizeof(v));

    /*
     * Each operation updates one of a, b, c, d in turn: a, d, c, b. With
     * v[] indexed by (4 - i) % 4 the roles rotate as RFC 1320 writes them.
     */

    for (i = 0; i < 16; i++) {
	uint32_t *a = &v[(4 - i % 4) % 4];
	uint32_t b = v[(5 - i % 4) % 4], c = v[(6 - i % 4) % 4],
		d = v[(7 - i % 4) % 4];

	t = *a + MD4_F(b, c, d) + x[i];
	*a = MD4_ROTL(t, shift1[i % 4]);
    }
    for (i = 0; i < 16; i++) {
	uint32_t *a = &v[(4 - i % 4) % 4];
	uint32_t b = v[(5 - i % 4) % 4], c = v[(6 - i % 4) % 4],
		d = v[(7 - i % 4) % 4];

	t = *a + MD4_G(b, c, d) + x[order2[i]] + 0x5A827999u;
	*a = MD4_ROTL(t, shift2[i % 4]);
    }
    for (i = 0; i < 16; i++) {
	uint32_t *a = &v[(4 - i % 4) % 4];
	uint32_t b = v[(5 - i % 4) % 4], c = v[(6 - i % 4) % 4],
		d = v[(7 - i % 4) % 4];

	t = *a + MD4_H(b, c, d) + x[order3[i]] + 0x6ED9EBA1u;
	*a = MD4_ROTL(t, shift3[i % 4]);
    }
    for (i = 0; i < 4; i++) {
	st[i] += v[i];
    }
    OPENSSL_cleanse(x, sizeof(x));
    OPENSSL_cleanse(v, sizeof(v));
}

static void
Md4(
    const unsigned char *p,
    size_t n,
    unsigned char out[16])
{
    uint32_t st[4] = {0x67452301u, 0xefcdab89u, 0x98badcfeu, 0x10325476u};
    unsigned char tail[128];
    size_t full = n - n % 64, rest = n % 64, tailLen, i;
    uint64_t bits = (uint64_t) n * 8;

    for (i = 0; i < full; i += 64) {
	Md4Block(st, p + i);
    }
    memset(tail, 0, sizeof(tail));
    memcpy(tail, p + full, rest);
    tail[rest] = 0x80;
    tailLen = (rest < 56) ? 64 : 128;
    for (i = 0; i < 8; i++) {
	tail[tailLen - 8 + i] = (unsigned char) (bits >> (8 * i));
    }
    Md4Block(st, tail);
    if (tailLen == 128) {
	Md4Block(st, tail + 64);
    }
    for (i = 0; i < 16; i++) {
	out[i] = (unsigned char) (st[i / 4] >> (8 * (i % 4)));
    }
    OPENSSL_cleanse(tail, sizeof(tail));
    OPENSSL_cleanse(st, sizeof(st));
}

/*
 * ----------------------------------------------------------------------
 * The generic part.
 * ----------------------------------------------------------------------
 */

/*
 * Returns the names of the mechanisms we speak, strongest first, ending
 * with NULL.
 */

const char *const *
SmtpSaslMechanisms(void)
{
    return mechNames;
}

/*
 * Makes the state for one exchange with mechanism 'mech' (any case).
 * Copies what it needs from 'c'. Returns NULL with *errPtr set when the
 * mechanism is unknown or a credential it needs is missing.
 */

SmtpSasl *
SmtpSaslNew(
    const char *mech,
    const SmtpSaslCreds *c,
    Tcl_Obj **errPtr)
{
    const MechType *type = NULL;
    SmtpSasl *s;
    int i;

    for (i = 0; i < NUM_MECHS; i++) {
	if (NameIs((const unsigned char *) mech, strlen(mech),
		mechTypes[i].name)) {
	    type = &mechTypes[i];
	    break;
	}
    }
    if (type == NULL) {
	if (errPtr) {
	    *errPtr = Tcl_ObjPrintf("unsupported SASL mechanism \"%.60s\"",
		    mech);
	}
	return NULL;
    }
    if (((type->needs & NEED_USER) && (!c->username || !*c->username))
	    || ((type->needs & NEED_PASSWORD) && !c->password)
	    || ((type->needs & NEED_TOKEN)
		    && (!c->oauthToken || !*c->oauthToken))) {
	if (errPtr) {
	    *errPtr = Tcl_ObjPrintf("%s needs %s", type->name,
		    (type->needs & NEED_TOKEN)
		    ? ((type->needs & NEED_USER)
			? "a user name and an OAuth token" : "an OAuth token")
		    : "a user name and a password");
	}
	return NULL;
    }
    s = (SmtpSasl *) ckalloc(sizeof(SmtpSasl));
    memset(s, 0, sizeof(SmtpSasl));
    s->type = type;
    s->user = Dup(c->username ? c->username : "");
    s->pass = Dup(c->password);
    s->authzid = (c->authzid && *c->authzid) ? Dup(c->authzid) : NULL;
    s->token = Dup(c->oauthToken);
    s->service = Dup(c->service ? c->service : "smtp");
    s->host = Dup(c->host);
    s->realm = (c->realm && *c->realm) ? Dup(c->realm) : NULL;
    s->workstation = Dup(c->workstation ? c->workstation : "");
    s->cnonce = Dup(c->cnonce);
    s->timestamp = Dup(c->timestamp);
    SmtpBufInit(&s->initial);
    SmtpBufInit(&s->gs2);
    SmtpBufInit(&s->bare);
    return s;
}

/*
 * Wipes and frees the state of an exchange.
 */

void
SmtpSaslFree(
    SmtpSasl *s)
{
    if (s == NULL) {
	return;
    }
    WipeStr(s->user);
    WipeStr(s->pass);
    WipeStr(s->authzid);
    WipeStr(s->token);
    WipeStr(s->service);
    WipeStr(s->host);
    WipeStr(s->realm);
    WipeStr(s->workstation);
    WipeStr(s->cnonce);
    WipeStr(s->timestamp);
    SmtpSaslBufWipe(&s->initial);
    SmtpSaslBufWipe(&s->gs2);
    SmtpSaslBufWipe(&s->bare);
    OPENSSL_cleanse(s, sizeof(SmtpSasl));
    ckfree(s);
}

static int
MakeInitial(
    SmtpSasl *s,
    Tcl_Obj **errPtr)
{
    if (s->type->start(s, &s->initial, errPtr) != 0) {
	s->failed = 1;
	return -1;
    }
    s->started = 1;
    return 0;
}

/*
 * Appends the initial response (RFC 4954 "AUTH mech initial-response",
 * raw bytes) to 'initial' and sets *hasInitial, or sets *hasInitial to 0
 * when the server speaks first. Calling it again gives the same bytes.
 * Returns 0, or -1 with *errPtr set.
 */

int
SmtpSaslStart(
    SmtpSasl *s,
    SmtpBuf *initial,
    int *hasInitial,
    Tcl_Obj **errPtr)
{
    *hasInitial = 0;
    if (s->failed) {
	return Fail(s, errPtr, "authentication already failed");
    }
    if (s->type->start == NULL) {
	return 0;
    }
    if (!s->started && MakeInitial(s, errPtr) != 0) {
	return -1;
    }
    SmtpBufAppend(initial, SmtpBufPtr(&s->initial),
	    SmtpBufAvail(&s->initial));
    *hasInitial = 1;
    return 0;
}

/*
 * Answers one challenge (the decoded text of a 334 reply): appends the
 * response to 'response' (possibly nothing: an empty response). When a
 * mechanism with an initial response meets an empty first challenge, the
 * caller did not send the initial response with AUTH and the answer is
 * that response. Returns 0, or -1 with *errPtr set; after an error the
 * exchange is over.
 */

int
SmtpSaslStep(
    SmtpSasl *s,
    const unsigned char *challenge,
    size_t len,
    SmtpBuf *response,
    Tcl_Obj **errPtr)
{
    if (s->failed) {
	return Fail(s, errPtr, "authentication already failed");
    }
    if (s->type->start != NULL && s->step == 0) {
	if (len == 0 && !s->answeredEmpty) {
	    if (!s->started && MakeInitial(s, errPtr) != 0) {
		return -1;
	    }
	    SmtpBufAppend(response, SmtpBufPtr(&s->initial),
		    SmtpBufAvail(&s->initial));
	    s->answeredEmpty = 1;
	    return 0;
	}
	if (!s->started) {
	    return Fail(s, errPtr, "server sent a challenge before the"
		    " initial response");
	}
    }
    s->step++;
    if (s->type->step(s, challenge, len, response, errPtr) != 0) {
	s->failed = 1;
	return -1;
    }
    return 0;
}

/*
 * Called on 235 (success) with the reply's additional data decoded, or
 * NULL when it has none. Checks that the server proved itself where the
 * mechanism can (SCRAM's server signature, DIGEST-MD5's rspauth), from a
 * 334 already seen or from 'data'. Returns 0, or -1 with *errPtr set:
 * then the server must not be trusted even though it said 235.
 */

int
SmtpSaslFinish(
    SmtpSasl *s,
    const unsigned char *data,
    size_t len,
    Tcl_Obj **errPtr)
{
    if (s->failed) {
	return Fail(s, errPtr, "authentication already failed");
    }
    if (s->type->finish == NULL) {
	return 0;
    }
    if (s->type->finish(s, data, len, errPtr) != 0) {
	s->failed = 1;
	return -1;
    }
    return 0;
}

/*
 * ----------------------------------------------------------------------
 * PLAIN (RFC 4616), LOGIN, CRAM-MD5 (RFC 2195).
 * ----------------------------------------------------------------------
 */

static int
PlainStart(
    SmtpSasl *s,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    (void) errPtr;
    SmtpBufReserve(out, strlen(s->user) + strlen(s->pass)
	    + (s->authzid ? strlen(s->authzid) : 0) + 2);
    if (s->authzid) {
	SmtpBufAppendStr(out, s->authzid);
    }
    SmtpBufAppend(out, "", 1);
    SmtpBufAppendStr(out, s->user);
    SmtpBufAppend(out, "", 1);
    SmtpBufAppendStr(out, s->pass);
    return 0;
}

static int
PlainStep(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    (void) p; (void) n; (void) out;
    return Fail(s, errPtr, "unexpected challenge");
}

/*
 * LOGIN answers by position: the user name to the first prompt, the
 * password to the second, whatever the prompts say (servers send
 * "Username:", "User Name", localised text or nothing). Answering by
 * content would break on those servers and gain nothing.
 */

static int
LoginStep(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    (void) p; (void) n;
    switch (s->step) {
    case 1:
	SmtpBufAppendStr(out, s->user);
	return 0;
    case 2:
	SmtpBufAppendStr(out, s->pass);
	return 0;
    default:
	return Fail(s, errPtr, "unexpected third prompt");
    }
}

static int
CramStep(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    unsigned char mac[16];
    char hex[33];

    if (s->step != 1) {
	return Fail(s, errPtr, "unexpected challenge");
    }
    if (n == 0) {
	return Fail(s, errPtr, "empty challenge");
    }
    if (Hmac(EVP_md5(), s->pass, strlen(s->pass), p, n, mac) != 0) {
	return Fail(s, errPtr, "HMAC-MD5 is not available");
    }
    Hex(mac, 16, hex);
    SmtpBufAppendStr(out, s->user);
    SmtpBufAppend(out, " ", 1);
    SmtpBufAppend(out, hex, 32);
    OPENSSL_cleanse(mac, sizeof(mac));
    return 0;
}

/*
 * ----------------------------------------------------------------------
 * XOAUTH2 (Google's) and OAUTHBEARER (RFC 7628).
 * ----------------------------------------------------------------------
 */

static int
XOAuth2Start(
    SmtpSasl *s,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    (void) errPtr;
    SmtpBufAppendStr(out, "user=");
    SmtpBufAppendStr(out, s->user);
    SmtpBufAppendStr(out, "\001auth=Bearer ");
    SmtpBufAppendStr(out, s->token);
    SmtpBufAppendStr(out, "\001\001");
    return 0;
}

static int
OAuthBearerStart(
    SmtpSasl *s,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    (void) errPtr;
    SmtpBufAppendStr(out, "n,");
    if (*s->user) {
	SmtpBufAppendStr(out, "a=");
	AppendSaslName(out, s->user);
    }
    SmtpBufAppendStr(out, ",\001auth=Bearer ");
    SmtpBufAppendStr(out, s->token);
    SmtpBufAppendStr(out, "\001\001");
    return 0;
}

/*
 * A challenge after the token is the server's error report (JSON). The
 * client must answer it so that the server can send its failure reply:
 * XOAUTH2 with an empty response, OAUTHBEARER with a single ^A (RFC 7628
 * 3.2.3).
 */

static int
OAuthStep(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    (void) p; (void) n;
    if (s->rejected) {
	return Fail(s, errPtr, "unexpected challenge after the error report");
    }
    s->rejected = 1;
    if (s->type->start == OAuthBearerStart) {
	SmtpBufAppend(out, "\001", 1);
    }
    return 0;
}

/*
 * ----------------------------------------------------------------------
 * SCRAM-SHA-1 (RFC 5802) and SCRAM-SHA-256 (RFC 7677), no channel
 * binding. Passwords are used as given (UTF-8) without SASLprep.
 * ----------------------------------------------------------------------
 */

/*
 * Checks a client nonce given by the caller: printable ASCII but ','.
 */

static int
ValidScramNonce(
    const char *n)
{
    if (*n == '\0') {
	return 0;
    }
    for (; *n; n++) {
	if (*n < 0x21 || *n > 0x7e || *n == ',') {
	    return 0;
	}
    }
    return 1;
}

static int
ScramStart(
    SmtpSasl *s,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    size_t before;

    SmtpBufAppendStr(&s->gs2, "n,");
    if (s->authzid) {
	SmtpBufAppendStr(&s->gs2, "a=");
	AppendSaslName(&s->gs2, s->authzid);
    }
    SmtpBufAppendStr(&s->gs2, ",");
    SmtpBufAppendStr(&s->bare, "n=");
    AppendSaslName(&s->bare, s->user);
    SmtpBufAppendStr(&s->bare, ",r=");
    before = s->bare.len;
    if (s->cnonce) {
	if (!ValidScramNonce(s->cnonce)) {
	    return Fail(s, errPtr, "invalid client nonce");
	}
	SmtpBufAppendStr(&s->bare, s->cnonce);
    } else if (AppendRandom(&s->bare, 24) != 0) {
	return Fail(s, errPtr, "no random numbers for the nonce");
    }
    s->nonceLen = s->bare.len - before;
    SmtpBufAppend(out, SmtpBufPtr(&s->gs2), SmtpBufAvail(&s->gs2));
    SmtpBufAppend(out, SmtpBufPtr(&s->bare), SmtpBufAvail(&s->bare));
    return 0;
}

/*
 * If *qp starts "x=", steps over it and returns 1.
 */

static int
ScramAttr(
    const unsigned char **qp,
    const unsigned char *end,
    int name)
{
    const unsigned char *q = *qp;

    if (end - q >= 2 && q[0] == name && q[1] == '=') {
	*qp = q + 2;
	return 1;
    }
    return 0;
}

/*
 * Reads the server-first-message, computes the proof and appends the
 * client-final-message. Remembers the server signature to expect.
 */

static int
ScramServerFirst(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    const unsigned char *end = p + n, *q = p, *nonce, *salt;
    const unsigned char *ours = s->bare.data + s->bare.len - s->nonceLen;
    const EVP_MD *md = s->type->md();
    size_t nonceLen, saltLen, hlen = (size_t) EVP_MD_size(md), i;
    unsigned long iter = 0;
    unsigned char salted[EVP_MAX_MD_SIZE], clientKey[EVP_MAX_MD_SIZE];
    unsigned char storedKey[EVP_MAX_MD_SIZE], clientSig[EVP_MAX_MD_SIZE];
    unsigned char serverKey[EVP_MAX_MD_SIZE];
    SmtpBuf saltBuf, final, auth;
    int code = -1;

    if (ScramAttr(&q, end, 'm')) {
	return Fail(s, errPtr, "server requires an unsupported extension"
		" (m=)");
    }
    if (!ScramAttr(&q, end, 'r')) {
	return Fail(s, errPtr, "server-first-message has no nonce (r=)");
    }
    nonce = q;
    while (q < end && *q != ',') {
	if (*q < 0x21 || *q > 0x7e) {
	    return Fail(s, errPtr, "invalid character in the server nonce");
	}
	q++;
    }
    nonceLen = (size_t) (q - nonce);
    if (nonceLen <= s->nonceLen || memcmp(nonce, ours, s->nonceLen) != 0) {
	return Fail(s, errPtr, "server nonce does not extend ours");
    }
    if (q == end || *q++ != ',' || !ScramAttr(&q, end, 's')) {
	return Fail(s, errPtr, "server-first-message has no salt (s=)");
    }
    salt = q;
    while (q < end && *q != ',') {
	q++;
    }
    saltLen = (size_t) (q - salt);
    if (q == end || *q++ != ',' || !ScramAttr(&q, end, 'i')) {
	return Fail(s, errPtr, "server-first-message has no iteration count"
		" (i=)");
    }
    if (q == end || *q < '0' || *q > '9') {
	return Fail(s, errPtr, "iteration count is not a number");
    }
    while (q < end && *q >= '0' && *q <= '9') {
	if (iter <= SCRAM_MAX_ITER) {
	    iter = iter * 10 + (unsigned long) (*q - '0');
	}
	q++;
    }
    if (q < end && *q != ',') {
	return Fail(s, errPtr, "iteration count is not a number");
    }
    if (iter < SCRAM_MIN_ITER) {
	return Fail(s, errPtr, "iteration count %lu is below the minimum %d",
		iter, SCRAM_MIN_ITER);
    }
    if (iter > SCRAM_MAX_ITER) {
	return Fail(s, errPtr, "iteration count is above the maximum %d",
		SCRAM_MAX_ITER);
    }
    SmtpBufInit(&saltBuf);
    if (saltLen == 0 || SmtpBase64Decode((const char *) salt, saltLen,
	    &saltBuf) != 0 || saltBuf.len == 0) {
	SmtpBufFree(&saltBuf);
	return Fail(s, errPtr, "salt is not valid base64");
    }

    SmtpBufInit(&final);
    SmtpBufInit(&auth);
    SmtpBufAppendStr(&final, "c=");
    SmtpBase64Encode(SmtpBufPtr(&s->gs2), SmtpBufAvail(&s->gs2), &final);
    SmtpBufAppendStr(&final, ",r=");
    SmtpBufAppend(&final, nonce, nonceLen);
    SmtpBufAppend(&auth, SmtpBufPtr(&s->bare), SmtpBufAvail(&s->bare));
    SmtpBufAppend(&auth, ",", 1);
    SmtpBufAppend(&auth, p, n);
    SmtpBufAppend(&auth, ",", 1);
    SmtpBufAppend(&auth, final.data, final.len);

    if (PKCS5_PBKDF2_HMAC(s->pass, (int) strlen(s->pass), saltBuf.data,
	    (int) saltBuf.len, (int) iter, md, (int) hlen, salted) != 1
	    || Hmac(md, salted, hlen, "Client Key", 10, clientKey) != 0
	    || Digest(md, clientKey, hlen, storedKey) != 0
	    || Hmac(md, storedKey, hlen, auth.data, auth.len, clientSig) != 0
	    || Hmac(md, salted, hlen, "Server Key", 10, serverKey) != 0
	    || Hmac(md, serverKey, hlen, auth.data, auth.len, s->expect)
		    != 0) {
	Fail(s, errPtr, "the hash functions are not available");
	goto done;
    }
    s->expectLen = hlen;
    for (i = 0; i < hlen; i++) {
	clientKey[i] ^= clientSig[i];
    }
    SmtpBufAppend(out, final.data, final.len);
    SmtpBufAppendStr(out, ",p=");
    SmtpBase64Encode(clientKey, hlen, out);
    code = 0;

  done:
    OPENSSL_cleanse(salted, sizeof(salted));
    OPENSSL_cleanse(clientKey, sizeof(clientKey));
    OPENSSL_cleanse(storedKey, sizeof(storedKey));
    OPENSSL_cleanse(clientSig, sizeof(clientSig));
    OPENSSL_cleanse(serverKey, sizeof(serverKey));
    SmtpBufFree(&saltBuf);
    SmtpBufFree(&final);
    SmtpBufFree(&auth);
    return code;
}

/*
 * Reads a server-final-message and checks the server signature.
 */

static int
ScramServerFinal(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    Tcl_Obj **errPtr)
{
    const unsigned char *end = p + n, *q = p, *v;
    SmtpBuf sig;
    char text[80];
    int ok;

    if (ScramAttr(&q, end, 'e')) {
	v = q;
	while (q < end && *q != ',') {
	    q++;
	}
	Printable(v, (size_t) (q - v), text, sizeof(text));
	return Fail(s, errPtr, "server reports an error: %s", text);
    }
    if (!ScramAttr(&q, end, 'v')) {
	return Fail(s, errPtr, "malformed server-final-message");
    }
    if (s->expectLen == 0) {
	return Fail(s, errPtr, "server-final-message before the proof");
    }
    v = q;
    while (q < end && *q != ',') {
	q++;
    }
    SmtpBufInit(&sig);
    if (SmtpBase64Decode((const char *) v, (size_t) (q - v), &sig) != 0) {
	SmtpBufFree(&sig);
	return Fail(s, errPtr, "server signature is not valid base64");
    }
    ok = sig.len == s->expectLen
	    && CRYPTO_memcmp(sig.data, s->expect, s->expectLen) == 0;
    SmtpBufFree(&sig);
    if (!ok) {
	return Fail(s, errPtr, "wrong server signature: the server does not"
		" know the password");
    }
    s->verified = 1;
    return 0;
}

static int
ScramStep(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    switch (s->step) {
    case 1:
	return ScramServerFirst(s, p, n, out, errPtr);
    case 2:
	return ScramServerFinal(s, p, n, errPtr);
    default:
	return Fail(s, errPtr, "unexpected challenge");
    }
}

/*
 * The server-final-message comes either as a last 334 (RFC 4954: SMTP has
 * no additional data on success) or, from some servers, with the 235.
 */

static int
ScramFinish(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    Tcl_Obj **errPtr)
{
    if (s->verified) {
	return 0;
    }
    if (p == NULL) {
	return Fail(s, errPtr, "server accepted without proving that it"
		" knows the password (no server signature)");
    }
    return ScramServerFinal(s, p, n, errPtr);
}

/*
 * ----------------------------------------------------------------------
 * DIGEST-MD5 (RFC 2831), qop=auth only.
 * ----------------------------------------------------------------------
 */

typedef struct DigestDirectives {
    SmtpBuf realm;		/* The first realm offered. */
    SmtpBuf nonce;
    SmtpBuf rspauth;
    int realms, nonces, qops, charsets, algorithms, rspauths;
    int qopAuth;		/* qop-options include "auth". */
    int utf8;			/* charset=utf-8. */
    int md5sess;		/* algorithm=md5-sess. */
} DigestDirectives;

static void
DigestInit(
    DigestDirectives *d)
{
    memset(d, 0, sizeof(*d));
    SmtpBufInit(&d->realm);
    SmtpBufInit(&d->nonce);
    SmtpBufInit(&d->rspauth);
}

static void
DigestFree(
    DigestDirectives *d)
{
    SmtpBufFree(&d->realm);
    SmtpBufFree(&d->nonce);
    SmtpBufFree(&d->rspauth);
}

static int
IsLws(
    int c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int
IsTokenChar(
    int c)
{
    return c > 0x20 && c < 0x7f && strchr("()<>@,;:\\\"/[]?={}", c) == NULL;
}

/*
 * Does qop-options (a list of tokens inside the quoted value) name "auth"?
 */

static int
QopHasAuth(
    const unsigned char *p,
    size_t n)
{
    size_t i = 0;

    while (i < n) {
	size_t start;

	while (i < n && (IsLws(p[i]) || p[i] == ',')) {
	    i++;
	}
	start = i;
	while (i < n && !IsLws(p[i]) && p[i] != ',') {
	    i++;
	}
	if (NameIs(p + start, i - start, "auth")) {
	    return 1;
	}
    }
    return 0;
}

/*
 * Records one directive. Returns NULL or a message.
 */

static const char *
DigestDirective(
    DigestDirectives *d,
    const unsigned char *name,
    size_t nameLen,
    const SmtpBuf *val)
{
    if (NameIs(name, nameLen, "realm")) {
	if (d->realms++ == 0) {
	    SmtpBufAppend(&d->realm, val->data, val->len);
	}
    } else if (NameIs(name, nameLen, "nonce")) {
	if (d->nonces++) {
	    return "more than one nonce";
	}
	if (val->len == 0) {
	    return "empty nonce";
	}
	SmtpBufAppend(&d->nonce, val->data, val->len);
    } else if (NameIs(name, nameLen, "qop")) {
	if (d->qops++) {
	    return "more than one qop";
	}
	d->qopAuth = QopHasAuth(val->data, val->len);
    } else if (NameIs(name, nameLen, "charset")) {
	if (d->charsets++) {
	    return "more than one charset";
	}
	if (!NameIs(val->data, val->len, "utf-8")) {
	    return "unknown charset";
	}
	d->utf8 = 1;
    } else if (NameIs(name, nameLen, "algorithm")) {
	if (d->algorithms++) {
	    return "more than one algorithm";
	}
	d->md5sess = NameIs(val->data, val->len, "md5-sess");
    } else if (NameIs(name, nameLen, "rspauth")) {
	if (d->rspauths++) {
	    return "more than one rspauth";
	}
	SmtpBufAppend(&d->rspauth, val->data, val->len);
    }
    return NULL;
}

/*
 * Parses a list of name=value directives, values tokens or quoted strings
 * (RFC 2831 7.1, with LWS and empty elements). Returns NULL or a message.
 */

static const char *
DigestParse(
    const unsigned char *p,
    size_t n,
    DigestDirectives *d)
{
    size_t i = 0;
    const char *err = NULL;
    SmtpBuf val;

    SmtpBufInit(&val);
    while (err == NULL) {
	const unsigned char *name;
	size_t nameLen, start;

	while (i < n && (IsLws(p[i]) || p[i] == ',')) {
	    i++;
	}
	if (i >= n) {
	    break;
	}
	name = p + i;
	while (i < n && IsTokenChar(p[i])) {
	    i++;
	}
	nameLen = (size_t) (p + i - name);
	while (i < n && IsLws(p[i])) {
	    i++;
	}
	if (nameLen == 0 || i >= n || p[i] != '=') {
	    err = "malformed challenge";
	    break;
	}
	i++;
	while (i < n && IsLws(p[i])) {
	    i++;
	}
	val.len = 0;
	if (i < n && p[i] == '"') {
	    for (i++; i < n && p[i] != '"'; i++) {
		if (p[i] == '\\' && ++i >= n) {
		    break;
		}
		if ((p[i] < 0x20 && p[i] != '\t') || p[i] == 0x7f) {
		    err = "control character in a quoted string";
		    break;
		}
		SmtpBufAppend(&val, p + i, 1);
	    }
	    if (err) {
		break;
	    }
	    if (i >= n) {
		err = "unterminated quoted string";
		break;
	    }
	    i++;
	} else {
	    start = i;
	    while (i < n && IsTokenChar(p[i])) {
		i++;
	    }
	    if (i == start) {
		err = "malformed challenge";
		break;
	    }
	    SmtpBufAppend(&val, p + start, i - start);
	}
	while (i < n && IsLws(p[i])) {
	    i++;
	}
	if (i < n && p[i] != ',') {
	    err = "malformed challenge";
	    break;
	}
	err = DigestDirective(d, name, nameLen, &val);
    }
    SmtpBufFree(&val);
    return err;
}

static void
AppendQuoted(
    SmtpBuf *b,
    const void *v,
    size_t n)
{
    const unsigned char *p = (const unsigned char *) v;
    size_t i;

    SmtpBufAppend(b, "\"", 1);
    for (i = 0; i < n; i++) {
	if (p[i] == '"' || p[i] == '\\') {
	    SmtpBufAppend(b, "\\", 1);
	}
	SmtpBufAppend(b, p + i, 1);
    }
    SmtpBufAppend(b, "\"", 1);
}

/*
 * Lower-case hex of MD5 over p[0..n) into hex[33].
 */

static int
Md5Hex(
    const void *p,
    size_t n,
    char *hex)
{
    unsigned char h[16];

    if (Digest(EVP_md5(), p, n, h) != 0) {
	return -1;
    }
    Hex(h, 16, hex);
    return 0;
}

/*
 * The response value of RFC 2831 2.1.2.1 for A2 = a2 (the client's
 * "AUTHENTICATE:uri" or the server's ":uri"), into hex[33], from HEX(H(A1)).
 */

static int
DigestValue(
    const char *ha1,
    const SmtpBuf *nonce,
    const char *cnonce,
    const char *a2Prefix,
    const SmtpBuf *uri,
    char *hex)
{
    SmtpBuf a2, kd;
    char ha2[33];
    int code;

    SmtpBufInit(&a2);
    SmtpBufInit(&kd);
    SmtpBufAppendStr(&a2, a2Prefix);
    SmtpBufAppend(&a2, uri->data, uri->len);
    code = Md5Hex(a2.data, a2.len, ha2);
    SmtpBufAppend(&kd, ha1, 32);
    SmtpBufAppend(&kd, ":", 1);
    SmtpBufAppend(&kd, nonce->data, nonce->len);
    SmtpBufAppendStr(&kd, ":00000001:");
    SmtpBufAppendStr(&kd, cnonce);
    SmtpBufAppendStr(&kd, ":auth:");
    SmtpBufAppend(&kd, ha2, 32);
    if (code == 0) {
	code = Md5Hex(kd.data, kd.len, hex);
    }
    SmtpSaslBufWipe(&kd);
    SmtpBufFree(&a2);
    return code;
}

static int
ValidDigestNonce(
    const char *n)
{
    if (*n == '\0') {
	return 0;
    }
    for (; *n; n++) {
	if ((unsigned char) *n < 0x21 || *n == 0x7f || *n == '"'
		|| *n == '\\') {
	    return 0;
	}
    }
    return 1;
}

/*
 * Answers the digest-challenge with a digest-response.
 */

static int
DigestResponse(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    DigestDirectives d;
    SmtpBuf secret, a1, uri, cnonce, userWire, realmWire;
    unsigned char inner[16];
    char ha1[33], response[33];
    const char *err;
    int code = -1, haveRealm = 0;

    if (s->host == NULL || *s->host == '\0') {
	return Fail(s, errPtr, "no server host name for digest-uri");
    }
    DigestInit(&d);
    err = DigestParse(p, n, &d);
    if (err == NULL && d.nonces == 0) {
	err = "challenge has no nonce";
    }
    if (err == NULL && !d.md5sess) {
	err = "challenge does not offer algorithm=md5-sess";
    }
    if (err == NULL && d.qops && !d.qopAuth) {
	err = "server does not offer qop=auth";
    }
    if (err) {
	DigestFree(&d);
	return Fail(s, errPtr, "%s", err);
    }

    SmtpBufInit(&secret);
    SmtpBufInit(&a1);
    SmtpBufInit(&uri);
    SmtpBufInit(&cnonce);
    SmtpBufInit(&userWire);
    SmtpBufInit(&realmWire);
    if (s->cnonce) {
	if (!ValidDigestNonce(s->cnonce)) {
	    Fail(s, errPtr, "invalid client nonce");
	    goto done;
	}
	SmtpBufAppendStr(&cnonce, s->cnonce);
    } else if (AppendRandom(&cnonce, 18) != 0) {
	Fail(s, errPtr, "no random numbers for the nonce");
	goto done;
    }
    SmtpBufAppend(&cnonce, "", 1);
    cnonce.len--;

    /*
     * H({username, ":", realm, ":", passwd}), each in ISO 8859-1 when it
     * fits. The realm is ours if given, else the first the server offers,
     * else empty (and not sent).
     */

    SmtpBufReserve(&secret, 2 * (strlen(s->user) + strlen(s->pass)) + 64);
    if (d.utf8) {
	SmtpBufAppendStr(&userWire, s->user);
	AppendLatin1(&secret, (const unsigned char *) s->user,
		strlen(s->user));
    } else {
	AppendLatin1(&userWire, (const unsigned char *) s->user,
		strlen(s->user));
	SmtpBufAppend(&secret, userWire.data, userWire.len);
    }
    SmtpBufAppend(&secret, ":", 1);
    if (s->realm) {
	haveRealm = 1;
	if (d.utf8) {
	    SmtpBufAppendStr(&realmWire, s->realm);
	} else {
	    AppendLatin1(&realmWire, (const unsigned char *) s->realm,
		    strlen(s->realm));
	}
	AppendLatin1(&secret, (const unsigned char *) s->realm,
		strlen(s->realm));
    } else if (d.realms) {
	haveRealm = 1;
	SmtpBufAppend(&realmWire, d.realm.data, d.realm.len);
	if (d.utf8) {
	    AppendLatin1(&secret, d.realm.data, d.realm.len);
	} else {
	    SmtpBufAppend(&secret, d.realm.data, d.realm.len);
	}
    }
    SmtpBufAppend(&secret, ":", 1);
    AppendLatin1(&secret, (const unsigned char *) s->pass, strlen(s->pass));

    SmtpBufAppendStr(&uri, s->service);
    SmtpBufAppend(&uri, "/", 1);
    SmtpBufAppendStr(&uri, s->host);

    if (Digest(EVP_md5(), secret.data, secret.len, inner) != 0) {
	Fail(s, errPtr, "MD5 is not available");
	goto done;
    }
    SmtpBufAppend(&a1, inner, 16);
    SmtpBufAppend(&a1, ":", 1);
    SmtpBufAppend(&a1, d.nonce.data, d.nonce.len);
    SmtpBufAppend(&a1, ":", 1);
    SmtpBufAppend(&a1, cnonce.data, cnonce.len);
    if (s->authzid) {
	SmtpBufAppend(&a1, ":", 1);
	SmtpBufAppendStr(&a1, s->authzid);
    }
    if (Md5Hex(a1.data, a1.len, ha1) != 0
	    || DigestValue(ha1, &d.nonce, (const char *) cnonce.data,
		"AUTHENTICATE:", &uri, response) != 0
	    || DigestValue(ha1, &d.nonce, (const char *) cnonce.data, ":",
		&uri, (char *) s->expect) != 0) {
	Fail(s, errPtr, "MD5 is not available");
	goto done;
    }
    s->expectLen = 32;

    if (d.utf8) {
	SmtpBufAppendStr(out, "charset=utf-8,");
    }
    SmtpBufAppendStr(out, "username=");
    AppendQuoted(out, userWire.data, userWire.len);
    if (haveRealm) {
	SmtpBufAppendStr(out, ",realm=");
	AppendQuoted(out, realmWire.data, realmWire.len);
    }
    SmtpBufAppendStr(out, ",nonce=");
    AppendQuoted(out, d.nonce.data, d.nonce.len);
    SmtpBufAppendStr(out, ",nc=00000001,cnonce=");
    AppendQuoted(out, cnonce.data, cnonce.len);
    SmtpBufAppendStr(out, ",digest-uri=");
    AppendQuoted(out, uri.data, uri.len);
    SmtpBufAppendStr(out, ",response=");
    SmtpBufAppend(out, response, 32);
    SmtpBufAppendStr(out, ",qop=auth");
    if (s->authzid) {
	SmtpBufAppendStr(out, ",authzid=");
	AppendQuoted(out, s->authzid, strlen(s->authzid));
    }
    code = 0;

  done:
    OPENSSL_cleanse(inner, sizeof(inner));
    OPENSSL_cleanse(ha1, sizeof(ha1));
    SmtpSaslBufWipe(&secret);
    SmtpSaslBufWipe(&a1);
    SmtpBufFree(&uri);
    SmtpBufFree(&cnonce);
    SmtpBufFree(&userWire);
    SmtpBufFree(&realmWire);
    DigestFree(&d);
    return code;
}

/*
 * Checks the server's "rspauth=..." against the value computed with the
 * response.
 */

static int
DigestRspauth(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    Tcl_Obj **errPtr)
{
    DigestDirectives d;
    const char *err;
    unsigned char got[32];
    size_t i;
    int ok;

    if (s->expectLen != 32) {
	return Fail(s, errPtr, "rspauth before the response");
    }
    DigestInit(&d);
    err = DigestParse(p, n, &d);
    if (err == NULL && d.rspauths == 0) {
	err = "server sent no rspauth";
    }
    if (err) {
	DigestFree(&d);
	return Fail(s, errPtr, "%s", err);
    }
    ok = d.rspauth.len == 32;
    for (i = 0; ok && i < 32; i++) {
	int c = d.rspauth.data[i];

	got[i] = (unsigned char) ((c >= 'A' && c <= 'F') ? c + 32 : c);
    }
    ok = ok && CRYPTO_memcmp(got, s->expect, 32) == 0;
    DigestFree(&d);
    if (!ok) {
	return Fail(s, errPtr, "wrong rspauth: the server does not know the"
		" password");
    }
    s->verified = 1;
    return 0;
}

static int
DigestStep(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    switch (s->step) {
    case 1:
	return DigestResponse(s, p, n, out, errPtr);
    case 2:
	return DigestRspauth(s, p, n, errPtr);
    default:
	return Fail(s, errPtr, "unexpected challenge");
    }
}

static int
DigestFinish(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    Tcl_Obj **errPtr)
{
    if (s->verified) {
	return 0;
    }
    if (p == NULL) {
	return Fail(s, errPtr, "server accepted without proving that it"
		" knows the password (no rspauth)");
    }
    return DigestRspauth(s, p, n, errPtr);
}

/*
 * ----------------------------------------------------------------------
 * NTLM (MS-NLMP), NTLMv2 responses. No signing or sealing: SMTP uses only
 * the authentication.
 * ----------------------------------------------------------------------
 */

static void
Put16(
    SmtpBuf *b,
    size_t v)
{
    unsigned char u[2];

    u[0] = (unsigned char) v;
    u[1] = (unsigned char) (v >> 8);
    SmtpBufAppend(b, u, 2);
}

static void
Put32(
    SmtpBuf *b,
    uint32_t v)
{
    unsigned char u[4];

    u[0] = (unsigned char) v;
    u[1] = (unsigned char) (v >> 8);
    u[2] = (unsigned char) (v >> 16);
    u[3] = (unsigned char) (v >> 24);
    SmtpBufAppend(b, u, 4);
}

static void
PutField(
    SmtpBuf *b,
    size_t len,
    size_t off)
{
    Put16(b, len);
    Put16(b, len);
    Put32(b, (uint32_t) off);
}

static unsigned
Le16(
    const unsigned char *p)
{
    return (unsigned) p[0] | ((unsigned) p[1] << 8);
}

static uint32_t
Le32(
    const unsigned char *p)
{
    return (uint32_t) p[0] | ((uint32_t) p[1] << 8)
	    | ((uint32_t) p[2] << 16) | ((uint32_t) p[3] << 24);
}

/*
 * The NEGOTIATE_MESSAGE, without domain or workstation: the domain goes
 * in the AUTHENTICATE_MESSAGE, where the server reads it.
 */

static int
NtlmStart(
    SmtpSasl *s,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    (void) s; (void) errPtr;
    SmtpBufAppend(out, "NTLMSSP", 8);
    Put32(out, 1);
    Put32(out, NTLM_OUR_FLAGS);
    PutField(out, 0, 32);
    PutField(out, 0, 32);
    return 0;
}

/*
 * Checks that a security buffer (len, maxlen, offset at p[at..at+8)) lies
 * inside the n-byte message; sets *offPtr, *lenPtr.
 */

static int
NtlmField(
    const unsigned char *p,
    size_t n,
    size_t at,
    size_t *offPtr,
    size_t *lenPtr)
{
    size_t len = Le16(p + at), off = Le32(p + at + 4);

    if (len > 0 && (off > n || len > n - off)) {
	return -1;
    }
    *offPtr = len ? off : 0;
    *lenPtr = len;
    return 0;
}

/*
 * Parses the CHALLENGE_MESSAGE and answers with an AUTHENTICATE_MESSAGE
 * carrying NTLMv2 and LMv2 responses (MS-NLMP 3.3.2).
 *
 * The domain is the caller's realm; else the part before '\' in a user
 * name "DOMAIN\user"; else the server's TargetName (its domain, or its
 * own name for local accounts), as tcllib does.
 */

static int
NtlmStep(
    SmtpSasl *s,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out,
    Tcl_Obj **errPtr)
{
    const unsigned char *ti = NULL, *ts = NULL;
    const char *user = s->user, *slash;
    size_t tnOff, tnLen, tiOff = 0, tiLen = 0, i, userLen, domLen;
    size_t ntLen, off;
    uint32_t flags, neg;
    unsigned char cc[8], stamp[8], ntHash[16], key[16], proof[16], lm[24];
    SmtpBuf pass16, id16, dom16, domMsg, userMsg, wsMsg, temp, buf;
    int code = -1, unicode;

    if (s->step != 1) {
	return Fail(s, errPtr, "unexpected challenge");
    }
    if (n < 32) {
	return Fail(s, errPtr, "challenge message is truncated");
    }
    if (memcmp(p, "NTLMSSP", 8) != 0 || Le32(p + 8) != 2) {
	return Fail(s, errPtr, "not a challenge message");
    }
    flags = Le32(p + 20);
    if (NtlmField(p, n, 12, &tnOff, &tnLen) != 0) {
	return Fail(s, errPtr, "target name lies outside the message");
    }
    if (flags & NTLM_TARGET_INFO) {
	if (n < 48) {
	    return Fail(s, errPtr, "challenge message is truncated");
	}
	if (NtlmField(p, n, 40, &tiOff, &tiLen) != 0) {
	    return Fail(s, errPtr, "target information lies outside the"
		    " message");
	}
	ti = p + tiOff;
    }

    /*
     * The AV pairs must be well formed and end with MsvAvEOL. A server
     * timestamp (MsvAvTimestamp) replaces ours, and then LMv2 is not sent.
     */

    i = 0;
    while (tiLen > 0) {
	unsigned id, len;

	if (tiLen - i < 4) {
	    return Fail(s, errPtr, "target information is truncated");
	}
	id = Le16(ti + i);
	len = Le16(ti + i + 2);
	if (len > tiLen - i - 4) {
	    return Fail(s, errPtr, "target information is truncated");
	}
	if (id == 0) {
	    break;
	}
	if (id == 7 && len == 8) {
	    ts = ti + i + 4;
	}
	i += 4 + len;
    }

    if (s->cnonce) {
	for (i = 0; i < 8; i++) {
	    int hi = HexVal(s->cnonce[2 * i]), lo;

	    lo = hi < 0 ? -1 : HexVal(s->cnonce[2 * i + 1]);
	    if (lo < 0) {
		return Fail(s, errPtr, "invalid client challenge");
	    }
	    cc[i] = (unsigned char) (hi << 4 | lo);
	}
	if (s->cnonce[16] != '\0') {
	    return Fail(s, errPtr, "invalid client challenge");
	}
    } else if (RAND_bytes(cc, 8) != 1) {
	return Fail(s, errPtr, "no random numbers for the client challenge");
    }
    if (ts) {
	memcpy(stamp, ts, 8);
    } else {
	uint64_t ft = 0;

	if (s->timestamp) {
	    const char *q = s->timestamp;

	    if (*q == '\0') {
		return Fail(s, errPtr, "invalid timestamp");
	    }
	    for (; *q; q++) {
		if (*q < '0' || *q > '9' || ft > (UINT64_MAX - 9) / 10) {
		    return Fail(s, errPtr, "invalid timestamp");
		}
		ft = ft * 10 + (uint64_t) (*q - '0');
	    }
	} else {
	    Tcl_Time now;

	    Tcl_GetTime(&now);
	    ft = ((uint64_t) now.sec + FILETIME_UNIX_OFFSET) * 10000000u
		    + (uint64_t) now.usec * 10u;
	}
	for (i = 0; i < 8; i++) {
	    stamp[i] = (unsigned char) (ft >> (8 * i));
	}
    }

    unicode = (flags & NTLM_UNICODE) != 0;
    neg = (flags & NTLM_OUR_FLAGS & ~(NTLM_UNICODE | NTLM_OEM))
	    | (unicode ? NTLM_UNICODE : NTLM_OEM);

    SmtpBufInit(&pass16);
    SmtpBufInit(&id16);
    SmtpBufInit(&dom16);
    SmtpBufInit(&domMsg);
    SmtpBufInit(&userMsg);
    SmtpBufInit(&wsMsg);
    SmtpBufInit(&temp);
    SmtpBufInit(&buf);

    userLen = strlen(user);
    if (s->realm) {
	domLen = strlen(s->realm);
	AppendUtf16(&dom16, (const unsigned char *) s->realm, domLen, 0);
	if (unicode) {
	    SmtpBufAppend(&domMsg, dom16.data, dom16.len);
	} else {
	    SmtpBufAppend(&domMsg, s->realm, domLen);
	}
    } else if ((slash = strchr(user, '\\')) != NULL) {
	domLen = (size_t) (slash - user);
	AppendUtf16(&dom16, (const unsigned char *) user, domLen, 0);
	if (unicode) {
	    SmtpBufAppend(&domMsg, dom16.data, dom16.len);
	} else {
	    SmtpBufAppend(&domMsg, user, domLen);
	}
	user = slash + 1;
	userLen = strlen(user);
    } else if (tnLen > 0) {
	if (unicode) {
	    SmtpBufAppend(&dom16, p + tnOff, tnLen & ~(size_t) 1);
	} else {
	    for (i = 0; i < tnLen; i++) {
		unsigned char u[2];

		u[0] = p[tnOff + i];
		u[1] = 0;
		SmtpBufAppend(&dom16, u, 2);
	    }
	}
	SmtpBufAppend(&domMsg, unicode ? dom16.data : p + tnOff,
		unicode ? dom16.len : tnLen);
    }
    if (unicode) {
	AppendUtf16(&userMsg, (const unsigned char *) user, userLen, 0);
	AppendUtf16(&wsMsg, (const unsigned char *) s->workstation,
		strlen(s->workstation), 0);
    } else {
	SmtpBufAppend(&userMsg, user, userLen);
	SmtpBufAppendStr(&wsMsg, s->workstation);
    }

    /*
     * NTOWFv2 = HMAC_MD5(MD4(UNICODE(password)),
     *		UNICODE(Uppercase(user) || domain)).
     */

    SmtpBufReserve(&pass16, 4 * strlen(s->pass) + 4);
    AppendUtf16(&pass16, (const unsigned char *) s->pass, strlen(s->pass), 0);
    Md4(pass16.data ? pass16.data : (const unsigned char *) "", pass16.len,
	    ntHash);
    AppendUtf16(&id16, (const unsigned char *) user, userLen, 1);
    SmtpBufAppend(&id16, dom16.data, dom16.len);

    temp.len = 0;
    SmtpBufAppend(&temp, "\001\001\0\0\0\0\0\0", 8);
    SmtpBufAppend(&temp, stamp, 8);
    SmtpBufAppend(&temp, cc, 8);
    SmtpBufAppend(&temp, "\0\0\0\0", 4);
    SmtpBufAppend(&temp, ti, tiLen);
    SmtpBufAppend(&temp, "\0\0\0\0", 4);

    SmtpBufAppend(&buf, p + 24, 8);
    SmtpBufAppend(&buf, temp.data, temp.len);
    if (Hmac(EVP_md5(), ntHash, 16, id16.data ? id16.data
	    : (const unsigned char *) "", id16.len, key) != 0
	    || Hmac(EVP_md5(), key, 16, buf.data, buf.len, proof) != 0) {
	Fail(s, errPtr, "HMAC-MD5 is not available");
	goto done;
    }
    if (ts) {
	memset(lm, 0, sizeof(lm));
    } else {
	buf.len = 8;
	SmtpBufAppend(&buf, cc, 8);
	if (Hmac(EVP_md5(), key, 16, buf.data, buf.len, lm) != 0) {
	    Fail(s, errPtr, "HMAC-MD5 is not available");
	    goto done;
	}
	memcpy(lm + 16, cc, 8);
    }

    ntLen = 16 + temp.len;
    if (ntLen > 0xFFFF || domMsg.len > 0xFFFF || userMsg.len > 0xFFFF
	    || wsMsg.len > 0xFFFF) {
	Fail(s, errPtr, "a field of the message would be too long");
	goto done;
    }

    /*
     * Header (64 bytes: no version, no MIC), then domain, user,
     * workstation, LM and NT responses.
     */

    SmtpBufAppend(out, "NTLMSSP", 8);
    Put32(out, 3);
    off = 64 + domMsg.len + userMsg.len + wsMsg.len;
    PutField(out, 24, off);
    PutField(out, ntLen, off + 24);
    off = 64;
    PutField(out, domMsg.len, off);
    off += domMsg.len;
    PutField(out, userMsg.len, off);
    off += userMsg.len;
    PutField(out, wsMsg.len, off);
    off += wsMsg.len + 24 + ntLen;
    PutField(out, 0, off);
    Put32(out, neg);
    SmtpBufAppend(out, domMsg.data, domMsg.len);
    SmtpBufAppend(out, userMsg.data, userMsg.len);
    SmtpBufAppend(out, wsMsg.data, wsMsg.len);
    SmtpBufAppend(out, lm, 24);
    SmtpBufAppend(out, proof, 16);
    SmtpBufAppend(out, temp.data, temp.len);
    code = 0;

  done:
    OPENSSL_cleanse(ntHash, sizeof(ntHash));
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(proof, sizeof(proof));
    OPENSSL_cleanse(lm, sizeof(lm));
    SmtpSaslBufWipe(&pass16);
    SmtpBufFree(&id16);
    SmtpBufFree(&dom16);
    SmtpBufFree(&domMsg);
    SmtpBufFree(&userMsg);
    SmtpBufFree(&wsMsg);
    SmtpBufFree(&temp);
    SmtpBufFree(&buf);
    return code;
}

/*
 * ----------------------------------------------------------------------
 * ::smtp::internal commands for the test suite.
 * ----------------------------------------------------------------------
 */

static Tcl_Obj *
ResultBytes(
    SmtpBuf *b,
    int base64)
{
    Tcl_Obj *o;

    if (base64) {
	SmtpBuf e;

	SmtpBufInit(&e);
	SmtpBase64Encode(SmtpBufPtr(b), SmtpBufAvail(b), &e);
	o = Tcl_NewStringObj((const char *) e.data, (Tcl_Size) e.len);
	SmtpSaslBufWipe(&e);
    } else {
	o = Tcl_NewByteArrayObj(SmtpBufPtr(b), (Tcl_Size) SmtpBufAvail(b));
    }
    SmtpSaslBufWipe(b);
    return o;
}

/*
 * Bytes of a challenge argument, base64-decoded when asked. Returns 0, or
 * -1 when the base64 is invalid.
 */

static int
ArgBytes(
    Tcl_Obj *obj,
    int base64,
    SmtpBuf *out)
{
    Tcl_DString scratch;
    Tcl_Size len;
    const unsigned char *p = SmtpGetBytes(obj, &len, &scratch);
    int code = 0;

    if (base64) {
	code = SmtpBase64Decode((const char *) p, (size_t) len, out);
    } else {
	SmtpBufAppend(out, p, (size_t) len);
    }
    Tcl_DStringFree(&scratch);
    return code;
}

/*
 * ::smtp::internal::sasl mech ?-option value ...? ?--? ?challenge ...?
 *
 * Runs one client exchange: Start, then Step for each challenge, then
 * (with -finish 1 or -final) Finish. Returns a list: the initial response
 * ("" when the mechanism has none, or with -start 0) followed by the
 * response to each challenge. Challenges and responses are raw bytes, or
 * base64 text with -base64 1. Errors come back as Tcl errors with the
 * error code {SMTP SASL}.
 */

static int
SaslObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    static const char *const options[] = {
	"-authzid", "-base64", "-cnonce", "-final", "-finish", "-host",
	"-password", "-realm", "-service", "-start", "-timestamp", "-token",
	"-username", "-workstation", NULL
    };
    enum {
	O_AUTHZID, O_BASE64, O_CNONCE, O_FINAL, O_FINISH, O_HOST,
	O_PASSWORD, O_REALM, O_SERVICE, O_START, O_TIMESTAMP, O_TOKEN,
	O_USERNAME, O_WORKSTATION
    };
    SmtpSaslCreds c;
    SmtpSasl *s;
    Tcl_Obj *err = NULL, *result, *final = NULL;
    SmtpBuf buf;
    int i, idx, base64 = 0, start = 1, finish = 0, has;

    (void) clientData;
    if (objc < 2) {
	Tcl_WrongNumArgs(interp, 1, objv,
		"mech ?-option value ...? ?--? ?challenge ...?");
	return TCL_ERROR;
    }
    memset(&c, 0, sizeof(c));
    for (i = 2; i < objc; i += 2) {
	const char *opt = Tcl_GetString(objv[i]);

	if (opt[0] != '-') {
	    break;
	}
	if (strcmp(opt, "--") == 0) {
	    i++;
	    break;
	}
	if (Tcl_GetIndexFromObj(interp, objv[i], options, "option",
		TCL_EXACT, &idx) != TCL_OK) {
	    return TCL_ERROR;
	}
	if (i + 1 >= objc) {
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf("missing value for %s",
		    opt));
	    return TCL_ERROR;
	}
	switch (idx) {
	case O_AUTHZID: c.authzid = Tcl_GetString(objv[i + 1]); break;
	case O_CNONCE: c.cnonce = Tcl_GetString(objv[i + 1]); break;
	case O_HOST: c.host = Tcl_GetString(objv[i + 1]); break;
	case O_PASSWORD: c.password = Tcl_GetString(objv[i + 1]); break;
	case O_REALM: c.realm = Tcl_GetString(objv[i + 1]); break;
	case O_SERVICE: c.service = Tcl_GetString(objv[i + 1]); break;
	case O_TIMESTAMP: c.timestamp = Tcl_GetString(objv[i + 1]); break;
	case O_TOKEN: c.oauthToken = Tcl_GetString(objv[i + 1]); break;
	case O_USERNAME: c.username = Tcl_GetString(objv[i + 1]); break;
	case O_WORKSTATION:
	    c.workstation = Tcl_GetString(objv[i + 1]);
	    break;
	case O_FINAL: final = objv[i + 1]; finish = 1; break;
	case O_BASE64:
	case O_START:
	case O_FINISH: {
	    int b;

	    if (Tcl_GetBooleanFromObj(interp, objv[i + 1], &b) != TCL_OK) {
		return TCL_ERROR;
	    }
	    if (idx == O_BASE64) {
		base64 = b;
	    } else if (idx == O_START) {
		start = b;
	    } else {
		finish = finish || b;
	    }
	    break;
	}
	}
    }

    s = SmtpSaslNew(Tcl_GetString(objv[1]), &c, &err);
    if (s == NULL) {
	goto error;
    }
    result = Tcl_NewListObj(0, NULL);
    SmtpBufInit(&buf);
    if (start && SmtpSaslStart(s, &buf, &has, &err) != 0) {
	goto stepError;
    }
    Tcl_ListObjAppendElement(NULL, result, ResultBytes(&buf, base64));
    for (; i < objc; i++) {
	SmtpBuf chal;
	int code;

	SmtpBufInit(&chal);
	if (ArgBytes(objv[i], base64, &chal) != 0) {
	    SmtpBufFree(&chal);
	    err = Tcl_NewStringObj("invalid base64 in challenge", -1);
	    goto stepError;
	}
	code = SmtpSaslStep(s, chal.data ? chal.data
		: (const unsigned char *) "", chal.len, &buf, &err);
	SmtpBufFree(&chal);
	if (code != 0) {
	    goto stepError;
	}
	Tcl_ListObjAppendElement(NULL, result, ResultBytes(&buf, base64));
    }
    if (finish) {
	SmtpBuf data;
	int code;

	SmtpBufInit(&data);
	if (final && ArgBytes(final, base64, &data) != 0) {
	    SmtpBufFree(&data);
	    err = Tcl_NewStringObj("invalid base64 in final data", -1);
	    goto stepError;
	}
	code = SmtpSaslFinish(s, final ? (data.data ? data.data
		: (const unsigned char *) "") : NULL, data.len, &err);
	SmtpBufFree(&data);
	if (code != 0) {
	    goto stepError;
	}
    }
    SmtpSaslFree(s);
    Tcl_SetObjResult(interp, result);
    return TCL_OK;

  stepError:
    SmtpSaslBufWipe(&buf);
    Tcl_DecrRefCount(result);
    SmtpSaslFree(s);
  error:
    Tcl_SetObjResult(interp, err);
    Tcl_SetErrorCode(interp, "SMTP", "SASL", NULL);
    return TCL_ERROR;
}

/*
 * ::smtp::internal::base64 encode bytes | decode text
 */

static int
Base64ObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    static const char *const subs[] = {"decode", "encode", NULL};
    SmtpBuf out;
    int idx;

    (void) clientData;
    if (objc != 3) {
	Tcl_WrongNumArgs(interp, 1, objv, "encode|decode data");
	return TCL_ERROR;
    }
    if (Tcl_GetIndexFromObj(interp, objv[1], subs, "subcommand", 0,
	    &idx) != TCL_OK) {
	return TCL_ERROR;
    }
    SmtpBufInit(&out);
    if (idx == 0) {
	if (ArgBytes(objv[2], 1, &out) != 0) {
	    SmtpBufFree(&out);
	    Tcl_SetObjResult(interp, Tcl_NewStringObj("invalid base64", -1));
	    Tcl_SetErrorCode(interp, "SMTP", "SASL", "BASE64", NULL);
	    return TCL_ERROR;
	}
	Tcl_SetObjResult(interp, ResultBytes(&out, 0));
    } else {
	SmtpBuf in;

	SmtpBufInit(&in);
	ArgBytes(objv[2], 0, &in);
	SmtpBase64Encode(SmtpBufPtr(&in), SmtpBufAvail(&in), &out);
	SmtpBufFree(&in);
	Tcl_SetObjResult(interp, Tcl_NewStringObj((const char *) out.data,
		(Tcl_Size) out.len));
	SmtpBufFree(&out);
    }
    return TCL_OK;
}

/*
 * ::smtp::internal::md4 bytes -- the MD4 digest in hex.
 */

static int
Md4ObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    SmtpBuf in;
    unsigned char h[16];
    char hex[33];

    (void) clientData;
    if (objc != 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "bytes");
	return TCL_ERROR;
    }
    SmtpBufInit(&in);
    ArgBytes(objv[1], 0, &in);
    Md4(in.data ? in.data : (const unsigned char *) "", in.len, h);
    SmtpBufFree(&in);
    Hex(h, 16, hex);
    Tcl_SetObjResult(interp, Tcl_NewStringObj(hex, 32));
    return TCL_OK;
}

/*
 * ::smtp::internal::saslmechs -- SmtpSaslMechanisms() as a list.
 */

static int
MechsObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    const char *const *m;
    Tcl_Obj *list = Tcl_NewListObj(0, NULL);

    (void) clientData;
    if (objc != 1) {
	Tcl_DecrRefCount(list);
	Tcl_WrongNumArgs(interp, 1, objv, "");
	return TCL_ERROR;
    }
    for (m = SmtpSaslMechanisms(); *m; m++) {
	Tcl_ListObjAppendElement(NULL, list, Tcl_NewStringObj(*m, -1));
    }
    Tcl_SetObjResult(interp, list);
    return TCL_OK;
}

void
SmtpSaslTestInit(
    Tcl_Interp *interp)
{
    Tcl_CreateObjCommand(interp, "::smtp::internal::sasl", SaslObjCmd,
	    NULL, NULL);
    Tcl_CreateObjCommand(interp, "::smtp::internal::saslmechs",
	    MechsObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::smtp::internal::base64", Base64ObjCmd,
	    NULL, NULL);
    Tcl_CreateObjCommand(interp, "::smtp::internal::md4", Md4ObjCmd,
	    NULL, NULL);
}
