/*
 * smtpBuf.c --
 *
 *	A growable byte buffer with a read position, and the conversion of a
 *	Tcl value to the bytes the mime package means by it.
 */

#include "smtpInt.h"

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
    if (need <= b->cap) {
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
 * character's low 8 bits. In Tcl 8 a byte array conversion does exactly
 * that; Tcl 9 refuses characters above U+00FF, so they are folded here into
 * 'scratch', which the caller frees.
 */

const unsigned char *
SmtpGetBytes(
    Tcl_Obj *obj,
    Tcl_Size *lenPtr,
    Tcl_DString *scratch)
{
#if TCL_MAJOR_VERSION > 8
    const unsigned char *bytes = Tcl_GetBytesFromObj(NULL, obj, lenPtr);
    Tcl_Size n, i;
    const char *s;

    Tcl_DStringInit(scratch);
    if (bytes != NULL) {
	return bytes;
    }
    s = Tcl_GetStringFromObj(obj, &n);
    for (i = 0; i < n; ) {
	int ch;

	i += Tcl_UtfToUniChar(s + i, &ch);
	Tcl_DStringAppend(scratch, "", 0);
	{
	    char c = (char) (ch & 0xFF);
	    Tcl_DStringAppend(scratch, &c, 1);
	}
    }
    *lenPtr = Tcl_DStringLength(scratch);
    return (const unsigned char *) Tcl_DStringValue(scratch);
#else
    Tcl_DStringInit(scratch);
    return Tcl_GetByteArrayFromObj(obj, lenPtr);
#endif
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
    src->cd = NULL;
    src->clean = 0;
}
