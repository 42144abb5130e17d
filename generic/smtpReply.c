/*
 * smtpReply.c --
 *
 *	The parser of SMTP server replies (RFC 5321 section 4.2): bytes in,
 *	complete replies out. It knows nothing of sockets, so it can be fed
 *	any split of the input.
 */

#include "smtpInt.h"
#include <ctype.h>

void
SmtpReplyInit(
    SmtpReply *r)
{
    r->code = 0;
    r->enhanced[0] = '\0';
    r->text = NULL;
    r->lines = NULL;
    r->raw = NULL;
}

void
SmtpReplyClear(
    SmtpReply *r)
{
    if (r->text) {
	Tcl_DecrRefCount(r->text);
    }
    if (r->lines) {
	Tcl_DecrRefCount(r->lines);
    }
    if (r->raw) {
	Tcl_DecrRefCount(r->raw);
    }
    SmtpReplyInit(r);
}

void
SmtpReplyParserInit(
    SmtpReplyParser *p)
{
    SmtpBufInit(&p->line);
    SmtpReplyInit(&p->cur);
    p->nlines = 0;
    p->started = 0;
}

void
SmtpReplyParserFree(
    SmtpReplyParser *p)
{
    SmtpBufFree(&p->line);
    SmtpReplyClear(&p->cur);
    p->nlines = 0;
    p->started = 0;
}

/*
 * Finds an RFC 3463 enhanced status code at the start of 'text' whose class
 * matches the reply code, and copies it into 'out'.
 */

static void
ParseEnhanced(
    int code,
    const char *text,
    Tcl_Size len,
    char *out)
{
    Tcl_Size i = 0;
    int part;

    out[0] = '\0';
    if (len < 5 || text[0] - '0' != code / 100 || text[1] != '.') {
	return;
    }
    i = 2;
    for (part = 0; part < 2; part++) {
	Tcl_Size start = i;

	while (i < len && isdigit((unsigned char) text[i]) && i - start < 3) {
	    i++;
	}
	if (i == start || (i < len && isdigit((unsigned char) text[i]))) {
	    return;
	}
	if (part == 0) {
	    if (i >= len || text[i] != '.') {
		return;
	    }
	    i++;
	}
    }
    if (i < len && text[i] != ' ' && text[i] != '\t') {
	return;
    }
    memcpy(out, text, (size_t) i);
    out[i] = '\0';
}

/*
 * Returns a new object holding the text after the code, trimmed of
 * surrounding white space.
 */

static Tcl_Obj *
LineText(
    const unsigned char *s,
    size_t n)
{
    size_t a = 4, b = n;

    if (n <= 4) {
	return Tcl_NewObj();
    }
    while (a < b && isspace(s[a])) {
	a++;
    }
    while (b > a && isspace(s[b - 1])) {
	b--;
    }
    return Tcl_NewStringObj((const char *) s + a, (Tcl_Size) (b - a));
}

/*
 * Handles one complete line (without its line end). Returns
 * SMTP_PARSE_REPLY when it ends a reply, SMTP_PARSE_MORE when more lines
 * follow, SMTP_PARSE_ERROR with *errOut set when it is malformed.
 */

static int
ParseLine(
    SmtpReplyParser *p,
    const unsigned char *s,
    size_t n,
    Tcl_Obj **errOut)
{
    int code;
    Tcl_Obj *lineObj = Tcl_NewStringObj((const char *) s, (Tcl_Size) n);

    if (n < 3) {
	*errOut = Tcl_ObjPrintf("response too short: %s",
		Tcl_GetString(lineObj));
	Tcl_DecrRefCount(lineObj);
	return SMTP_PARSE_ERROR;
    }
    if (!isdigit(s[0]) || !isdigit(s[1]) || !isdigit(s[2])
	    || s[0] < '1' || s[0] > '5'
	    || (n > 3 && s[3] != ' ' && s[3] != '-')) {
	*errOut = Tcl_ObjPrintf("unrecognizable code: %s",
		Tcl_GetString(lineObj));
	Tcl_DecrRefCount(lineObj);
	return SMTP_PARSE_ERROR;
    }
    code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    if (!p->started) {
	Tcl_Size tlen;
	const char *t;

	p->started = 1;
	p->cur.code = code;
	p->cur.text = LineText(s, n);
	Tcl_IncrRefCount(p->cur.text);
	p->cur.lines = Tcl_NewListObj(0, NULL);
	Tcl_IncrRefCount(p->cur.lines);
	p->cur.raw = Tcl_NewListObj(0, NULL);
	Tcl_IncrRefCount(p->cur.raw);
	t = Tcl_GetStringFromObj(p->cur.text, &tlen);
	ParseEnhanced(code, t, tlen, p->cur.enhanced);
    } else {
	if (code != p->cur.code) {
	    *errOut = Tcl_ObjPrintf("reply code changed within a reply: %s",
		    Tcl_GetString(lineObj));
	    Tcl_DecrRefCount(lineObj);
	    return SMTP_PARSE_ERROR;
	}
	Tcl_ListObjAppendElement(NULL, p->cur.lines, LineText(s, n));
    }
    Tcl_ListObjAppendElement(NULL, p->cur.raw, lineObj);
    if (++p->nlines > SMTP_MAX_LINES) {
	*errOut = Tcl_NewStringObj("reply has too many lines", -1);
	return SMTP_PARSE_ERROR;
    }
    return (n > 3 && s[3] == '-') ? SMTP_PARSE_MORE : SMTP_PARSE_REPLY;
}

