/*
 * smtpData.c --
 *
 *	The DATA encoder (RFC 5321 sections 2.3.8 and 4.5.2): every line end
 *	becomes CRLF (a bare LF or a bare CR included), a line that starts
 *	with a dot gets a second one, and the message ends with CRLF "." CRLF.
 *	One pass, streaming: the input may be split anywhere.
 */

#include "smtpInt.h"

void
SmtpDataInit(
    SmtpDataEnc *e)
{
    e->bol = 1;
    e->cr = 0;
    e->bdat = 0;
}

/*
 * For BDAT (RFC 3030): line ends still become CRLF, but the chunks are
 * counted, so there is no dot-stuffing and no terminating dot.
 */

void
SmtpDataInitBdat(
    SmtpDataEnc *e)
{
    SmtpDataInit(e);
    e->bdat = 1;
}

/*
 * Tells whether the bytes have an octet above 127 (RFC 6152 8BITMIME).
 */

int
SmtpDataHas8bit(
    const unsigned char *p,
    size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
	if (p[i] & 0x80) {
	    return 1;
	}
    }
    return 0;
}

/*
 * Returns the length of the run of bytes from p + i that holds neither CR
 * nor LF. *lf caches where the next LF is (or p + n), so that a long
 * stretch of bare CRs is not rescanned for LF each time.
 */

static size_t
PlainRun(
    const unsigned char *p,
    size_t i,
    size_t n,
    const unsigned char **lf)
{
    const unsigned char *cr;

    if (*lf == NULL || *lf < p + i) {
	*lf = memchr(p + i, '\n', n - i);
	if (*lf == NULL) {
	    *lf = p + n;
	}
    }
    cr = memchr(p + i, '\r', (size_t) (*lf - (p + i)));
    return (size_t) ((cr ? cr : *lf) - (p + i));
}

/*
 * Appends the encoding of n bytes at p to 'out'.
 */

void
SmtpDataEncode(
    SmtpDataEnc *e,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out)
{
    size_t i = 0;
    const unsigned char *lf = NULL;

    /* Worst case: every byte a dot at a line start or a bare line end. */
    SmtpBufReserve(out, 2 * n + 2);
    while (i < n) {
	unsigned char c = p[i];
	size_t run;

	if (e->cr) {
	    e->cr = 0;
	    out->data[out->len++] = '\n';
	    e->bol = 1;
	    if (c == '\n') {
		i++;
		continue;
	    }
	}
	if (c == '\r') {
	    out->data[out->len++] = '\r';
	    e->cr = 1;
	    e->bol = 0;
	    i++;
	    continue;
	}
	if (c == '\n') {
	    out->data[out->len++] = '\r';
	    out->data[out->len++] = '\n';
	    e->bol = 1;
	    i++;
	    continue;
	}
	if (e->bol && c == '.' && !e->bdat) {
	    out->data[out->len++] = '.';
	}
	run = PlainRun(p, i, n, &lf);
	memcpy(out->data + out->len, p + i, run);
	out->len += run;
	i += run;
	e->bol = 0;
    }
}

/*
 * The same for input whose line ends are all CRLF already: only a dot at
 * a line start needs attention, so the work is a memchr for dots and
 * block copies (base64, for one, has no dots at all).
 */

void
SmtpDataEncodeClean(
    SmtpDataEnc *e,
    const unsigned char *p,
    size_t n,
    SmtpBuf *out)
{
    size_t i = 0;

    if (n == 0) {
	return;
    }
    SmtpBufReserve(out, 2 * n);
    while (i < n && !e->bdat) {
	const unsigned char *d = memchr(p + i, '.', n - i);
	size_t stop = d ? (size_t) (d - p) : n;

	memcpy(out->data + out->len, p + i, stop - i);
	out->len += stop - i;
	i = stop;
	if (d == NULL) {
	    break;
	}
	if (stop == 0 ? e->bol : p[stop - 1] == '\n') {
	    out->data[out->len++] = '.';
	}
	out->data[out->len++] = '.';
	i++;
    }
    if (i < n) {
	memcpy(out->data + out->len, p + i, n - i);
	out->len += n - i;
    }
    e->bol = p[n - 1] == '\n';
    e->cr = p[n - 1] == '\r';
}

/*
 * Ends the message: completes a pending CR, adds a final CRLF if the last
 * line had none, then the terminating dot line.
 */

void
SmtpDataFinish(
    SmtpDataEnc *e,
    SmtpBuf *out)
{
    if (e->cr) {
	SmtpBufAppend(out, "\n", 1);
	e->cr = 0;
	e->bol = 1;
    }
    if (!e->bol) {
	SmtpBufAppend(out, "\r\n", 2);
    }
    if (!e->bdat) {
	SmtpBufAppend(out, ".\r\n", 3);
    }
    e->bol = 1;
}

/*
 * Returns the size of the message as RFC 1870 counts it: line ends as
 * CRLF, a final CRLF added when missing, no dot-stuffing and no
 * terminating dot line.
 */

Tcl_WideInt
SmtpDataSize(
    const unsigned char *p,
    size_t n)
{
    Tcl_WideInt size = (Tcl_WideInt) n;
    size_t i;

    for (i = 0; i < n; i++) {
	if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r')) {
	    size++;
	} else if (p[i] == '\r' && (i + 1 == n || p[i + 1] != '\n')) {
	    size++;
	}
    }
    if (n > 0 && p[n - 1] != '\n' && p[n - 1] != '\r') {
	size += 2;
    }
    return size;
}
