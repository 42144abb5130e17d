/*
 * fuzz_codec.c --
 *
 *	Round trips through the encoders:
 *	- SASL's strict base64 (smtpSasl.c): decode(encode(x)) == x, and
 *	  encode(decode(x)) == x whenever x decodes (canonical base64 only);
 *	- the writer's base64 (smtpMime.c, with its SSSE3 path where the CPU
 *	  has it): the same digits as above in CRLF-separated lines of 76,
 *	  and the size B64Size predicts;
 *	- the writer's quoted-printable, text and binary mode: decoded back
 *	  (by the small decoder below) to the input, line breaks of text
 *	  normalised; lines of at most 76 characters, only safe characters
 *	  literal, no space or tab before a line end, no line starting with
 *	  '.' or 'F';
 *	- the identity form (every line end made CRLF) and the content scan
 *	  that predicts its size, longest line and kinds of octets.
 *	The writer's encoders are fed the input in pieces of a size chosen
 *	by the first input byte. They are static, hence the #include.
 */

#include "fuzz.h"
#include "smtpMime.c"

static void
Feed(
    int which,			/* 0 base64, 1 QP text, 2 QP binary, 3 id. */
    const unsigned char *p,
    size_t n,
    size_t piece,
    SmtpBuf *out)
{
    B64Enc b;
    QpEnc q;
    IdEnc e;
    size_t i;

    B64Init(&b);
    QpInit(&q, which == 1);
    e.cr = 0;
    for (i = 0; i < n || (n == 0 && i == 0); i += piece) {
	size_t k = (n - i < piece) ? n - i : piece;

	switch (which) {
	case 0: B64Encode(&b, p + i, k, out); break;
	case 1: case 2: QpEncode(&q, p + i, k, out); break;
	default: IdEncode(&e, p + i, k, out); break;
	}
	if (n == 0) {
	    break;
	}
    }
    switch (which) {
    case 0: B64Finish(&b, out); break;
    case 1: case 2: QpFinish(&q, out); break;
    default: IdFinish(&e, out); break;
    }
}

static void
Base64(
    const unsigned char *p,
    size_t n,
    size_t piece)
{
    SmtpBuf enc, dec, mime, joined;
    size_t i, col;

    SmtpBufInit(&enc);
    SmtpBufInit(&dec);
    SmtpBufInit(&mime);
    SmtpBufInit(&joined);

    SmtpBase64Encode(p, n, &enc);
    FUZZ_CHECK(SmtpBufAvail(&enc) == (n + 2) / 3 * 4, "base64 length");
    FUZZ_CHECK(SmtpBase64Decode((const char *) SmtpBufPtr(&enc),
	    SmtpBufAvail(&enc), &dec) == 0, "own base64 refused");
    FUZZ_CHECK(SmtpBufAvail(&dec) == n
	    && memcmp(SmtpBufPtr(&dec), p, n) == 0, "base64 round trip");

    SmtpBufFree(&dec);
    SmtpBufInit(&dec);
    if (SmtpBase64Decode((const char *) p, n, &dec) == 0) {
	SmtpBuf again;

	SmtpBufInit(&again);
	SmtpBase64Encode(SmtpBufPtr(&dec), SmtpBufAvail(&dec), &again);
	FUZZ_CHECK(SmtpBufAvail(&again) == n
		&& memcmp(SmtpBufPtr(&again), p, n) == 0,
		"base64 accepted in a non-canonical form");
	SmtpBufFree(&again);
    } else {
	FUZZ_CHECK(SmtpBufAvail(&dec) == 0, "refused base64 left output");
    }

    Feed(0, p, n, piece, &mime);
    FUZZ_CHECK((Tcl_WideInt) SmtpBufAvail(&mime) == B64Size((Tcl_WideInt) n),
	    "B64Size");
    col = 0;
    for (i = 0; i < SmtpBufAvail(&mime); i++) {
	unsigned char c = SmtpBufPtr(&mime)[i];

	if (c == '\r') {
	    FUZZ_CHECK(col == B64_LINE && i + 2 < SmtpBufAvail(&mime)
		    && SmtpBufPtr(&mime)[i + 1] == '\n',
		    "base64 line break misplaced");
	    i++;
	    col = 0;
	    continue;
	}
	FUZZ_CHECK(col < B64_LINE, "base64 line too long");
	col++;
	SmtpBufAppend(&joined, &c, 1);
    }
    FUZZ_CHECK(SmtpBufAvail(&joined) == SmtpBufAvail(&enc)
	    && memcmp(SmtpBufPtr(&joined), SmtpBufPtr(&enc),
		    SmtpBufAvail(&enc)) == 0, "writer's base64 differs");

    SmtpBufFree(&enc);
    SmtpBufFree(&dec);
    SmtpBufFree(&mime);
    SmtpBufFree(&joined);
}

static int
HexVal(
    int c)
{
    if (c >= '0' && c <= '9') {
	return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
	return c - 'A' + 10;
    }
    return -1;
}

