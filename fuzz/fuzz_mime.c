/*
 * fuzz_mime.c --
 *
 *	The message writer (SmtpMimeWriter, smtpMime.c) over random trees of
 *	tcllib mime tokens, made with mime::initialize in an interpreter of
 *	this process: leaves of string or binary content of several types,
 *	declared encodings and headers, multiparts and message/rfc822 parts,
 *	nested. No network: the writer's source is read to its end here.
 *
 *	Checked: the bytes read are exactly the size announced (which
 *	SIZE= and BDAT use), every line ends in CRLF and none is longer than
 *	998 octets (the source says it is clean: DATA then only stuffs dots),
 *	and a message with an octet over 127 is marked eight-bit (BODY=8BITMIME).
 *
 *	Input: a small program. Each node starts with a byte: its low bits
 *	choose leaf, multipart or message; a leaf takes a type, an encoding,
 *	a header and its content from the bytes that follow, each piece ended
 *	by "\n|" (or the end of the input).
 */

#include "fuzz.h"

static const char *const leafTypes[] = {
    "text/plain", "text/html", "application/octet-stream", "image/png",
    "text/plain; charset=utf-8", "application/pdf", "text/x-empty",
    "message/delivery-status"
};
static const char *const multiTypes[] = {
    "multipart/mixed", "multipart/alternative", "multipart/related",
    "multipart/digest"
};
static const char *const encodings[] = {
    NULL, "7bit", "8bit", "binary", "quoted-printable", "base64"
};
static const char *const headerNames[] = {
    NULL, "Subject", "X-Fuzz", "Content-Description", "Content-ID",
    "From", "To", "Comments"
};

#define COUNT(a)	((unsigned) (sizeof(a) / sizeof((a)[0])))
#define MAX_NODES	24

static Tcl_Obj *
Piece(
    FuzzIn *in,
    int binary)
{
    const uint8_t *p;
    size_t n;

    if (!FuzzSplit(in, "\n|", &p, &n)) {
	p = (const uint8_t *) "";
	n = 0;
    }
    return binary ? Tcl_NewByteArrayObj(p, (Tcl_Size) n)
	    : Tcl_NewStringObj((const char *) p, (Tcl_Size) n);
}

/*
 * Makes a token from the input; returns it (a new object) or NULL when
 * mime refused what was asked. 'tokens' collects every token made, for
 * mime::finalize.
 */

static Tcl_Obj *
Build(
    Tcl_Interp *interp,
    FuzzIn *in,
    int depth,
    int *nodes,
    Tcl_Obj *tokens)
{
    unsigned op = FuzzByte(in), a = FuzzByte(in);
    Tcl_Obj *cmd = Tcl_NewListObj(0, NULL), *tok = NULL;
    int kind = (int) (op & 3);

    Tcl_IncrRefCount(cmd);
    (*nodes)++;
    if (depth >= 4 || *nodes >= MAX_NODES || in->n == 0) {
	kind = 0;
    }
    Tcl_ListObjAppendElement(NULL, cmd, Tcl_NewStringObj("::mime::initialize", -1));
    if (kind == 0 || kind == 3) {
	const char *enc = encodings[(op >> 2) % COUNT(encodings)];
	const char *hdr = headerNames[(op >> 5) % COUNT(headerNames)];

	Tcl_ListObjAppendElement(NULL, cmd, Tcl_NewStringObj("-canonical", -1));
	Tcl_ListObjAppendElement(NULL, cmd,
		Tcl_NewStringObj(leafTypes[a % COUNT(leafTypes)], -1));
	if (enc) {
	    Tcl_ListObjAppendElement(NULL, cmd, Tcl_NewStringObj("-encoding", -1));
	    Tcl_ListObjAppendElement(NULL, cmd, Tcl_NewStringObj(enc, -1));
	}
	if (hdr) {
	    Tcl_Obj *pair = Tcl_NewListObj(0, NULL);

	    Tcl_ListObjAppendElement(NULL, pair, Tcl_NewStringObj(hdr, -1));
	    Tcl_ListObjAppendElement(NULL, pair, Piece(in, 0));
	    Tcl_ListObjAppendElement(NULL, cmd, Tcl_NewStringObj("-header", -1));
	    Tcl_ListObjAppendElement(NULL, cmd, pair);
	}
	Tcl_ListObjAppendElement(NULL, cmd, Tcl_NewStringObj("-string", -1));
	Tcl_ListObjAppendElement(NULL, cmd, Piece(in, (a & 0x80) != 0));
    } else {
	Tcl_Obj *parts = Tcl_NewListObj(0, NULL);
	int i, nparts = (kind == 2) ? 1 : (int) ((a >> 4) % 4);

	for (i = 0; i < nparts; i++) {
	    Tcl_Obj *sub = Build(interp, in, depth + 1, nodes, tokens);

	    if (sub == NULL) {
		Tcl_DecrRefCount(parts);
		Tcl_DecrRefCount(cmd);
		return NULL;
	    }
	    Tcl_ListObjAppendElement(NULL, parts, sub);
	}
	Tcl_ListObjAppendElement(NULL, cmd, Tcl_NewStringObj("-canonical", -1));
	Tcl_ListObjAppendElement(NULL, cmd, Tcl_NewStringObj(kind == 2
		? "message/rfc822" : multiTypes[a % COUNT(multiTypes)], -1));
	Tcl_ListObjAppendElement(NULL, cmd, Tcl_NewStringObj("-parts", -1));
	Tcl_ListObjAppendElement(NULL, cmd, parts);
    }
    if (Tcl_EvalObjEx(interp, cmd, TCL_EVAL_GLOBAL) == TCL_OK) {
	tok = Tcl_GetObjResult(interp);
	Tcl_IncrRefCount(tok);
	Tcl_ListObjAppendElement(NULL, tokens, tok);
    }
    Tcl_ResetResult(interp);
    Tcl_DecrRefCount(cmd);
    if (tok) {
	Tcl_DecrRefCount(tok);	/* tokens holds it. */
    }
    return tok;
}

