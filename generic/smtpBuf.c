/*
 * smtpBuf.c --
 *
 *	A growable byte buffer with a read position, and the conversion of a
 *	Tcl value to the bytes the mime package means by it.
 */

#include "smtpInt.h"
#include <stdint.h>

void
SmtpBufInit(
    SmtpBuf *b)
{
    b->data = NULL;
    b->len = b->pos = b->cap = 0;
}

void
SmtpBufFree(
    SmtpBuf *b)
{
    if (b->data) {
	ckfree(b->data);
    }
    SmtpBufInit(b);
}

/*
 * Makes room for at least 'more' bytes after the end. Consumed bytes at the
 * front are reclaimed first, so a buffer used as a queue does not grow.
 * Afterwards b->data is never NULL, even when 'more' is 0: callers write
 * at b->data + b->len.
 */

void
SmtpBufReserve(
    SmtpBuf *b,
    size_t more)
{
    size_t need, ncap;

    if (b->pos > 0 && (b->pos == b->len || b->cap - b->len < more)) {
	memmove(b->data, b->data + b->pos, b->len - b->pos);
	b->len -= b->pos;
	b->pos = 0;
    }
    need = b->len + more;
    if (need <= b->cap && b->data != NULL) {
	return;
    }
    ncap = b->cap ? b->cap : 256;
    while (ncap < need) {
	ncap *= 2;
    }
    b->data = (unsigned char *) ckrealloc(b->data, ncap);
    b->cap = ncap;
}

