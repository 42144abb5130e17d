/*
 * smtp.c --
 *
 *	Package initialisation: loads tcllib's mime package (callers hand us
 *	its tokens) and creates the ::smtp commands.
 */

#include "smtpInt.h"

#ifndef DLLEXPORT
#define DLLEXPORT
#endif

/*
 * The sanitizer build ("make test-sanitize", SMTP_SYSTEM_ALLOC with
 * AddressSanitizer): the leak check runs when Tcl exits, from an exit
 * handler, in every process that loaded the package, and only there; the
 * run turns LeakSanitizer's own check at exit off, since the other
 * programs the test suite starts are not ours to check.
 */

#if defined(SMTP_SYSTEM_ALLOC) && defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SMTP_LEAK_CHECK 1
#endif
#endif
#if defined(SMTP_SYSTEM_ALLOC) && defined(__SANITIZE_ADDRESS__)
#define SMTP_LEAK_CHECK 1
#endif

#ifdef SMTP_LEAK_CHECK
#include <sanitizer/lsan_interface.h>

TCL_DECLARE_MUTEX(leakMutex)
static int leakCheckSet = 0;

static void
LeakCheck(
    void *clientData)
{
    (void) clientData;
    __lsan_do_leak_check();
}
#endif

/*
 * Called by [load]. Returns TCL_OK, or TCL_ERROR when Tcl is too old or
 * the mime package cannot be loaded.
 */

DLLEXPORT int
Smtp_Init(
    Tcl_Interp *interp)
{
    if (Tcl_InitStubs(interp, "8.6-", 0) == NULL) {
	return TCL_ERROR;
    }
    if (Tcl_PkgRequire(interp, "mime", NULL, 0) == NULL) {
	return TCL_ERROR;
    }
    if (Tcl_Eval(interp, "namespace eval ::smtp {namespace export"
	    " sendmessage session cancel}; namespace eval ::smtp::internal {}") != TCL_OK) {
	return TCL_ERROR;
    }
    Tcl_CreateObjCommand(interp, "::smtp::sendmessage",
	    SmtpSendmessageObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::smtp::session", SmtpSessionObjCmd,
	    NULL, NULL);
    Tcl_CreateObjCommand(interp, "::smtp::internal::message",
	    SmtpMessageObjCmd, NULL, NULL);
    Tcl_CreateObjCommand(interp, "::smtp::internal::sendoptions",
	    SmtpSendOptionsObjCmd, NULL, NULL);
    SmtpAsyncInit(interp);
    SmtpTestInit(interp);
    SmtpSaslTestInit(interp);
#ifdef SMTP_LEAK_CHECK
    Tcl_MutexLock(&leakMutex);
    if (!leakCheckSet) {
	leakCheckSet = 1;
	Tcl_CreateExitHandler(LeakCheck, NULL);
    }
    Tcl_MutexUnlock(&leakMutex);
#endif
    return Tcl_PkgProvide(interp, PACKAGE_NAME, PACKAGE_VERSION);
}
