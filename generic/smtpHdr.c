/*
 * smtpHdr.c --
 *
 *	Header fields as the message carries them. A field is written in two
 *	renditions: one for a message sent with SMTPUTF8 (RFC 6532: UTF-8
 *	goes as it is) and one for a message sent without it, where text
 *	beyond ASCII takes the forms made for that: RFC 2047 encoded words in
 *	unstructured fields and in the display names and comments of address
 *	fields, IDNA2008 A-labels for the domains of addresses, RFC 2231 for
 *	parameter values. A value that is ASCII already goes as it is in
 *	both. Which rendition is sent is decided at MAIL FROM, when the
 *	server's extensions are known (smtpProto.c).
 *
 *	The octets of a value: a Tcl string whose characters are all at most
 *	U+00FF and whose low 8 bits form valid UTF-8 holding an octet over
 *	127 is taken as those octets (the script converted it with
 *	[encoding convertto utf-8]); any other string is text, written in
 *	UTF-8.
 */

#include "smtpInt.h"
#ifdef HAVE_LIBIDN2
#include <idn2.h>
#endif

#define FOLD_AT		78	/* Lines longer than this are folded
				 * (RFC 5322 2.1.1). */
#define LINE_MAX_OCTETS	998	/* Longest line SMTP carries. */
#define EW_MAX		75	/* Longest encoded word (RFC 2047 2). */
#define EW_OVERHEAD	12	/* "=?UTF-8?Q?" and "?=". */
#define EW_MIN		16	/* Room kept for a first encoded word that
				 * must follow text without a fold. */

static const char hexDigits[] = "0123456789ABCDEF";

static int
IsWsp(
    int c)
{
    return c == ' ' || c == '\t';
}

/*
 * Whether c is one of the characters of set (never NUL).
 */

static int
OneOf(
    int c,
    const char *set)
{
    return c != 0 && strchr(set, c) != NULL;
}

/*
 * ------------------------------------------------------------------------
 * Folding (RFC 5322 2.2.3).
 * ------------------------------------------------------------------------
 */

/*
 * Writes the physical lines p[start..end) of a header field, CRLF after
 * each: folded before white space when longer than FOLD_AT (on the
 * field's first line not before the value's start, 'value', so that line
 * keeps some of it), and when a line has no white space to fold at within
 * LINE_MAX_OCTETS, broken there with an added space: the only change
 * RFC 5322 leaves when nothing else fits.
 */

static void
FoldLines(
    SmtpBuf *out,
    const unsigned char *p,
    size_t start,
    size_t end,
    size_t value)
{
    size_t pos = start, last = end;
    int lead = 0;		/* An inserted space starts this line. */

    while (last > start && IsWsp(p[last - 1])) {
	last--;
    }
    while (lead + end - pos > FOLD_AT) {
	size_t first = pos, lim = pos + FOLD_AT - lead, b = 0, j;

	while (first < end && IsWsp(p[first])) {
	    first++;
	}
	if (first < value) {
	    first = value;
	}
	for (j = lim; j > first; j--) {
	    if (IsWsp(p[j]) && j < last) {
		b = j;
		break;
	    }
	}
	for (j = lim + 1; b == 0 && j < last
		&& j - pos + lead <= LINE_MAX_OCTETS; j++) {
	    if (j > first && IsWsp(p[j])) {
		b = j;
	    }
	}
	if (b == 0) {
	    if (lead + end - pos <= LINE_MAX_OCTETS) {
		break;
	    }
	    b = pos + LINE_MAX_OCTETS - lead;
	    SmtpBufAppend(out, p + pos, b - pos);
	    SmtpBufAppend(out, "\r\n ", 3);
	    lead = 1;
	    pos = b;
	    continue;
	}
	SmtpBufAppend(out, p + pos, b - pos);
	SmtpBufAppend(out, "\r\n", 2);
	lead = 0;
	pos = b;
    }
    SmtpBufAppend(out, p + pos, end - pos);
    SmtpBufAppend(out, "\r\n", 2);
}

/*
 * Writes one header field, given as its logical line, to 'out'. A line
 * break inside that is followed by white space is kept as the caller's
 * folding; one followed by anything else becomes folding too, with a space
 * put in (mime would write a broken field); one that would leave a line of
 * white space only, or ends the value, is dropped. A NUL, which SMTP
 * cannot carry, becomes a space (values are encoded before they get here
 * where a NUL can be). Then FoldLines.
 */

void
SmtpHeaderLine(
    SmtpBuf *out,
    const unsigned char *in,
    size_t inLen)
{
    unsigned char *p = (unsigned char *) ckalloc(inLen + 1);
    size_t *breaks = (size_t *) ckalloc(sizeof(size_t) * (inLen + 1));
    size_t n = 0, nb = 0, i, value, start, k;

    for (i = 0; i < inLen; i++) {
	size_t j;

	if (in[i] != '\r' && in[i] != '\n') {
	    p[n++] = in[i] ? in[i] : ' ';
	    continue;
	}
	if (in[i] == '\r' && i + 1 < inLen && in[i + 1] == '\n') {
	    i++;
	}
	for (j = i + 1; j < inLen && IsWsp(in[j]); j++) {
	}
	if (j == inLen || in[j] == '\r' || in[j] == '\n') {
	    continue;
	}
	if (j == i + 1) {
	    p[n++] = ' ';
	    breaks[nb++] = n - 1;
	} else if (n > 0) {
	    breaks[nb++] = n;
	}
    }
    value = 0;
    while (value < n && p[value] != ':') {
	value++;
    }
    while (value + 1 < n && IsWsp(p[value + 1])) {
	value++;
    }
    value++;
    start = 0;
    for (k = 0; k <= nb; k++) {
	size_t end = k < nb ? breaks[k] : n;

	FoldLines(out, p, start, end, k == 0 ? value : start);
	start = end;
    }
    ckfree(breaks);
    ckfree(p);
}

