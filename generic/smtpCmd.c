/*
 * smtpCmd.c --
 *
 *	::smtp::sendmessage: option parsing, tcllib's header and envelope
 *	rules, and the message as the mime package writes it. The dialogue
 *	itself is smtpProto.c's.
 */

#include "smtpInt.h"

/*
 * Headers gathered from -header options and added by the rules, in order:
 * parallel lists of lower-case and given-case names, and a dict from the
 * lower-case name to the list of its values.
 */

typedef struct Headers {
    Tcl_Obj *lowerL;
    Tcl_Obj *mixedL;
    Tcl_Obj *values;
} Headers;

static void
HeadersInit(
    Headers *h)
{
    h->lowerL = Tcl_NewListObj(0, NULL);
    h->mixedL = Tcl_NewListObj(0, NULL);
    h->values = Tcl_NewDictObj();
    Tcl_IncrRefCount(h->lowerL);
    Tcl_IncrRefCount(h->mixedL);
    Tcl_IncrRefCount(h->values);
}

static void
HeadersFree(
    Headers *h)
{
    Tcl_DecrRefCount(h->lowerL);
    Tcl_DecrRefCount(h->mixedL);
    Tcl_DecrRefCount(h->values);
}

/*
 * Returns the index of 'lower' in the header list, or -1.
 */

static Tcl_Size
HeadersFind(
    Headers *h,
    const char *lower)
{
    Tcl_Size n, i;
    Tcl_Obj **elems;

    Tcl_ListObjGetElements(NULL, h->lowerL, &n, &elems);
    for (i = 0; i < n; i++) {
	if (strcmp(Tcl_GetString(elems[i]), lower) == 0) {
	    return i;
	}
    }
    return -1;
}

/*
 * Returns the values of a header (a list, not owned), or NULL.
 */

static Tcl_Obj *
HeadersGet(
    Headers *h,
    const char *lower)
{
    Tcl_Obj *key = Tcl_NewStringObj(lower, -1), *v = NULL;

    Tcl_IncrRefCount(key);
    Tcl_DictObjGet(NULL, h->values, key, &v);
    Tcl_DecrRefCount(key);
    return v;
}

/*
 * Appends a value to a header, adding the header (in the given case) at the
 * end of the order when it is new.
 */

static void
HeadersAdd(
    Headers *h,
    const char *lower,
    const char *mixed,
    Tcl_Obj *value)
{
    Tcl_Obj *key = Tcl_NewStringObj(lower, -1), *v = NULL;

    Tcl_IncrRefCount(key);
    if (HeadersFind(h, lower) < 0) {
	Tcl_ListObjAppendElement(NULL, h->lowerL, key);
	Tcl_ListObjAppendElement(NULL, h->mixedL,
		Tcl_NewStringObj(mixed, -1));
    }
    Tcl_DictObjGet(NULL, h->values, key, &v);
    v = v ? Tcl_DuplicateObj(v) : Tcl_NewListObj(0, NULL);
    Tcl_ListObjAppendElement(NULL, v, value);
    Tcl_DictObjPut(NULL, h->values, key, v);
    Tcl_DecrRefCount(key);
}

static void
HeadersRemove(
    Headers *h,
    const char *lower)
{
    Tcl_Size i = HeadersFind(h, lower);
    Tcl_Obj *key = Tcl_NewStringObj(lower, -1);

    Tcl_IncrRefCount(key);
    if (i >= 0) {
	Tcl_ListObjReplace(NULL, h->lowerL, i, 1, 0, NULL);
	Tcl_ListObjReplace(NULL, h->mixedL, i, 1, 0, NULL);
    }
    Tcl_DictObjRemove(NULL, h->values, key);
    Tcl_DecrRefCount(key);
}

/*
 * The values of a header joined with commas, as tcllib joins them.
 */

static Tcl_Obj *
HeadersJoined(
    Headers *h,
    const char *lower)
{
    Tcl_Obj *v = HeadersGet(h, lower), *r = Tcl_NewObj(), **elems;
    Tcl_Size n, i;

    if (v && Tcl_ListObjGetElements(NULL, v, &n, &elems) == TCL_OK) {
	for (i = 0; i < n; i++) {
	    if (i) {
		Tcl_AppendToObj(r, ",", 1);
	    }
	    Tcl_AppendObjToObj(r, elems[i]);
	}
    }
    return r;
}

/*
 * Calls a Tcl command whose words are given, NULL-terminated. On success
 * *resultPtr (if not NULL) receives the result with a reference held.
 */

static int
Call(
    Tcl_Interp *interp,
    Tcl_Obj **resultPtr,
    ...)
{
    Tcl_Obj *objv[32];
    int objc = 0, i, code;
    va_list ap;

    va_start(ap, resultPtr);
    while (objc < 32 && (objv[objc] = va_arg(ap, Tcl_Obj *)) != NULL) {
	Tcl_IncrRefCount(objv[objc]);
	objc++;
    }
    va_end(ap);
    code = Tcl_EvalObjv(interp, objc, objv, TCL_EVAL_GLOBAL);
    for (i = 0; i < objc; i++) {
	Tcl_DecrRefCount(objv[i]);
    }
    if (code == TCL_OK && resultPtr) {
	*resultPtr = Tcl_GetObjResult(interp);
	Tcl_IncrRefCount(*resultPtr);
    }
    return code;
}

#define S(str)	Tcl_NewStringObj((str), -1)

/*
 * tcllib's boolean: exactly 0/1/false/true/no/yes/off/on in any case.
 */

static int
GetBoolean(
    Tcl_Interp *interp,
    Tcl_Obj *obj,
    int *out)
{
    static const char *const names[] = {
	"0", "false", "no", "off", "1", "true", "yes", "on", NULL
    };
    Tcl_Obj *lower = Tcl_DuplicateObj(obj);
    int idx;

    Tcl_IncrRefCount(lower);
    Tcl_SetObjLength(lower, Tcl_UtfToLower(Tcl_GetString(lower)));
    if (Tcl_GetIndexFromObj(NULL, lower, names, "boolean", TCL_EXACT, &idx)
	    != TCL_OK) {
	Tcl_DecrRefCount(lower);
	Tcl_SetObjResult(interp, Tcl_ObjPrintf("unknown boolean value: %s",
		Tcl_GetString(obj)));
	Tcl_SetErrorCode(interp, "SMTP", "OPTION", "BOOLEAN", NULL);
	return TCL_ERROR;
    }
    Tcl_DecrRefCount(lower);
    *out = idx >= 4;
    return TCL_OK;
}

static int
OptionError(
    Tcl_Interp *interp,
    Tcl_Obj *msg)
{
    Tcl_SetObjResult(interp, msg);
    Tcl_SetErrorCode(interp, "SMTP", "OPTION", NULL);
    return TCL_ERROR;
}

/*
 * Tells whether an address holds a control character (CR, LF and NUL
 * among them), which would break the command line it goes into.
 */

static int
HasControl(
    Tcl_Obj *addr)
{
    Tcl_Size len, i;
    const char *p = Tcl_GetStringFromObj(addr, &len);

    for (i = 0; i < len; i++) {
	unsigned char c = (unsigned char) p[i];

	/* Tcl writes NUL as the two bytes C0 80. */
	if (c < 0x20 || c == 0x7F || (c == 0xC0 && i + 1 < len
		&& (unsigned char) p[i + 1] == 0x80)) {
	    return 1;
	}
    }
    return 0;
}

enum { ADDR_ALL, ADDR_ONE, ADDR_FIRST };

/*
 * The fast path of address parsing: a string that is only plain
 * addresses, local@domain (a dot-atom at a domain of letters, digits and
 * hyphens), separated by commas and blanks, is split here, where
 * mime::parseaddress would return each address unchanged. Returns a new
 * list, or NULL when the string needs the full parser.
 */

static int
AtomChar(
    unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
	    || (c >= '0' && c <= '9') || (c != 0 && strchr("!#$%&'*+/=?^_`{|}~-",
		c) != NULL);
}

static int
DomainChar(
    unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
	    || (c >= '0' && c <= '9') || c == '-';
}

static Tcl_Obj *
FastAddresses(
    Tcl_Obj *string)
{
    Tcl_Size len, i = 0;
    const char *p = Tcl_GetStringFromObj(string, &len);
    Tcl_Obj *list = Tcl_NewListObj(0, NULL);

    while (1) {
	Tcl_Size start, j;
	int part;

	while (i < len && (p[i] == ' ' || p[i] == '\t')) {
	    i++;
	}
	start = i;
	/* local part, '@', domain: runs of allowed characters between dots */
	for (part = 0; part < 2; part++) {
	    for (;;) {
		j = i;
		while (i < len && (part ? DomainChar((unsigned char) p[i])
			: AtomChar((unsigned char) p[i]))) {
		    i++;
		}
		if (i == j) {
		    goto slow;
		}
		if (i < len && p[i] == '.') {
		    i++;
		    continue;
		}
		break;
	    }
	    if (part == 0) {
		if (i >= len || p[i] != '@') {
		    goto slow;
		}
		i++;
	    }
	}
	Tcl_ListObjAppendElement(NULL, list,
		Tcl_NewStringObj(p + start, i - start));
	while (i < len && (p[i] == ' ' || p[i] == '\t')) {
	    i++;
	}
	if (i == len) {
	    return list;
	}
	if (p[i] != ',') {
	    goto slow;
	}
	i++;
    }

  slow:
    Tcl_DecrRefCount(list);
    return NULL;
}

/*
 * Checks what -header would put into the message: a field name of visible
 * ASCII without a colon (RFC 5322 section 3.6.8), and a value whose line
 * breaks, if any, are folds (followed by a space or tab), without NUL. No
 * user input may add header lines of its own.
 */

