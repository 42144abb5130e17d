/*
 * smtpMime.c --
 *
 *	The message writer: the bytes a tcllib mime token stands for, as
 *	mime::buildmessage means them, written as correct MIME (RFC 2045,
 *	2046, 5322: CRLF only, one Content-Transfer-Encoding and one boundary
 *	per part, lines of at most 998 octets) and handed out a block at a
 *	time as an SmtpSource.
 *
 *	Everything is planned when the source is made: the token tree is read
 *	(its values referenced), every leaf is scanned once to choose its
 *	transfer encoding by mime's rules and to count the exact size it will
 *	have on the wire, boundaries are drawn and checked, and string content
 *	is encoded. The caller may change or destroy the token right after.
 *	File content (mime::initialize -file, and parts parsed from a file) is
 *	read again while the message is written, in blocks, never whole.
 *
 *	A token whose state is not in the layout of mime 1.x (an array with
 *	keys content, params, encoding, version, header, lowerL, mixedL,
 *	value, canonicalP and string, file or parts) is written by
 *	mime::buildmessage instead.
 */

#include "smtpInt.h"
#include <stdint.h>
#include <openssl/rand.h>

#define QP_LIMIT	75	/* Characters of a quoted-printable line
				 * before its soft break '='. */
#define B64_LINE	76	/* Characters of a base64 line. */
#define LINE_MAX_OCTETS	998	/* Longest line SMTP carries. */
#define MAX_DEPTH	64	/* Deepest nesting of parts accepted. */
#define FILE_BLOCK	65536	/* File bytes read at a time. */
#define STREAM_MIN	262144	/* A string leaf this long or longer is
				 * encoded while sent rather than into the
				 * plan. */

#define SEG_LIT		0	/* Segments: literal bytes, */
#define SEG_FILE	1	/* file content, */
#define SEG_BYTES	2	/* a string leaf's octets. */
#define MAX_CANDS	32	/* Boundary-like lines remembered per leaf. */
#define CAND_LEN	80	/* Bytes remembered of each. */
#define BOUNDARY_RAND	30	/* Random characters in a boundary. */

/*
 * ------------------------------------------------------------------------
 * Encoders. Each is a small state machine fed with blocks split anywhere,
 * appending to an SmtpBuf; Finish flushes what is held back.
 * ------------------------------------------------------------------------
 */

/*
 * Quoted-printable (RFC 2045 6.7), with mime's choice of literal
 * characters (those safe through EBCDIC gateways). In text mode a line
 * break of the content (LF or CRLF) is a hard line break; a bare CR is
 * encoded. In binary mode CR and LF are encoded too, so any octets come
 * back unchanged. A '.' or 'F' starting a line is encoded, so no line is a
 * lone dot or starts with "From ". Lines have at most 76 characters.
 */

enum { QL, QW, QE, QR, QN };	/* literal, space or tab, encoded, CR, LF */

static const unsigned char qpClass[256] = {
    QE,QE,QE,QE,QE,QE,QE,QE,QE,QW,QN,QE,QE,QR,QE,QE,	/* 0x00 */
    QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,	/* 0x10 */
    QW,QE,QE,QE,QE,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,	/* 0x20 */
    QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QE,QL,QL,	/* 0x30 */
    QE,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,	/* 0x40 */
    QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QE,QE,QE,QE,QL,	/* 0x50 */
    QE,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,	/* 0x60 */
    QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QL,QE,QE,QE,QE,QE,	/* 0x70 */
    QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,
    QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,
    QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,
    QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,
    QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,
    QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,
    QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,
    QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE,QE
};

static const char hexDigits[] = "0123456789ABCDEF";

typedef struct QpEnc {
    int text;			/* Line breaks are hard breaks. */
    int col;			/* Characters on the output line. */
    int ws;			/* Space or tab held back, or -1: encoded
				 * if a line break follows. */
    int cr;			/* Text mode: a CR held back until the next
				 * byte shows whether it starts CRLF. */
} QpEnc;

static void
QpInit(
    QpEnc *q,
    int text)
{
    q->text = text;
    q->col = 0;
    q->ws = -1;
    q->cr = 0;
}

static unsigned char *
QpEncoded(
    QpEnc *q,
    unsigned char *o,
    int c)
{
    if (q->col + 3 > QP_LIMIT) {
	*o++ = '=';
	*o++ = '\r';
	*o++ = '\n';
	q->col = 0;
    }
    *o++ = '=';
    *o++ = hexDigits[(c >> 4) & 0xF];
    *o++ = hexDigits[c & 0xF];
    q->col += 3;
    return o;
}

static unsigned char *
QpLiteral(
    QpEnc *q,
    unsigned char *o,
    int c)
{
    if (q->col + 1 > QP_LIMIT) {
	*o++ = '=';
	*o++ = '\r';
	*o++ = '\n';
	q->col = 0;
    }
    if (q->col == 0 && (c == '.' || c == 'F')) {
	return QpEncoded(q, o, c);
    }
    *o++ = (unsigned char) c;
    q->col++;
    return o;
}

/*
 * Writes the held-back space or tab: literally when more follows on the
 * line, encoded when the line ends.
 */

static unsigned char *
QpFlushWs(
    QpEnc *q,
    unsigned char *o,
    int encode)
{
    if (q->ws >= 0) {
	int c = q->ws;

	q->ws = -1;
	o = encode ? QpEncoded(q, o, c) : QpLiteral(q, o, c);
    }
    return o;
}

static unsigned char *
QpHardBreak(
    QpEnc *q,
    unsigned char *o)
{
    o = QpFlushWs(q, o, 1);
    *o++ = '\r';
    *o++ = '\n';
    q->col = 0;
    return o;
}

static unsigned char *
QpByte(
    QpEnc *q,
    unsigned char *o,
    int c)
{
    if (q->cr) {
	q->cr = 0;
	if (c == '\n') {
	    return QpHardBreak(q, o);
	}
	o = QpFlushWs(q, o, 0);
	o = QpEncoded(q, o, '\r');
    }
    switch (qpClass[c]) {
    case QL:
	o = QpFlushWs(q, o, 0);
	return QpLiteral(q, o, c);
    case QW:
	o = QpFlushWs(q, o, 0);
	q->ws = c;
	return o;
    case QR:
	if (q->text) {
	    q->cr = 1;
	    return o;
	}
	break;
    case QN:
	if (q->text) {
	    return QpHardBreak(q, o);
	}
	break;
    }
    o = QpFlushWs(q, o, 0);
    return QpEncoded(q, o, c);
}

/*
 * Worst case per input byte: a held-back space written with a soft break
 * (6) and the byte encoded with a soft break (6).
 */

#define QP_WORST(n)	((n) * 12 + 16)
#define QP_STEP		4096

static void
QpEncode(
    QpEnc *q,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out)
{
    while (n > 0) {
	size_t chunk = n > QP_STEP ? QP_STEP : n, i;
	unsigned char *o, *o0;

	SmtpBufReserve(out, QP_WORST(chunk));
	o = o0 = out->data + out->len;
	i = 0;
	while (i < chunk) {
	    if (q->ws < 0 && !q->cr && q->col > 0 && q->col < QP_LIMIT) {
		/*
		 * A run written as is, up to the soft break: literal
		 * characters, and spaces or tabs not at its end (which may
		 * be a line's end).
		 */

		size_t k = 0, max = chunk - i, room = QP_LIMIT - q->col;

		if (max > room) {
		    max = room;
		}
		while (k + 8 <= max) {
		    const unsigned char *r = p + i + k;

		    /* QL and QW are 0 and 1: any other class sets bit 1 or 2. */
		    if ((qpClass[r[0]] | qpClass[r[1]] | qpClass[r[2]]
			    | qpClass[r[3]] | qpClass[r[4]] | qpClass[r[5]]
			    | qpClass[r[6]] | qpClass[r[7]]) > QW) {
			break;
		    }
		    k += 8;
		}
		while (k < max && qpClass[p[i + k]] <= QW) {
		    k++;
		}
		while (k > 0 && qpClass[p[i + k - 1]] == QW) {
		    k--;
		}
		if (k > 0) {
		    memcpy(o, p + i, k);
		    o += k;
		    q->col += (int) k;
		    i += k;
		    continue;
		}
	    }
	    o = QpByte(q, o, p[i]);
	    i++;
	}
	out->len += (size_t) (o - o0);
	p += chunk;
	n -= chunk;
    }
}

static void
QpFinish(
    QpEnc *q,
    SmtpBuf *out)
{
    unsigned char *o, *o0;

    SmtpBufReserve(out, 32);
    o = o0 = out->data + out->len;
    if (q->cr) {
	q->cr = 0;
	o = QpFlushWs(q, o, 0);
	o = QpEncoded(q, o, '\r');
    }
    o = QpFlushWs(q, o, 1);
    out->len += (size_t) (o - o0);
}

/*
 * Base64 (RFC 2045 6.8) in lines of 76 characters, as mime writes it: CRLF
 * between lines, none after the last. A line's break is written with the
 * quantum that follows it.
 */

static const char b64Digits[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/*
 * The two digits of each 12-bit value v, at b64Pairs[2 * v]: the row of
 * a first digit c is c followed by each digit in turn, and the rows come
 * in the order of their first digits.
 */

#define B64_ROW(c) \
	c "A" c "B" c "C" c "D" c "E" c "F" c "G" c "H" \
	c "I" c "J" c "K" c "L" c "M" c "N" c "O" c "P" \
	c "Q" c "R" c "S" c "T" c "U" c "V" c "W" c "X" \
	c "Y" c "Z" c "a" c "b" c "c" c "d" c "e" c "f" \
	c "g" c "h" c "i" c "j" c "k" c "l" c "m" c "n" \
	c "o" c "p" c "q" c "r" c "s" c "t" c "u" c "v" \
	c "w" c "x" c "y" c "z" c "0" c "1" c "2" c "3" \
	c "4" c "5" c "6" c "7" c "8" c "9" c "+" c "/"

static const char b64Pairs[] =
	B64_ROW("A") B64_ROW("B") B64_ROW("C") B64_ROW("D")
	B64_ROW("E") B64_ROW("F") B64_ROW("G") B64_ROW("H")
	B64_ROW("I") B64_ROW("J") B64_ROW("K") B64_ROW("L")
	B64_ROW("M") B64_ROW("N") B64_ROW("O") B64_ROW("P")
	B64_ROW("Q") B64_ROW("R") B64_ROW("S") B64_ROW("T")
	B64_ROW("U") B64_ROW("V") B64_ROW("W") B64_ROW("X")
	B64_ROW("Y") B64_ROW("Z") B64_ROW("a") B64_ROW("b")
	B64_ROW("c") B64_ROW("d") B64_ROW("e") B64_ROW("f")
	B64_ROW("g") B64_ROW("h") B64_ROW("i") B64_ROW("j")
	B64_ROW("k") B64_ROW("l") B64_ROW("m") B64_ROW("n")
	B64_ROW("o") B64_ROW("p") B64_ROW("q") B64_ROW("r")
	B64_ROW("s") B64_ROW("t") B64_ROW("u") B64_ROW("v")
	B64_ROW("w") B64_ROW("x") B64_ROW("y") B64_ROW("z")
	B64_ROW("0") B64_ROW("1") B64_ROW("2") B64_ROW("3")
	B64_ROW("4") B64_ROW("5") B64_ROW("6") B64_ROW("7")
	B64_ROW("8") B64_ROW("9") B64_ROW("+") B64_ROW("/");
#undef B64_ROW

typedef struct B64Enc {
    unsigned char carry[3];
    int ncarry;
    int col;
} B64Enc;

static void
B64Init(
    B64Enc *b)
{
    b->ncarry = 0;
    b->col = 0;
}

static unsigned char *
B64Quantum(
    B64Enc *b,
    unsigned char *o,
    const unsigned char *in,
    int n)
{
    unsigned v = (unsigned) in[0] << 16;

    if (b->col == B64_LINE) {
	*o++ = '\r';
	*o++ = '\n';
	b->col = 0;
    }
    if (n > 1) {
	v |= (unsigned) in[1] << 8;
    }
    if (n > 2) {
	v |= in[2];
    }
    *o++ = (unsigned char) b64Digits[(v >> 18) & 63];
    *o++ = (unsigned char) b64Digits[(v >> 12) & 63];
    *o++ = (unsigned char) (n > 1 ? b64Digits[(v >> 6) & 63] : '=');
    *o++ = (unsigned char) (n > 2 ? b64Digits[v & 63] : '=');
    b->col += 4;
    return o;
}

/*
 * On x86-64 CPUs with SSSE3 (nearly all), twelve octets into sixteen
 * digits at a time. A byte shuffle gives each group of three octets a
 * 32-bit lane holding its middle octet, first octet, last octet and
 * middle octet again, in that order: the lane's low 16 bits are then the
 * first two octets, its high 16 bits the last two, and each of the four
 * 6-bit values is a fixed bit field of one 16-bit half. Masks pick the
 * fields, and 16-bit multiplications move each to its own byte (the high
 * half of a product by 2^k is a shift right by 16-k, the low half a shift
 * left by k, and k can differ between the 16-bit elements). A digit is
 * then its value plus an offset that depends only on the value's range
 * (A-Z, a-z, 0-9, '+', '/'): the range is made a small index, and a
 * shuffle looks the offset up.
 */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) \
	&& !defined(SMTP_NO_SSSE3)