/*
 * ------------------------------------------------------------------------
 * The octets of a value.
 * ------------------------------------------------------------------------
 */

/*
 * Length of the valid UTF-8 sequence at p (RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF), or 0.
 */

static size_t
Utf8Seq(
    const unsigned char *p,
    size_t n)
{
    unsigned c = p[0];
    size_t len, i;

    if (c < 0x80) {
	return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
	len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
	len = 3;
    } else if (c >= 0xF0 && c <= 0xF4) {
	len = 4;
    } else {
	return 0;
    }
    if (n < len) {
	return 0;
    }
    for (i = 1; i < len; i++) {
	if ((p[i] & 0xC0) != 0x80) {
	    return 0;
	}
    }
    if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0)
	    || (c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90)) {
	return 0;
    }
    return len;
}

/*
 * Length of the character at p in octets known to be UTF-8 (1 for an
 * octet that starts none, so that nothing is ever lost).
 */

static size_t
CharLen(
    const unsigned char *p,
    size_t n)
{
    size_t len = Utf8Seq(p, n);

    return len ? len : 1;
}

/*
 * Puts the octets of a value into ds (initialised here): see the top of
 * this file. Returns 1 when one of them is over 127, else 0.
 */

int
SmtpHeaderOctets(
    Tcl_Obj *obj,
    Tcl_DString *ds)
{
    Tcl_Size len;
    const unsigned char *s = (const unsigned char *)
	    Tcl_GetStringFromObj(obj, &len);
    size_t n = (size_t) len, i, o;
    int high = 0, wide = 0, valid = 1;
    unsigned char *d;

    Tcl_DStringInit(ds);
    for (i = 0; i < n && !wide; i++) {
	if (s[i] >= 0x80) {
	    high = 1;
	    wide = !((s[i] == 0xC0 || s[i] == 0xC2 || s[i] == 0xC3)
		    && i + 1 < n && (s[i + 1] & 0xC0) == 0x80);
	    i++;
	}
    }
    if (!high) {
	Tcl_DStringAppend(ds, (const char *) s, len);
	return 0;
    }
    if (!wide) {
	/* Every character is at most U+00FF: its low 8 bits. */
	Tcl_DStringSetLength(ds, len);
	d = (unsigned char *) Tcl_DStringValue(ds);
	for (i = o = 0; i < n; o++) {
	    if (s[i] < 0x80) {
		d[o] = s[i++];
	    } else {
		d[o] = (unsigned char) (((s[i] & 0x03) << 6)
			| (s[i + 1] & 0x3F));
		i += 2;
	    }
	}
	Tcl_DStringSetLength(ds, (Tcl_Size) o);
	high = 0;
	for (i = 0; i < o && valid; ) {
	    size_t k = Utf8Seq(d + i, o - i);

	    if (k == 0) {
		valid = 0;
	    } else {
		high |= k > 1;
		i += k;
	    }
	}
	if (valid) {
	    return high;
	}
	Tcl_DStringFree(ds);
    }
    {
	Tcl_Encoding utf8 = Tcl_GetEncoding(NULL, "utf-8");

	Tcl_UtfToExternalDString(utf8, (const char *) s, len, ds);
	if (utf8) {
	    Tcl_FreeEncoding(utf8);
	}
    }
    return 1;
}

/*
 * ------------------------------------------------------------------------
 * Encoded words (RFC 2047), charset UTF-8, B or Q, laid out in lines.
 * ------------------------------------------------------------------------
 */

/*
 * Q's literal characters: those allowed in a phrase (RFC 2047 5(3)),
 * which serve in comments and unstructured text as well.
 */

static int
QLiteral(
    int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
	    || (c >= '0' && c <= '9') || c == '!' || c == '*' || c == '+'
	    || c == '-' || c == '/';
}

static size_t
QLen(
    const unsigned char *p,
    size_t n)
{
    size_t i, len = 0;

    for (i = 0; i < n; i++) {
	len += (QLiteral(p[i]) || p[i] == ' ') ? 1 : 3;
    }
    return len;
}

static size_t
BLen(
    size_t n)
{
    return (n + 2) / 3 * 4;
}

static void
AppendWord(
    SmtpBuf *out,
    const unsigned char *p,
    size_t n,
    int q)
{
    size_t i;

    SmtpBufAppendStr(out, q ? "=?UTF-8?Q?" : "=?UTF-8?B?");
    if (q) {
	for (i = 0; i < n; i++) {
	    char e[3];

	    if (QLiteral(p[i])) {
		SmtpBufAppend(out, p + i, 1);
	    } else if (p[i] == ' ') {
		SmtpBufAppend(out, "_", 1);
	    } else {
		e[0] = '=';
		e[1] = hexDigits[p[i] >> 4];
		e[2] = hexDigits[p[i] & 0xF];
		SmtpBufAppend(out, e, 3);
	    }
	}
    } else {
	SmtpBase64Encode(p, n, out);
    }
    SmtpBufAppend(out, "?=", 2);
}