static int
CheckHeader(
    Tcl_Interp *interp,
    Tcl_Obj *name,
    Tcl_Obj *value)
{
    Tcl_Size len, i;
    const char *p = Tcl_GetStringFromObj(name, &len);

    if (len == 0) {
	return OptionError(interp, Tcl_NewStringObj(
		"-header name is empty", -1));
    }
    for (i = 0; i < len; i++) {
	unsigned char c = (unsigned char) p[i];

	if (c <= 0x20 || c >= 0x7F || c == ':') {
	    return OptionError(interp, Tcl_ObjPrintf(
		    "-header name \"%s\" is not a header field name",
		    Tcl_GetString(Tcl_NewStringObj(p, len))));
	}
    }
    p = Tcl_GetStringFromObj(value, &len);
    for (i = 0; i < len; i++) {
	unsigned char c = (unsigned char) p[i];

	if (c == '\r' && i + 1 < len && p[i + 1] == '\n') {
	    continue;
	}
	if ((c == '\r' || c == '\n')
		&& !(i + 1 < len && (p[i + 1] == ' ' || p[i + 1] == '\t'))) {
	    return OptionError(interp, Tcl_ObjPrintf("-header %s: a line"
		    " break in a value must be followed by a space or tab",
		    Tcl_GetString(name)));
	}
	if (c == 0xC0 && i + 1 < len && (unsigned char) p[i + 1] == 0x80) {
	    return OptionError(interp, Tcl_ObjPrintf("-header %s: NUL in"
		    " value", Tcl_GetString(name)));
	}
    }
    return TCL_OK;
}

/*
 * Parses one address string with mime::parseaddress, as tcllib does: the
 * addresses go to *addrsOut (a new list, or NULL when not wanted); a parse
 * error becomes "error in <who>: <diagnostic>". ADDR_ONE refuses more
 * than one mailbox with tcllib's message; ADDR_FIRST looks at the first
 * only. An address with a control character is refused, since it could
 * smuggle commands into the dialogue.
 */

static int
ParseAddresses(
    Tcl_Interp *interp,
    Tcl_Obj *string,
    const char *who,
    int mode,
    Tcl_Obj **addrsOut)
{
    Tcl_Obj *parsed = NULL, **elems, *addrs, *errKey, *addrKey;
    Tcl_Size n, i;
    int code = TCL_OK;

    addrs = FastAddresses(string);
    if (addrs != NULL) {
	Tcl_IncrRefCount(addrs);
	Tcl_ListObjLength(NULL, addrs, &n);
	if (mode == ADDR_ONE && n > 1) {
	    Tcl_DecrRefCount(addrs);
	    return OptionError(interp, Tcl_ObjPrintf(
		    "too many mailboxes in %s: %s", who,
		    Tcl_GetString(string)));
	}
	if (mode == ADDR_FIRST && n > 1) {
	    Tcl_ListObjReplace(NULL, addrs, 1, n - 1, 0, NULL);
	}
	if (addrsOut) {
	    *addrsOut = addrs;
	} else {
	    Tcl_DecrRefCount(addrs);
	}
	return TCL_OK;
    }
    if (Call(interp, &parsed, S("::mime::parseaddress"), string, NULL)
	    != TCL_OK) {
	return TCL_ERROR;
    }
    if (Tcl_ListObjGetElements(interp, parsed, &n, &elems) != TCL_OK) {
	Tcl_DecrRefCount(parsed);
	return TCL_ERROR;
    }
    if (mode == ADDR_ONE && n > 1) {
	Tcl_DecrRefCount(parsed);
	return OptionError(interp, Tcl_ObjPrintf(
		"too many mailboxes in %s: %s", who, Tcl_GetString(string)));
    }
    if (mode == ADDR_FIRST && n > 1) {
	n = 1;
    }
    errKey = S("error");
    addrKey = S("address");
    Tcl_IncrRefCount(errKey);
    Tcl_IncrRefCount(addrKey);
    addrs = Tcl_NewListObj(0, NULL);
    Tcl_IncrRefCount(addrs);
    if (mode != ADDR_ALL && n == 0) {
	/* tcllib's default diagnostic, which it never substitutes. */
	code = OptionError(interp, Tcl_ObjPrintf(
		"error in %s: invalid address \"$from\"", who));
    }
    for (i = 0; code == TCL_OK && i < n; i++) {
	Tcl_Obj *err = NULL, *addr = NULL;

	if (Tcl_DictObjGet(interp, elems[i], errKey, &err) != TCL_OK
		|| Tcl_DictObjGet(interp, elems[i], addrKey, &addr)
		    != TCL_OK) {
	    Tcl_SetErrorCode(interp, "SMTP", "OPTION", NULL);
	    code = TCL_ERROR;
	    break;
	}
	if (err && Tcl_GetCharLength(err) > 0) {
	    code = OptionError(interp, Tcl_ObjPrintf("error in %s: %s", who,
		    Tcl_GetString(err)));
	    break;
	}
	if (addr == NULL) {
	    addr = Tcl_NewObj();
	}
	if (HasControl(addr)) {
	    code = OptionError(interp, Tcl_ObjPrintf("error in %s: control"
		    " character in address", who));
	    break;
	}
	Tcl_ListObjAppendElement(NULL, addrs, addr);
    }
    Tcl_DecrRefCount(errKey);
    Tcl_DecrRefCount(addrKey);
    Tcl_DecrRefCount(parsed);
    if (code == TCL_OK && addrsOut) {
	*addrsOut = addrs;
    } else {
	Tcl_DecrRefCount(addrs);
    }
    return code;
}

/*
 * The headers of a token as they were before sendmessage added its own,
 * so the token can be given back exactly as the caller passed it.
 */

typedef struct Saved {
    int exact;			/* The token's array layout was known. */
    Tcl_Obj *header, *lowerL, *mixedL;
    Tcl_Obj *fallback;		/* Otherwise: {lower present values} ... */
} Saved;

static const char *const savedKeys[] = {"header", "lowerL", "mixedL"};

static void
SaveToken(
    Tcl_Interp *interp,
    Tcl_Obj *part,
    Headers *h,
    Saved *sv)
{
    const char *name = Tcl_GetString(part);
    Tcl_Obj **slots[3];
    Tcl_Size n, i;
    Tcl_Obj **lowers;
    int k;

    memset(sv, 0, sizeof(Saved));
    slots[0] = &sv->header;
    slots[1] = &sv->lowerL;
    slots[2] = &sv->mixedL;
    sv->exact = 1;
    for (k = 0; k < 3; k++) {
	*slots[k] = Tcl_GetVar2Ex(interp, name, savedKeys[k],
		TCL_GLOBAL_ONLY);
	if (*slots[k] == NULL) {
	    sv->exact = 0;
	}
    }
    if (sv->exact) {
	for (k = 0; k < 3; k++) {
	    Tcl_IncrRefCount(*slots[k]);
	}
	return;
    }
    for (k = 0; k < 3; k++) {
	*slots[k] = NULL;
    }
    sv->fallback = Tcl_NewListObj(0, NULL);
    Tcl_IncrRefCount(sv->fallback);
    Tcl_ListObjGetElements(NULL, h->lowerL, &n, &lowers);
    for (i = 0; i < n; i++) {
	Tcl_Obj *vals = NULL, *e = Tcl_NewListObj(0, NULL);
	int ok = Call(interp, &vals, S("::mime::getheader"), part, lowers[i],
		NULL) == TCL_OK;

	Tcl_ListObjAppendElement(NULL, e, lowers[i]);
	Tcl_ListObjAppendElement(NULL, e, Tcl_NewBooleanObj(ok));
	Tcl_ListObjAppendElement(NULL, e, ok ? vals : Tcl_NewObj());
	if (vals) {
	    Tcl_DecrRefCount(vals);
	}
	Tcl_ListObjAppendElement(NULL, sv->fallback, e);
    }
    Tcl_ResetResult(interp);
}

static void
RestoreToken(
    Tcl_Interp *interp,
    Tcl_Obj *part,
    Saved *sv)
{
    Tcl_InterpState st = Tcl_SaveInterpState(interp, TCL_OK);

    if (sv->exact) {
	const char *name = Tcl_GetString(part);

	Tcl_SetVar2Ex(interp, name, "header", sv->header, TCL_GLOBAL_ONLY);
	Tcl_SetVar2Ex(interp, name, "lowerL", sv->lowerL, TCL_GLOBAL_ONLY);
	Tcl_SetVar2Ex(interp, name, "mixedL", sv->mixedL, TCL_GLOBAL_ONLY);
	Tcl_DecrRefCount(sv->header);
	Tcl_DecrRefCount(sv->lowerL);
	Tcl_DecrRefCount(sv->mixedL);
    } else {
	Tcl_Size n, i;
	Tcl_Obj **entries;

	Tcl_ListObjGetElements(NULL, sv->fallback, &n, &entries);
	for (i = 0; i < n; i++) {
	    Tcl_Obj **f, **vals;
	    Tcl_Size nf, nv, j;
	    int present;

	    Tcl_ListObjGetElements(NULL, entries[i], &nf, &f);
	    Tcl_GetBooleanFromObj(NULL, f[1], &present);
	    Call(interp, NULL, S("::mime::setheader"), part, f[0], S(""),
		    S("-mode"), S("delete"), NULL);
	    if (present) {
		Tcl_ListObjGetElements(NULL, f[2], &nv, &vals);
		for (j = 0; j < nv; j++) {
		    Call(interp, NULL, S("::mime::setheader"), part, f[0],
			    vals[j], S("-mode"), S("append"), NULL);
		}
	    }
	}
	Tcl_DecrRefCount(sv->fallback);
    }
    Tcl_RestoreInterpState(interp, st);
}