#define B64_SSSE3 1
#include <immintrin.h>

__attribute__((target("ssse3")))
static inline __m128i
B64Step(
    __m128i x)			/* Octets 0-11 are encoded, 12-15 unused. */
{
    const __m128i spread = _mm_setr_epi8(1, 0, 2, 1, 4, 3, 5, 4,
	    7, 6, 8, 7, 10, 9, 11, 10);
    const __m128i offsets = _mm_setr_epi8('a' - 26, '0' - 52, '0' - 52,
	    '0' - 52, '0' - 52, '0' - 52, '0' - 52, '0' - 52, '0' - 52,
	    '0' - 52, '0' - 52, '+' - 62, '/' - 63, 'A', 0, 0);
    __m128i right, left, v, idx;

    x = _mm_shuffle_epi8(x, spread);

    /*
     * Low half: first << 8 | middle; the values are its bits 10-15 (to
     * byte 0: times 2^6, high half) and 4-9 (to byte 1: times 2^4, low
     * half). High half: middle << 8 | last; bits 6-11 (to byte 2: times
     * 2^10, high half) and 0-5 (to byte 3: times 2^8, low half).
     */

    right = _mm_mulhi_epu16(_mm_and_si128(x, _mm_set1_epi32(0x0FC0FC00)),
	    _mm_set1_epi32(0x04000040));
    left = _mm_mullo_epi16(_mm_and_si128(x, _mm_set1_epi32(0x003F03F0)),
	    _mm_set1_epi32(0x01000010));
    v = _mm_or_si128(right, left);

    /*
     * The offset's index: 0 for 26-51, 1-10 for 52-61, 11 for 62, 12 for
     * 63 (the value less 51, not below 0), 13 for 0-25.
     */

    idx = _mm_subs_epu8(v, _mm_set1_epi8(51));
    idx = _mm_or_si128(idx, _mm_and_si128(
	    _mm_cmpgt_epi8(_mm_set1_epi8(26), v), _mm_set1_epi8(13)));
    return _mm_add_epi8(v, _mm_shuffle_epi8(offsets, idx));
}

/*
 * Encodes whole quanta from *pPtr while at least 16 octets are left, so
 * that no load reads past the input; updates *pPtr, *nPtr and the column
 * and returns the new output position. The last quanta of a line (one to
 * three) take a step of their own of which the rest is overwritten by the
 * line break and the next line, which surely follow in this call since
 * sixteen octets were left. Whole lines, while at least 64 octets are
 * left, are five steps (the last keeping three quanta) and their break,
 * written at once since at least seven octets follow.
 */

__attribute__((target("ssse3")))
static unsigned char *
B64EncodeSsse3(
    B64Enc *b,
    unsigned char *o,
    const unsigned char **pPtr,
    size_t *nPtr)
{
    const unsigned char *p = *pPtr, *end = p + *nPtr;
    int col = b->col, q;

    while (end - p >= 16) {
	if (col == B64_LINE) {
	    *o++ = '\r';
	    *o++ = '\n';
	    col = 0;
	}
	while (col == 0 && end - p >= 64) {
	    __m128i x0 = _mm_loadu_si128((const __m128i *) p);
	    __m128i x1 = _mm_loadu_si128((const __m128i *) (p + 12));
	    __m128i x2 = _mm_loadu_si128((const __m128i *) (p + 24));
	    __m128i x3 = _mm_loadu_si128((const __m128i *) (p + 36));
	    __m128i x4 = _mm_loadu_si128((const __m128i *) (p + 48));

	    _mm_storeu_si128((__m128i *) o, B64Step(x0));
	    _mm_storeu_si128((__m128i *) (o + 16), B64Step(x1));
	    _mm_storeu_si128((__m128i *) (o + 32), B64Step(x2));
	    _mm_storeu_si128((__m128i *) (o + 48), B64Step(x3));
	    _mm_storeu_si128((__m128i *) (o + 64), B64Step(x4));
	    o[B64_LINE] = '\r';
	    o[B64_LINE + 1] = '\n';
	    o += B64_LINE + 2;
	    p += B64_LINE / 4 * 3;
	}
	q = (B64_LINE - col) / 4;
	while (q >= 4 && end - p >= 16) {
	    _mm_storeu_si128((__m128i *) o,
		    B64Step(_mm_loadu_si128((const __m128i *) p)));
	    o += 16;
	    p += 12;
	    col += 16;
	    q -= 4;
	}
	if (q > 0 && q < 4 && end - p >= 16) {
	    _mm_storeu_si128((__m128i *) o,
		    B64Step(_mm_loadu_si128((const __m128i *) p)));
	    o += 4 * q;
	    p += 3 * q;
	    col += 4 * q;
	}
    }
    b->col = col;
    *nPtr = (size_t) (end - p);
    *pPtr = p;
    return o;
}
#endif /* x86-64 */

/*
 * Encodes n octets, carrying up to two and the column to the next call.
 * Without SSSE3, and for what is left after it, three octets at a time, a
 * 12-bit half into two digits at a time.
 */

static void
B64Encode(
    B64Enc *b,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out)
{
    unsigned char *o, *o0;

    SmtpBufReserve(out, (n / 3 + 2) * 4 + (n / 57 + 2) * 2);
    o = o0 = out->data + out->len;
    while (b->ncarry > 0 && b->ncarry < 3 && n > 0) {
	b->carry[b->ncarry++] = *p++;
	n--;
    }
    if (b->ncarry == 3) {
	o = B64Quantum(b, o, b->carry, 3);
	b->ncarry = 0;
    }
#ifdef B64_SSSE3
    if (n >= 16 && __builtin_cpu_supports("ssse3")) {
	o = B64EncodeSsse3(b, o, &p, &n);
    }
#endif
    while (n >= 3) {
	size_t q = (size_t) (B64_LINE - b->col) / 4, k;

	if (q == 0) {
	    *o++ = '\r';
	    *o++ = '\n';
	    b->col = 0;
	    q = B64_LINE / 4;
	}
	if (q > n / 3) {
	    q = n / 3;
	}
	for (k = 0; k < q; k++) {
	    unsigned v = (unsigned) p[0] << 16 | (unsigned) p[1] << 8 | p[2];

	    memcpy(o, b64Pairs + 2 * (v >> 12), 2);
	    memcpy(o + 2, b64Pairs + 2 * (v & 0xFFF), 2);
	    o += 4;
	    p += 3;
	}
	b->col += (int) (4 * q);
	n -= 3 * q;
    }
    while (n > 0) {
	b->carry[b->ncarry++] = *p++;
	n--;
    }
    out->len += (size_t) (o - o0);
}

static void
B64Finish(
    B64Enc *b,
    SmtpBuf *out)
{
    unsigned char *o, *o0;

    if (b->ncarry == 0) {
	return;
    }
    SmtpBufReserve(out, 8);
    o = o0 = out->data + out->len;
    o = B64Quantum(b, o, b->carry, b->ncarry);
    b->ncarry = 0;
    out->len += (size_t) (o - o0);
}

/*
 * Octets in the base64 form of n octets.
 */

static Tcl_WideInt
B64Size(
    Tcl_WideInt n)
{
    Tcl_WideInt chars = (n + 2) / 3 * 4;

    if (chars == 0) {
	return 0;
    }
    return chars + 2 * ((chars + B64_LINE - 1) / B64_LINE - 1);
}

/*
 * The identity encodings (7bit, 8bit, binary) as SMTP carries them: every
 * line end (LF, CRLF or a bare CR) becomes CRLF.
 */

typedef struct IdEnc {
    int cr;
} IdEnc;

static void
IdEncode(
    IdEnc *e,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out)
{
    size_t i = 0;

    if (n > 0 && e->cr) {
	e->cr = 0;
	SmtpBufAppend(out, "\r\n", 2);
	i = (p[0] == '\n');
    }
    while (i < n) {
	const unsigned char *lf = memchr(p + i, '\n', n - i), *cr;
	size_t end = lf ? (size_t) (lf - p) : n;

	cr = memchr(p + i, '\r', end - i);
	if (cr != NULL) {
	    end = (size_t) (cr - p);
	}
	SmtpBufAppend(out, p + i, end - i);
	if (end == n) {
	    break;
	}
	if (p[end] == '\r' && end + 1 == n) {
	    e->cr = 1;
	    break;
	}
	SmtpBufAppend(out, "\r\n", 2);
	i = end + 1 + (p[end] == '\r' && p[end + 1] == '\n');
    }
}

static void
IdFinish(
    IdEnc *e,
    SmtpBuf *out)
{
    if (e->cr) {
	e->cr = 0;
	SmtpBufAppend(out, "\r\n", 2);
    }
}

/*
 * ------------------------------------------------------------------------
 * Content scanning: what mime's encoding rules look at, what the transport
 * needs to know, and the exact size of the identity form.
 * ------------------------------------------------------------------------
 */

/*
 * How much of a leaf the encoding rules need to see: nothing (base64 in
 * any case), up to the first octet outside printable ASCII, up to that or
 * the first line that fails mime's line rules, or all.
 */

enum { SCAN_NONE, SCAN_TO_NOTASCII, SCAN_TO_EITHER, SCAN_ALL };

typedef struct Scan {
    int until;			/* SCAN_... */
    int done;			/* Seen enough: base64 it is. */
    Tcl_WideInt len;		/* Octets of content. */
    Tcl_WideInt identSize;	/* Octets of its identity form. */
    Tcl_WideInt maxLine;	/* Longest line, line ends not counted. */
    int notAscii;		/* mime's encodingasciiP fails on a line. */
    int notLine;		/* mime's encodinglineP fails on a line. */
    int has8bit, hasNul, hasBareCR;
    int lastByte;		/* Last octet of the content, or -1. */
    int chars;			/* The content is UTF-8 made from a string's
				 * characters: mime's line length counts
				 * characters, not octets. */

    /* Current line as mime splits it (at LF). */
    Tcl_WideInt mLen;
    unsigned char head[5];
    int headLen;
    int mLast;

    /* Current line as SMTP sees it (ended by LF, CRLF or CR). */
    Tcl_WideInt tLen;
    int cr;

    /*
     * Lines starting with "--=_", which could be taken for a boundary
     * delimiter of ours: their first CAND_LEN octets, or overflow.
     */
    unsigned char cap[CAND_LEN];
    int capLen, capOn;
    unsigned char (*cands)[CAND_LEN + 1];	/* [0] holds the length. */
    int ncands, candOverflow;
} Scan;

static void
ScanInit(
    Scan *s)
{
    memset(s, 0, sizeof(Scan));
    s->lastByte = -1;
    s->mLast = -1;
    s->capOn = 1;
}

static void
ScanFree(
    Scan *s)
{
    if (s->cands) {
	ckfree(s->cands);
	s->cands = NULL;
    }
}

/*
 * Characters Tcl 8.6's [string trimright] takes for white space, among
 * those a mime string holds (octets).
 */

