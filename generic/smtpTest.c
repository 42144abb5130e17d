/*
 * smtpTest.c --
 *
 *	Commands in ::smtp::internal that let the test suite drive the pure
 *	parts of the core (reply parser, DATA encoder) with byte strings. They
 *	are not part of the package's interface.
 */

#include "smtpInt.h"
#include <stdint.h>

/*
 * ::smtp::internal::dataencode bytes ?chunk? ?clean?
 *
 * Returns the DATA encoding of bytes, terminator included, feeding the
 * encoder 'chunk' bytes at a time (default: all at once); with clean
 * true, through the encoder for input whose line ends are all CRLF.
 */

static int
DataEncodeObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Tcl_Size len, pos = 0;
    int chunk = 0, clean = 0;
    const unsigned char *p;
    SmtpDataEnc enc;
    SmtpBuf out;
    Tcl_DString scratch;

    (void) clientData;
    if (objc < 2 || objc > 4) {
	Tcl_WrongNumArgs(interp, 1, objv, "bytes ?chunk? ?clean?");
	return TCL_ERROR;
    }
    if (objc == 4 && Tcl_GetBooleanFromObj(interp, objv[3], &clean)
	    != TCL_OK) {
	return TCL_ERROR;
    }
    if (objc >= 3 && (Tcl_GetIntFromObj(interp, objv[2], &chunk) != TCL_OK
	    || chunk < 0)) {
	Tcl_SetObjResult(interp, Tcl_NewStringObj(
		"chunk must be a non-negative integer", -1));
	return TCL_ERROR;
    }
    p = SmtpGetBytes(objv[1], &len, &scratch);
    if (chunk == 0) {
	chunk = (int) (len > 0 ? len : 1);
    }
    SmtpDataInit(&enc);
    SmtpBufInit(&out);
    while (pos < len) {
	Tcl_Size n = len - pos < chunk ? len - pos : chunk;

	if (clean) {
	    SmtpDataEncodeClean(&enc, p + pos, (size_t) n, &out);
	} else {
	    SmtpDataEncode(&enc, p + pos, (size_t) n, &out);
	}
	pos += n;
    }
    SmtpDataFinish(&enc, &out);
    Tcl_SetObjResult(interp, Tcl_NewByteArrayObj(SmtpBufPtr(&out),
	    (Tcl_Size) SmtpBufAvail(&out)));
    SmtpBufFree(&out);
    Tcl_DStringFree(&scratch);
    return TCL_OK;
}

/*
 * ::smtp::internal::datasize bytes
 *
 * Returns the RFC 1870 size of the message bytes.
 *
 * ::smtp::internal::lowbytes value
 *
 * Returns the octets the package takes from a value (SmtpGetBytes): each
 * character's low 8 bits, without changing the value's representation,
 * so that a test can compare them with Tcl's own conversion of the same
 * value afterwards.
 *
 * clientData says which: 0 datasize, 1 lowbytes.
 */

static int
BytesObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    int lowbytes = (clientData != NULL);
    Tcl_Size len;
    const unsigned char *p;
    Tcl_DString scratch;

    if (objc != 2) {
	Tcl_WrongNumArgs(interp, 1, objv, lowbytes ? "value" : "bytes");
	return TCL_ERROR;
    }
    p = SmtpGetBytes(objv[1], &len, &scratch);
    Tcl_SetObjResult(interp, lowbytes ? Tcl_NewByteArrayObj(p, len)
	    : Tcl_NewWideIntObj(SmtpDataSize(p, (size_t) len)));
    Tcl_DStringFree(&scratch);
    return TCL_OK;
}

/*
 * ::smtp::internal::rawstring bytes
 *
 * Returns a value whose string form is exactly the given octets, well-formed
 * UTF-8 or not (what "encoding convertfrom identity" made in Tcl 8.6; Tcl
 * 9 has no such encoding), for the tests of SmtpGetBytes on malformed
 * string forms.
 */

static int
RawStringObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Tcl_Size len;
    const unsigned char *p;
    Tcl_DString scratch;

    (void) clientData;
    if (objc != 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "bytes");
	return TCL_ERROR;
    }
    p = SmtpGetBytes(objv[1], &len, &scratch);
    Tcl_SetObjResult(interp, Tcl_NewStringObj((const char *) p, len));
    Tcl_DStringFree(&scratch);
    return TCL_OK;
}