/*
 * Adds the gathered headers to the token, as tcllib does, for the message
 * to be written.
 */

/*
 * What "mime::setheader part key value -mode append" does for each value,
 * done on the token's lists at once instead of one Tcl call per value:
 * a header new to the token goes at the end of lowerL and mixedL, and
 * each value is appended to its list in the header dictionary. Only for
 * the headers that setheader takes without question: Content-Type,
 * Content-Transfer-Encoding, Content-MD5 and MIME-Version are checked by
 * setheader against mime::getheader, so with any of those (or a token
 * whose lists are not as mime 1.7 keeps them, or mime's "internal" flag
 * set) this returns 0 with the token untouched, for the calls. Returns 1
 * when done, -1 (error in the interpreter) when a variable of the token
 * could not be set.
 */

static int
ApplyHeadersDirect(
    Tcl_Interp *interp,
    Tcl_Obj *part,
    Headers *h)
{
    static const char *const checked[] = {
	"content-type", "content-transfer-encoding", "content-md5",
	"mime-version", NULL
    };
    const char *name = Tcl_GetString(part);
    Tcl_Obj *header, *lowerL, *mixedL, *internal, **lowers, **mixeds;
    Tcl_Size n, nm, i, k, size;
    int flag, ok = 1;

    internal = Tcl_GetVar2Ex(interp, "::mime::internal", NULL,
	    TCL_GLOBAL_ONLY);
    header = Tcl_GetVar2Ex(interp, name, "header", TCL_GLOBAL_ONLY);
    lowerL = Tcl_GetVar2Ex(interp, name, "lowerL", TCL_GLOBAL_ONLY);
    mixedL = Tcl_GetVar2Ex(interp, name, "mixedL", TCL_GLOBAL_ONLY);
    if (internal == NULL || Tcl_GetBooleanFromObj(NULL, internal, &flag)
	    != TCL_OK || flag || header == NULL || lowerL == NULL
	    || mixedL == NULL || Tcl_DictObjSize(NULL, header, &size) != TCL_OK
	    || Tcl_ListObjLength(NULL, lowerL, &n) != TCL_OK
	    || Tcl_ListObjLength(NULL, mixedL, &nm) != TCL_OK || n != nm) {
	return 0;
    }
    Tcl_ListObjGetElements(NULL, h->lowerL, &n, &lowers);
    Tcl_ListObjGetElements(NULL, h->mixedL, &nm, &mixeds);
    if (n != nm) {
	return 0;
    }
    for (i = 0; i < n; i++) {
	for (k = 0; checked[k]; k++) {
	    if (strcmp(Tcl_GetString(lowers[i]), checked[k]) == 0) {
		return 0;
	    }
	}
    }
    header = Tcl_DuplicateObj(header);
    lowerL = Tcl_DuplicateObj(lowerL);
    mixedL = Tcl_DuplicateObj(mixedL);
    Tcl_IncrRefCount(header);
    Tcl_IncrRefCount(lowerL);
    Tcl_IncrRefCount(mixedL);
    for (i = 0; i < n && ok; i++) {
	Tcl_Obj *vals = HeadersGet(h, Tcl_GetString(lowers[i]));
	Tcl_Obj *lower, *cur = NULL, **have, **v;
	Tcl_Size nh, nv, j;
	Tcl_DString ds;

	if (vals == NULL
		|| Tcl_ListObjGetElements(NULL, vals, &nv, &v) != TCL_OK
		|| nv == 0) {
	    continue;
	}
	/* setheader's [string tolower $key]. */
	Tcl_DStringInit(&ds);
	Tcl_DStringAppend(&ds, Tcl_GetString(mixeds[i]), -1);
	Tcl_DStringSetLength(&ds, (Tcl_Size) Tcl_UtfToLower(
		Tcl_DStringValue(&ds)));
	lower = Tcl_NewStringObj(Tcl_DStringValue(&ds),
		Tcl_DStringLength(&ds));
	Tcl_DStringFree(&ds);
	Tcl_IncrRefCount(lower);
	Tcl_ListObjGetElements(NULL, lowerL, &nh, &have);
	for (j = 0; j < nh; j++) {
	    if (strcmp(Tcl_GetString(have[j]), Tcl_GetString(lower)) == 0) {
		break;
	    }
	}
	if (j == nh) {
	    Tcl_ListObjAppendElement(NULL, lowerL, lower);
	    Tcl_ListObjAppendElement(NULL, mixedL, mixeds[i]);
	}
	if (Tcl_DictObjGet(NULL, header, lower, &cur) != TCL_OK) {
	    ok = 0;
	} else {
	    cur = cur ? Tcl_DuplicateObj(cur) : Tcl_NewListObj(0, NULL);
	    for (j = 0; j < nv && ok; j++) {
		ok = Tcl_ListObjAppendElement(NULL, cur, v[j]) == TCL_OK;
	    }
	    if (ok) {
		Tcl_DictObjPut(NULL, header, lower, cur);
	    } else {
		Tcl_DecrRefCount(cur);
	    }
	}
	Tcl_DecrRefCount(lower);
    }
    if (ok && (Tcl_SetVar2Ex(interp, name, "header", header,
		TCL_GLOBAL_ONLY | TCL_LEAVE_ERR_MSG) == NULL
	    || Tcl_SetVar2Ex(interp, name, "lowerL", lowerL,
		TCL_GLOBAL_ONLY | TCL_LEAVE_ERR_MSG) == NULL
	    || Tcl_SetVar2Ex(interp, name, "mixedL", mixedL,
		TCL_GLOBAL_ONLY | TCL_LEAVE_ERR_MSG) == NULL)) {
	ok = -1;
    }
    Tcl_DecrRefCount(header);
    Tcl_DecrRefCount(lowerL);
    Tcl_DecrRefCount(mixedL);
    return ok;
}

static int
ApplyHeaders(
    Tcl_Interp *interp,
    Tcl_Obj *part,
    Headers *h)
{
    Tcl_Size n, i;
    Tcl_Obj **lowers, **mixeds;

    switch (ApplyHeadersDirect(interp, part, h)) {
    case 1:
	return TCL_OK;
    case -1:
	return TCL_ERROR;
    }
    Tcl_ListObjGetElements(NULL, h->lowerL, &n, &lowers);
    Tcl_ListObjGetElements(NULL, h->mixedL, &n, &mixeds);
    for (i = 0; i < n; i++) {
	Tcl_Obj *vals = HeadersGet(h, Tcl_GetString(lowers[i])), **v;
	Tcl_Size nv, j;

	if (vals == NULL) {
	    continue;
	}
	Tcl_ListObjGetElements(NULL, vals, &nv, &v);
	for (j = 0; j < nv; j++) {
	    if (Call(interp, NULL, S("::mime::setheader"), part, mixeds[i],
		    v[j], S("-mode"), S("append"), NULL) != TCL_OK) {
		return TCL_ERROR;
	    }
	}
    }
    return TCL_OK;
}

/*
 * Makes the message a token stands for into m's body, size and eightbit
 * (smtpMime.c; mime::buildmessage writes tokens of a shape it does not
 * know).
 */

static int
BuildMessage(
    Tcl_Interp *interp,
    Tcl_Obj *part,
    int debug,
    SmtpMessage *m)
{
    return SmtpMimeMessage(interp, part, debug, m);
}

/*
 * A Date header for now, in mime::parsedatetime's "proper" form (made in
 * C where the platform can, else by mime). *datePtr gets a reference.
 */

static int
NowDate(
    Tcl_Interp *interp,
    Tcl_Obj **datePtr)
{
    char buf[64];

    if (SmtpPlatformDate(buf, sizeof(buf))) {
	*datePtr = Tcl_NewStringObj(buf, -1);
	Tcl_IncrRefCount(*datePtr);
	return TCL_OK;
    }
    return Call(interp, datePtr, S("::mime::parsedatetime"), S("-now"),
	    S("proper"), NULL);
}

/*
 * The blind-copy digest tcllib sends to Bcc recipients: the original as
 * message/rfc822 inside a multipart/digest, made into m's body.
 */