/*
 * How many octets of p (whole characters) go into one encoded word of at
 * most 'lim' characters; when they would be all of them, the word and
 * 'tail' (text that must follow it on its line) must fit in 'room'.
 */

static size_t
WordFit(
    const unsigned char *p,
    size_t n,
    int q,
    size_t lim,
    size_t room,
    size_t tail)
{
    size_t used = 0, best = 0, qlen = 0;

    if (lim > EW_MAX) {
	lim = EW_MAX;
    }
    while (used < n) {
	size_t k = CharLen(p + used, n - used), len;

	if (q) {
	    qlen += QLen(p + used, k);
	    len = EW_OVERHEAD + qlen;
	} else {
	    len = EW_OVERHEAD + BLen(used + k);
	}
	if (len > lim) {
	    break;
	}
	used += k;
	if (used < n || len + tail <= room) {
	    best = used;
	}
    }
    return best;
}

/*
 * A piece of a field's value: text that goes as it is, or octets written
 * as encoded words. 'ws' is the white space before it (empty: the piece
 * is glued to the one before, with no fold possible between them).
 */

typedef struct Piece {
    size_t wsOff, wsLen;
    size_t off, len;
    int enc;
} Piece;

typedef struct Pieces {
    SmtpBuf text;		/* White space and texts of the pieces. */
    Piece *p;
    size_t n, cap;
} Pieces;

static void
PiecesInit(
    Pieces *ps)
{
    SmtpBufInit(&ps->text);
    ps->p = NULL;
    ps->n = ps->cap = 0;
}

static void
PiecesFree(
    Pieces *ps)
{
    SmtpBufFree(&ps->text);
    if (ps->p) {
	ckfree(ps->p);
    }
}

/*
 * Adds a piece. White space is taken without line breaks (a value's own
 * folding is unfolded; the layout folds anew); white space that was only
 * a line break becomes a space.
 */

static void
PieceAdd(
    Pieces *ps,
    const unsigned char *ws,
    size_t wsLen,
    const unsigned char *p,
    size_t n,
    int enc)
{
    Piece *pc;
    size_t i;

    if (ps->n == ps->cap) {
	ps->cap = ps->cap ? 2 * ps->cap : 16;
	ps->p = (Piece *) ckrealloc(ps->p, sizeof(Piece) * ps->cap);
    }
    pc = &ps->p[ps->n++];
    pc->wsOff = ps->text.len;
    for (i = 0; i < wsLen; i++) {
	if (ws[i] != '\r' && ws[i] != '\n') {
	    SmtpBufAppend(&ps->text, ws + i, 1);
	}
    }
    if (wsLen > 0 && ps->text.len == pc->wsOff) {
	SmtpBufAppend(&ps->text, " ", 1);
    }
    pc->wsLen = ps->text.len - pc->wsOff;
    pc->off = ps->text.len;
    SmtpBufAppend(&ps->text, p, n);
    pc->len = n;
    pc->enc = enc;
}

typedef struct Lay {
    SmtpBuf *out;
    size_t col;			/* Octets on the current line. */
    int placed;			/* Text is on the current line (a fold is
				 * possible). */
} Lay;

static void
LayFold(
    Lay *l)
{
    SmtpBufAppend(l->out, "\r\n", 2);
    l->col = 0;
    l->placed = 0;
}

static void
LayEncoded(
    Lay *l,
    const unsigned char *ws,
    size_t wsLen,
    const unsigned char *p,
    size_t n,
    size_t tail)
{
    int q = QLen(p, n) <= BLen(n), first = 1;
    size_t pos = 0;

    while (pos < n) {
	const unsigned char *pre = first ? ws : (const unsigned char *) " ";
	size_t preLen = first ? wsLen : 1, room, k;
	int canFold = l->placed && preLen > 0;

	room = l->col + preLen < FOLD_AT ? FOLD_AT - l->col - preLen : 0;
	k = WordFit(p + pos, n - pos, q, room, room, tail);
	if (k == 0 && canFold) {
	    LayFold(l);
	    room = FOLD_AT - preLen;
	    k = WordFit(p + pos, n - pos, q, room, room, tail);
	}
	if (k == 0) {
	    k = CharLen(p + pos, n - pos);
	}
	SmtpBufAppend(l->out, pre, preLen);
	{
	    size_t before = l->out->len;

	    AppendWord(l->out, p + pos, k, q);
	    l->col += preLen + (l->out->len - before);
	}
	l->placed = 1;
	pos += k;
	first = 0;
    }
}

/*
 * Lays the pieces out after "Name: " (nameLen octets with the colon and
 * space), folding so that no line is longer than FOLD_AT where the
 * pieces allow it, into 'out'.
 */