static int
TrimSpace(
    int c)
{
    return c == 0 || (c >= 0x09 && c <= 0x0D) || c == ' ' || c == 0x85
	    || c == 0xA0;
}

static void
ScanEndMimeLine(
    Scan *s)
{
    if (s->mLen > 76 || (s->mLen > 0 && TrimSpace(s->mLast))
	    || (s->headLen > 0 && s->head[0] == '.')
	    || (s->headLen == 5 && memcmp(s->head, "From ", 5) == 0)) {
	s->notLine = 1;
	if (s->until == SCAN_TO_EITHER) {
	    s->done = 1;
	}
    }
    s->mLen = 0;
    s->headLen = 0;
    s->mLast = -1;
}

static void
ScanEndLine(
    Scan *s)
{
    if (s->tLen > s->maxLine) {
	s->maxLine = s->tLen;
    }
    s->tLen = 0;
    if (s->capOn && s->capLen >= 4) {
	if (s->ncands == MAX_CANDS) {
	    s->candOverflow = 1;
	} else {
	    if (s->cands == NULL) {
		s->cands = (unsigned char (*)[CAND_LEN + 1])
			ckalloc(MAX_CANDS * (CAND_LEN + 1));
	    }
	    s->cands[s->ncands][0] = (unsigned char) s->capLen;
	    memcpy(s->cands[s->ncands] + 1, s->cap, (size_t) s->capLen);
	    s->ncands++;
	}
    }
    s->capOn = 1;
    s->capLen = 0;
}

static void
ScanCapture(
    Scan *s,
    const unsigned char *p,
    size_t n)
{
    static const char prefix[] = "--=_";
    size_t i;

    for (i = 0; i < n && s->capOn && s->capLen < CAND_LEN; i++) {
	if (s->capLen < 4 && p[i] != (unsigned char) prefix[s->capLen]) {
	    s->capOn = 0;
	    break;
	}
	s->cap[s->capLen++] = p[i];
    }
}

/*
 * An octet that none of the rules cares about beyond line length: printable
 * ASCII or tab.
 */

#define ORDINARY(c)	(((c) >= 0x20 && (c) < 0x7F) || (c) == '\t')

/*
 * Whether any of 8 octets is below 0x20 or above 0x7E. Each octet's low 7
 * bits plus 0x60 (or plus 1) cannot carry into the next octet.
 */

static int
Special8(
    uint64_t x)
{
    const uint64_t low7 = 0x7F7F7F7F7F7F7F7FULL;
    const uint64_t high = 0x8080808080808080ULL;
    uint64_t t = x & low7;
    uint64_t printable = (t + 0x6060606060606060ULL) & high;
    uint64_t del = (t + 0x0101010101010101ULL) & high;

    return ((~printable & high) | del | (x & high)) != 0;
}

/*
 * Length of the run of printable ASCII octets at p.
 */

static size_t
PrintableRun(
    const unsigned char *p,
    size_t n)
{
    size_t i = 0;

    while (i + 8 <= n) {
	uint64_t x;

	memcpy(&x, p + i, 8);
	if (Special8(x)) {
	    break;
	}
	i += 8;
    }
    while (i < n && p[i] >= 0x20 && p[i] < 0x7F) {
	i++;
    }
    return i;
}

static void
ScanBytes(
    Scan *s,
    const unsigned char *p,
    size_t n)
{
    size_t i = 0;

    while (i < n && !s->done) {
	int c = p[i], afterCR = s->cr;

	if (afterCR) {
	    /* The CR ended the SMTP line; it was CRLF or a bare CR. */
	    s->cr = 0;
	    if (c != '\n') {
		s->hasBareCR = 1;
		s->identSize++;
	    }
	}
	if (ORDINARY(c)) {
	    size_t run = c == '\t' ? 1 : PrintableRun(p + i, n - i), j;

	    j = i + run;
	    if (s->headLen < 5) {
		size_t k = run < (size_t) (5 - s->headLen)
			? run : (size_t) (5 - s->headLen);

		memcpy(s->head + s->headLen, p + i, k);
		s->headLen += (int) k;
	    }
	    if (s->capOn) {
		ScanCapture(s, p + i, run);
	    }
	    s->mLen += (Tcl_WideInt) run;
	    s->tLen += (Tcl_WideInt) run;
	    s->len += (Tcl_WideInt) run;
	    s->identSize += (Tcl_WideInt) run;
	    s->mLast = p[j - 1];
	    i = j;
	    continue;
	}
	if (s->headLen == 5 && !s->capOn && c != '\t'
		&& (ORDINARY(c) || c >= 0x80)) {
	    /*
	     * Inside a line, past what its start decides: printable ASCII
	     * and 8-bit octets, eight at a time.
	     */

	    const uint64_t high = 0x8080808080808080ULL;
	    const uint64_t low7 = 0x7F7F7F7F7F7F7F7FULL;
	    uint64_t hi = 0;
	    size_t j = i, run, trail = 0;

	    while (j + 8 <= n) {
		uint64_t x, t;

		memcpy(&x, p + j, 8);
		t = x & low7;
		if (((~(t + 0x6060606060606060ULL)
			| (t + 0x0101010101010101ULL)) & high & ~x) != 0) {
		    break;		/* A control octet or DEL. */
		}
		hi |= x & high;
		if (s->chars) {
		    /* Trail octets, 10xxxxxx, summed a bit per octet. */
		    trail += (size_t) ((((x & ~(x << 1) & high) >> 7)
			    * 0x0101010101010101ULL) >> 56);
		}
		j += 8;
	    }
	    while (j < n && ((p[j] >= 0x20 && p[j] < 0x7F) || p[j] >= 0x80)) {
		hi |= p[j] & 0x80;
		trail += (s->chars && (p[j] & 0xC0) == 0x80);
		j++;
	    }
	    run = j - i;
	    if (hi) {
		s->notAscii = 1;
		s->has8bit = 1;
		if (s->until == SCAN_TO_NOTASCII || s->until == SCAN_TO_EITHER) {
		    s->done = 1;
		}
	    }
	    s->len += (Tcl_WideInt) run;
	    s->identSize += (Tcl_WideInt) run;
	    s->tLen += (Tcl_WideInt) run;
	    s->mLen += (Tcl_WideInt) (run - trail);
	    while (j > i && s->chars && (p[j - 1] & 0xC0) == 0x80) {
		j--;
	    }
	    if (j > i) {
		s->mLast = p[j - 1];
	    }
	    i += run;
	    continue;
	}
	if (c >= 0x80) {
	    /*
	     * A run of 8-bit octets at once; in characters, a trail octet
	     * adds nothing to mime's line.
	     */

	    size_t j = i, run, k, chars = 0;
	    int last = s->mLast;

	    while (j < n && p[j] >= 0x80) {
		if (!s->chars || (p[j] & 0xC0) != 0x80) {
		    chars++;
		    last = p[j];
		}
		j++;
	    }
	    run = j - i;
	    s->notAscii = 1;
	    s->has8bit = 1;
	    if (s->until == SCAN_TO_NOTASCII || s->until == SCAN_TO_EITHER) {
		s->done = 1;
	    }
	    if (s->headLen < 5) {
		k = run < (size_t) (5 - s->headLen)
			? run : (size_t) (5 - s->headLen);
		memcpy(s->head + s->headLen, p + i, k);
		s->headLen += (int) k;
	    }
	    if (s->capOn) {
		ScanCapture(s, p + i, run);
	    }
	    s->len += (Tcl_WideInt) run;
	    s->identSize += (Tcl_WideInt) run;
	    s->tLen += (Tcl_WideInt) run;
	    s->mLen += (Tcl_WideInt) chars;
	    s->mLast = last;
	    i = j;
	    continue;
	}
	s->len++;
	s->identSize++;
	i++;
	if (c == '\n') {
	    if (!afterCR) {
		s->identSize++;		/* LF becomes CRLF. */
		ScanEndLine(s);
	    }
	    ScanEndMimeLine(s);
	    continue;
	}
	s->notAscii = 1;
	if (s->until == SCAN_TO_NOTASCII || s->until == SCAN_TO_EITHER) {
	    s->done = 1;
	}
	if (c == '\r') {
	    s->cr = 1;
	    ScanEndLine(s);
	} else {
	    if (c == 0) {
		s->hasNul = 1;
	    }
	    s->tLen++;
	    if (s->capOn) {
		ScanCapture(s, p + i - 1, 1);
	    }
	}
	if (s->headLen < 5) {
	    s->head[s->headLen++] = (unsigned char) c;
	}
	s->mLen++;
	s->mLast = c;
    }
    if (n > 0) {
	s->lastByte = p[n - 1];
    }
}

static void
ScanFinish(
    Scan *s)
{
    if (s->cr) {
	s->cr = 0;
	s->hasBareCR = 1;
	s->identSize++;
    }
    if (s->lastByte != '\n' && s->lastByte != '\r') {
	ScanEndLine(s);
    }
    ScanEndMimeLine(s);
}

/*
 * ------------------------------------------------------------------------
 * The plan: a tree of parts read from the token.
 * ------------------------------------------------------------------------
 */

enum { ENC_IDENT, ENC_QP, ENC_B64 };
enum { SRC_NONE, SRC_STRING, SRC_FILE };

typedef struct Node {
    struct Node **kids;		/* Subparts (multipart, message). */
    int nkids;
    int multipart;		/* Kids framed by a boundary. */
    int message;		/* A message part: its one kid follows. */

    SmtpBuf head;		/* MIME-Version and the token's headers,
				 * as written without SMTPUTF8, */
    SmtpBuf head8;		/* and with it. */
    Tcl_DString type;		/* Content type, as written. */
    Tcl_Obj *params;		/* Content-Type parameters (list). */
    char encoding[24];		/* The token's encoding, lower case. */
    int canonical;
    int text;			/* text/... */

    int src;			/* SRC_...: where a leaf's content is. */
    Tcl_Obj *string;		/* SRC_STRING: the value, referenced; */
    const unsigned char *bytes;	/* its octets, while the plan is made (no */
    size_t len;			/* Tcl code runs then to change them), */
    Tcl_DString scratch;	/* and where they were made, if needed; */
    int decoded;		/* 1: bytes are in scratch, and hold. */
    int textRule;		/* A text string: its octets in its charset
				 * (smtpText.c), not SmtpBinaryBytes'; */
    int textDone;		/* 1: bytes are the value's string form,
				 * already checked; */
    int csAction;		/* SMTP_CS_UTF8: the part must say utf-8. */
    Tcl_Obj *path;		/* SRC_FILE: normalized file name, */
    Tcl_WideInt offset, count;	/* where, and how much (-1: to EOF). */
    Scan scan;
    Tcl_WideInt qpSize;		/* SRC_FILE: octets of the QP form. */

    int enc;			/* ENC_...: the encoding written. */
    int qpText;
    const char *label;		/* Content-Transfer-Encoding, or NULL; */
    const char *label8;		/* with SMTPUTF8. */
    int eightBit;		/* Headers or body carry octets > 127. */
    char boundary[80];
} Node;

typedef struct Seg {
    int file;			/* SEG_LIT, SEG_FILE or SEG_BYTES. */
    SmtpBuf lit;
    int hasAlt;			/* SEG_LIT: headers written otherwise with
				 * SMTPUTF8, */
    SmtpBuf alt;		/* as these. */
    Tcl_Obj *path;
    Tcl_WideInt offset, count;
    Tcl_Obj *value;		/* SEG_BYTES: the string value, and */
    Tcl_DString *own;		/* its octets when decoded (not kept in
				 * the array: a Tcl_DString may point into
				 * itself), or */
    int inValue;		/* 1: they are its string form (ASCII); */
				/* else its byte array. */
    int enc, qpText;
    Tcl_WideInt size;		/* Octets this segment writes. */
} Seg;

typedef struct Plan {
    Tcl_Interp *interp;
    Tcl_Obj *why;		/* Why the token's shape is unknown. */
    Seg *segs;
    int nsegs, capSegs;
    Tcl_WideInt size;
    unsigned char last;		/* Last octet written so far. */
    int eightbit;		/* An octet over 127 is written. */
    Tcl_WideInt sizeDelta;	/* With SMTPUTF8: octets more (or less). */
    int eightbitAlt;		/* With SMTPUTF8: an octet over 127 in the
				 * headers written otherwise. */
} Plan;