static void
CheckMessage(
    SmtpMessage *m)
{
    SmtpBuf out;
    Tcl_Obj *err = NULL;
    size_t i, line = 0;
    int st, high = 0;

    SmtpBufInit(&out);
    do {
	st = m->body.read(m->body.cd, &out, 4096, &err);
	FUZZ_CHECK(st >= 0, "the writer failed on string content");
    } while (st == 0);
    FUZZ_CHECK((Tcl_WideInt) SmtpBufAvail(&out) == m->size,
	    "size announced differs from the bytes written");
    FUZZ_CHECK(m->body.clean, "writer's source not clean");
    for (i = 0; i < SmtpBufAvail(&out); i++) {
	unsigned char c = SmtpBufPtr(&out)[i];

	if (c == '\r') {
	    FUZZ_CHECK(i + 1 < SmtpBufAvail(&out)
		    && SmtpBufPtr(&out)[i + 1] == '\n', "bare CR");
	    i++;
	    line = 0;
	    continue;
	}
	FUZZ_CHECK(c != '\n', "bare LF");
	high |= c >= 0x80;
	line++;
	FUZZ_CHECK(line <= 998, "line over 998 octets");
    }
    FUZZ_CHECK(SmtpBufAvail(&out) == 0 || line == 0,
	    "message does not end with CRLF");
    FUZZ_CHECK(!high || m->eightbit, "eight-bit octets, not marked");
    SmtpBufFree(&out);
}

int
LLVMFuzzerTestOneInput(
    const uint8_t *data,
    size_t size)
{
    Tcl_Interp *interp = FuzzInterp(1);
    FuzzIn in = {data, size};
    Tcl_Obj *tokens = Tcl_NewListObj(0, NULL), *root, **elems;
    Tcl_Size n, i;
    int nodes = 0;

    if (size > 16384) {
	return 0;
    }
    Tcl_IncrRefCount(tokens);
    root = Build(interp, &in, 0, &nodes, tokens);
    if (root != NULL) {
	SmtpMessage m;
	Tcl_Obj *why = NULL;
	int code;

	memset(&m, 0, sizeof(m));
	Tcl_IncrRefCount(root);
	code = SmtpMimeWriter(interp, root, &m, &why);
	if (code == TCL_OK) {
	    CheckMessage(&m);
	    SmtpSourceClose(&m.body);
	} else if (code == TCL_CONTINUE) {
	    FUZZ_CHECK(why != NULL, "unknown shape without a reason");
	    Tcl_DecrRefCount(why);
	}
	Tcl_ResetResult(interp);
	Tcl_DecrRefCount(root);
    }
    Tcl_ListObjGetElements(NULL, tokens, &n, &elems);
    for (i = 0; i < n; i++) {
	Tcl_Obj *cmd[2];

	cmd[0] = Tcl_NewStringObj("::mime::finalize", -1);
	cmd[1] = elems[i];
	Tcl_IncrRefCount(cmd[0]);
	(void) Tcl_EvalObjv(interp, 2, cmd, TCL_EVAL_GLOBAL);
	Tcl_DecrRefCount(cmd[0]);
    }
    Tcl_ResetResult(interp);
    Tcl_DecrRefCount(tokens);
    return 0;
}
