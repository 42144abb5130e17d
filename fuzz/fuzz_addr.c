/*
 * fuzz_addr.c --
 *
 *	The C address splitter (FastAddresses in smtpCmd.c, static, hence
 *	the #include) against the parser it stands in for: whenever it
 *	splits a string, tcllib's mime::parseaddress must find the same
 *	addresses without an error. Then the whole of ParseAddresses (fast
 *	path, or mime::parseaddress and the control-character check) in
 *	each mode. An address that comes out never holds a control
 *	character.
 *
 *	Input: the address string, as UTF-8 (at most 256 octets: the Tcl
 *	parser is slow, and longer strings add nothing).
 */

#include "fuzz.h"
#include "smtpCmd.c"

int
LLVMFuzzerTestOneInput(
    const uint8_t *data,
    size_t size)
{
    static Tcl_Obj *errKey = NULL, *addrKey = NULL;
    Tcl_Interp *interp = FuzzInterp(1);
    Tcl_Obj *str, *fast, *parsed, **elems, **fastElems, *addrs;
    Tcl_Size n, nfast, i;
    int mode;

    if (size > 256) {
	return 0;
    }
    if (errKey == NULL) {
	errKey = Tcl_NewStringObj("error", -1);
	addrKey = Tcl_NewStringObj("address", -1);
	Tcl_IncrRefCount(errKey);
	Tcl_IncrRefCount(addrKey);
    }
    str = Tcl_NewStringObj(size ? (const char *) data : "", (Tcl_Size) size);
    Tcl_IncrRefCount(str);

    fast = FastAddresses(str);
    if (fast != NULL) {
	Tcl_IncrRefCount(fast);
	FUZZ_CHECK(Tcl_ListObjGetElements(NULL, fast, &nfast, &fastElems)
		== TCL_OK && nfast > 0, "fast path: no address");
	FUZZ_CHECK(Call(interp, &parsed, S("::mime::parseaddress"), str,
		NULL) == TCL_OK, "mime::parseaddress failed");
	FUZZ_CHECK(Tcl_ListObjGetElements(NULL, parsed, &n, &elems)
		== TCL_OK && n == nfast,
		"fast path: another number of addresses than mime's");
	for (i = 0; i < n; i++) {
	    Tcl_Obj *err = NULL, *addr = NULL;

	    FUZZ_CHECK(Tcl_DictObjGet(NULL, elems[i], errKey, &err)
		    == TCL_OK && Tcl_DictObjGet(NULL, elems[i], addrKey,
		    &addr) == TCL_OK, "mime's result");
	    FUZZ_CHECK(err == NULL || Tcl_GetCharLength(err) == 0,
		    "fast path took an address mime refuses");
	    FUZZ_CHECK(addr != NULL && strcmp(Tcl_GetString(addr),
		    Tcl_GetString(fastElems[i])) == 0,
		    "fast path: another address than mime's");
	}
	Tcl_DecrRefCount(parsed);
	Tcl_DecrRefCount(fast);
    }

    for (mode = ADDR_ALL; mode <= ADDR_FIRST; mode++) {
	addrs = NULL;
	if (ParseAddresses(interp, str, "-recipients", mode, &addrs)
		== TCL_OK) {
	    FUZZ_CHECK(addrs != NULL && Tcl_ListObjGetElements(NULL, addrs,
		    &n, &elems) == TCL_OK, "addresses not a list");
	    FUZZ_CHECK(mode == ADDR_ALL || n == 1, "one address wanted");
	    for (i = 0; i < n; i++) {
		FUZZ_CHECK(!HasControl(elems[i]),
			"control character in an address");
	    }
	    Tcl_DecrRefCount(addrs);
	}
	Tcl_ResetResult(interp);
    }
    Tcl_DecrRefCount(str);
    return 0;
}