static int
BuildBccDigest(
    Tcl_Interp *interp,
    Tcl_Obj *part,
    Tcl_Obj *originator,
    const char *bccM,
    Headers *h,
    int debug,
    SmtpMessage *m)
{
    Tcl_Obj *inner = NULL, *outer = NULL, *subject, *date = NULL,
	    *msgid = NULL, *subj;
    int code;

    subject = Tcl_ObjPrintf("[%s]", bccM);
    Tcl_IncrRefCount(subject);
    subj = HeadersGet(h, "subject");
    if (subj) {
	Tcl_Obj *first;

	Tcl_ListObjIndex(NULL, subj, 0, &first);
	if (first) {
	    Tcl_AppendToObj(subject, " ", 1);
	    Tcl_AppendObjToObj(subject, first);
	}
    }
    code = Call(interp, &inner, S("::mime::initialize"),
	    S("-canonical"), S("message/rfc822"),
	    S("-header"), Tcl_NewListObj(2, (Tcl_Obj *[]) {
		S("Content-Description"), S("Original Message")}),
	    S("-parts"), Tcl_NewListObj(1, &part), NULL);
    if (code == TCL_OK) {
	code = NowDate(interp, &date);
    }
    if (code == TCL_OK) {
	code = Call(interp, &msgid, S("::mime::uniqueID"), NULL);
    }
    if (code == TCL_OK) {
	code = Call(interp, &outer, S("::mime::initialize"),
		S("-canonical"), S("multipart/digest"),
		S("-header"), Tcl_NewListObj(2, (Tcl_Obj *[]) {
		    S("From"), originator}),
		S("-header"), Tcl_NewListObj(2, (Tcl_Obj *[]) {
		    S("Bcc"), S("")}),
		S("-header"), Tcl_NewListObj(2, (Tcl_Obj *[]) {
		    S("Date"), date}),
		S("-header"), Tcl_NewListObj(2, (Tcl_Obj *[]) {
		    S("Subject"), subject}),
		S("-header"), Tcl_NewListObj(2, (Tcl_Obj *[]) {
		    S("Message-ID"), msgid}),
		S("-header"), Tcl_NewListObj(2, (Tcl_Obj *[]) {
		    S("Content-Description"), S("Blind Carbon Copy")}),
		S("-parts"), Tcl_NewListObj(1, &inner), NULL);
    }
    if (code == TCL_OK) {
	code = BuildMessage(interp, outer, debug, m);
    }
    if (code != TCL_OK) {
	Tcl_InterpState st = Tcl_SaveInterpState(interp, code);

	if (outer) {
	    Call(interp, NULL, S("::mime::finalize"), outer, S("-subordinates"),
		    S("none"), NULL);
	}
	if (inner) {
	    Call(interp, NULL, S("::mime::finalize"), inner, S("-subordinates"),
		    S("none"), NULL);
	}
	code = Tcl_RestoreInterpState(interp, st);
    } else {
	Call(interp, NULL, S("::mime::finalize"), outer, S("-subordinates"),
		S("none"), NULL);
	Call(interp, NULL, S("::mime::finalize"), inner, S("-subordinates"),
		S("none"), NULL);
	Tcl_ResetResult(interp);
    }
    Tcl_DecrRefCount(subject);
    if (inner) {
	Tcl_DecrRefCount(inner);
    }
    if (outer) {
	Tcl_DecrRefCount(outer);
    }
    if (date) {
	Tcl_DecrRefCount(date);
    }
    if (msgid) {
	Tcl_DecrRefCount(msgid);
    }
    return code;
}

enum {
    OPT_ATLEASTONE, OPT_AUTHMECHS, OPT_CHUNKING, OPT_CLIENT, OPT_COMMAND,
    OPT_DEBUG, OPT_DSNENVID,
    OPT_DSNNOTIFY, OPT_DSNORCPT, OPT_DSNRET, OPT_HEADER, OPT_MAXSECS,
    OPT_OAUTHTOKEN, OPT_ORIGINATOR, OPT_PASSWORD, OPT_PORTS, OPT_PROTOCOL,
    OPT_PROGRESS, OPT_QUEUE, OPT_RECIPIENTS, OPT_SERVERS, OPT_TIMEOUT, OPT_TLSIMPORT,
    OPT_TLSOPTIONS, OPT_TLSPOLICY, OPT_USETLS, OPT_USERNAME
};

static const char *const optionNames[] = {
    "-atleastone", "-authmechs", "-chunking", "-client", "-command",
    "-debug", "-dsnenvid",
    "-dsnnotify", "-dsnorcpt", "-dsnret", "-header", "-maxsecs",
    "-oauthtoken", "-originator", "-password", "-ports", "-protocol",
    "-progress", "-queue",
    "-recipients", "-servers", "-timeout", "-tlsimport",
    "-tlsoptions", "-tlspolicy", "-usetls", "-username", NULL
};

/*
 * -dsnnotify: "never", or a list of success, failure and delay; the
 * NOTIFY= value of RFC 3461 goes to *out.
 */

static int
ParseNotify(
    Tcl_Interp *interp,
    Tcl_Obj *value,
    Tcl_Obj **out)
{
    static const char *const words[] = {
	"never", "success", "failure", "delay", NULL
    };
    static const char *const upper[] = {
	"NEVER", "SUCCESS", "FAILURE", "DELAY"
    };
    Tcl_Size n, i;
    Tcl_Obj **elems, *r;
    int seen[4] = {0, 0, 0, 0};

    if (Tcl_ListObjGetElements(NULL, value, &n, &elems) != TCL_OK || n == 0) {
	goto bad;
    }
    for (i = 0; i < n; i++) {
	int idx;

	if (Tcl_GetIndexFromObj(NULL, elems[i], words, "word", 0, &idx)
		!= TCL_OK || seen[idx]) {
	    goto bad;
	}
	seen[idx] = 1;
    }
    if (seen[0] && n > 1) {
	goto bad;
    }
    r = Tcl_NewObj();
    for (i = 0; i < 4; i++) {
	if (seen[i]) {
	    if (Tcl_GetCharLength(r) > 0) {
		Tcl_AppendToObj(r, ",", 1);
	    }
	    Tcl_AppendToObj(r, upper[i], -1);
	}
    }
    *out = r;
    return TCL_OK;

  bad:
    return OptionError(interp, Tcl_ObjPrintf("bad -dsnnotify \"%s\": must"
	    " be never, or a list of success, failure and delay",
	    Tcl_GetString(value)));
}

/*
 * Everything one call owns, freed in one place.
 */

typedef struct Call_ {
    SmtpOptions opts;
    Headers h;
    Tcl_Obj *originator;
    Tcl_Obj *recipients;
    Tcl_Obj *sender;
    Tcl_Obj *vrecipients;
    Tcl_Obj *brecipients;
    SmtpMessage msgs[2];
    int nmsgs;
    Tcl_Obj *command;		/* -command: send in the background. */
    Tcl_Obj *progress;		/* -progress. */
    Tcl_Obj *part;		/* The token. */
    Tcl_Obj *bccName;		/* "Bcc" or "Resent-Bcc" when a blind copy
				 * is sent, else NULL. */
} SendCall;

static void
Hold(
    Tcl_Obj **slot,
    Tcl_Obj *value)
{
    if (value) {
	Tcl_IncrRefCount(value);
    }
    if (*slot) {
	Tcl_DecrRefCount(*slot);
    }
    *slot = value;
}

static void
SendCallFree(
    SendCall *c)
{
    int i;

    Hold(&c->opts.servers, NULL);
    Hold(&c->opts.ports, NULL);
    Hold(&c->opts.client, NULL);
    Hold(&c->opts.tlspolicy, NULL);
    Hold(&c->opts.tlsoptions, NULL);
    Hold(&c->opts.dsnnotify, NULL);
    Hold(&c->opts.dsnret, NULL);
    Hold(&c->opts.dsnenvid, NULL);
    Hold(&c->opts.authmechs, NULL);
    Hold(&c->opts.oauthtoken, NULL);
    Hold(&c->command, NULL);
    Hold(&c->progress, NULL);
    Hold(&c->opts.username, NULL);
    Hold(&c->opts.password, NULL);
    HeadersFree(&c->h);
    Hold(&c->originator, NULL);
    Hold(&c->recipients, NULL);
    Hold(&c->sender, NULL);
    Hold(&c->vrecipients, NULL);
    Hold(&c->brecipients, NULL);
    Hold(&c->part, NULL);
    Hold(&c->bccName, NULL);
    for (i = 0; i < 2; i++) {
	SmtpSourceClose(&c->msgs[i].body);
    }
}

static void
SendCallFreeHeap(
    void *cd)
{
    SendCallFree((SendCall *) cd);
    ckfree(cd);
}

/*
 * Checks -ports: each element empty (meaning 25) or a TCP port number.
 */

static int
CheckPorts(
    Tcl_Interp *interp,
    Tcl_Obj *ports)
{
    Tcl_Size n, i;
    Tcl_Obj **elems;

    if (Tcl_ListObjGetElements(interp, ports, &n, &elems) != TCL_OK) {
	return TCL_ERROR;
    }
    for (i = 0; i < n; i++) {
	int port;

	if (Tcl_GetCharLength(elems[i]) == 0) {
	    continue;
	}
	if (Tcl_GetIntFromObj(NULL, elems[i], &port) != TCL_OK
		|| port < 1 || port > 65535) {
	    return OptionError(interp, Tcl_ObjPrintf(
		    "invalid port \"%s\" in -ports: expected an integer"
		    " from 1 to 65535", Tcl_GetString(elems[i])));
	}
    }
    return TCL_OK;
}