static void
NodeFree(
    Node *nd)
{
    int i;

    if (nd == NULL) {
	return;
    }
    for (i = 0; i < nd->nkids; i++) {
	NodeFree(nd->kids[i]);
    }
    if (nd->kids) {
	ckfree(nd->kids);
    }
    SmtpBufFree(&nd->head);
    SmtpBufFree(&nd->head8);
    Tcl_DStringFree(&nd->type);
    if (nd->params) {
	Tcl_DecrRefCount(nd->params);
    }
    if (nd->string) {
	Tcl_DecrRefCount(nd->string);
    }
    Tcl_DStringFree(&nd->scratch);
    if (nd->path) {
	Tcl_DecrRefCount(nd->path);
    }
    ScanFree(&nd->scan);
    ckfree(nd);
}

static Node *
NodeNew(void)
{
    Node *nd = (Node *) ckalloc(sizeof(Node));

    memset(nd, 0, sizeof(Node));
    SmtpBufInit(&nd->head);
    SmtpBufInit(&nd->head8);
    Tcl_DStringInit(&nd->type);
    Tcl_DStringInit(&nd->scratch);
    ScanInit(&nd->scan);
    nd->count = -1;
    return nd;
}

static int
Unknown(
    Plan *pl,
    Tcl_Obj *token,
    const char *what)
{
    if (pl->why == NULL) {
	pl->why = Tcl_ObjPrintf("%s: %s", Tcl_GetString(token), what);
	Tcl_IncrRefCount(pl->why);
    }
    return TCL_CONTINUE;
}

/*
 * Writes a header field to a part's headers, in both renditions
 * (smtpHdr.c): nd->head for a message sent without SMTPUTF8, nd->head8
 * for one sent with it.
 */

static void
HeaderObj(
    Node *nd,
    Tcl_Obj *name,
    const char *cname,
    Tcl_Obj *value)
{
    Tcl_Obj *nameObj = name ? name : Tcl_NewStringObj(cname, -1);

    Tcl_IncrRefCount(nameObj);
    SmtpHeaderWrite(&nd->head, &nd->head8, nameObj, value);
    Tcl_DecrRefCount(nameObj);
}

/*
 * The charset parameter in a content type as written (mime's -canonical
 * "text/plain; charset=..."): its value, its length in *lenPtr and its
 * offset in *offPtr; NULL when there is none.
 */

static const char *
TypeCharset(
    const char *type,
    size_t *lenPtr,
    size_t *offPtr)
{
    const char *p = strchr(type, ';');

    while (p != NULL && *p == ';') {
	const char *name, *v;
	size_t nlen;

	p++;
	while (*p == ' ' || *p == '\t') {
	    p++;
	}
	name = p;
	while (*p && *p != '=' && *p != ';' && *p != ' ' && *p != '\t') {
	    p++;
	}
	nlen = (size_t) (p - name);
	while (*p == ' ' || *p == '\t') {
	    p++;
	}
	if (*p != '=') {
	    p = strchr(p, ';');
	    continue;
	}
	p++;
	while (*p == ' ' || *p == '\t') {
	    p++;
	}
	if (*p == '"') {
	    v = ++p;
	    while (*p && *p != '"') {
		p += (*p == '\\' && p[1]) ? 2 : 1;
	    }
	    *lenPtr = (size_t) (p - v);
	    if (*p == '"') {
		p++;
	    }
	} else {
	    v = p;
	    while (*p && *p != ';' && *p != ' ' && *p != '\t') {
		p++;
	    }
	    *lenPtr = (size_t) (p - v);
	}
	if (nlen == 7 && (name[0] | 0x20) == 'c' && (name[1] | 0x20) == 'h'
		&& (name[2] | 0x20) == 'a' && (name[3] | 0x20) == 'r'
		&& (name[4] | 0x20) == 's' && (name[5] | 0x20) == 'e'
		&& (name[6] | 0x20) == 't') {
	    *offPtr = (size_t) (v - type);
	    return v;
	}
	while (*p == ' ' || *p == '\t') {
	    p++;
	}
    }
    return NULL;
}

static const char *Charset(Node *nd);

/*
 * The charset a part declares: in its parameters (mime's -param, which
 * mime's choice of encoding reads), else in its content type. NULL when
 * it declares none.
 */

static const char *
DeclaredCharset(
    Node *nd,
    size_t *lenPtr)
{
    const char *cs = Charset(nd);
    size_t off;

    if (cs != NULL) {
	*lenPtr = strlen(cs);
	return cs;
    }
    return TypeCharset(Tcl_DStringValue(&nd->type), lenPtr, &off);
}

/*
 * Points nd->bytes at the octets of a string leaf: a string form that is
 * plain ASCII is used as is; a text part's value is taken by the rule of
 * smtpText.c; others by SmtpBinaryBytes (the characters' values, or the
 * UTF-8 of a value with a character beyond U+00FF). A pointer into the value holds until Tcl
 * code might run (which could change the value's representation), so it
 * is taken again before each use; octets made into nd->scratch are the
 * node's own and are kept.
 */

static void
StringBytes(
    Node *nd)
{
    Tcl_Obj *obj = nd->string;

    if (nd->decoded) {
	return;
    }
    if (obj->bytes != NULL) {
	const unsigned char *s = (const unsigned char *) obj->bytes;
	size_t n = (size_t) obj->length, i = 0;
	uint64_t acc = 0;

	if (nd->textDone && s == nd->bytes && n == nd->len) {
	    return;
	}
	while (i + 64 <= n && (acc & 0x8080808080808080ULL) == 0) {
	    int k;

	    for (k = 0; k < 8; k++, i += 8) {
		uint64_t x;

		memcpy(&x, s + i, 8);
		acc |= x;
	    }
	}
	for (; i < n && (acc & 0x8080808080808080ULL) == 0; i++) {
	    acc |= s[i];
	}
	if ((acc & 0x8080808080808080ULL) == 0) {
	    nd->bytes = s;
	    nd->len = n;
	    return;
	}
    }
    Tcl_DStringFree(&nd->scratch);
    if (nd->textRule) {
	size_t csLen = 0;
	const char *cs = DeclaredCharset(nd, &csLen);
	int how = SmtpTextBytes(obj, cs, csLen, &nd->bytes, &nd->len,
		&nd->scratch);

	nd->csAction = how & SMTP_CS_UTF8;
	nd->scan.chars = (how & SMTP_TEXT_CHARS) != 0;
	nd->decoded = (nd->bytes
		== (const unsigned char *) Tcl_DStringValue(&nd->scratch));
	nd->textDone = (obj->bytes != NULL
		&& nd->bytes == (const unsigned char *) obj->bytes);
	return;
    }
    SmtpBinaryBytes(obj, &nd->bytes, &nd->len, &nd->scratch);
    nd->decoded = (nd->bytes
	    == (const unsigned char *) Tcl_DStringValue(&nd->scratch));
    nd->textDone = (obj->bytes != NULL
	    && nd->bytes == (const unsigned char *) obj->bytes);
}

static Tcl_Obj *
Key(
    Plan *pl,
    Tcl_Obj *token,
    const char *key)
{
    return Tcl_GetVar2Ex(pl->interp, Tcl_GetString(token), key,
	    TCL_GLOBAL_ONLY);
}

static int
HasPrefix(
    const char *s,
    const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/*
 * Is the content type 'type' (perhaps with parameters) exactly 'name'?
 */

static int
IsType(
    const char *type,
    const char *name)
{
    size_t n = strlen(name);

    return strncmp(type, name, n) == 0 && (type[n] == '\0'
	    || type[n] == ';' || type[n] == ' ' || type[n] == '\t');
}

static int Walk(Plan *pl, Tcl_Obj *token, int depth, Node **out);

/*
 * Reads the headers of a part: MIME-Version, then the token's own in
 * their order (Content-Type, Content-Transfer-Encoding and MIME-Version
 * among them are left out: the part's own are written).
 */

static int
WalkHeaders(
    Plan *pl,
    Tcl_Obj *token,
    Node *nd)
{
    Tcl_Obj *version = Key(pl, token, "version");
    Tcl_Obj *header = Key(pl, token, "header");
    Tcl_Obj *lowerL = Key(pl, token, "lowerL");
    Tcl_Obj *mixedL = Key(pl, token, "mixedL");
    Tcl_Obj **lowers, **mixeds;
    Tcl_Size nl, nm, i, nh;

    if (!version || !header || !lowerL || !mixedL) {
	return Unknown(pl, token, "no version, header, lowerL or mixedL");
    }
    if (Tcl_ListObjGetElements(NULL, lowerL, &nl, &lowers) != TCL_OK
	    || Tcl_ListObjGetElements(NULL, mixedL, &nm, &mixeds) != TCL_OK
	    || nl != nm
	    || Tcl_ListObjLength(NULL, header, &nh) != TCL_OK || nh % 2) {
	return Unknown(pl, token, "header lists malformed");
    }
    HeaderObj(nd, NULL, "MIME-Version", version);
    for (i = 0; i < nl; i++) {
	const char *lower = Tcl_GetString(lowers[i]);
	Tcl_Obj *values = NULL, **v;
	Tcl_Size nv, j;

	if (Tcl_DictObjGet(NULL, header, lowers[i], &values) != TCL_OK
		|| values == NULL
		|| Tcl_ListObjGetElements(NULL, values, &nv, &v) != TCL_OK) {
	    return Unknown(pl, token, "a header in lowerL has no values");
	}
	if (strcmp(lower, "content-type") == 0
		|| strcmp(lower, "content-transfer-encoding") == 0
		|| strcmp(lower, "mime-version") == 0) {
	    continue;
	}
	for (j = 0; j < nv; j++) {
	    HeaderObj(nd, mixeds[i], NULL, v[j]);
	}
    }
    return TCL_OK;
}

static int
WalkParts(
    Plan *pl,
    Tcl_Obj *token,
    Node *nd,
    int depth)
{
    Tcl_Obj *parts = Key(pl, token, "parts"), **elems;
    Tcl_Size n, i;
    int code;

    if (parts == NULL
	    || Tcl_ListObjGetElements(NULL, parts, &n, &elems) != TCL_OK) {
	return Unknown(pl, token, "value is parts but parts is not a list");
    }
    if (nd->message && n > 1) {
	n = 1;			/* mime writes the first part only. */
    }
    if (nd->message && n == 0) {
	return Unknown(pl, token, "message without a part");
    }
    nd->kids = (Node **) ckalloc(sizeof(Node *) * (size_t) (n ? n : 1));
    for (i = 0; i < n; i++) {
	Node *kid;

	code = Walk(pl, elems[i], depth + 1, &kid);
	if (code != TCL_OK) {
	    NodeFree(kid);
	    return code;
	}
	nd->kids[nd->nkids++] = kid;
    }
    return TCL_OK;
}

/*
 * Reads one token into a Node (*out, owned by the caller even on
 * failure). Returns TCL_OK, or TCL_CONTINUE when the token is not in the
 * layout known here.
 */

static int
Walk(
    Plan *pl,
    Tcl_Obj *token,
    int depth,
    Node **out)
{
    Tcl_Obj *content, *params, *encoding, *value, *canonicalP, *obj;
    Node *nd;
    const char *val, *type;
    Tcl_Size np, elen;
    int code;

    *out = NULL;
    if (depth > MAX_DEPTH) {
	return Unknown(pl, token, "parts nested too deep");
    }
    content = Key(pl, token, "content");
    params = Key(pl, token, "params");
    encoding = Key(pl, token, "encoding");
    value = Key(pl, token, "value");
    canonicalP = Key(pl, token, "canonicalP");
    if (!content || !params || !encoding || !value || !canonicalP) {
	return Unknown(pl, token,
		"no content, params, encoding, value or canonicalP");
    }
    nd = *out = NodeNew();
    if (Tcl_GetBooleanFromObj(NULL, canonicalP, &nd->canonical) != TCL_OK
	    || Tcl_ListObjLength(NULL, params, &np) != TCL_OK || np % 2) {
	return Unknown(pl, token, "canonicalP or params malformed");
    }
    nd->params = params;
    Tcl_IncrRefCount(params);
    val = Tcl_GetStringFromObj(encoding, &elen);
    if (elen >= (Tcl_Size) sizeof(nd->encoding)) {
	return Unknown(pl, token, "unknown encoding");
    }
    memcpy(nd->encoding, val, (size_t) elen + 1);
    if (nd->encoding[0] && strcmp(nd->encoding, "7bit")
	    && strcmp(nd->encoding, "8bit") && strcmp(nd->encoding, "binary")
	    && strcmp(nd->encoding, "quoted-printable")
	    && strcmp(nd->encoding, "base64")) {
	return Unknown(pl, token, "unknown encoding");
    }
    /* mime matches content types case-sensitively; so does this. */
    {
	Tcl_DString ct;

	SmtpHeaderOctets(content, &ct);
	Tcl_DStringAppend(&nd->type, Tcl_DStringValue(&ct),
		Tcl_DStringLength(&ct));
	Tcl_DStringFree(&ct);
    }
    type = Tcl_DStringValue(&nd->type);
    nd->text = HasPrefix(type, "text/");
    code = WalkHeaders(pl, token, nd);
    if (code != TCL_OK) {
	return code;
    }

    val = Tcl_GetString(value);
    if (strcmp(val, "parts") == 0) {
	nd->multipart = HasPrefix(type, "multipart/");
	nd->message = HasPrefix(type, "message/");
	if (!nd->multipart && !nd->message) {
	    return Unknown(pl, token, "parts in a part neither multipart"
		    " nor message");
	}
	return WalkParts(pl, token, nd, depth);
    }
    if (strcmp(val, "string") == 0) {
	if ((obj = Key(pl, token, "string")) == NULL) {
	    return Unknown(pl, token, "value is string but no string");
	}
	nd->src = SRC_STRING;
	nd->string = obj;
	Tcl_IncrRefCount(obj);
	/* Parsed content still in its transfer encoding stays as it is. */
	nd->textRule = nd->text && (nd->canonical
		|| (strcmp(nd->encoding, "quoted-printable")
		    && strcmp(nd->encoding, "base64")));
	return TCL_OK;
    }
    if (strcmp(val, "file") == 0) {
	Tcl_Obj *off = Key(pl, token, "offset");
	Tcl_Obj *cnt = Key(pl, token, "count");

	if ((obj = Key(pl, token, "file")) == NULL) {
	    return Unknown(pl, token, "value is file but no file");
	}
	if (off && Tcl_GetWideIntFromObj(NULL, off, &nd->offset) != TCL_OK) {
	    return Unknown(pl, token, "offset is not an integer");
	}
	if (nd->offset < 0) {
	    nd->offset = 0;
	}
	if (Key(pl, token, "root") && cnt) {
	    if (Tcl_GetWideIntFromObj(NULL, cnt, &nd->count) != TCL_OK) {
		return Unknown(pl, token, "count is not an integer");
	    }
	    if (nd->count < 0) {
		nd->count = 0;
	    }
	}
	nd->src = SRC_FILE;
	nd->path = obj;
	Tcl_IncrRefCount(obj);
	return TCL_OK;
    }
    return Unknown(pl, token, "value is not string, file or parts");
}

/*
 * ------------------------------------------------------------------------
 * Files.
 * ------------------------------------------------------------------------
 */

static Tcl_Channel
OpenAt(
    Tcl_Interp *interp,
    Tcl_Obj *path,
    Tcl_WideInt offset)
{
    Tcl_Channel chan = Tcl_FSOpenFileChannel(interp, path, "r", 0);

    if (chan == NULL) {
	return NULL;
    }
    if (Tcl_SetChannelOption(interp, chan, "-translation", "binary")
	    != TCL_OK
	    || Tcl_SetChannelOption(interp, chan, "-buffersize", "65536")
		!= TCL_OK
	    || (offset > 0 && Tcl_Seek(chan, offset, SEEK_SET) < 0)) {
	if (interp) {
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf("error reading \"%s\": %s",
		    Tcl_GetString(path), Tcl_PosixError(interp)));
	}
	Tcl_Close(NULL, chan);
	return NULL;
    }
    return chan;
}