/*
 * Consumes bytes up to the end of the first complete reply. Returns
 * SMTP_PARSE_REPLY with the reply moved into *out (which the caller clears),
 * SMTP_PARSE_MORE when all bytes were consumed without completing a reply,
 * or SMTP_PARSE_ERROR with a message in *errOut (refcount 0). *used is the
 * number of bytes consumed.
 */

int
SmtpReplyParse(
    SmtpReplyParser *p,
    const unsigned char *bytes,
    size_t len,
    size_t *used,
    SmtpReply *out,
    Tcl_Obj **errOut)
{
    size_t i = 0;

    *used = 0;
    while (i < len) {
	const unsigned char *nl = memchr(bytes + i, '\n', len - i);
	size_t take = nl ? (size_t) (nl - (bytes + i)) : len - i;
	const unsigned char *s;
	size_t n;
	int r;

	if (SmtpBufAvail(&p->line) + take > SMTP_MAX_LINE) {
	    *errOut = Tcl_NewStringObj("reply line too long", -1);
	    *used = i;
	    return SMTP_PARSE_ERROR;
	}
	if (nl == NULL) {
	    SmtpBufAppend(&p->line, bytes + i, take);
	    i = len;
	    break;
	}
	if (SmtpBufAvail(&p->line) > 0) {
	    SmtpBufAppend(&p->line, bytes + i, take);
	    s = SmtpBufPtr(&p->line);
	    n = SmtpBufAvail(&p->line);
	} else {
	    s = bytes + i;
	    n = take;
	}
	i += take + 1;
	if (n > 0 && s[n - 1] == '\r') {
	    n--;
	}
	r = ParseLine(p, s, n, errOut);
	p->line.pos = p->line.len = 0;
	if (r == SMTP_PARSE_ERROR) {
	    *used = i;
	    return r;
	}
	if (r == SMTP_PARSE_REPLY) {
	    *out = p->cur;
	    SmtpReplyInit(&p->cur);
	    p->started = 0;
	    p->nlines = 0;
	    *used = i;
	    return SMTP_PARSE_REPLY;
	}
    }
    *used = i;
    return SMTP_PARSE_MORE;
}

/*
 * Tells whether the EHLO capability list 'caps' (the reply's later lines)
 * has 'keyword', case-insensitively. The keyword's parameters, if wanted,
 * go to *paramsOut as a new list. "AUTH=..." lines count as AUTH.
 */

int
SmtpHasExtension(
    Tcl_Obj *caps,
    const char *keyword,
    Tcl_Obj **paramsOut)
{
    Tcl_Size n, i, klen = (Tcl_Size) strlen(keyword);
    Tcl_Obj **elems;

    if (caps == NULL || Tcl_ListObjGetElements(NULL, caps, &n, &elems)
	    != TCL_OK) {
	return 0;
    }
    for (i = 0; i < n; i++) {
	Tcl_Size len;
	const char *s = Tcl_GetStringFromObj(elems[i], &len);

	if (len >= klen && Tcl_UtfNcasecmp(s, keyword, (unsigned long) klen) == 0
		&& (len == klen || s[klen] == ' ' || s[klen] == '=')) {
	    if (paramsOut) {
		Tcl_Obj *p = Tcl_NewListObj(0, NULL);
		const char *q = s + klen;

		while (*q) {
		    const char *e;

		    while (*q == ' ' || *q == '=') {
			q++;
		    }
		    e = q;
		    while (*e && *e != ' ') {
			e++;
		    }
		    if (e > q) {
			Tcl_ListObjAppendElement(NULL, p,
				Tcl_NewStringObj(q, (Tcl_Size) (e - q)));
		    }
		    q = e;
		}
		*paramsOut = p;
	    }
	    return 1;
	}
    }
    return 0;
}

/*
 * The diagnostic tcllib reports for a reply: the text after the code.
 */

Tcl_Obj *
SmtpReplyDiagnostic(
    const SmtpReply *r)
{
    return r->text ? r->text : Tcl_NewObj();
}