static int
ParseOptions(
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[],
    SendCall *c,
    int *origP)
{
    static const char *const refused[] = {
	"content-type", "content-transfer-encoding", "content-md5",
	"mime-version", NULL
    };
    int i;

    if ((objc - 2) % 2) {
	return OptionError(interp, Tcl_ObjPrintf(
		"Each option must have a value!  Invalid option list: %s",
		Tcl_GetString(Tcl_NewListObj(objc - 2, objv + 2))));
    }
    for (i = 2; i < objc; i += 2) {
	Tcl_Obj *value = objv[i + 1];
	int idx;

	if (Tcl_GetIndexFromObj(NULL, objv[i], optionNames, "option",
		TCL_EXACT, &idx) != TCL_OK) {
	    return OptionError(interp, Tcl_ObjPrintf("unknown option %s",
		    Tcl_GetString(objv[i])));
	}
	switch (idx) {
	case OPT_ATLEASTONE:
	    if (GetBoolean(interp, value, &c->opts.atleastone) != TCL_OK) {
		return TCL_ERROR;
	    }
	    break;
	case OPT_DEBUG:
	    if (GetBoolean(interp, value, &c->opts.debug) != TCL_OK) {
		return TCL_ERROR;
	    }
	    break;
	case OPT_QUEUE:
	    if (GetBoolean(interp, value, &c->opts.queue) != TCL_OK) {
		return TCL_ERROR;
	    }
	    break;
	case OPT_USETLS:
	    if (GetBoolean(interp, value, &c->opts.usetls) != TCL_OK) {
		return TCL_ERROR;
	    }
	    break;
	case OPT_TLSIMPORT:
	    if (GetBoolean(interp, value, &c->opts.tlsimport) != TCL_OK) {
		return TCL_ERROR;
	    }
	    break;
	case OPT_TLSPOLICY:
	    Hold(&c->opts.tlspolicy, value);
	    break;
	case OPT_TLSOPTIONS:
	    Hold(&c->opts.tlsoptions, value);
	    break;
	case OPT_OAUTHTOKEN:
	    Hold(&c->opts.oauthtoken, value);
	    break;
	case OPT_COMMAND:
	    Hold(&c->command, Tcl_GetCharLength(value) ? value : NULL);
	    break;
	case OPT_PROGRESS:
	    Hold(&c->progress, Tcl_GetCharLength(value) ? value : NULL);
	    break;
	case OPT_AUTHMECHS: {
	    Tcl_Size n, k;
	    Tcl_Obj **elems, *list;

	    if (Tcl_ListObjGetElements(interp, value, &n, &elems) != TCL_OK) {
		Tcl_SetErrorCode(interp, "SMTP", "OPTION", NULL);
		return TCL_ERROR;
	    }
	    list = Tcl_NewListObj(0, NULL);
	    Tcl_IncrRefCount(list);
	    for (k = 0; k < n; k++) {
		const char *const *m = SmtpSaslMechanisms();
		Tcl_Obj *up = Tcl_DuplicateObj(elems[k]);

		Tcl_SetObjLength(up, Tcl_UtfToUpper(Tcl_GetString(up)));
		for (; *m; m++) {
		    if (strcmp(*m, Tcl_GetString(up)) == 0) {
			break;
		    }
		}
		if (*m == NULL) {
		    Tcl_Obj *all = Tcl_NewObj();

		    for (m = SmtpSaslMechanisms(); *m; m++) {
			Tcl_AppendPrintfToObj(all, "%s%s",
				m == SmtpSaslMechanisms() ? "" : ", ", *m);
		    }
		    Tcl_DecrRefCount(up);
		    Tcl_DecrRefCount(list);
		    return OptionError(interp, Tcl_ObjPrintf("unknown SASL"
			    " mechanism \"%s\" in -authmechs: must be one of %s",
			    Tcl_GetString(elems[k]), Tcl_GetString(all)));
		}
		Tcl_ListObjAppendElement(NULL, list, up);
	    }
	    Hold(&c->opts.authmechs, list);
	    Tcl_DecrRefCount(list);
	    break;
	}
	case OPT_CHUNKING:
	    if (GetBoolean(interp, value, &c->opts.chunking) != TCL_OK) {
		return TCL_ERROR;
	    }
	    break;
	case OPT_DSNORCPT:
	    if (GetBoolean(interp, value, &c->opts.dsnorcpt) != TCL_OK) {
		return TCL_ERROR;
	    }
	    break;
	case OPT_TIMEOUT:
	    if (Tcl_GetIntFromObj(NULL, value, &c->opts.timeout) != TCL_OK
		    || c->opts.timeout < 1) {
		return OptionError(interp, Tcl_ObjPrintf("bad -timeout \"%s\":"
			" must be a positive number of seconds",
			Tcl_GetString(value)));
	    }
	    break;
	case OPT_PROTOCOL: {
	    static const char *const protocols[] = {"smtp", "lmtp", NULL};

	    if (Tcl_GetIndexFromObj(interp, value, protocols, "protocol",
		    TCL_EXACT, &c->opts.lmtp) != TCL_OK) {
		Tcl_SetErrorCode(interp, "SMTP", "OPTION", NULL);
		return TCL_ERROR;
	    }
	    break;
	}
	case OPT_DSNNOTIFY: {
	    Tcl_Obj *notify = NULL;

	    if (ParseNotify(interp, value, &notify) != TCL_OK) {
		return TCL_ERROR;
	    }
	    Hold(&c->opts.dsnnotify, notify);
	    break;
	}
	case OPT_DSNRET: {
	    static const char *const rets[] = {"full", "hdrs", NULL};
	    int idx;

	    if (Tcl_GetIndexFromObj(interp, value, rets, "-dsnret value",
		    TCL_EXACT, &idx) != TCL_OK) {
		Tcl_SetErrorCode(interp, "SMTP", "OPTION", NULL);
		return TCL_ERROR;
	    }
	    Hold(&c->opts.dsnret, S(idx ? "HDRS" : "FULL"));
	    break;
	}
	case OPT_DSNENVID: {
	    Tcl_Size len, k;
	    const char *p = Tcl_GetStringFromObj(value, &len);

	    for (k = 0; k < len; k++) {
		if ((unsigned char) p[k] < 0x20 || (unsigned char) p[k] > 0x7E) {
		    return OptionError(interp, Tcl_NewStringObj("-dsnenvid"
			    " must be printable ASCII", -1));
		}
	    }
	    if (len > 100) {
		return OptionError(interp, Tcl_NewStringObj("-dsnenvid is"
			" longer than 100 characters (RFC 3461)", -1));
	    }
	    Hold(&c->opts.dsnenvid, len ? value : NULL);
	    break;
	}
	case OPT_MAXSECS: {
	    int secs;

	    if (Tcl_GetIntFromObj(interp, value, &secs) != TCL_OK) {
		Tcl_SetErrorCode(interp, "SMTP", "OPTION", NULL);
		return TCL_ERROR;
	    }
	    c->opts.maxsecs = secs < 0 ? 0 : secs;
	    break;
	}
	case OPT_HEADER: {
	    Tcl_Size n;
	    Tcl_Obj **kv, *lower;
	    int r;

	    if (Tcl_ListObjGetElements(interp, value, &n, &kv) != TCL_OK) {
		Tcl_SetErrorCode(interp, "SMTP", "OPTION", NULL);
		return TCL_ERROR;
	    }
	    if (n != 2) {
		return OptionError(interp, Tcl_ObjPrintf(
			"-header expects a key and a value, not %s",
			Tcl_GetString(value)));
	    }
	    if (CheckHeader(interp, kv[0], kv[1]) != TCL_OK) {
		return TCL_ERROR;
	    }
	    lower = Tcl_DuplicateObj(kv[0]);
	    Tcl_IncrRefCount(lower);
	    Tcl_SetObjLength(lower, Tcl_UtfToLower(Tcl_GetString(lower)));
	    if (Tcl_GetIndexFromObj(NULL, lower, refused, "header",
		    TCL_EXACT, &r) == TCL_OK) {
		Tcl_DecrRefCount(lower);
		return OptionError(interp, Tcl_NewStringObj(
			"Content-Type, Content-Transfer-Encoding,"
			" Content-MD5, and MIME-Version cannot be"
			" user-specified.", -1));
	    }
	    /*
	     * A fold written CR LF reaches mime as LF, which it writes as
	     * CR LF: otherwise the CR would end up as an empty line.
	     */
	    {
		Tcl_Obj *v = kv[1];

		if (strstr(Tcl_GetString(v), "\r\n")) {
		    Tcl_Obj *map[2];
		    Tcl_Obj *m;

		    map[0] = Tcl_NewStringObj("\r\n", 2);
		    map[1] = Tcl_NewStringObj("\n", 1);
		    m = Tcl_NewListObj(2, map);
		    Tcl_IncrRefCount(m);
		    if (Call(interp, &v, S("::string"), S("map"), m, kv[1],
			    NULL) != TCL_OK) {
			Tcl_DecrRefCount(m);
			Tcl_DecrRefCount(lower);
			return TCL_ERROR;
		    }
		    Tcl_DecrRefCount(m);
		    HeadersAdd(&c->h, Tcl_GetString(lower),
			    Tcl_GetString(kv[0]), v);
		    Tcl_DecrRefCount(v);
		} else {
		    HeadersAdd(&c->h, Tcl_GetString(lower),
			    Tcl_GetString(kv[0]), v);
		}
	    }
	    Tcl_DecrRefCount(lower);
	    break;
	}
	case OPT_ORIGINATOR:
	    Hold(&c->originator, value);
	    if (Tcl_GetCharLength(value) == 0) {
		*origP = 1;
	    }
	    break;
	case OPT_RECIPIENTS:
	    Hold(&c->recipients, value);
	    break;
	case OPT_SERVERS:
	    Hold(&c->opts.servers, value);
	    break;
	case OPT_CLIENT:
	    Hold(&c->opts.client, value);
	    break;
	case OPT_PORTS:
	    Hold(&c->opts.ports, value);
	    break;
	case OPT_USERNAME:
	    Hold(&c->opts.username, value);
	    break;
	case OPT_PASSWORD:
	    Hold(&c->opts.password, value);
	    break;
	}
    }
    if (Tcl_ListObjLength(interp, c->opts.servers, &(Tcl_Size){0})
	    != TCL_OK) {
	return TCL_ERROR;
    }
    if (CheckPorts(interp, c->opts.ports) != TCL_OK) {
	return TCL_ERROR;
    }
    if (c->opts.client && (HasControl(c->opts.client)
	    || strchr(Tcl_GetString(c->opts.client), ' '))) {
	return OptionError(interp, Tcl_ObjPrintf("invalid -client \"%s\":"
		" spaces and control characters are not allowed",
		Tcl_GetString(c->opts.client)));
    }
    /* Checked whatever -usetls says, as every option is. */
    if (SmtpTlsCheckOptions(interp, c->opts.tlsoptions) != TCL_OK) {
	return TCL_ERROR;
    }
    return TCL_OK;
}