static void
LayOut(
    Pieces *ps,
    size_t nameLen,
    SmtpBuf *out)
{
    Lay l;
    size_t i;

    l.out = out;
    l.col = nameLen;
    l.placed = 0;
    for (i = 0; i < ps->n; i++) {
	Piece *pc = &ps->p[i];
	const unsigned char *ws = ps->text.data + pc->wsOff;
	const unsigned char *txt = ps->text.data + pc->off;
	size_t tail = 0, j;

	/* What must stay on this piece's line after it. */
	for (j = i + 1; j < ps->n && ps->p[j].wsLen == 0; j++) {
	    if (ps->p[j].enc) {
		tail += EW_MIN;
		break;
	    }
	    tail += ps->p[j].len;
	}
	if (pc->enc) {
	    LayEncoded(&l, ws, pc->wsLen, txt, pc->len, tail);
	    continue;
	}
	if (pc->wsLen > 0 && l.placed
		&& l.col + pc->wsLen + pc->len + tail > FOLD_AT) {
	    LayFold(&l);
	}
	SmtpBufAppend(out, ws, pc->wsLen);
	SmtpBufAppend(out, txt, pc->len);
	l.col += pc->wsLen + pc->len;
	if (pc->len > 0) {
	    l.placed = 1;
	}
    }
}

/*
 * ------------------------------------------------------------------------
 * Unstructured fields (RFC 5322 3.2.5, RFC 2047 5(1)).
 * ------------------------------------------------------------------------
 */

/*
 * Whether a word needs encoding: an octet over 127 (without SMTPUTF8)
 * or a NUL (always).
 */

static int
NeedsEnc(
    const unsigned char *p,
    size_t n,
    int ascii)
{
    size_t i;

    for (i = 0; i < n; i++) {
	if (p[i] == 0 || (ascii && p[i] >= 0x80)) {
	    return 1;
	}
    }
    return 0;
}

/*
 * A word that a reader would take for an encoded word:
 * =?charset?B-or-Q?text?= (RFC 2047 2).
 */

static int
LooksEncoded(
    const unsigned char *p,
    size_t n)
{
    size_t i = 2, cs;

    if (n < 8 || p[0] != '=' || p[1] != '?' || p[n - 2] != '?'
	    || p[n - 1] != '=') {
	return 0;
    }
    while (i < n && p[i] != '?') {
	i++;
    }
    cs = i - 2;
    if (cs == 0 || i + 3 > n - 2 || !OneOf(p[i + 1], "BbQq")
	    || p[i + 2] != '?') {
	return 0;
    }
    for (i += 3; i < n - 2; i++) {
	if (p[i] == '?') {
	    return 0;
	}
    }
    return 1;
}

static int
IsSpace(
    int c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/*
 * Appends octets without CR and LF (a value's folding, unfolded).
 */

static void
AppendUnfolded(
    SmtpBuf *b,
    const unsigned char *p,
    size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
	if (p[i] != '\r' && p[i] != '\n') {
	    SmtpBufAppend(b, p + i, 1);
	}
    }
}

static size_t
SkipSpace(
    const unsigned char *v,
    size_t i,
    size_t n)
{
    while (i < n && IsSpace(v[i])) {
	i++;
    }
    return i;
}

static size_t
SkipWord(
    const unsigned char *v,
    size_t i,
    size_t n)
{
    while (i < n && !IsSpace(v[i])) {
	i++;
    }
    return i;
}

/*
 * The words of an unstructured value as pieces: those that need encoding
 * in runs of encoded words, with the white space between them inside the
 * run (a reader drops white space between encoded words); the others as
 * they are. Next to a word the script encoded itself, the white space
 * goes into the run too, so that the reader keeps it.
 */

static void
Unstructured(
    Pieces *ps,
    const unsigned char *v,
    size_t n,
    int ascii)
{
    size_t i = 0;
    int prevLike = 0;		/* The last piece looks like an encoded
				 * word and goes as it is. */

    while (i < n) {
	size_t ws = i, w = SkipSpace(v, i, n), we, end, k;
	SmtpBuf run;

	if (w == n) {
	    PieceAdd(ps, v + ws, w - ws, v + w, 0, 0);
	    break;
	}
	we = SkipWord(v, w, n);
	if (!NeedsEnc(v + w, we - w, ascii)) {
	    PieceAdd(ps, v + ws, w - ws, v + w, we - w, 0);
	    prevLike = LooksEncoded(v + w, we - w);
	    i = we;
	    continue;
	}

	/* A run: this word and the next ones that need encoding. */
	end = we;
	for (;;) {
	    size_t nw = SkipSpace(v, end, n), nwe;

	    if (nw == n) {
		break;
	    }
	    nwe = SkipWord(v, nw, n);
	    if (!NeedsEnc(v + nw, nwe - nw, ascii)) {
		break;
	    }
	    end = nwe;
	}
	SmtpBufInit(&run);
	if (prevLike && w > ws) {
	    AppendUnfolded(&run, v + ws, w - ws);
	    ws = w - 1;		/* One octet of white space before it. */
	}
	AppendUnfolded(&run, v + w, end - w);
	k = SkipSpace(v, end, n);
	if (k < n && k > end && LooksEncoded(v + k, SkipWord(v, k, n) - k)) {
	    /* The white space before the next word into the run. */
	    size_t ke = SkipWord(v, k, n);

	    AppendUnfolded(&run, v + end, k - end);
	    PieceAdd(ps, v + ws, w - ws, run.data, run.len, 1);
	    PieceAdd(ps, (const unsigned char *) " ", 1, v + k, ke - k, 0);
	    prevLike = 1;
	    i = ke;
	} else {
	    PieceAdd(ps, v + ws, w - ws, run.data, run.len, 1);
	    prevLike = 0;
	    i = end;
	}
	SmtpBufFree(&run);
    }
}