/*
 * Reads a file leaf once: its statistics, its length (the part, or to the
 * end of the file) and, for text, the size of its quoted-printable form.
 * The name is made absolute so that the message is written from the file
 * that was read here, wherever the current directory goes.
 */

static int
ScanFile(
    Plan *pl,
    Node *nd)
{
    Tcl_Obj *norm = Tcl_FSGetNormalizedPath(pl->interp, nd->path);
    Tcl_Channel chan;
    unsigned char *block;
    SmtpBuf scratch;
    QpEnc qp;
    int countQp = nd->text || strcmp(nd->encoding, "quoted-printable") == 0;
    Tcl_WideInt left = nd->count;
    int code = TCL_OK;

    if (nd->scan.until == SCAN_NONE) {
	nd->scan.done = 1;
	countQp = 0;
    }
    if (norm == NULL) {
	Tcl_SetObjResult(pl->interp, Tcl_ObjPrintf(
		"couldn't open \"%s\": no such file or directory",
		Tcl_GetString(nd->path)));
	return TCL_ERROR;
    }
    norm = Tcl_DuplicateObj(norm);
    Tcl_IncrRefCount(norm);
    Tcl_DecrRefCount(nd->path);
    nd->path = norm;
    chan = OpenAt(pl->interp, nd->path, nd->offset);
    if (chan == NULL) {
	return TCL_ERROR;
    }
    block = (unsigned char *) ckalloc(FILE_BLOCK);
    SmtpBufInit(&scratch);
    QpInit(&qp, nd->text);
    nd->qpSize = 0;
    while (left != 0 && !nd->scan.done) {
	int want = FILE_BLOCK, got;

	if (left > 0 && left < want) {
	    want = (int) left;
	}
	got = (int) Tcl_Read(chan, (char *) block, want);
	if (got < 0) {
	    Tcl_SetObjResult(pl->interp, Tcl_ObjPrintf(
		    "error reading \"%s\": %s", Tcl_GetString(nd->path),
		    Tcl_PosixError(pl->interp)));
	    code = TCL_ERROR;
	    break;
	}
	if (got == 0) {
	    break;
	}
	ScanBytes(&nd->scan, block, (size_t) got);
	if (countQp) {
	    scratch.len = scratch.pos = 0;
	    QpEncode(&qp, block, (size_t) got, &scratch);
	    nd->qpSize += (Tcl_WideInt) scratch.len;
	}
	if (left > 0) {
	    left -= got;
	}
    }
    if (countQp) {
	scratch.len = scratch.pos = 0;
	QpFinish(&qp, &scratch);
	nd->qpSize += (Tcl_WideInt) scratch.len;
    }
    ScanFinish(&nd->scan);
    if (nd->scan.done && code == TCL_OK) {
	/* Base64 in any case: only the length is needed. */
	Tcl_WideInt end = Tcl_Seek(chan, 0, SEEK_END);

	if (end < 0) {
	    Tcl_SetObjResult(pl->interp, Tcl_ObjPrintf(
		    "error reading \"%s\": %s", Tcl_GetString(nd->path),
		    Tcl_PosixError(pl->interp)));
	    code = TCL_ERROR;
	} else if (nd->count < 0 || nd->count > end - nd->offset) {
	    nd->count = end > nd->offset ? end - nd->offset : 0;
	}
    } else {
	nd->count = nd->scan.len;
    }
    SmtpBufFree(&scratch);
    ckfree(block);
    Tcl_Close(NULL, chan);
    return code;
}

/*
 * Re-reads a file leaf and tells whether a line of it starts with 'delim'
 * (for a leaf with too many boundary-like lines to remember).
 */

static int
FileHasLine(
    Plan *pl,
    Node *nd,
    const char *delim,
    int *found)
{
    Tcl_Channel chan = OpenAt(pl->interp, nd->path, nd->offset);
    unsigned char *block;
    size_t dlen = strlen(delim);
    Tcl_WideInt left = nd->count;
    size_t matched = 0;
    int bol = 1, code = TCL_OK;

    *found = 0;
    if (chan == NULL) {
	return TCL_ERROR;
    }
    block = (unsigned char *) ckalloc(FILE_BLOCK);
    while (left > 0 && !*found) {
	int want = left < FILE_BLOCK ? (int) left : FILE_BLOCK, got, i;

	got = (int) Tcl_Read(chan, (char *) block, want);
	if (got < 0) {
	    Tcl_SetObjResult(pl->interp, Tcl_ObjPrintf(
		    "error reading \"%s\": %s", Tcl_GetString(nd->path),
		    Tcl_PosixError(pl->interp)));
	    code = TCL_ERROR;
	    break;
	}
	if (got == 0) {
	    break;
	}
	left -= got;
	for (i = 0; i < got && !*found; i++) {
	    int c = block[i];

	    if (c == '\n' || c == '\r') {
		bol = 1;
		matched = 0;
		continue;
	    }
	    if (bol) {
		if (c == (unsigned char) delim[matched]) {
		    if (++matched == dlen) {
			*found = 1;
		    }
		} else {
		    bol = 0;
		}
	    }
	}
    }
    ckfree(block);
    Tcl_Close(NULL, chan);
    return code;
}

/*
 * ------------------------------------------------------------------------
 * Choosing encodings.
 * ------------------------------------------------------------------------
 */

/*
 * The charset parameter of a part, as mime finds it, or NULL.
 */

static const char *
Charset(
    Node *nd)
{
    Tcl_Obj **kv;
    Tcl_Size n, i;

    Tcl_ListObjGetElements(NULL, nd->params, &n, &kv);
    for (i = 0; i + 1 < n; i += 2) {
	if (strcmp(Tcl_GetString(kv[i]), "charset") == 0) {
	    return Tcl_GetString(kv[i + 1]);
	}
    }
    return NULL;
}

/*
 * mime's exemption from base64 for 8-bit text: us-ascii or
 * iso-8859-1 to -8, in any case.
 */

static int
LatinCharset(
    const char *cs)
{
    char low[16];
    size_t n = strlen(cs), i;

    if (n >= sizeof(low)) {
	return 0;
    }
    for (i = 0; i <= n; i++) {
	low[i] = (char) ((cs[i] >= 'A' && cs[i] <= 'Z') ? cs[i] + 32 : cs[i]);
    }
    if (strcmp(low, "us-ascii") == 0) {
	return 1;
    }
    return n == 10 && strncmp(low, "iso-8859-", 9) == 0
	    && low[9] >= '1' && low[9] <= '8';
}

static int
HeadHas8bit(
    const SmtpBuf *b)
{
    size_t i;

    for (i = 0; i < b->len; i++) {
	if (b->data[i] >= 0x80) {
	    return 1;
	}
    }
    return 0;
}

/*
 * Chooses a leaf's transfer encoding. mime's rules first (mime::encoding):
 * audio, image and video in base64; text in base64 when it has octets
 * outside printable ASCII and a charset other than us-ascii or
 * iso-8859-1..8, else quoted-printable when a line is longer than 76, ends
 * in white space, or starts with "." or "From "; anything else in base64
 * for either reason. The token's own encoding, when it has one, wins.
 * Then what SMTP cannot carry as is: content left in an identity encoding
 * that holds NUL, a bare CR or a line over 998 octets is written in
 * quoted-printable (text) or base64 instead, so it arrives unchanged; a
 * token that says 7bit, 8bit or binary keeps its word about line ends.
 */