/*
 * Whether the token has a header (lower-case name), as a successful
 * mime::getheader would say: read from the token's own list when it has
 * the layout we know, without the cost of an error from getheader.
 */

static int
TokenHasHeader(
    Tcl_Interp *interp,
    Tcl_Obj *part,
    const char *lower)
{
    Tcl_Obj *lowerL = Tcl_GetVar2Ex(interp, Tcl_GetString(part), "lowerL",
	    TCL_GLOBAL_ONLY), **elems;
    Tcl_Size n, i;
    int has;

    if (lowerL == NULL
	    || Tcl_ListObjGetElements(NULL, lowerL, &n, &elems) != TCL_OK) {
	has = Call(interp, NULL, S("::mime::getheader"), part, S(lower),
		NULL) == TCL_OK;
	Tcl_ResetResult(interp);
	return has;
    }
    for (i = 0; i < n; i++) {
	if (strcmp(Tcl_GetString(elems[i]), lower) == 0) {
	    return 1;
	}
    }
    return 0;
}

/*
 * Applies tcllib's rules for the envelope and the added headers: who sends
 * (and the From and Sender headers), who receives (To, cc, Dcc, Bcc),
 * Date and Message-ID.
 */

static int
EnvelopeRules(
    Tcl_Interp *interp,
    Tcl_Obj *part,
    SendCall *c,
    int origP,
    int *bccP,
    Tcl_DString *bccM)
{
    Tcl_Size n, i;
    Tcl_Obj **lowers;
    int resent = 0;
    const char *pL, *pM;
    char fromL[32], fromM[32], senderL[32], senderM[32], toL[32], toM[32],
	    ccL[32], ccM[32], dccL[32], dccM[32], bccL[32], dateL[32],
	    dateM[32], midL[32], midM[32];
    Tcl_Obj *who = NULL, *v;

    Tcl_ListObjGetElements(NULL, c->h.lowerL, &n, &lowers);
    for (i = 0; i < n; i++) {
	if (Tcl_StringMatch(Tcl_GetString(lowers[i]), "resent-*")) {
	    resent = 1;
	}
    }
    pL = resent ? "resent-" : "";
    pM = resent ? "Resent-" : "";
#define NAME(bufL, bufM, lower, mixed) \
    snprintf(bufL, sizeof(bufL), "%s%s", pL, lower); \
    snprintf(bufM, sizeof(bufM), "%s%s", pM, mixed)
    NAME(fromL, fromM, "from", "From");
    NAME(senderL, senderM, "sender", "Sender");
    NAME(toL, toM, "to", "To");
    NAME(ccL, ccM, "cc", "cc");
    NAME(dccL, dccM, "dcc", "Dcc");
    NAME(dateL, dateM, "date", "Date");
    NAME(midL, midM, "message-id", "Message-ID");
#undef NAME
    snprintf(bccL, sizeof(bccL), "%sbcc", pL);
    Tcl_DStringAppend(bccM, pM, -1);
    Tcl_DStringAppend(bccM, "Bcc", 3);

    if (origP) {
	Hold(&c->sender, Tcl_NewObj());
    } else {
	Tcl_Obj *addrs = NULL, *from;
	const char *whoName = "-originator";

	if (c->originator == NULL || Tcl_GetCharLength(c->originator) == 0) {
	    if (HeadersGet(&c->h, fromL) == NULL) {
		Hold(&c->originator, Tcl_GetVar2Ex(interp, "tcl_platform",
			"user", TCL_GLOBAL_ONLY));
		if (c->originator == NULL) {
		    Hold(&c->originator, Tcl_NewObj());
		}
	    } else {
		Hold(&c->originator, HeadersJoined(&c->h, fromL));
		whoName = fromM;
	    }
	}
	if (HeadersFind(&c->h, fromL) < 0) {
	    HeadersAdd(&c->h, fromL, fromM, c->originator);
	}
	if (ParseAddresses(interp, c->originator, whoName, ADDR_ONE, &addrs)
		!= TCL_OK) {
	    return TCL_ERROR;
	}
	Tcl_ListObjIndex(NULL, addrs, 0, &v);
	Hold(&c->sender, v);
	Tcl_DecrRefCount(addrs);

	from = HeadersJoined(&c->h, fromL);
	Tcl_IncrRefCount(from);
	if (HeadersFind(&c->h, senderL) < 0
		&& strcmp(Tcl_GetString(c->originator),
		    Tcl_GetString(from)) != 0) {
	    if (ParseAddresses(interp, from, fromM, ADDR_FIRST, &addrs)
		    != TCL_OK) {
		Tcl_DecrRefCount(from);
		return TCL_ERROR;
	    }
	    Tcl_ListObjIndex(NULL, addrs, 0, &v);
	    if (strcmp(Tcl_GetString(v), Tcl_GetString(c->sender)) != 0) {
		HeadersAdd(&c->h, senderL, senderM, v);
	    }
	    Tcl_DecrRefCount(addrs);
	}
	Tcl_DecrRefCount(from);
    }

    if (c->recipients && Tcl_GetCharLength(c->recipients) > 0) {
	who = S("-recipients");
    } else if (HeadersGet(&c->h, toL) == NULL) {
	return OptionError(interp, Tcl_ObjPrintf("need -header \"%s ...\"",
		toM));
    } else {
	Hold(&c->recipients, HeadersJoined(&c->h, toL));
	who = S(toM);
	if (HeadersGet(&c->h, ccL)) {
	    Tcl_Obj *r = Tcl_DuplicateObj(c->recipients);

	    Tcl_AppendToObj(r, ",", 1);
	    Tcl_AppendObjToObj(r, HeadersJoined(&c->h, ccL));
	    Hold(&c->recipients, r);
	    Tcl_AppendPrintfToObj(who, "/%s", ccM);
	}
	if (HeadersFind(&c->h, dccL) >= 0) {
	    Tcl_Obj *r = Tcl_DuplicateObj(c->recipients);

	    Tcl_AppendToObj(r, ",", 1);
	    Tcl_AppendObjToObj(r, HeadersJoined(&c->h, dccL));
	    Hold(&c->recipients, r);
	    Tcl_AppendPrintfToObj(who, "/%s", dccM);
	    HeadersRemove(&c->h, dccL);
	}
    }
    Tcl_IncrRefCount(who);

    *bccP = 0;
    if (HeadersFind(&c->h, bccL) >= 0) {
	Tcl_Obj *b = HeadersJoined(&c->h, bccL);

	*bccP = 1;
	Tcl_IncrRefCount(b);
	if (ParseAddresses(interp, b, Tcl_DStringValue(bccM), ADDR_ALL,
		&c->brecipients) != TCL_OK) {
	    Tcl_DecrRefCount(b);
	    Tcl_DecrRefCount(who);
	    return TCL_ERROR;
	}
	Tcl_DecrRefCount(b);
	HeadersRemove(&c->h, bccL);
    }
    if (HeadersFind(&c->h, toL) < 0) {
	HeadersAdd(&c->h, bccL, Tcl_DStringValue(bccM), Tcl_NewObj());
    }
    if (ParseAddresses(interp, c->recipients, Tcl_GetString(who), ADDR_ALL,
	    &c->vrecipients) != TCL_OK) {
	Tcl_DecrRefCount(who);
	return TCL_ERROR;
    }
    Tcl_DecrRefCount(who);

    if (HeadersFind(&c->h, dateL) < 0
	    && !TokenHasHeader(interp, part, dateL)) {
	Tcl_Obj *date = NULL;

	if (NowDate(interp, &date) != TCL_OK) {
	    return TCL_ERROR;
	}
	HeadersAdd(&c->h, dateL, dateM, date);
	Tcl_DecrRefCount(date);
    }
    if (HeadersFind(&c->h, midL) < 0
	    && !TokenHasHeader(interp, part, midL)) {
	Tcl_Obj *id = NULL;

	if (Call(interp, &id, S("::mime::uniqueID"), NULL) != TCL_OK) {
	    return TCL_ERROR;
	}
	HeadersAdd(&c->h, midL, midM, id);
	Tcl_DecrRefCount(id);
    }
    Tcl_ResetResult(interp);
    return TCL_OK;
}

/*
 * What a send does before talking to a server: the options and the
 * envelope and header rules, which is where a call's own mistakes are
 * found. objv[1] is the token and the options follow. Returns a SendCall
 * (to be freed with SendCallFreeHeap) whose messages PrepareMessages then
 * writes, or NULL with the error in the interpreter.
 */