static void
QuotedPrintable(
    const unsigned char *p,
    size_t n,
    size_t piece,
    int text)
{
    SmtpBuf out, dec, want;
    const unsigned char *o;
    size_t i, len, col = 0;

    SmtpBufInit(&out);
    SmtpBufInit(&dec);
    SmtpBufInit(&want);
    Feed(text ? 1 : 2, p, n, piece, &out);
    o = SmtpBufPtr(&out);
    len = SmtpBufAvail(&out);

    for (i = 0; i < len; i++) {
	unsigned char c = o[i];

	if (c == '\r') {
	    FUZZ_CHECK(i + 1 < len && o[i + 1] == '\n', "bare CR in QP");
	    FUZZ_CHECK(text, "hard line break in binary QP");
	    FUZZ_CHECK(i == 0 || (o[i - 1] != ' ' && o[i - 1] != '\t'),
		    "white space before a QP line end");
	    SmtpBufAppend(&dec, "\n", 1);
	    i++;
	    col = 0;
	    continue;
	}
	FUZZ_CHECK(c != '\n', "bare LF in QP");
	if (col == 0) {
	    FUZZ_CHECK(c != '.' && c != 'F', "QP line starts with . or F");
	}
	if (c == '=') {
	    if (i + 2 < len && o[i + 1] == '\r' && o[i + 2] == '\n') {
		FUZZ_CHECK(col + 1 <= 76, "QP line too long");
		FUZZ_CHECK(i + 3 < len, "soft break at the end");
		i += 2;
		col = 0;
		continue;
	    }
	    FUZZ_CHECK(i + 2 < len, "QP escape cut short");
	    FUZZ_CHECK(HexVal(o[i + 1]) >= 0 && HexVal(o[i + 2]) >= 0,
		    "QP escape not upper-case hex");
	    c = (unsigned char) (HexVal(o[i + 1]) * 16 + HexVal(o[i + 2]));
	    SmtpBufAppend(&dec, &c, 1);
	    i += 2;
	    col += 3;
	} else {
	    FUZZ_CHECK(qpClass[c] == QL || qpClass[c] == QW,
		    "unsafe character literal in QP");
	    SmtpBufAppend(&dec, &c, 1);
	    col++;
	}
	FUZZ_CHECK(col <= 76, "QP line too long");
    }
    FUZZ_CHECK(len == 0 || (o[len - 1] != ' ' && o[len - 1] != '\t'),
	    "white space at the end of QP");

    /* What should come back: text mode turns CRLF and LF into LF. */
    for (i = 0; i < n; i++) {
	if (text && p[i] == '\r' && i + 1 < n && p[i + 1] == '\n') {
	    continue;
	}
	SmtpBufAppend(&want, p + i, 1);
    }
    FUZZ_CHECK(SmtpBufAvail(&dec) == SmtpBufAvail(&want)
	    && memcmp(SmtpBufPtr(&dec), SmtpBufPtr(&want),
		    SmtpBufAvail(&want)) == 0, "QP round trip");
    SmtpBufFree(&out);
    SmtpBufFree(&dec);
    SmtpBufFree(&want);
}

static void
Identity(
    const unsigned char *p,
    size_t n,
    size_t piece)
{
    SmtpBuf out;
    Scan s;
    const unsigned char *o;
    size_t i, len, line = 0, longest = 0;
    int has8 = 0, nul = 0;

    SmtpBufInit(&out);
    Feed(3, p, n, piece, &out);
    o = SmtpBufPtr(&out);
    len = SmtpBufAvail(&out);
    for (i = 0; i < len; i++) {
	if (o[i] == '\r') {
	    FUZZ_CHECK(i + 1 < len && o[i + 1] == '\n', "bare CR");
	    i++;
	    if (line > longest) {
		longest = line;
	    }
	    line = 0;
	    continue;
	}
	FUZZ_CHECK(o[i] != '\n', "bare LF");
	has8 |= o[i] >= 0x80;
	nul |= o[i] == 0;
	line++;
    }
    if (line > longest) {
	longest = line;
    }

    ScanInit(&s);
    s.until = SCAN_ALL;
    for (i = 0; i < n; i += piece) {
	ScanBytes(&s, p + i, (n - i < piece) ? n - i : piece);
    }
    ScanFinish(&s);
    FUZZ_CHECK(s.len == (Tcl_WideInt) n, "scan: length");
    FUZZ_CHECK(s.identSize == (Tcl_WideInt) len, "scan: identity size");
    FUZZ_CHECK(s.maxLine == (Tcl_WideInt) longest, "scan: longest line");
    FUZZ_CHECK(s.has8bit == has8 && s.hasNul == nul, "scan: octet kinds");
    ScanFree(&s);
    SmtpBufFree(&out);
}

int
LLVMFuzzerTestOneInput(
    const uint8_t *data,
    size_t size)
{
    FuzzIn in = {data, size};
    size_t piece = FuzzByte(&in);

    FuzzTclInit();
    if (in.p == NULL) {
	in.p = (const uint8_t *) "";
    }
    if (piece == 0) {
	piece = in.n ? in.n : 1;
    }
    Base64(in.p, in.n, piece);
    QuotedPrintable(in.p, in.n, piece, 1);
    QuotedPrintable(in.p, in.n, piece, 0);
    Identity(in.p, in.n, piece);
    return 0;
}