void
SmtpBufAppend(
    SmtpBuf *b,
    const void *p,
    size_t n)
{
    if (n == 0) {
	return;
    }
    SmtpBufReserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void
SmtpBufAppendStr(
    SmtpBuf *b,
    const char *s)
{
    SmtpBufAppend(b, s, strlen(s));
}

void
SmtpBufConsume(
    SmtpBuf *b,
    size_t n)
{
    b->pos += n;
    if (b->pos >= b->len) {
	b->pos = b->len = 0;
    }
}

/*
 * Returns the bytes of a value as the mime package treats them: each
 * character's low 8 bits, which is what Tcl 8's byte array conversion
 * gives (Tcl 9 refuses characters above U+00FF instead).
 *
 * A value that is a byte array is used as it is. Any other value is
 * decoded here from its string form into 'scratch' (which the caller
 * frees), without changing the value's representation: Tcl's own
 * conversion goes through Tcl_UtfToUniChar for every character and
 * replaces the value's string internal form, which the mime package may
 * want again. ASCII runs are copied eight octets at a time and two-octet
 * sequences (U+0080..U+07FF, and Tcl's C0 80 for NUL) are decoded inline;
 * everything else is left to Tcl_UtfToUniChar, so that odd input (stray
 * trail bytes, overlong forms, longer sequences) comes out exactly as in
 * Tcl's conversion.
 */

/*
 * Octets of a 64-bit word loaded with memcpy, first octet lowest.
 */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define LB_LE64(x)	__builtin_bswap64(x)
#else
#define LB_LE64(x)	(x)
#endif

/*
 * The exact conversion, a character at a time from s[i], a character
 * boundary: ASCII and two-octet sequences inline, the rest through
 * Tcl_UtfToUniChar as Tcl's conversion does.
 */

static size_t
LowBytesExact(
    const unsigned char *s,
    size_t i,
    size_t n,
    unsigned char *d,
    size_t o)
{
    /*
     * As in Tcl's loop, the last character stays in 'ch' from one call of
     * Tcl_UtfToUniChar to the next: Tcl 8 reads a four-octet sequence as
     * two UTF-16 halves, the second from the first.
     */

#if TCL_MAJOR_VERSION > 8
    int ch = 0;
#else
    Tcl_UniChar ch = 0;
#endif

    while (i < n) {
	unsigned c = s[i];

	if (c < 0x80) {
	    ch = c;
	    d[o++] = (unsigned char) c;
	    i++;
	    continue;
	}
	if ((c & 0xE0) == 0xC0 && (s[i + 1] & 0xC0) == 0x80) {
	    unsigned v = ((c & 0x1F) << 6) | (s[i + 1] & 0x3F);

	    if (v == 0 || v >= 0x80) {
		ch = v;
		d[o++] = (unsigned char) v;
		i += 2;
		continue;
	    }
	}
	i += (size_t) Tcl_UtfToUniChar((const char *) s + i, &ch);
	d[o++] = (unsigned char) (ch & 0xFF);
    }
    return o;
}

/*
 * The fast conversion of s[a..b), a starting at a character boundary, for
 * the common strings: only ASCII and well-formed two-octet sequences. It
 * compacts instead of stepping from character to character: every octet
 * that is not a trail byte writes one output octet, the low 8 bits of the
 * character it starts, and the output position advances by one unless
 * the octet is a trail byte. Eight octets are classified at a time as
 * one 64-bit word, with no branch on the data (binary data is half ASCII
 * and half two-octet sequences, in no order a branch predictor could
 * learn). Returns 0 when the range holds anything else (then nothing it
 * wrote counts); on success *oPtr has advanced and *nextPtr is where the
 * next range starts (after a trail byte at b that belongs to a lead at
 * b - 1).
 */

#define LB_ONES		0x0101010101010101ULL
#define LB_HIGH		0x8080808080808080ULL

static int
LowBytesFast(
    const unsigned char *s,	/* s[b] is readable (NUL at the end). */
    size_t a,
    size_t b,
    unsigned char *d,
    size_t *oPtr,
    size_t *nextPtr)
{
    size_t j = a, o = *oPtr;
    uint64_t bad = ((s[a] & 0xC0) == 0x80);

    while (j + 8 <= b) {
	uint64_t x, nb, hi, b6, b5, cont, lead, next, z, leadMask, v;
	int k;

	memcpy(&x, s + j, 8);
	x = LB_LE64(x);
	nb = s[j + 8];
	hi = x & LB_HIGH;
	if (hi == 0) {
	    memcpy(d + o, s + j, 8);
	    o += 8;
	    j += 8;
	    bad |= ((nb & 0xC0) == 0x80);
	    continue;
	}
	b6 = (x << 1) & LB_HIGH;
	b5 = (x << 2) & LB_HIGH;
	cont = hi & ~b6;			/* 10xxxxxx */
	lead = hi & b6 & ~b5;			/* 110xxxxx */
	next = (x >> 8) | (nb << 56);		/* each octet's follower */
	bad |= (hi & b6 & b5)			/* 111xxxxx: longer forms */
		| (lead ^ (((next & ~(next << 1)) & LB_HIGH)));
	z = (x ^ 0xC0C0C0C0C0C0C0C0ULL) & 0xFEFEFEFEFEFEFEFEULL;
	if (((z - LB_ONES) & ~z & LB_HIGH) != 0) {
	    /*
	     * C0 or C1 (perhaps: the test can err towards yes): C0 80 is
	     * Tcl's NUL, anything else there is malformed.
	     */

	    for (k = 0; k < 8; k++) {
		unsigned c = s[j + k], t = s[j + k + 1];

		bad |= (c == 0xC1) | ((c == 0xC0) & (t != 0x80));
	    }
	}
	leadMask = (lead >> 7) * 0xFF;
	v = (x & ~leadMask) | ((((x & 0x0303030303030303ULL) << 6)
		| (next & 0x3F3F3F3F3F3F3F3FULL)) & leadMask);
	for (k = 0; k < 8; k++) {
	    d[o] = (unsigned char) (v >> (8 * k));
	    o += 1 - (unsigned) ((cont >> (8 * k + 7)) & 1);
	}
	j += 8;
    }
    for (; j < b; j++) {
	unsigned c = s[j], t = s[j + 1];
	unsigned lead = ((c & 0xE0) == 0xC0);

	bad |= (c >= 0xE0) | (lead ^ ((t & 0xC0) == 0x80)) | (c == 0xC1)
		| ((c == 0xC0) & (t != 0x80));
	d[o] = (unsigned char)
		(c ^ ((c ^ ((c << 6) | (t & 0x3F))) & (0u - lead)));
	o += ((c & 0xC0) != 0x80);
    }
    if (bad) {
	return 0;
    }
    *oPtr = o;
    *nextPtr = b + ((s[b - 1] & 0xE0) == 0xC0);
    return 1;
}

/*
 * On x86-64 CPUs with SSSE3 (nearly all), sixteen octets at a time: the
 * same classification as LowBytesFast with vector compares, and the
 * compaction by byte shuffles, each half of the sixteen through a shuffle
 * from 'tab' (one per pattern of kept octets; made per call, since a
 * shared table would be global state).
 */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) \
	&& !defined(SMTP_NO_SSSE3)
