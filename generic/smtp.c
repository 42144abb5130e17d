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
    return Tcl_PkgProvide(interp, PACKAGE_NAME, PACKAGE_VERSION);
}