static void
DecideLeaf(
    Node *nd)
{
    const char *type = Tcl_DStringValue(&nd->type), *cs;
    const char *decl = nd->encoding;
    Scan *s = &nd->scan;
    int composite = HasPrefix(type, "multipart/")
	    || HasPrefix(type, "message/");
    /*
     * Types whose content RFC 2045 6.4 and RFC 2046 5.2 allow in an
     * identity encoding only: content of theirs that SMTP cannot carry is
     * still sent as it is. Other message/ types (delivery-status ...)
     * are encoded like any leaf.
     */
    int identOnly = HasPrefix(type, "multipart/")
	    || IsType(type, "message/rfc822") || IsType(type, "message/partial")
	    || IsType(type, "message/external-body");
    int unsafe = s->hasNul || s->maxLine > LINE_MAX_OCTETS;
    int identity = !strcmp(decl, "7bit") || !strcmp(decl, "8bit")
	    || !strcmp(decl, "binary");

    nd->qpText = nd->text;
    if (!nd->canonical && (!strcmp(decl, "quoted-printable")
	    || !strcmp(decl, "base64"))) {
	/* Parsed content, still in its transfer encoding. */
	nd->enc = ENC_IDENT;
	nd->label = !strcmp(decl, "base64") ? "base64" : "quoted-printable";
	nd->eightBit = s->has8bit;
	return;
    }
    if (identity) {
	if (unsafe && !identOnly) {
	    nd->enc = nd->text ? ENC_QP : ENC_B64;
	} else {
	    nd->enc = ENC_IDENT;
	    nd->label = (!strcmp(decl, "7bit") && s->has8bit) ? "8bit"
		    : !strcmp(decl, "7bit") ? "7bit"
		    : !strcmp(decl, "8bit") ? "8bit" : "binary";
	    nd->eightBit = s->has8bit;
	    return;
	}
    } else if (!strcmp(decl, "quoted-printable")) {
	nd->enc = ENC_QP;
    } else if (!strcmp(decl, "base64")) {
	nd->enc = ENC_B64;
    } else if (HasPrefix(type, "audio/") || HasPrefix(type, "image/")
	    || HasPrefix(type, "video/")) {
	nd->enc = ENC_B64;
    } else if (composite) {
	nd->enc = ENC_IDENT;
    } else if (nd->text) {
	cs = Charset(nd);
	if (s->notAscii && cs && !LatinCharset(cs)) {
	    nd->enc = ENC_B64;
	} else if (s->notLine) {
	    nd->enc = ENC_QP;
	} else {
	    nd->enc = ENC_IDENT;
	}
    } else {
	nd->enc = (s->notAscii || s->notLine) ? ENC_B64 : ENC_IDENT;
    }
    if (nd->enc == ENC_IDENT && !identOnly && (unsafe || s->hasBareCR)) {
	nd->enc = nd->text ? ENC_QP : ENC_B64;
    }
    switch (nd->enc) {
    case ENC_QP:
	nd->label = "quoted-printable";
	break;
    case ENC_B64:
	nd->label = "base64";
	break;
    default:
	nd->label = s->has8bit ? "8bit" : NULL;
	nd->eightBit = s->has8bit;
    }
}

/*
 * Chooses every part's encoding, bottom up: a multipart or message whose
 * body carries octets over 127 says 8bit (RFC 2045 6.4: its own encoding
 * must describe its content); otherwise what the token said, if it is an
 * identity encoding. The headers of the parts inside count, as written
 * without SMTPUTF8 (utf8 0, nd->label) or with it (utf8 1, nd->label8).
 * Returns whether the part's headers or body carry 8-bit octets.
 */

static int
Decide(
    Node *nd,
    int utf8)
{
    int i, body8 = 0;

    if (nd->nkids == 0 && !nd->multipart && !nd->message) {
	if (!utf8) {
	    DecideLeaf(nd);
	}
	nd->label8 = nd->label;
	body8 = nd->eightBit;
    } else {
	for (i = 0; i < nd->nkids; i++) {
	    body8 |= Decide(nd->kids[i], utf8);
	}
	*(utf8 ? &nd->label8 : &nd->label) =
		!strcmp(nd->encoding, "binary") ? "binary"
		: body8 ? "8bit"
		: !strcmp(nd->encoding, "7bit") ? "7bit"
		: !strcmp(nd->encoding, "8bit") ? "8bit" : NULL;
    }
    return body8 || HeadHas8bit(utf8 ? &nd->head8 : &nd->head);
}

/*
 * ------------------------------------------------------------------------
 * Boundaries: "=_" and random characters. "=_" never occurs in quoted-
 * printable or base64 output, so only content written as is, headers and
 * the delimiters of nested multiparts need checking.
 * ------------------------------------------------------------------------
 */

static int
TextHasLine(
    const unsigned char *p,
    size_t n,
    const char *delim)
{
    size_t dlen = strlen(delim), i = 0;

    while (i < n) {
	if (n - i >= dlen && memcmp(p + i, delim, dlen) == 0) {
	    return 1;
	}
	while (i < n && p[i] != '\n' && p[i] != '\r') {
	    i++;
	}
	while (i < n && (p[i] == '\n' || p[i] == '\r')) {
	    i++;
	}
    }
    return 0;
}

/*
 * Whether "--boundary" starts a line anywhere in the part's subtree.
 */

static int
Collides(
    Plan *pl,
    Node *nd,
    const char *delim,
    int *found)
{
    int i;
    size_t dlen = strlen(delim);

    *found = 0;
    for (i = 0; i < nd->nkids && !*found; i++) {
	Node *kid = nd->kids[i];

	if (TextHasLine(kid->head.data, kid->head.len, delim)
		|| TextHasLine(kid->head8.data, kid->head8.len, delim)) {
	    *found = 1;
	} else if (kid->multipart
		&& strncmp(delim + 2, kid->boundary, dlen - 2) == 0) {
	    *found = 1;
	} else if (kid->enc == ENC_IDENT && kid->src != SRC_NONE) {
	    Scan *s = &kid->scan;
	    int j;

	    for (j = 0; j < s->ncands && !*found; j++) {
		if ((size_t) s->cands[j][0] >= dlen
			&& memcmp(s->cands[j] + 1, delim, dlen) == 0) {
		    *found = 1;
		}
	    }
	    if (!*found && s->candOverflow) {
		if (kid->src == SRC_STRING) {
		    StringBytes(kid);
		    *found = TextHasLine(kid->bytes, kid->len, delim);
		} else if (FileHasLine(pl, kid, delim, found) != TCL_OK) {
		    return TCL_ERROR;
		}
	    }
	} else if (Collides(pl, kid, delim, found) != TCL_OK) {
	    return TCL_ERROR;
	}
    }
    return TCL_OK;
}

static int
Boundaries(
    Plan *pl,
    Node *nd)
{
    static const char alphabet[] =
	    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    int i, found;

    for (i = 0; i < nd->nkids; i++) {
	if (Boundaries(pl, nd->kids[i]) != TCL_OK) {
	    return TCL_ERROR;
	}
    }
    if (!nd->multipart) {
	return TCL_OK;
    }
    do {
	unsigned char rnd[BOUNDARY_RAND];
	char delim[BOUNDARY_RAND + 8];

	if (RAND_bytes(rnd, (int) sizeof(rnd)) != 1) {
	    Tcl_SetObjResult(pl->interp, Tcl_NewStringObj(
		    "no random numbers for a MIME boundary", -1));
	    Tcl_SetErrorCode(pl->interp, "SMTP", "MIME", "RANDOM", NULL);
	    return TCL_ERROR;
	}
	memcpy(nd->boundary, "=_", 2);
	for (i = 0; i < BOUNDARY_RAND; i++) {
	    nd->boundary[2 + i] = alphabet[rnd[i] % 62];
	}
	nd->boundary[2 + BOUNDARY_RAND] = '\0';
	snprintf(delim, sizeof(delim), "--%s", nd->boundary);
	if (Collides(pl, nd, delim, &found) != TCL_OK) {
	    return TCL_ERROR;
	}
    } while (found);
    return TCL_OK;
}

/*
 * ------------------------------------------------------------------------
 * Writing the plan out as segments: literal bytes (headers, delimiters and
 * string content, encoded now) and file content (encoded while sent).
 * ------------------------------------------------------------------------
 */

static void
SegFree(
    Seg *sg)
{
    SmtpBufFree(&sg->lit);
    SmtpBufFree(&sg->alt);
    if (sg->path) {
	Tcl_DecrRefCount(sg->path);
	sg->path = NULL;
    }
    if (sg->value) {
	Tcl_DecrRefCount(sg->value);
	sg->value = NULL;
    }
    if (sg->own) {
	Tcl_DStringFree(sg->own);
	ckfree(sg->own);
	sg->own = NULL;
    }
}

static Seg *
NewSeg(
    Plan *pl,
    int file)
{
    Seg *sg;

    if (pl->nsegs == pl->capSegs) {
	pl->capSegs = pl->capSegs ? 2 * pl->capSegs : 8;
	pl->segs = (Seg *) ckrealloc(pl->segs,
		sizeof(Seg) * (size_t) pl->capSegs);
    }
    sg = &pl->segs[pl->nsegs++];
    memset(sg, 0, sizeof(Seg));
    sg->file = file;
    SmtpBufInit(&sg->lit);
    SmtpBufInit(&sg->alt);
    return sg;
}

/*
 * The literal segment being filled.
 */

static SmtpBuf *
Lit(
    Plan *pl)
{
    if (pl->nsegs == 0 || pl->segs[pl->nsegs - 1].file
	    || pl->segs[pl->nsegs - 1].hasAlt) {
	NewSeg(pl, 0);
    }
    return &pl->segs[pl->nsegs - 1].lit;
}

/*
 * Adds headers or delimiters to the literal segment.
 */

static void
Emit(
    Plan *pl,
    const void *p,
    size_t n)
{
    if (n > 0) {
	SmtpBufAppend(Lit(pl), p, n);
	pl->size += (Tcl_WideInt) n;
	pl->last = ((const unsigned char *) p)[n - 1];
	if (!pl->eightbit) {
	    pl->eightbit = SmtpDataHas8bit((const unsigned char *) p, n);
	}
    }
}

static void
EmitStr(
    Plan *pl,
    const char *s)
{
    Emit(pl, s, strlen(s));
}

/*
 * Appends to a Content-Type line a parameter (smtpHdr.c: a quoted string,
 * or RFC 2231's form for a value beyond ASCII when 'ascii').
 */

static void
AppendParam(
    Tcl_DString *ds,
    Tcl_Obj *key,
    const char *value,
    Tcl_Obj *valueObj,
    int ascii)
{
    Tcl_DString k, v;

    if (valueObj) {
	SmtpHeaderOctets(valueObj, &v);
    } else {
	Tcl_DStringInit(&v);
	Tcl_DStringAppend(&v, value, -1);
    }
    if (key) {
	SmtpHeaderOctets(key, &k);
    } else {
	Tcl_DStringInit(&k);
	Tcl_DStringAppend(&k, "boundary", 8);
    }
    SmtpParamAppend(ds, Tcl_DStringValue(&k), (size_t) Tcl_DStringLength(&k),
	    (const unsigned char *) Tcl_DStringValue(&v),
	    (size_t) Tcl_DStringLength(&v), ascii);
    Tcl_DStringFree(&k);
    Tcl_DStringFree(&v);
}

/*
 * A part's headers as a message without SMTPUTF8 (utf8 0) or with it
 * (utf8 1) carries them, into 'out'.
 */