/*
 * ------------------------------------------------------------------------
 * Address fields (RFC 5322 3.4): display names and comments are encoded
 * (RFC 2047 5(2), 5(3)), domains go as A-labels, the rest as it is.
 * ------------------------------------------------------------------------
 */

enum { T_WS, T_ATOM, T_QUOTED, T_COMMENT, T_LITERAL, T_SPECIAL };

typedef struct Tok {
    int type;
    size_t off, len;
} Tok;

/*
 * Splits an address list into tokens: white space, atoms (any run of
 * octets that are not white space or specials), quoted strings, comments
 * (nested), domain literals and the specials < > @ , ; : . each alone.
 * Returns the number of tokens; *toksPtr is the caller's to free.
 */

static size_t
Tokenize(
    const unsigned char *v,
    size_t n,
    Tok **toksPtr)
{
    Tok *t = (Tok *) ckalloc(sizeof(Tok) * (n + 1));
    size_t nt = 0, i = 0;

    while (i < n) {
	size_t s = i;
	int type;
	unsigned char c = v[i];

	if (IsSpace(c)) {
	    i = SkipSpace(v, i, n);
	    type = T_WS;
	} else if (c == '"' || c == '[') {
	    unsigned char close = c == '"' ? '"' : ']';

	    for (i++; i < n && v[i] != close; i++) {
		if (v[i] == '\\' && i + 1 < n) {
		    i++;
		}
	    }
	    i = i < n ? i + 1 : n;
	    type = c == '"' ? T_QUOTED : T_LITERAL;
	} else if (c == '(') {
	    int depth = 0;

	    for (; i < n; i++) {
		if (v[i] == '\\' && i + 1 < n) {
		    i++;
		} else if (v[i] == '(') {
		    depth++;
		} else if (v[i] == ')' && --depth == 0) {
		    i++;
		    break;
		}
	    }
	    type = T_COMMENT;
	} else if (OneOf(c, "<>@,;:.")) {
	    i++;
	    type = T_SPECIAL;
	} else {
	    while (i < n && !IsSpace(v[i]) && !OneOf(v[i], "<>@,;:.\"[(")) {
		i++;
	    }
	    type = T_ATOM;
	}
	t[nt].type = type;
	t[nt].off = s;
	t[nt].len = i - s;
	nt++;
    }
    *toksPtr = t;
    return nt;
}

/*
 * The content of a quoted string or comment, without its delimiters and
 * quoting backslashes.
 */

static void
Unquote(
    SmtpBuf *b,
    const unsigned char *p,
    size_t n)
{
    size_t i;

    if (n >= 1) {
	p++;
	n--;
    }
    if (n >= 1 && (p[n - 1] == '"' || p[n - 1] == ')')) {
	n--;
    }
    for (i = 0; i < n; i++) {
	if (p[i] == '\\' && i + 1 < n) {
	    i++;
	}
	if (p[i] != '\r' && p[i] != '\n') {
	    SmtpBufAppend(b, p + i, 1);
	}
    }
}

typedef struct Addr {
    Pieces *ps;
    const unsigned char *v;
    int ascii;
    size_t wsOff, wsLen;	/* White space before the next piece. */
    int lastEnc;		/* The last piece was encoded. */
    const unsigned char *lastText;
    size_t lastLen;
} Addr;

/*
 * Adds a piece after the pending white space. An encoded word is kept
 * apart from what is around it by white space, except after "(" and
 * before ")", ",", ";" or ":".
 */

static void
AddrPiece(
    Addr *a,
    const unsigned char *p,
    size_t n,
    int enc)
{
    const unsigned char *ws = a->v + a->wsOff;
    size_t wsLen = a->wsLen;

    if (wsLen == 0 && a->ps->n > 0) {
	if ((enc && !(a->lastLen == 1 && a->lastText[0] == '('))
		|| (a->lastEnc && !(n == 1 && OneOf(p[0], "),;:")))) {
	    ws = (const unsigned char *) " ";
	    wsLen = 1;
	}
    }
    PieceAdd(a->ps, ws, wsLen, p, n, enc);
    a->wsLen = 0;
    a->lastEnc = enc;
    a->lastText = p;
    a->lastLen = n;
}

static void
AddrComment(
    Addr *a,
    const Tok *t)
{
    const unsigned char *p = a->v + t->off;
    SmtpBuf b;

    if (!NeedsEnc(p, t->len, a->ascii)) {
	AddrPiece(a, p, t->len, 0);
	return;
    }
    SmtpBufInit(&b);
    Unquote(&b, p, t->len);
    AddrPiece(a, (const unsigned char *) "(", 1, 0);
    if (b.len > 0) {
	AddrPiece(a, b.data, b.len, 1);
    }
    AddrPiece(a, (const unsigned char *) ")", 1, 0);
    SmtpBufFree(&b);
}

/*
 * Writes pending tokens toks[from..to). As a phrase (a display name, a
 * group's name, or words that are no part of an address), each stretch
 * of words between comments that needs encoding becomes one run of
 * encoded words, its quoted strings unquoted; otherwise (a local part,
 * which has no ASCII form when it is beyond ASCII) the words go as they
 * are.
 */