#define LB_SSSE3 1
#include <immintrin.h>

typedef struct LowTab {
    __m128i shuf[256];		/* Kept octets of an 8-octet half, first. */
    unsigned char count[256];	/* How many are kept. */
} LowTab;

static void
LowTabInit(
    LowTab *t)
{
    int m, i;

    for (m = 0; m < 256; m++) {
	unsigned char idx[16];
	int k = 0;

	for (i = 0; i < 8; i++) {
	    if (m & (1 << i)) {
		idx[k++] = (unsigned char) i;
	    }
	}
	t->count[m] = (unsigned char) k;
	while (k < 16) {
	    idx[k++] = 0x80;
	}
	memcpy(&t->shuf[m], idx, 16);
    }
}

__attribute__((target("ssse3")))
static int
LowBytesFastSsse3(
    const LowTab *tab,
    const unsigned char *s,	/* s[b] is readable (NUL at the end). */
    size_t a,
    size_t b,
    unsigned char *d,
    size_t *oPtr,
    size_t *nextPtr)
{
    size_t j = a, o = *oPtr;
    unsigned bad = ((s[a] & 0xC0) == 0x80);
    const __m128i mC0 = _mm_set1_epi8((char) 0xC0);
    const __m128i m80 = _mm_set1_epi8((char) 0x80);
    const __m128i mE0 = _mm_set1_epi8((char) 0xE0);
    const __m128i mC1 = _mm_set1_epi8((char) 0xC1);
    const __m128i m3F = _mm_set1_epi8(0x3F);
    const __m128i m03 = _mm_set1_epi8(0x03);
    __m128i badv = _mm_setzero_si128();

    while (j + 16 <= b) {
	__m128i x = _mm_loadu_si128((const __m128i *) (s + j));
	__m128i nx, top3, cont, lead, ncont, v;
	unsigned keep;

	if (_mm_movemask_epi8(x) == 0) {
	    _mm_storeu_si128((__m128i *) (d + o), x);
	    o += 16;
	    j += 16;
	    bad |= ((s[j] & 0xC0) == 0x80);
	    continue;
	}
	nx = _mm_loadu_si128((const __m128i *) (s + j + 1));
	top3 = _mm_and_si128(x, mE0);
	cont = _mm_cmpeq_epi8(_mm_and_si128(x, mC0), m80);
	lead = _mm_cmpeq_epi8(top3, mC0);
	ncont = _mm_cmpeq_epi8(_mm_and_si128(nx, mC0), m80);
	badv = _mm_or_si128(badv, _mm_or_si128(
		_mm_or_si128(_mm_cmpeq_epi8(top3, mE0),
			_mm_cmpeq_epi8(x, mC1)),
		_mm_or_si128(_mm_xor_si128(lead, ncont),
			_mm_andnot_si128(_mm_cmpeq_epi8(nx, m80),
				_mm_cmpeq_epi8(x, mC0)))));
	v = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(x, m03), 6),
		_mm_and_si128(nx, m3F));
	v = _mm_or_si128(_mm_and_si128(lead, v), _mm_andnot_si128(lead, x));
	keep = ~(unsigned) _mm_movemask_epi8(cont) & 0xFFFF;
	_mm_storel_epi64((__m128i *) (d + o),
		_mm_shuffle_epi8(v, tab->shuf[keep & 0xFF]));
	o += tab->count[keep & 0xFF];
	_mm_storel_epi64((__m128i *) (d + o),
		_mm_shuffle_epi8(_mm_srli_si128(v, 8), tab->shuf[keep >> 8]));
	o += tab->count[keep >> 8];
	j += 16;
    }
    if (bad || _mm_movemask_epi8(badv) != 0) {
	return 0;
    }
    if (j < b) {
	size_t next;

	if (!LowBytesFast(s, j, b, d, &o, &next)) {
	    return 0;
	}
    }
    *oPtr = o;
    *nextPtr = b + ((s[b - 1] & 0xE0) == 0xC0);
    return 1;
}
#endif /* x86-64 */