static void
PartHeaders(
    Node *nd,
    int utf8,
    SmtpBuf *out)
{
    Tcl_DString ct;
    Tcl_Obj **kv;
    Tcl_Size n, i;
    SmtpBuf *head = utf8 ? &nd->head8 : &nd->head;
    const char *label = utf8 ? nd->label8 : nd->label;
    const char *type, *cs;
    size_t csLen, csOff;
    int declared = 0;
    Tcl_DString typeDs;

    SmtpBufAppend(out, head->data, head->len);
    if (label) {
	Tcl_DString cte;

	Tcl_DStringInit(&cte);
	Tcl_DStringAppend(&cte, "Content-Transfer-Encoding: ", -1);
	Tcl_DStringAppend(&cte, label, -1);
	SmtpHeaderLine(out, (unsigned char *) Tcl_DStringValue(&cte),
		(size_t) Tcl_DStringLength(&cte));
	Tcl_DStringFree(&cte);
    }
    Tcl_DStringInit(&ct);
    Tcl_DStringAppend(&ct, "Content-Type: ", -1);
    type = Tcl_DStringValue(&nd->type);
    Tcl_DStringInit(&typeDs);
    if (nd->csAction == SMTP_CS_UTF8
	    && (cs = TypeCharset(type, &csLen, &csOff)) != NULL) {
	/* The text is in UTF-8 (smtpText.c), so the part says so. */
	Tcl_DStringAppend(&typeDs, type, (Tcl_Size) csOff);
	Tcl_DStringAppend(&typeDs, "utf-8", 5);
	Tcl_DStringAppend(&typeDs, cs + csLen, -1);
	type = Tcl_DStringValue(&typeDs);
	declared = 1;
    }
    SmtpParamsAppend(&ct, (const unsigned char *) type, strlen(type), !utf8);
    Tcl_DStringFree(&typeDs);
    Tcl_ListObjGetElements(NULL, nd->params, &n, &kv);
    for (i = 0; i + 1 < n; i += 2) {
	if (nd->multipart && strcmp(Tcl_GetString(kv[i]), "boundary") == 0) {
	    continue;
	}
	if (nd->csAction == SMTP_CS_UTF8
		&& strcmp(Tcl_GetString(kv[i]), "charset") == 0) {
	    AppendParam(&ct, kv[i], "utf-8", NULL, !utf8);
	    declared = 1;
	    continue;
	}
	AppendParam(&ct, kv[i], NULL, kv[i + 1], !utf8);
    }
    if (nd->csAction == SMTP_CS_UTF8 && !declared) {
	Tcl_DStringAppend(&ct, "; charset=\"utf-8\"", -1);
    }
    if (nd->multipart) {
	AppendParam(&ct, NULL, nd->boundary, NULL, !utf8);
    }
    SmtpHeaderLine(out, (unsigned char *) Tcl_DStringValue(&ct),
	    (size_t) Tcl_DStringLength(&ct));
    Tcl_DStringFree(&ct);
}

/*
 * Writes a part's headers: where the two renditions differ, as a literal
 * segment of its own holding both, the one sent chosen at MAIL FROM.
 */

static void
EmitHeaders(
    Plan *pl,
    Node *nd)
{
    SmtpBuf a, u;
    Seg *sg;

    SmtpBufInit(&a);
    SmtpBufInit(&u);
    PartHeaders(nd, 0, &a);
    PartHeaders(nd, 1, &u);
    if (a.len == u.len && memcmp(a.data, u.data, a.len) == 0) {
	Emit(pl, a.data, a.len);
	SmtpBufFree(&a);
	SmtpBufFree(&u);
	return;
    }
    sg = NewSeg(pl, SEG_LIT);
    sg->hasAlt = 1;
    sg->lit = a;
    sg->alt = u;
    pl->size += (Tcl_WideInt) a.len;
    pl->sizeDelta += (Tcl_WideInt) u.len - (Tcl_WideInt) a.len;
    pl->last = '\n';
    pl->eightbit |= SmtpDataHas8bit(a.data, a.len);
    pl->eightbitAlt |= SmtpDataHas8bit(u.data, u.len);
}

/*
 * Encodes a string leaf into the literal segment.
 */

static void EmitStringSeg(Plan *pl, Node *nd);

static void
EmitString(
    Plan *pl,
    Node *nd)
{
    SmtpBuf *b;
    size_t before;

    StringBytes(nd);
    if (nd->len >= STREAM_MIN) {
	EmitStringSeg(pl, nd);
	return;
    }
    b = Lit(pl);
    before = b->len;
    switch (nd->enc) {
    case ENC_QP: {
	QpEnc q;

	QpInit(&q, nd->qpText);
	SmtpBufReserve(b, nd->len + nd->len / 8 + 64);
	QpEncode(&q, nd->bytes, nd->len, b);
	QpFinish(&q, b);
	break;
    }
    case ENC_B64: {
	B64Enc e;

	B64Init(&e);
	SmtpBufReserve(b, (size_t) B64Size((Tcl_WideInt) nd->len) + 8);
	B64Encode(&e, nd->bytes, nd->len, b);
	B64Finish(&e, b);
	break;
    }
    default: {
	IdEnc e = {0};

	SmtpBufReserve(b, (size_t) nd->scan.identSize);
	IdEncode(&e, nd->bytes, nd->len, b);
	IdFinish(&e, b);
	pl->eightbit |= nd->scan.has8bit;
    }
    }
    if (b->len > before) {
	pl->size += (Tcl_WideInt) (b->len - before);
	pl->last = b->data[b->len - 1];
    }
}

/*
 * The length of the quoted-printable encoding of n octets, encoded a
 * block at a time into a small buffer that is used again for each block
 * (the encoding itself is written while the message is sent); *lastPtr
 * gets its last octet, if it has any.
 */

static Tcl_WideInt
QpSize(
    int text,
    const unsigned char *p,
    size_t n,
    unsigned char *lastPtr)
{
    QpEnc q;
    SmtpBuf scratch;
    Tcl_WideInt size = 0;

    SmtpBufInit(&scratch);
    QpInit(&q, text);
    while (n > 0) {
	size_t chunk = n > FILE_BLOCK ? FILE_BLOCK : n;

	scratch.len = scratch.pos = 0;
	QpEncode(&q, p, chunk, &scratch);
	if (scratch.len > 0) {
	    size += (Tcl_WideInt) scratch.len;
	    *lastPtr = scratch.data[scratch.len - 1];
	}
	p += chunk;
	n -= chunk;
    }
    scratch.len = scratch.pos = 0;
    QpFinish(&q, &scratch);
    if (scratch.len > 0) {
	size += (Tcl_WideInt) scratch.len;
	*lastPtr = scratch.data[scratch.len - 1];
    }
    SmtpBufFree(&scratch);
    return size;
}

/*
 * A long string leaf as a segment of its own, encoded a block at a time
 * while the message is sent: the plan then holds the octets (the value's
 * own, or those decoded from it, which the segment takes over) rather than
 * a copy of their encoding, a third larger in base64 and touching fresh
 * memory for every page of it.
 */

static void
EmitStringSeg(
    Plan *pl,
    Node *nd)
{
    Seg *sg = NewSeg(pl, SEG_BYTES);

    if (nd->enc == ENC_QP) {
	/* Counted while the octets are still where nd says. */
	sg->size = QpSize(nd->qpText, nd->bytes, nd->len, &pl->last);
    }
    sg->value = nd->string;
    Tcl_IncrRefCount(sg->value);
    if (nd->decoded) {
	/* Long, so the octets are on the heap: the pointer moves over. */
	sg->own = (Tcl_DString *) ckalloc(sizeof(Tcl_DString));
	*sg->own = nd->scratch;
	Tcl_DStringInit(&nd->scratch);
	nd->decoded = 0;
	nd->bytes = NULL;
    } else {
	sg->inValue = (nd->string->bytes != NULL
		&& nd->bytes == (const unsigned char *) nd->string->bytes);
    }
    sg->count = (Tcl_WideInt) nd->len;
    sg->enc = nd->enc;
    sg->qpText = nd->qpText;
    if (nd->enc == ENC_QP) {
	/* Counted above. */
    } else if (nd->enc == ENC_B64) {
	sg->size = B64Size(sg->count);
	pl->last = '=';
    } else {
	sg->size = nd->scan.identSize;
	pl->eightbit |= nd->scan.has8bit;
	pl->last = (nd->scan.lastByte == '\n' || nd->scan.lastByte == '\r')
		? '\n' : (unsigned char) nd->scan.lastByte;
    }
    pl->size += sg->size;
}

static void
EmitFile(
    Plan *pl,
    Node *nd)
{
    Seg *sg = NewSeg(pl, SEG_FILE);

    sg->path = nd->path;
    Tcl_IncrRefCount(sg->path);
    sg->offset = nd->offset;
    sg->count = nd->count;
    sg->enc = nd->enc;
    sg->qpText = nd->qpText;
    switch (nd->enc) {
    case ENC_QP:
	sg->size = nd->qpSize;
	break;
    case ENC_B64:
	sg->size = B64Size(nd->count);
	break;
    default:
	sg->size = nd->scan.identSize;
	pl->eightbit |= nd->scan.has8bit;
    }
    if (sg->size > 0) {
	pl->size += sg->size;
	if (nd->enc == ENC_B64) {
	    pl->last = '=';
	} else if (nd->enc == ENC_QP) {
	    pl->last = (nd->qpText && nd->scan.lastByte == '\n') ? '\n' : '=';
	} else {
	    pl->last = (nd->scan.lastByte == '\n' || nd->scan.lastByte == '\r')
		    ? '\n' : (unsigned char) nd->scan.lastByte;
	}
    }
}

/*
 * Writes a part as mime does: its headers, an empty line, and its body;
 * a multipart's parts each after "CRLF--boundary CRLF" (the first CRLF
 * being the empty line), closed by "CRLF--boundary-- CRLF".
 */

static void
EmitNode(
    Plan *pl,
    Node *nd)
{
    int i;

    EmitHeaders(pl, nd);
    if (nd->multipart) {
	for (i = 0; i < nd->nkids; i++) {
	    EmitStr(pl, "\r\n--");
	    EmitStr(pl, nd->boundary);
	    EmitStr(pl, "\r\n");
	    EmitNode(pl, nd->kids[i]);
	}
	EmitStr(pl, "\r\n--");
	EmitStr(pl, nd->boundary);
	EmitStr(pl, "--\r\n");
	return;
    }
    EmitStr(pl, "\r\n");
    if (nd->message) {
	EmitNode(pl, nd->kids[0]);
    } else if (nd->src == SRC_STRING) {
	EmitString(pl, nd);
    } else {
	EmitFile(pl, nd);
    }
}

/*
 * How much of a leaf DecideLeaf needs to see (see there).
 */

static int
ScanNeed(
    Node *nd)
{
    const char *type = Tcl_DStringValue(&nd->type), *decl = nd->encoding;
    const char *cs;

    if (!nd->canonical && (!strcmp(decl, "quoted-printable")
	    || !strcmp(decl, "base64"))) {
	return SCAN_ALL;
    }
    if (!strcmp(decl, "base64")) {
	return SCAN_NONE;
    }
    if (decl[0]) {
	return SCAN_ALL;
    }
    if (HasPrefix(type, "audio/") || HasPrefix(type, "image/")
	    || HasPrefix(type, "video/")) {
	return SCAN_NONE;
    }
    if (HasPrefix(type, "multipart/") || HasPrefix(type, "message/")) {
	return SCAN_ALL;
    }
    if (nd->text) {
	cs = Charset(nd);
	return (cs && !LatinCharset(cs)) ? SCAN_TO_NOTASCII : SCAN_ALL;
    }
    return SCAN_TO_EITHER;
}

/*
 * Reads every leaf once, as far as needed.
 */

static int
ScanAll(
    Plan *pl,
    Node *nd)
{
    int i;

    nd->scan.until = ScanNeed(nd);
    if (nd->src == SRC_STRING) {
	StringBytes(nd);
	if (nd->scan.until != SCAN_NONE) {
	    ScanBytes(&nd->scan, nd->bytes, nd->len);
	    ScanFinish(&nd->scan);
	}
    } else if (nd->src == SRC_FILE && ScanFile(pl, nd) != TCL_OK) {
	return TCL_ERROR;
    }
    for (i = 0; i < nd->nkids; i++) {
	if (ScanAll(pl, nd->kids[i]) != TCL_OK) {
	    return TCL_ERROR;
	}
    }
    return TCL_OK;
}

static void
PlanFree(
    Plan *pl)
{
    int i;

    for (i = 0; i < pl->nsegs; i++) {
	SegFree(&pl->segs[i]);
    }
    if (pl->segs) {
	ckfree(pl->segs);
    }
    pl->segs = NULL;
    pl->nsegs = pl->capSegs = 0;
    if (pl->why) {
	Tcl_DecrRefCount(pl->why);
	pl->why = NULL;
    }
}

/*
 * ------------------------------------------------------------------------
 * The source: segments written in turn, file content read and encoded a
 * block at a time.
 * ------------------------------------------------------------------------
 */

