/*
 * smtpAsync.c --
 *
 *	Asynchronous sends: sendmessage -command returns a handle at once and
 *	the command is called with the outcome later, from the event loop.
 *	The sends in flight are kept per interpreter, so smtp::cancel finds
 *	them and deleting the interpreter frees them.
 */

#include "smtpInt.h"
#include <stdio.h>

#define REGISTRY_KEY "smtp::async"

typedef struct Registry {
    Tcl_HashTable sends;	/* Handle name -> AsyncSend. */
    unsigned long counter;
} Registry;

typedef struct AsyncSend {
    Tcl_Interp *interp;
    Registry *reg;
    Tcl_HashEntry *entry;
    SmtpSession *sess;
    Tcl_Obj *command;
    Tcl_Obj *handle;
    void (*freeProc)(void *);	/* Frees what the session borrows. */
    void *freeData;
    int ownsSession;		/* Free the session when done (not for a
				 * smtp::session's send). */
} AsyncSend;

static void
FreeSend(
    AsyncSend *as)
{
    if (as->ownsSession) {
	SmtpSessionFree(as->sess);
    }
    as->freeProc(as->freeData);
    Tcl_DecrRefCount(as->command);
    Tcl_DecrRefCount(as->handle);
    ckfree(as);
}

/*
 * The interpreter is going: sends in flight are dropped without their
 * callbacks.
 */

static void
RegistryDelete(
    void *cd,
    Tcl_Interp *interp)
{
    Registry *reg = (Registry *) cd;
    Tcl_HashSearch search;
    Tcl_HashEntry *e;

    (void) interp;
    for (e = Tcl_FirstHashEntry(&reg->sends, &search); e != NULL;
	    e = Tcl_NextHashEntry(&search)) {
	FreeSend((AsyncSend *) Tcl_GetHashValue(e));
    }
    Tcl_DeleteHashTable(&reg->sends);
    ckfree(reg);
}

static Registry *
GetRegistry(
    Tcl_Interp *interp)
{
    Registry *reg = (Registry *) Tcl_GetAssocData(interp, REGISTRY_KEY,
	    NULL);

    if (reg == NULL) {
	reg = (Registry *) ckalloc(sizeof(Registry));
	Tcl_InitHashTable(&reg->sends, TCL_STRING_KEYS);
	reg->counter = 0;
	Tcl_SetAssocData(interp, REGISTRY_KEY, RegistryDelete, reg);
    }
    return reg;
}

/*
 * The session has finished: call the command with a dict of the outcome,
 * then free everything.
 */

static void
SendDone(
    SmtpSession *sess,
    void *cd)
{
    AsyncSend *as = (AsyncSend *) cd;
    Tcl_Interp *interp = as->interp;
    Tcl_Obj *refused, *reply, *msg, *ec, *dict, *cmd;
    int code = SmtpSessionResult(sess, &refused, &reply, &msg, &ec);

    dict = Tcl_NewDictObj();
    Tcl_DictObjPut(NULL, dict, Tcl_NewStringObj("handle", -1), as->handle);
    Tcl_DictObjPut(NULL, dict, Tcl_NewStringObj("status", -1),
	    Tcl_NewStringObj(code == TCL_OK ? "ok" : code == TCL_BREAK
	    ? "cancelled" : "error", -1));
    Tcl_DictObjPut(NULL, dict, Tcl_NewStringObj("refused", -1),
	    code == TCL_OK ? refused : Tcl_NewObj());
    Tcl_DictObjPut(NULL, dict, Tcl_NewStringObj("reply", -1),
	    reply ? reply : Tcl_NewObj());
    Tcl_DictObjPut(NULL, dict, Tcl_NewStringObj("errorcode", -1),
	    code != TCL_OK && ec ? ec : Tcl_NewObj());
    Tcl_DictObjPut(NULL, dict, Tcl_NewStringObj("message", -1),
	    code != TCL_OK && msg ? msg : Tcl_NewObj());
    cmd = Tcl_DuplicateObj(as->command);
    Tcl_IncrRefCount(cmd);
    Tcl_ListObjAppendElement(NULL, cmd, dict);

    Tcl_DeleteHashEntry(as->entry);
    Tcl_Preserve(interp);
    FreeSend(as);
    if (Tcl_EvalObjEx(interp, cmd, TCL_EVAL_GLOBAL) != TCL_OK) {
	Tcl_BackgroundException(interp, TCL_ERROR);
    }
    Tcl_ResetResult(interp);
    Tcl_Release(interp);
    Tcl_DecrRefCount(cmd);
}