/*
 * ::smtp::internal::replyparse bytes ?chunk?
 *
 * Parses server output fed 'chunk' bytes at a time. Returns a list with
 * one element per complete reply, {code enhanced text lines}, followed,
 * when the input is malformed, by {error message}.
 */

static int
ReplyParseObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Tcl_Size len, pos = 0;
    int chunk = 0;
    const unsigned char *p;
    SmtpReplyParser parser;
    Tcl_Obj *result = Tcl_NewListObj(0, NULL);
    Tcl_DString scratch;

    (void) clientData;
    if (objc < 2 || objc > 3) {
	Tcl_WrongNumArgs(interp, 1, objv, "bytes ?chunk?");
	return TCL_ERROR;
    }
    if (objc == 3 && (Tcl_GetIntFromObj(interp, objv[2], &chunk) != TCL_OK
	    || chunk < 0)) {
	Tcl_SetObjResult(interp, Tcl_NewStringObj(
		"chunk must be a non-negative integer", -1));
	return TCL_ERROR;
    }
    p = SmtpGetBytes(objv[1], &len, &scratch);
    if (chunk == 0) {
	chunk = (int) (len > 0 ? len : 1);
    }
    SmtpReplyParserInit(&parser);
    while (pos < len) {
	Tcl_Size n = len - pos < chunk ? len - pos : chunk;
	size_t used = 0, off = 0;

	while (off < (size_t) n) {
	    SmtpReply r;
	    Tcl_Obj *err = NULL, *e;
	    int st;

	    SmtpReplyInit(&r);
	    st = SmtpReplyParse(&parser, p + pos + off, (size_t) n - off,
		    &used, &r, &err);
	    off += used;
	    if (st == SMTP_PARSE_ERROR) {
		e = Tcl_NewListObj(0, NULL);
		Tcl_ListObjAppendElement(NULL, e, Tcl_NewStringObj("error",
			-1));
		Tcl_ListObjAppendElement(NULL, e, err);
		Tcl_ListObjAppendElement(NULL, result, e);
		SmtpReplyParserFree(&parser);
		Tcl_DStringFree(&scratch);
		Tcl_SetObjResult(interp, result);
		return TCL_OK;
	    }
	    if (st == SMTP_PARSE_MORE) {
		break;
	    }
	    e = Tcl_NewListObj(0, NULL);
	    Tcl_ListObjAppendElement(NULL, e, Tcl_NewIntObj(r.code));
	    Tcl_ListObjAppendElement(NULL, e,
		    Tcl_NewStringObj(r.enhanced, -1));
	    Tcl_ListObjAppendElement(NULL, e, r.text);
	    Tcl_ListObjAppendElement(NULL, e, r.lines);
	    Tcl_ListObjAppendElement(NULL, result, e);
	    SmtpReplyClear(&r);
	}
	pos += n;
    }
    SmtpReplyParserFree(&parser);
    Tcl_DStringFree(&scratch);
    Tcl_SetObjResult(interp, result);
    return TCL_OK;
}

/*
 * ::smtp::internal::loopback bool
 *
 * With 0, servers on loopback addresses are treated as remote in this
 * interpreter (for the tests of the rule that keeps credentials off clear
 * connections to remote servers).
 */

static int
LoopbackObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    int on;

    (void) clientData;
    if (objc != 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "boolean");
	return TCL_ERROR;
    }
    if (Tcl_GetBooleanFromObj(interp, objv[1], &on) != TCL_OK) {
	return TCL_ERROR;
    }
    if (on) {
	Tcl_DeleteAssocData(interp, SMTP_NOLOOPBACK_KEY);
    } else {
	Tcl_SetAssocData(interp, SMTP_NOLOOPBACK_KEY, NULL, (void *) interp);
    }
    return TCL_OK;
}

void
SmtpTestInit(
    Tcl_Interp *interp)
{
    Tcl_CreateObjCommand(interp, "::smtp::internal::loopback",
	    LoopbackObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::smtp::internal::dataencode",
	    DataEncodeObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::smtp::internal::lowbytes",
	    BytesObjCmd, (void *) (intptr_t) 1, NULL);
    Tcl_CreateObjCommand(interp, "::smtp::internal::datasize",
	    BytesObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::smtp::internal::rawstring",
	    RawStringObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::smtp::internal::replyparse",
	    ReplyParseObjCmd, NULL, NULL);
    SmtpPlatformTestInit(interp);
}