typedef struct Writer {
    Seg *segs;
    int nsegs;
    int cur;			/* Segment being written. */
    size_t litPos;		/* Bytes of a literal segment written. */
    Tcl_Channel chan;		/* File segment: open file, */
    Tcl_WideInt inDone;		/* octets read, */
    Tcl_WideInt outDone;	/* octets written. */
    QpEnc qp;
    B64Enc b64;
    IdEnc id;
    unsigned char *block;
    int started;		/* String segment: begun. */
    int utf8;			/* Headers as with SMTPUTF8. */
} Writer;

static void
WriterClose(
    void *cd)
{
    Writer *w = (Writer *) cd;
    int i;

    if (w->chan) {
	Tcl_Close(NULL, w->chan);
    }
    for (i = 0; i < w->nsegs; i++) {
	SegFree(&w->segs[i]);
    }
    if (w->segs) {
	ckfree(w->segs);
    }
    if (w->block) {
	ckfree(w->block);
    }
    ckfree(w);
}

static int
FileError(
    Writer *w,
    Seg *sg,
    const char *what,
    Tcl_Obj **errPtr)
{
    *errPtr = Tcl_ObjPrintf("error reading \"%s\": %s",
	    Tcl_GetString(sg->path), what);
    if (w->chan) {
	Tcl_Close(NULL, w->chan);
	w->chan = NULL;
    }
    return -1;
}

/*
 * Writes about 'want' more octets of a file segment to 'out'. Returns 1
 * when the segment is done, 0 when more follows, -1 on error.
 */

static int
WriteFileSeg(
    Writer *w,
    Seg *sg,
    SmtpBuf *out,
    size_t want,
    Tcl_Obj **errPtr)
{
    size_t start = out->len;

    if (w->chan == NULL) {
	w->chan = OpenAt(NULL, sg->path, sg->offset);
	if (w->chan == NULL) {
	    return FileError(w, sg, Tcl_ErrnoMsg(Tcl_GetErrno()), errPtr);
	}
	w->inDone = w->outDone = 0;
	QpInit(&w->qp, sg->qpText);
	B64Init(&w->b64);
	w->id.cr = 0;
	if (w->block == NULL) {
	    w->block = (unsigned char *) ckalloc(FILE_BLOCK);
	}
    }
    while (w->inDone < sg->count && out->len - start < want) {
	Tcl_WideInt left = sg->count - w->inDone;
	int n = left < FILE_BLOCK ? (int) left : FILE_BLOCK, got;

	got = (int) Tcl_Read(w->chan, (char *) w->block, n);
	if (got < 0) {
	    return FileError(w, sg, Tcl_ErrnoMsg(Tcl_GetErrno()), errPtr);
	}
	if (got == 0) {
	    return FileError(w, sg, "the file was shortened while the"
		    " message was sent", errPtr);
	}
	w->inDone += got;
	switch (sg->enc) {
	case ENC_QP:
	    QpEncode(&w->qp, w->block, (size_t) got, out);
	    break;
	case ENC_B64:
	    B64Encode(&w->b64, w->block, (size_t) got, out);
	    break;
	default:
	    IdEncode(&w->id, w->block, (size_t) got, out);
	}
    }
    if (w->inDone == sg->count) {
	switch (sg->enc) {
	case ENC_QP:
	    QpFinish(&w->qp, out);
	    break;
	case ENC_B64:
	    B64Finish(&w->b64, out);
	    break;
	default:
	    IdFinish(&w->id, out);
	}
    }
    w->outDone += (Tcl_WideInt) (out->len - start);
    if (w->outDone > sg->size
	    || (w->inDone == sg->count && w->outDone != sg->size)) {
	return FileError(w, sg, "the file changed while the message was"
		" sent", errPtr);
    }
    if (w->inDone < sg->count) {
	return 0;
    }
    Tcl_Close(NULL, w->chan);
    w->chan = NULL;
    return 1;
}

/*
 * Writes about 'want' more octets of a string leaf's segment to 'out'.
 * The octets are taken again for each call: a byte array's may move when
 * Tcl code (a -progress command, other events) uses the value meanwhile.
 * Returns 1 when the segment is done, 0 when more follows, -1 on error.
 */

static int
WriteBytesSeg(
    Writer *w,
    Seg *sg,
    SmtpBuf *out,
    size_t want,
    Tcl_Obj **errPtr)
{
    size_t start = out->len;
    const unsigned char *p;
    Tcl_Size len;

    if (!w->started) {
	w->started = 1;
	w->inDone = w->outDone = 0;
	QpInit(&w->qp, sg->qpText);
	B64Init(&w->b64);
	w->id.cr = 0;
    }
    if (sg->own) {
	p = (const unsigned char *) Tcl_DStringValue(sg->own);
	len = Tcl_DStringLength(sg->own);
    } else if (sg->inValue) {
	p = (const unsigned char *) Tcl_GetStringFromObj(sg->value, &len);
    } else {
	p = Tcl_GetByteArrayFromObj(sg->value, &len);
    }
    if ((Tcl_WideInt) len != sg->count) {
	*errPtr = Tcl_NewStringObj("a part's content changed while the"
		" message was sent", -1);
	return -1;
    }
    while (w->inDone < sg->count && out->len - start < want) {
	Tcl_WideInt left = sg->count - w->inDone;
	size_t n = left < FILE_BLOCK ? (size_t) left : FILE_BLOCK;

	if (sg->enc == ENC_QP) {
	    QpEncode(&w->qp, p + w->inDone, n, out);
	} else if (sg->enc == ENC_B64) {
	    B64Encode(&w->b64, p + w->inDone, n, out);
	} else {
	    IdEncode(&w->id, p + w->inDone, n, out);
	}
	w->inDone += (Tcl_WideInt) n;
    }
    if (w->inDone == sg->count) {
	if (sg->enc == ENC_QP) {
	    QpFinish(&w->qp, out);
	} else if (sg->enc == ENC_B64) {
	    B64Finish(&w->b64, out);
	} else {
	    IdFinish(&w->id, out);
	}
    }
    w->outDone += (Tcl_WideInt) (out->len - start);
    if (w->inDone < sg->count) {
	return 0;
    }
    w->started = 0;
    if (w->outDone != sg->size) {
	*errPtr = Tcl_NewStringObj("a part's content changed while the"
		" message was sent", -1);
	return -1;
    }
    SegFree(sg);
    return 1;
}

static int
WriterRead(
    void *cd,
    SmtpBuf *out,
    size_t want,
    Tcl_Obj **errPtr)
{
    Writer *w = (Writer *) cd;
    size_t start = out->len;

    while (w->cur < w->nsegs && out->len - start < want) {
	Seg *sg = &w->segs[w->cur];

	if (!sg->file) {
	    SmtpBuf *lit = (sg->hasAlt && w->utf8) ? &sg->alt : &sg->lit;
	    size_t n = lit->len - w->litPos, room = want - (out->len - start);

	    if (n > room) {
		n = room;
	    }
	    SmtpBufAppend(out, SmtpBufPtr(lit) + w->litPos, n);
	    w->litPos += n;
	    if (w->litPos == lit->len) {
		SmtpBufFree(&sg->lit);
		SmtpBufFree(&sg->alt);
		w->litPos = 0;
		w->cur++;
	    }
	} else {
	    int st = (sg->file == SEG_BYTES)
		    ? WriteBytesSeg(w, sg, out, want - (out->len - start),
			    errPtr)
		    : WriteFileSeg(w, sg, out, want - (out->len - start),
			    errPtr);

	    if (st < 0) {
		return -1;
	    }
	    if (st == 1) {
		w->cur++;
	    }
	}
    }
    return w->cur == w->nsegs;
}

/*
 * Chooses the headers' rendition, before the first read: as with
 * SMTPUTF8 (on) or without.
 */

static void
WriterUtf8(
    void *cd,
    int on)
{
    ((Writer *) cd)->utf8 = on;
}

/*
 * ------------------------------------------------------------------------
 * Entry points.
 * ------------------------------------------------------------------------
 */

/*
 * Makes m's body the source of the message that mime token 'token' stands
 * for, m's size its size as DATA carries it (RFC 1870), and m's eightbit
 * whether it holds an octet over 127. Returns TCL_OK; TCL_ERROR with the
 * error in the interpreter; or TCL_CONTINUE with *whyPtr (a new object)
 * when the token is not in the layout known here.
 */

int
SmtpMimeWriter(
    Tcl_Interp *interp,
    Tcl_Obj *token,
    SmtpMessage *m,
    Tcl_Obj **whyPtr)
{
    Plan pl;
    Node *root = NULL;
    Writer *w;
    int code;

    memset(&pl, 0, sizeof(pl));
    pl.interp = interp;
    *whyPtr = NULL;
    code = Walk(&pl, token, 0, &root);
    if (code == TCL_OK) {
	code = ScanAll(&pl, root);
    }
    if (code == TCL_OK) {
	Decide(root, 0);
	Decide(root, 1);
	code = Boundaries(&pl, root);
    }
    if (code == TCL_OK) {
	EmitNode(&pl, root);
	if (pl.size > 0 && pl.last != '\n') {
	    Emit(&pl, "\r\n", 2);
	}
    }
    NodeFree(root);
    if (code != TCL_OK) {
	if (code == TCL_CONTINUE) {
	    *whyPtr = pl.why;
	    pl.why = NULL;
	}
	PlanFree(&pl);
	return code;
    }
    w = (Writer *) ckalloc(sizeof(Writer));
    memset(w, 0, sizeof(Writer));
    w->segs = pl.segs;
    w->nsegs = pl.nsegs;
    pl.segs = NULL;
    pl.nsegs = 0;
    PlanFree(&pl);
    m->body.read = WriterRead;
    m->body.close = WriterClose;
    m->body.cd = w;
    m->body.clean = 1;
    m->body.utf8 = WriterUtf8;
    m->size = pl.size;
    m->eightbit = pl.eightbit;
    m->size8 = pl.size + pl.sizeDelta;
    m->eightbit8 = pl.eightbit || pl.eightbitAlt;
    return TCL_OK;
}

/*
 * The message a token stands for, as m's body, size and eightbit: from
 * the writer above, or from mime::buildmessage when the token's shape is
 * unknown here (said on stderr under -debug). Returns TCL_OK or
 * TCL_ERROR.
 */

int
SmtpMimeMessage(
    Tcl_Interp *interp,
    Tcl_Obj *token,
    int debug,
    SmtpMessage *m)
{
    Tcl_Obj *why = NULL, *cmd[2], *bytes;
    int code = SmtpMimeWriter(interp, token, m, &why);
    Tcl_Size len;
    Tcl_DString scratch;
    const unsigned char *p;

    if (code != TCL_CONTINUE) {
	return code;
    }
    if (debug) {
	Tcl_Channel err = Tcl_GetStdChannel(TCL_STDERR);

	if (err) {
	    Tcl_Obj *line = Tcl_ObjPrintf("    ... mime token of unknown"
		    " shape (%s): written by mime::buildmessage ...",
		    Tcl_GetString(why));

	    Tcl_IncrRefCount(line);
	    Tcl_WriteObj(err, line);
	    Tcl_WriteChars(err, "\n", 1);
	    Tcl_Flush(err);
	    Tcl_DecrRefCount(line);
	}
    }
    Tcl_DecrRefCount(why);
    cmd[0] = Tcl_NewStringObj("::mime::buildmessage", -1);
    cmd[1] = token;
    Tcl_IncrRefCount(cmd[0]);
    Tcl_IncrRefCount(cmd[1]);
    code = Tcl_EvalObjv(interp, 2, cmd, TCL_EVAL_GLOBAL);
    Tcl_DecrRefCount(cmd[0]);
    Tcl_DecrRefCount(cmd[1]);
    if (code != TCL_OK) {
	return code;
    }
    bytes = Tcl_GetObjResult(interp);
    Tcl_IncrRefCount(bytes);
    Tcl_ResetResult(interp);
    p = SmtpGetBytes(bytes, &len, &scratch);
    m->size = m->size8 = SmtpDataSize(p, (size_t) len);
    m->eightbit = m->eightbit8 = SmtpDataHas8bit(p, (size_t) len);
    Tcl_DStringFree(&scratch);
    SmtpSourceFromObj(&m->body, bytes);
    Tcl_DecrRefCount(bytes);
    return TCL_OK;
}