static SendCall *
PrepareEnvelope(
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    SendCall *c = (SendCall *) ckalloc(sizeof(SendCall));
    Tcl_Obj *part, *names = NULL;
    int origP = 0, bccP = 0, code;
    Tcl_DString bccM;

    part = objv[1];
    memset(c, 0, sizeof(SendCall));
    HeadersInit(&c->h);
    Tcl_DStringInit(&bccM);
    Hold(&c->part, part);
    Hold(&c->opts.servers, S("localhost"));
    Hold(&c->opts.ports, S("25"));
    c->opts.maxsecs = 120;
    c->opts.usetls = 1;
    c->opts.timeout = -1;
    c->opts.chunking = 1;

    code = ParseOptions(interp, objc, objv, c, &origP);
    if (code == TCL_OK) {
	code = Tcl_GetVar2Ex(interp, Tcl_GetString(part), "lowerL",
		TCL_GLOBAL_ONLY) ? TCL_OK : Call(interp, &names,
		S("::mime::getheader"), part, S("-names"),
		NULL);
	if (code != TCL_OK) {
	    Tcl_SetObjResult(interp, Tcl_ObjPrintf(
		    "invalid mime token \"%s\"", Tcl_GetString(part)));
	    Tcl_SetErrorCode(interp, "SMTP", "TOKEN", NULL);
	} else if (names) {
	    Tcl_DecrRefCount(names);
	}
    }
    if (code == TCL_OK) {
	code = EnvelopeRules(interp, part, c, origP, &bccP, &bccM);
    }
    if (code == TCL_OK) {
	c->nmsgs = bccP ? 2 : 1;
	c->msgs[0].sender = c->sender;
	c->msgs[0].recipients = c->vrecipients;
	if (bccP) {
	    Hold(&c->bccName, Tcl_NewStringObj(Tcl_DStringValue(&bccM),
		    Tcl_DStringLength(&bccM)));
	    c->msgs[1].sender = c->sender;
	    c->msgs[1].recipients = c->brecipients;
	}
	if (c->opts.client == NULL
		|| Tcl_GetCharLength(c->opts.client) == 0) {
	    Hold(&c->opts.client, S(strcmp(Tcl_GetString(c->opts.servers),
		    "localhost") == 0 ? "localhost" : Tcl_GetHostName()));
	}
	c->opts.multiple = bccP;
	Tcl_ResetResult(interp);
    }
    Tcl_DStringFree(&bccM);
    if (code != TCL_OK) {
	SendCallFreeHeap(c);
	return NULL;
    }
    return c;
}

/*
 * Writes the messages of a prepared call: the token with the gathered
 * headers added for the time it is written, and the blind-copy digest.
 */

static int
PrepareMessages(
    Tcl_Interp *interp,
    SendCall *c)
{
    Saved saved;
    int code;

    SaveToken(interp, c->part, &c->h, &saved);
    code = ApplyHeaders(interp, c->part, &c->h);
    if (code == TCL_OK) {
	code = BuildMessage(interp, c->part, c->opts.debug, &c->msgs[0]);
    }
    if (code == TCL_OK && c->bccName) {
	code = BuildBccDigest(interp, c->part, c->originator,
		Tcl_GetString(c->bccName), &c->h, c->opts.debug, &c->msgs[1]);
    }
    RestoreToken(interp, c->part, &saved);
    if (code == TCL_OK) {
	Tcl_ResetResult(interp);
    }
    return code;
}

/*
 * Both at once, for the sends that do not overlap them with connecting.
 */

static SendCall *
PrepareSend(
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    SendCall *c = PrepareEnvelope(interp, objc, objv);

    if (c != NULL && PrepareMessages(interp, c) != TCL_OK) {
	SendCallFreeHeap(c);
	c = NULL;
    }
    return c;
}

/*
 * ::smtp::sendmessage token ?option value ...?
 *
 * Sends the MIME part 'token' and returns the list of refused recipients,
 * each {address code diagnostic}; with -command, returns a handle at once.
 */

int
SmtpSendmessageObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    SendCall *c;
    SmtpSession *sess;
    int code;

    (void) clientData;
    if (objc < 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "token ?option value ...?");
	return TCL_ERROR;
    }
    c = PrepareEnvelope(interp, objc, objv);
    if (c == NULL) {
	return TCL_ERROR;
    }
    if (c->command) {
	if (PrepareMessages(interp, c) != TCL_OK) {
	    SendCallFreeHeap(c);
	    return TCL_ERROR;
	}
	return SmtpAsyncStart(interp, &c->opts, c->msgs, c->nmsgs,
		c->command, c->progress, SendCallFreeHeap, c);
    }

    /*
     * The connection is opened before the messages are written, so that
     * writing them overlaps the connect and the server's greeting (as
     * tcllib, which wrote the message during DATA, also connected first).
     * A message that cannot be written ends the call with its error, and
     * the connection is closed before anything was said on it.
     */

    sess = SmtpSessionNew(interp, &c->opts, c->msgs, c->nmsgs);
    if (c->progress) {
	SmtpSessionSetProgress(sess, c->progress);
    }
    SmtpSessionConnect(sess);
    if (PrepareMessages(interp, c) != TCL_OK) {
	code = TCL_ERROR;
    } else {
	code = SmtpSessionWait(sess);
    }
    SmtpSessionFree(sess);
    SendCallFreeHeap(c);
    return code;
}

/*
 * ::smtp::internal::message token ?option value ...?
 *
 * Returns the message smtp::sendmessage would send for the same arguments
 * (the message itself, not a blind-copy digest), made by the same rules
 * and writer, as the octets DATA carries before dot-stuffing: line ends
 * CRLF, a final CRLF. Nothing is sent and no server is asked. Used by
 * smtp::send -dryrun.
 */

int
SmtpMessageObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    SendCall *c;
    SmtpSource *src;
    SmtpDataEnc enc;
    SmtpBuf raw, out;
    Tcl_Obj *err = NULL;
    int st = 0;

    (void) clientData;
    if (objc < 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "token ?option value ...?");
	return TCL_ERROR;
    }
    c = PrepareSend(interp, objc, objv);
    if (c == NULL) {
	return TCL_ERROR;
    }
    src = &c->msgs[0].body;
    SmtpDataInitBdat(&enc);
    SmtpBufInit(&raw);
    SmtpBufInit(&out);
    while (st == 0) {
	raw.pos = raw.len = 0;
	st = src->read(src->cd, &raw, 65536, &err);
	if (st >= 0) {
	    SmtpDataEncode(&enc, SmtpBufPtr(&raw), SmtpBufAvail(&raw), &out);
	}
    }
    if (st > 0) {
	SmtpDataFinish(&enc, &out);
	Tcl_SetObjResult(interp, Tcl_NewByteArrayObj(SmtpBufPtr(&out),
		(Tcl_Size) SmtpBufAvail(&out)));
    } else {
	Tcl_SetObjResult(interp, err);
	Tcl_SetErrorCode(interp, "SMTP", "MESSAGE", NULL);
    }
    SmtpBufFree(&raw);
    SmtpBufFree(&out);
    SendCallFreeHeap(c);
    return st > 0 ? TCL_OK : TCL_ERROR;
}

/*
 * ::smtp::internal::sendoptions
 *
 * Returns the names of smtp::sendmessage's options, for smtp::send, which
 * passes them on.
 */

int
SmtpSendOptionsObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Tcl_Obj *list = Tcl_NewListObj(0, NULL);
    int i;

    (void) clientData;
    if (objc != 1) {
	Tcl_WrongNumArgs(interp, 1, objv, NULL);
	return TCL_ERROR;
    }
    for (i = 0; optionNames[i]; i++) {
	Tcl_ListObjAppendElement(NULL, list, S(optionNames[i]));
    }
    Tcl_SetObjResult(interp, list);
    return TCL_OK;
}

/*
 * ----------------------------------------------------------------------
 * smtp::session: one connection for many messages.
 * ----------------------------------------------------------------------
 */

/* The options that belong to the connection, not to one message. */
static const char *const sessionOptions[] = {
    "-authmechs", "-chunking", "-client", "-debug", "-oauthtoken",
    "-password", "-ports", "-protocol", "-queue", "-servers", "-timeout",
    "-tlsimport", "-tlsoptions", "-tlspolicy", "-usetls", "-username", NULL
};

typedef struct SessionObj {
    Tcl_Interp *interp;
    Tcl_Command token;
    Tcl_Obj *options;		/* Connection options, as given. */
    SmtpSession *sess;		/* Made by the first send. */
    SendCall *current;		/* The last send (the session uses its
				 * options and messages). */
    int busy;			/* A send is under way. */
    int deleted;		/* The command went during a send. */
} SessionObj;

static unsigned long sessionCounter;	/* Guarded by sessionMutex. */
TCL_DECLARE_MUTEX(sessionMutex)

/*
 * Checks that every option of objv (pairs) is a connection option (want
 * 1) or a message option (want 0).
 */

static int
CheckOptionKind(
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[],
    int want,
    const char *where)
{
    int i;

    if (objc % 2) {
	return OptionError(interp, Tcl_ObjPrintf(
		"Each option must have a value!  Invalid option list: %s",
		Tcl_GetString(Tcl_NewListObj(objc, objv))));
    }
    for (i = 0; i < objc; i += 2) {
	int idx, isConn = Tcl_GetIndexFromObj(NULL, objv[i], sessionOptions,
		"option", TCL_EXACT, &idx) == TCL_OK;

	if (isConn != want) {
	    if (Tcl_GetIndexFromObj(NULL, objv[i], optionNames, "option",
		    TCL_EXACT, &idx) != TCL_OK) {
		return OptionError(interp, Tcl_ObjPrintf("unknown option %s",
			Tcl_GetString(objv[i])));
	    }
	    return OptionError(interp, Tcl_ObjPrintf("%s is an option of %s",
		    Tcl_GetString(objv[i]), want ? "each send, not of the"
		    " session" : "the session: use configure"));
	}
    }
    (void) where;
    return TCL_OK;
}

static int	SessionValidate(Tcl_Interp *interp, Tcl_Obj *options);

static void
SessionDrop(
    SessionObj *so,
    int polite)
{
    if (so->sess) {
	if (polite) {
	    SmtpSessionClose(so->sess);
	}
	SmtpSessionFree(so->sess);
	so->sess = NULL;
    }
    if (so->current) {
	SendCallFreeHeap(so->current);
	so->current = NULL;
    }
}

static void
SessionFree(
    SessionObj *so)
{
    SessionDrop(so, 0);
    Tcl_DecrRefCount(so->options);
    Tcl_EventuallyFree(so, TCL_DYNAMIC);
}

