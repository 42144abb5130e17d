/*
 * fuzz.h --
 *
 *	What the libFuzzer targets in this directory share: Tcl set up once
 *	per process (the real libtcl, no stubs), an interpreter with the mime
 *	package for the targets that need one, and a reader that takes the
 *	fuzzer's input apart.
 */

#ifndef SMTP_FUZZ_H
#define SMTP_FUZZ_H

#include "smtpInt.h"
#include <stdint.h>
#include <stdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * Stops the run with a message: a finding (libFuzzer saves the input).
 */

#define FUZZ_CHECK(cond, what) \
    do { \
	if (!(cond)) { \
	    fprintf(stderr, "fuzz check failed: %s (%s:%d)\n", (what), \
		    __FILE__, __LINE__); \
	    abort(); \
	} \
    } while (0)

static inline void
FuzzTclInit(void)
{
    static int done = 0;

    if (!done) {
#if TCL_MAJOR_VERSION > 8
	/* Tcl 9 keeps its script library in a zip archive of libtcl. */
	static char name[] = "fuzz", *args[] = {name, NULL};
	int argc = 1;
	char **argv = args;

	TclZipfs_AppHook(&argc, &argv);
#else
	Tcl_FindExecutable(NULL);
#endif
	done = 1;
    }
}

/*
 * An interpreter with Tcl's library and, when 'mime' is set, tcllib's mime
 * package loaded (found on auto_path: TCLLIBPATH adds to it); made once,
 * kept for the whole run.
 */

static inline Tcl_Interp *
FuzzInterp(
    int mime)
{
    static Tcl_Interp *interp = NULL;

    if (interp == NULL) {
	FuzzTclInit();
	interp = Tcl_CreateInterp();
	if (Tcl_Init(interp) != TCL_OK || (mime && Tcl_Eval(interp,
		"package require mime") != TCL_OK)) {
	    fprintf(stderr, "fuzz: cannot set up Tcl: %s\n",
		    Tcl_GetStringResult(interp));
	    exit(2);
	}
    }
    return interp;
}

/*
 * The input, consumed from the front.
 */

typedef struct FuzzIn {
    const uint8_t *p;
    size_t n;
} FuzzIn;

/* One byte, or 0 when the input is used up. */

static inline unsigned
FuzzByte(
    FuzzIn *in)
{
    if (in->n == 0) {
	return 0;
    }
    in->n--;
    return *in->p++;
}

/*
 * The bytes up to the next occurrence of 'sep' (not included; it is
 * skipped), or the rest. Returns 0 when nothing is left.
 */

static inline int
FuzzSplit(
    FuzzIn *in,
    const char *sep,
    const uint8_t **pPtr,
    size_t *nPtr)
{
    size_t k = strlen(sep), i;

    if (in->p == NULL) {
	return 0;
    }
    for (i = 0; i + k <= in->n; i++) {
	if (memcmp(in->p + i, sep, k) == 0) {
	    *pPtr = in->p;
	    *nPtr = i;
	    in->p += i + k;
	    in->n -= i + k;
	    return 1;
	}
    }
    *pPtr = in->p;
    *nPtr = in->n;
    in->p = NULL;
    in->n = 0;
    return 1;
}

#endif /* SMTP_FUZZ_H */