static void
AddrFlush(
    Addr *a,
    const Tok *toks,
    size_t from,
    size_t to,
    int phrase)
{
    size_t i = from;

    while (i < to) {
	const Tok *t = &toks[i];
	size_t j, first, last;
	int need = 0;

	if (t->type == T_WS) {
	    a->wsOff = t->off;
	    a->wsLen = t->len;
	    i++;
	    continue;
	}
	if (t->type == T_COMMENT) {
	    AddrComment(a, t);
	    i++;
	    continue;
	}

	/* A stretch of words (and dots), up to a comment or the end. */
	first = i;
	last = i;
	for (j = i; j < to && toks[j].type != T_COMMENT; j++) {
	    if (toks[j].type != T_WS) {
		last = j;
		need |= NeedsEnc(a->v + toks[j].off, toks[j].len, a->ascii);
	    }
	}
	if (!need || !phrase) {
	    for (j = first; j <= last; j++) {
		if (toks[j].type == T_WS) {
		    a->wsOff = toks[j].off;
		    a->wsLen = toks[j].len;
		    continue;
		}
		AddrPiece(a, a->v + toks[j].off, toks[j].len, 0);
	    }
	} else {
	    SmtpBuf b;

	    SmtpBufInit(&b);
	    for (j = first; j <= last; j++) {
		const unsigned char *p = a->v + toks[j].off;

		if (toks[j].type == T_QUOTED) {
		    Unquote(&b, p, toks[j].len);
		} else {
		    AppendUnfolded(&b, p, toks[j].len);
		}
	    }
	    AddrPiece(a, b.data, b.len, 1);
	    SmtpBufFree(&b);
	}
	i = last + 1;
    }
}

/*
 * A domain beyond ASCII, as A-labels when it can be (IDNA2008, through
 * libidn2, as for the envelope: smtpProto.c); else as it is.
 */

static void
AddrDomain(
    Addr *a,
    const unsigned char *p,
    size_t n)
{
#ifdef HAVE_LIBIDN2
    if (a->ascii && NeedsEnc(p, n, 1) && memchr(p, 0, n) == NULL) {
	char *z = (char *) ckalloc(n + 1), *out = NULL;

	memcpy(z, p, n);
	z[n] = '\0';
	if (idn2_to_ascii_8z(z, &out, IDN2_NONTRANSITIONAL) == IDN2_OK) {
	    AddrPiece(a, (const unsigned char *) out, strlen(out), 0);
	    idn2_free(out);
	    ckfree(z);
	    return;
	}
	ckfree(z);
    }
#endif
    AddrPiece(a, p, n, 0);
}

static void
Address(
    Pieces *ps,
    const unsigned char *v,
    size_t n,
    int ascii)
{
    Tok *toks;
    size_t nt = Tokenize(v, n, &toks), i, pend = 0;
    Addr a;

    memset(&a, 0, sizeof(a));
    a.ps = ps;
    a.v = v;
    a.ascii = ascii;
    for (i = 0; i < nt; i++) {
	const Tok *t = &toks[i];
	unsigned char c = v[t->off];

	if (t->type != T_SPECIAL || c == '.') {
	    continue;		/* Pending, toks[pend..i]. */
	}
	if (c == '@') {
	    /*
	     * The local part: the words (and dots) glued together before
	     * the "@"; what comes before them is taken as a phrase.
	     */

	    size_t lp = i;

	    while (lp > pend && (toks[lp - 1].type == T_ATOM
		    || toks[lp - 1].type == T_QUOTED
		    || (toks[lp - 1].type == T_SPECIAL
			&& v[toks[lp - 1].off] == '.'))) {
		lp--;
	    }
	    AddrFlush(&a, toks, pend, lp, 1);
	    AddrFlush(&a, toks, lp, i, 0);
	} else {
	    AddrFlush(&a, toks, pend, i, 1);
	}
	AddrPiece(&a, v + t->off, 1, 0);
	pend = i + 1;
	if (c == '@') {
	    /* The domain: the glued atoms, dots and literals that follow. */
	    size_t j = i + 1, s, e;

	    while (j < nt && (toks[j].type == T_ATOM
		    || toks[j].type == T_LITERAL
		    || (toks[j].type == T_SPECIAL && v[toks[j].off] == '.'))) {
		j++;
	    }
	    if (j > i + 1) {
		s = toks[i + 1].off;
		e = toks[j - 1].off + toks[j - 1].len;
		AddrDomain(&a, v + s, e - s);
	    }
	    i = j - 1;
	    pend = j;
	}
    }
    AddrFlush(&a, toks, pend, nt, 1);
    if (a.wsLen > 0) {
	PieceAdd(ps, v + a.wsOff, a.wsLen, v, 0, 0);
    }
    ckfree(toks);
}

/*
 * ------------------------------------------------------------------------
 * Parameters (RFC 2045 5.1, RFC 2231).
 * ------------------------------------------------------------------------
 */

static int
AttrChar(
    int c)
{
    return c > 0x20 && c < 0x7F && !OneOf(c, "*'%()<>@,;:\\\"/[]?=");
}

/*
 * Appends "; key=value" to a header line: the value a quoted string, or
 * when it needs encoding (beyond ASCII without SMTPUTF8; a NUL) in
 * RFC 2231's form, key*=utf-8''%XX..., cut into continuations key*0*=,
 * key*1*=, ... on lines of their own when it would not fit on one line.
 * A character's octets stay together.
 */