/*
 * Makes the record of a send in the background and its handle (left in
 * the interpreter's result).
 */

static AsyncSend *
Register(
    Tcl_Interp *interp,
    SmtpSession *sess,
    int ownsSession,
    Tcl_Obj *command,
    void (*freeProc)(void *),
    void *freeData)
{
    Registry *reg = GetRegistry(interp);
    AsyncSend *as = (AsyncSend *) ckalloc(sizeof(AsyncSend));
    int isNew;
    char name[48];

    snprintf(name, sizeof(name), "::smtp::send%lu", ++reg->counter);
    as->interp = interp;
    as->reg = reg;
    as->sess = sess;
    as->ownsSession = ownsSession;
    as->command = command;
    Tcl_IncrRefCount(command);
    as->handle = Tcl_NewStringObj(name, -1);
    Tcl_IncrRefCount(as->handle);
    as->freeProc = freeProc;
    as->freeData = freeData;
    as->entry = Tcl_CreateHashEntry(&reg->sends, name, &isNew);
    Tcl_SetHashValue(as->entry, as);
    Tcl_SetObjResult(interp, as->handle);
    return as;
}

/*
 * Starts a send in the background. The session borrows opts and msgs,
 * which freeProc(freeData) frees once it is over. Leaves the handle in
 * the interpreter's result.
 */

int
SmtpAsyncStart(
    Tcl_Interp *interp,
    SmtpOptions *opts,
    SmtpMessage *msgs,
    int nmsgs,
    Tcl_Obj *command,
    Tcl_Obj *progress,
    void (*freeProc)(void *),
    void *freeData)
{
    SmtpSession *sess = SmtpSessionNew(interp, opts, msgs, nmsgs);
    AsyncSend *as = Register(interp, sess, 1, command, freeProc, freeData);

    if (progress) {
	SmtpSessionSetProgress(sess, progress);
    }
    SmtpSessionStart(sess, SendDone, as);
    return TCL_OK;
}

/*
 * The same for a send over a kept session (smtp::session), which stays:
 * freeProc(freeData) is called when the send is over, before the command.
 */

int
SmtpAsyncSubmit(
    Tcl_Interp *interp,
    SmtpSession *sess,
    SmtpOptions *opts,
    SmtpMessage *msgs,
    int nmsgs,
    Tcl_Obj *command,
    void (*freeProc)(void *),
    void *freeData)
{
    AsyncSend *as = Register(interp, sess, 0, command, freeProc, freeData);

    SmtpSessionSubmitAsync(sess, opts, msgs, nmsgs, SendDone, as);
    return TCL_OK;
}

/*
 * ::smtp::cancel handle
 *
 * Stops a send started with -command; its command is still called, with
 * status "cancelled".
 */

static int
CancelObjCmd(
    void *clientData,
    Tcl_Interp *interp,
    int objc,
    Tcl_Obj *const objv[])
{
    Registry *reg = GetRegistry(interp);
    Tcl_HashEntry *e;

    (void) clientData;
    if (objc != 2) {
	Tcl_WrongNumArgs(interp, 1, objv, "handle");
	return TCL_ERROR;
    }
    e = Tcl_FindHashEntry(&reg->sends, Tcl_GetString(objv[1]));
    if (e == NULL) {
	Tcl_SetObjResult(interp, Tcl_ObjPrintf("no send in progress named"
		" \"%s\"", Tcl_GetString(objv[1])));
	Tcl_SetErrorCode(interp, "SMTP", "HANDLE", NULL);
	return TCL_ERROR;
    }
    SmtpSessionCancel(((AsyncSend *) Tcl_GetHashValue(e))->sess);
    return TCL_OK;
}

void
SmtpAsyncInit(
    Tcl_Interp *interp)
{
    Tcl_CreateObjCommand(interp, "::smtp::cancel", CancelObjCmd, NULL,
	    NULL);
}