static void
SessionDeleted(
    void *cd)
{
    SessionObj *so = (SessionObj *) cd;

    if (so->busy) {
	/* The send under way ends now; it frees the session after. */
	so->deleted = 1;
	SmtpSessionCancel(so->sess);
	return;
    }
    SessionFree(so);
}

/*
 * A session's send in the background is over (before its command runs).
 */

static void
SessionAsyncDone(
    void *cd)
{
    SessionObj *so = (SessionObj *) cd;

    so->busy = 0;
    if (so->deleted) {
	SessionFree(so);
    }
    Tcl_Release(so);
}

/*
 * $s send token ?option value ...?
 */

static int
SessionSend(
    SessionObj *so,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Tcl_Obj **copts, *list;
    Tcl_Size nc;
    SendCall *c, *old;
    int code;

    if (objc < 3) {
	Tcl_WrongNumArgs(interp, 2, objv, "token ?option value ...?");
	return TCL_ERROR;
    }
    if (CheckOptionKind(interp, objc - 3, objv + 3, 0, "send") != TCL_OK) {
	return TCL_ERROR;
    }
    if (so->busy) {
	Tcl_SetObjResult(interp, Tcl_NewStringObj("the session is busy with"
		" another send", -1));
	Tcl_SetErrorCode(interp, "SMTP", "BUSY", NULL);
	return TCL_ERROR;
    }
    /* sendmessage's view: the token, the session's options, the send's. */
    list = Tcl_NewListObj(2, objv + 1);
    Tcl_IncrRefCount(list);
    Tcl_ListObjGetElements(NULL, so->options, &nc, &copts);
    Tcl_ListObjReplace(NULL, list, 2, 0, nc, copts);
    Tcl_ListObjReplace(NULL, list, 2 + nc, 0, objc - 3, objv + 3);
    {
	Tcl_Size n;
	Tcl_Obj **elems;

	Tcl_ListObjGetElements(NULL, list, &n, &elems);
	c = PrepareSend(interp, (int) n, elems);
    }
    Tcl_DecrRefCount(list);
    if (c == NULL) {
	return TCL_ERROR;
    }
    c->opts.multiple = 1;
    if (so->sess == NULL) {
	so->sess = SmtpSessionNew(interp, &c->opts, c->msgs, c->nmsgs);
	SmtpSessionKeepOpen(so->sess);
    }
    SmtpSessionSetProgress(so->sess, c->progress);
    old = so->current;
    so->current = c;
    so->busy = 1;
    Tcl_Preserve(so);
    if (c->command) {
	/* Over when SessionAsyncDone says so; the session stays busy. */
	code = SmtpAsyncSubmit(interp, so->sess, &c->opts, c->msgs,
		c->nmsgs, c->command, SessionAsyncDone, so);
	if (old) {
	    SendCallFreeHeap(old);
	}
	return code;
    }
    SmtpSessionSubmit(so->sess, &c->opts, c->msgs, c->nmsgs);
    if (old) {
	SendCallFreeHeap(old);
    }
    code = SmtpSessionWait(so->sess);
    so->busy = 0;
    if (so->deleted) {
	SessionFree(so);
    }
    Tcl_Release(so);
    return code;
}

/*
 * $s configure ?option ?value ...??, $s cget option: the connection
 * options. A change applies from the next connection: the current one
 * is closed.
 */

static int
SessionConfigure(
    SessionObj *so,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[],
    int cget)
{
    Tcl_Obj *dict, *v = NULL, *merged;
    Tcl_Size i, n;
    Tcl_Obj **elems;

    if (cget && objc != 3) {
	Tcl_WrongNumArgs(interp, 2, objv, "option");
	return TCL_ERROR;
    }
    dict = Tcl_NewDictObj();
    Tcl_IncrRefCount(dict);
    Tcl_ListObjGetElements(NULL, so->options, &n, &elems);
    for (i = 0; i + 1 < n; i += 2) {
	Tcl_DictObjPut(NULL, dict, elems[i], elems[i + 1]);
    }
    if (objc == 2) {
	Tcl_SetObjResult(interp, dict);
	Tcl_DecrRefCount(dict);
	return TCL_OK;
    }
    if (objc == 3) {
	int idx;

	if (Tcl_GetIndexFromObj(interp, objv[2], sessionOptions, "option",
		TCL_EXACT, &idx) != TCL_OK) {
	    Tcl_DecrRefCount(dict);
	    return TCL_ERROR;
	}
	Tcl_DictObjGet(NULL, dict, objv[2], &v);
	Tcl_SetObjResult(interp, v ? v : Tcl_NewObj());
	Tcl_DecrRefCount(dict);
	return TCL_OK;
    }
    if (CheckOptionKind(interp, objc - 2, objv + 2, 1, "session")
	    != TCL_OK) {
	Tcl_DecrRefCount(dict);
	return TCL_ERROR;
    }
    if (so->busy) {
	Tcl_DecrRefCount(dict);
	Tcl_SetObjResult(interp, Tcl_NewStringObj("the session is busy with"
		" a send", -1));
	Tcl_SetErrorCode(interp, "SMTP", "BUSY", NULL);
	return TCL_ERROR;
    }
    for (i = 2; i < objc; i += 2) {
	Tcl_DictObjPut(NULL, dict, objv[i], objv[i + 1]);
    }
    merged = Tcl_NewListObj(0, NULL);
    {
	Tcl_DictSearch search;
	Tcl_Obj *k, *val;
	int done;

	Tcl_DictObjFirst(NULL, dict, &search, &k, &val, &done);
	for (; !done; Tcl_DictObjNext(&search, &k, &val, &done)) {
	    Tcl_ListObjAppendElement(NULL, merged, k);
	    Tcl_ListObjAppendElement(NULL, merged, val);
	}
    }
    Tcl_DecrRefCount(dict);
    if (SessionValidate(interp, merged) != TCL_OK) {
	Tcl_DecrRefCount(merged);
	return TCL_ERROR;
    }
    Tcl_IncrRefCount(merged);
    Tcl_DecrRefCount(so->options);
    so->options = merged;
    SessionDrop(so, 1);
    /* Closing ran the event loop, whose handlers leave their results. */
    Tcl_ResetResult(interp);
    return TCL_OK;
}

static int
SessionObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    static const char *const subs[] = {
	"cget", "close", "configure", "send", NULL
    };
    SessionObj *so = (SessionObj *) clientData;
    int idx;

    if (objc < 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "subcommand ?arg ...?");
	return TCL_ERROR;
    }
    if (Tcl_GetIndexFromObj(interp, objv[1], subs, "subcommand", 0, &idx)
	    != TCL_OK) {
	return TCL_ERROR;
    }
    switch (idx) {
    case 0:
	return SessionConfigure(so, interp, objc, objv, 1);
    case 1:
	if (objc != 2) {
	    Tcl_WrongNumArgs(interp, 2, objv, NULL);
	    return TCL_ERROR;
	}
	if (!so->busy) {
	    SessionDrop(so, 1);
	}
	/* With a send in flight, that send ends cancelled (see
	 * SessionDeleted) and everything is freed after it. */
	Tcl_DeleteCommandFromToken(interp, so->token);
	return TCL_OK;
    case 2:
	return SessionConfigure(so, interp, objc, objv, 0);
    default:
	return SessionSend(so, interp, objc, objv);
    }
}

/*
 * Checks a session's options with sendmessage's own parser.
 */

static int
SessionValidate(
    Tcl_Interp *interp,
    Tcl_Obj *options)
{
    SendCall c;
    Tcl_Obj *list, **elems;
    Tcl_Size n;
    int origP = 0, code;

    list = Tcl_NewListObj(0, NULL);
    Tcl_IncrRefCount(list);
    Tcl_ListObjAppendElement(NULL, list, S("session"));
    Tcl_ListObjAppendElement(NULL, list, S("token"));
    Tcl_ListObjAppendList(NULL, list, options);
    Tcl_ListObjGetElements(NULL, list, &n, &elems);
    if (CheckOptionKind(interp, (int) n - 2, elems + 2, 1, "session")
	    != TCL_OK) {
	Tcl_DecrRefCount(list);
	return TCL_ERROR;
    }
    memset(&c, 0, sizeof(c));
    HeadersInit(&c.h);
    Hold(&c.opts.servers, S("localhost"));
    Hold(&c.opts.ports, S("25"));
    code = ParseOptions(interp, (int) n, elems, &c, &origP);
    SendCallFree(&c);
    Tcl_DecrRefCount(list);
    return code;
}

/*
 * ::smtp::session ?option value ...?
 *
 * Makes a session command; its connection opens with the first send.
 */

int
SmtpSessionObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    SessionObj *so;
    Tcl_Obj *options = Tcl_NewListObj(objc - 1, objv + 1);
    char name[48];
    unsigned long id;

    (void) clientData;
    Tcl_IncrRefCount(options);
    if (SessionValidate(interp, options) != TCL_OK) {
	Tcl_DecrRefCount(options);
	return TCL_ERROR;
    }
    Tcl_MutexLock(&sessionMutex);
    id = ++sessionCounter;
    Tcl_MutexUnlock(&sessionMutex);
    snprintf(name, sizeof(name), "::smtp::session%lu", id);
    so = (SessionObj *) ckalloc(sizeof(SessionObj));
    memset(so, 0, sizeof(SessionObj));
    so->interp = interp;
    so->options = options;
    so->token = Tcl_CreateObjCommand(interp, name, SessionObjCmd, so,
	    SessionDeleted);
    Tcl_SetObjResult(interp, Tcl_NewStringObj(name, -1));
    return TCL_OK;
}