void
SmtpParamAppend(
    Tcl_DString *ds,
    const char *key,
    size_t keyLen,
    const unsigned char *val,
    size_t valLen,
    int ascii)
{
    size_t i, pctLen = 0;

    if (!NeedsEnc(val, valLen, ascii)) {
	Tcl_DStringAppend(ds, "; ", 2);
	Tcl_DStringAppend(ds, key, (Tcl_Size) keyLen);
	Tcl_DStringAppend(ds, "=\"", 2);
	for (i = 0; i < valLen; i++) {
	    if (val[i] == '"' || val[i] == '\\') {
		Tcl_DStringAppend(ds, "\\", 1);
	    }
	    Tcl_DStringAppend(ds, (const char *) val + i, 1);
	}
	Tcl_DStringAppend(ds, "\"", 1);
	return;
    }
    for (i = 0; i < valLen; i++) {
	pctLen += AttrChar(val[i]) ? 1 : 3;
    }
    if (1 + keyLen + 9 + pctLen + 1 <= FOLD_AT) {
	Tcl_DStringAppend(ds, "; ", 2);
	Tcl_DStringAppend(ds, key, (Tcl_Size) keyLen);
	Tcl_DStringAppend(ds, "*=utf-8''", 9);
	for (i = 0; i < valLen; i++) {
	    char e[3] = {'%', hexDigits[val[i] >> 4], hexDigits[val[i] & 0xF]};

	    if (AttrChar(val[i])) {
		Tcl_DStringAppend(ds, (const char *) val + i, 1);
	    } else {
		Tcl_DStringAppend(ds, e, 3);
	    }
	}
	return;
    }
    {
	size_t pos = 0;
	int seg = 0;

	while (pos < valLen) {
	    char prefix[64];
	    size_t used = 0, width, budget;

	    snprintf(prefix, sizeof(prefix), "*%d*=%s", seg,
		    seg == 0 ? "utf-8''" : "");
	    width = 1 + keyLen + strlen(prefix);
	    budget = width + 1 < FOLD_AT ? FOLD_AT - width - 1 : 0;
	    Tcl_DStringAppend(ds, ";\r\n ", 4);
	    Tcl_DStringAppend(ds, key, (Tcl_Size) keyLen);
	    Tcl_DStringAppend(ds, prefix, -1);
	    while (pos < valLen) {
		size_t k = CharLen(val + pos, valLen - pos), w = 0, j;

		for (j = 0; j < k; j++) {
		    w += AttrChar(val[pos + j]) ? 1 : 3;
		}
		if (used > 0 && used + w > budget) {
		    break;
		}
		for (j = 0; j < k; j++) {
		    unsigned char c = val[pos + j];
		    char e[3] = {'%', hexDigits[c >> 4], hexDigits[c & 0xF]};

		    if (AttrChar(c)) {
			Tcl_DStringAppend(ds, (const char *) &c, 1);
		    } else {
			Tcl_DStringAppend(ds, e, 3);
		    }
		}
		used += w;
		pos += k;
	    }
	    seg++;
	}
    }
}

/*
 * Content-Disposition (RFC 2183): its type, then its parameters, those
 * that need it in RFC 2231's form, the others as they were written.
 * Returns 0 (nothing written) when the value is not of that shape.
 */

static int
Disposition(
    Tcl_DString *line,
    const unsigned char *v,
    size_t n,
    int ascii)
{
    size_t i = 0, s;
    Tcl_DString out;

    Tcl_DStringInit(&out);
    while (i < n && v[i] != ';') {
	i++;
    }
    s = i;
    while (s > 0 && IsSpace(v[s - 1])) {
	s--;
    }
    Tcl_DStringAppend(&out, (const char *) v, (Tcl_Size) s);
    while (i < n) {
	size_t ks, ke, vs, ve, ps = i + 1;
	SmtpBuf val;

	i = SkipSpace(v, i + 1, n);
	ks = i;
	while (i < n && v[i] != '=' && v[i] != ';' && !IsSpace(v[i])) {
	    i++;
	}
	ke = i;
	i = SkipSpace(v, i, n);
	if (ke == ks || i == n || v[i] != '=') {
	    Tcl_DStringFree(&out);
	    return 0;
	}
	i = SkipSpace(v, i + 1, n);
	vs = i;
	SmtpBufInit(&val);
	if (i < n && v[i] == '"') {
	    for (i++; i < n && v[i] != '"'; i++) {
		if (v[i] == '\\' && i + 1 < n) {
		    i++;
		}
	    }
	    i = i < n ? i + 1 : n;
	    Unquote(&val, v + vs, i - vs);
	} else {
	    while (i < n && v[i] != ';') {
		i++;
	    }
	}
	ve = i;
	while (ve > vs && IsSpace(v[ve - 1])) {
	    ve--;
	}
	if (vs >= n || v[vs] != '"') {
	    SmtpBufAppend(&val, v + vs, ve - vs);
	}
	i = SkipSpace(v, i, n);
	if (i < n && v[i] != ';') {
	    SmtpBufFree(&val);
	    Tcl_DStringFree(&out);
	    return 0;
	}
	if (NeedsEnc(val.data, val.len, ascii)) {
	    SmtpParamAppend(&out, (const char *) v + ks, ke - ks, val.data,
		    val.len, ascii);
	} else {
	    Tcl_DStringAppend(&out, ";", 1);
	    Tcl_DStringAppend(&out, (const char *) v + ps,
		    (Tcl_Size) (ve - ps));
	}
	SmtpBufFree(&val);
    }
    Tcl_DStringAppend(line, Tcl_DStringValue(&out), Tcl_DStringLength(&out));
    Tcl_DStringFree(&out);
    return 1;
}