static size_t
LowBytes(
    const unsigned char *s,	/* String form, NUL after the end. */
    size_t n,
    unsigned char *d)		/* Room for n octets. */
{
    size_t i = 0, o = 0;
#ifdef LB_SSSE3
    LowTab *tab = NULL;

    if (n >= 16384 && __builtin_cpu_supports("ssse3")) {
	tab = (LowTab *) ckalloc(sizeof(LowTab));
	LowTabInit(tab);
    }
#endif

    while (i < n) {
	size_t b = (n - i > 4096) ? i + 4096 : n;
	int ok;

#ifdef LB_SSSE3
	if (tab != NULL) {
	    ok = LowBytesFastSsse3(tab, s, i, b, d, &o, &i);
	} else
#endif
	ok = LowBytesFast(s, i, b, d, &o, &i);
	if (!ok) {
	    o = LowBytesExact(s, i, n, d, o);
	    break;
	}
    }
#ifdef LB_SSSE3
    if (tab != NULL) {
	ckfree(tab);
    }
#endif
    return o;
}

const unsigned char *
SmtpGetBytes(
    Tcl_Obj *obj,
    Tcl_Size *lenPtr,
    Tcl_DString *scratch)
{
    const Tcl_ObjType *byteArray = Tcl_GetObjType("bytearray");
    const char *s;
    Tcl_Size n;
    size_t got;

    Tcl_DStringInit(scratch);
    if (byteArray != NULL && obj->typePtr == byteArray) {
#if TCL_MAJOR_VERSION > 8
	const unsigned char *bytes = Tcl_GetBytesFromObj(NULL, obj, lenPtr);

	if (bytes != NULL) {
	    return bytes;
	}
#else
	return Tcl_GetByteArrayFromObj(obj, lenPtr);
#endif
    }
    s = Tcl_GetStringFromObj(obj, &n);
    Tcl_DStringSetLength(scratch, n);
    got = LowBytes((const unsigned char *) s, (size_t) n,
	    (unsigned char *) Tcl_DStringValue(scratch));
    Tcl_DStringSetLength(scratch, (Tcl_Size) got);
    *lenPtr = (Tcl_Size) got;
    return (const unsigned char *) Tcl_DStringValue(scratch);
}

/*
 * A message source over the bytes of a Tcl value.
 */

typedef struct ObjSource {
    Tcl_Obj *obj;
    const unsigned char *bytes;
    Tcl_Size len, pos;
    Tcl_DString scratch;
} ObjSource;

static int
ObjSourceRead(
    void *cd,
    SmtpBuf *out,
    size_t want,
    Tcl_Obj **errPtr)
{
    ObjSource *os = (ObjSource *) cd;
    Tcl_Size n = os->len - os->pos;

    (void) errPtr;
    if ((size_t) n > want) {
	n = (Tcl_Size) want;
    }
    SmtpBufAppend(out, os->bytes + os->pos, (size_t) n);
    os->pos += n;
    return os->pos >= os->len;
}

static void
ObjSourceClose(
    void *cd)
{
    ObjSource *os = (ObjSource *) cd;

    Tcl_DStringFree(&os->scratch);
    Tcl_DecrRefCount(os->obj);
    ckfree(os);
}

void
SmtpSourceFromObj(
    SmtpSource *src,
    Tcl_Obj *bytes)
{
    ObjSource *os = (ObjSource *) ckalloc(sizeof(ObjSource));

    os->obj = bytes;
    Tcl_IncrRefCount(bytes);
    os->bytes = SmtpGetBytes(bytes, &os->len, &os->scratch);
    os->pos = 0;
    src->read = ObjSourceRead;
    src->close = ObjSourceClose;
    src->utf8 = NULL;
    src->cd = os;
    src->clean = 0;
}

/*
 * Frees a source (if any) and marks it empty.
 */

void
SmtpSourceClose(
    SmtpSource *src)
{
    if (src->close) {
	src->close(src->cd);
    }
    src->read = NULL;
    src->close = NULL;
    src->utf8 = NULL;
    src->cd = NULL;
    src->clean = 0;
}