/*
 * ------------------------------------------------------------------------
 * A field, in both renditions.
 * ------------------------------------------------------------------------
 */

enum { K_UNSTRUCTURED, K_ADDRESS, K_DISPOSITION, K_RAW };

static int
Kind(
    const unsigned char *name,
    size_t n)
{
    static const char *const address[] = {
	"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from",
	"resent-to", "resent-cc", "resent-bcc", "resent-sender",
	"disposition-notification-to", NULL
    };
    static const char *const raw[] = {
	"message-id", "resent-message-id", "in-reply-to", "references",
	"content-id", "date", "resent-date", "received", "return-path",
	"mime-version", "content-transfer-encoding", "content-type", NULL
    };
    char low[32];
    size_t i;

    if (n >= sizeof(low)) {
	return K_UNSTRUCTURED;
    }
    for (i = 0; i < n; i++) {
	low[i] = (char) ((name[i] >= 'A' && name[i] <= 'Z')
		? name[i] + 32 : name[i]);
    }
    low[n] = '\0';
    for (i = 0; address[i]; i++) {
	if (strcmp(low, address[i]) == 0) {
	    return K_ADDRESS;
	}
    }
    for (i = 0; raw[i]; i++) {
	if (strcmp(low, raw[i]) == 0) {
	    return K_RAW;
	}
    }
    return strcmp(low, "content-disposition") == 0
	    ? K_DISPOSITION : K_UNSTRUCTURED;
}

static void
Render(
    SmtpBuf *out,
    const unsigned char *name,
    size_t nameLen,
    const unsigned char *v,
    size_t n,
    int ascii)
{
    Tcl_DString line;
    int kind = Kind(name, nameLen);

    Tcl_DStringInit(&line);
    Tcl_DStringAppend(&line, (const char *) name, (Tcl_Size) nameLen);
    Tcl_DStringAppend(&line, ": ", 2);
    if (!NeedsEnc(v, n, ascii) || kind == K_RAW) {
	Tcl_DStringAppend(&line, (const char *) v, (Tcl_Size) n);
    } else if (kind == K_DISPOSITION && Disposition(&line, v, n, ascii)) {
	/* Written. */
    } else {
	Pieces ps;
	SmtpBuf lay;

	PiecesInit(&ps);
	SmtpBufInit(&lay);
	if (kind == K_ADDRESS) {
	    Address(&ps, v, n, ascii);
	} else {
	    Unstructured(&ps, v, n, ascii);
	}
	LayOut(&ps, nameLen + 2, &lay);
	Tcl_DStringAppend(&line, (const char *) lay.data, (Tcl_Size) lay.len);
	SmtpBufFree(&lay);
	PiecesFree(&ps);
    }
    SmtpHeaderLine(out, (const unsigned char *) Tcl_DStringValue(&line),
	    (size_t) Tcl_DStringLength(&line));
    Tcl_DStringFree(&line);
}

/*
 * Writes the field "name: value" to 'ascii' as a message without SMTPUTF8
 * carries it and to 'utf8' as one with SMTPUTF8 does. What has no ASCII
 * form (an address with a local part beyond ASCII, a domain IDNA2008
 * refuses, a message identifier beyond ASCII) goes as it is in both.
 */

void
SmtpHeaderWrite(
    SmtpBuf *ascii,
    SmtpBuf *utf8,
    Tcl_Obj *name,
    Tcl_Obj *value)
{
    Tcl_DString nm, v;
    const unsigned char *np, *vp;
    size_t nn, vn;

    SmtpHeaderOctets(name, &nm);
    SmtpHeaderOctets(value, &v);
    np = (const unsigned char *) Tcl_DStringValue(&nm);
    nn = (size_t) Tcl_DStringLength(&nm);
    vp = (const unsigned char *) Tcl_DStringValue(&v);
    vn = (size_t) Tcl_DStringLength(&v);
    if (!NeedsEnc(vp, vn, 1)) {
	Tcl_DString line;

	Tcl_DStringInit(&line);
	Tcl_DStringAppend(&line, (const char *) np, (Tcl_Size) nn);
	Tcl_DStringAppend(&line, ": ", 2);
	Tcl_DStringAppend(&line, (const char *) vp, (Tcl_Size) vn);
	SmtpHeaderLine(ascii, (const unsigned char *) Tcl_DStringValue(&line),
		(size_t) Tcl_DStringLength(&line));
	SmtpHeaderLine(utf8, (const unsigned char *) Tcl_DStringValue(&line),
		(size_t) Tcl_DStringLength(&line));
	Tcl_DStringFree(&line);
    } else {
	Render(ascii, np, nn, vp, vn, 1);
	Render(utf8, np, nn, vp, vn, 0);
    }
    Tcl_DStringFree(&nm);
    Tcl_DStringFree(&v);
}
