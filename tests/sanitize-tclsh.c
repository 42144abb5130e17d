/*
 * sanitize-tclsh.c --
 *
 *	tclsh for "make test-sanitize": Tcl's own shell, built by clang with
 *	-fsanitize=address,undefined so that the sanitizer runtime is part of
 *	the program (and exports its interface to the package loaded into
 *	it).  Every test file and every tclsh a test starts runs this program
 *	([info nameofexecutable]); the other programs the suite starts
 *	(Postfix, Dovecot, Python, openssl) run as they are, without the
 *	sanitizer runtime, which would not fit in Dovecot's memory limit.
 */

#include <tcl.h>

int
main(
    int argc,
    char **argv)
{
#if TCL_MAJOR_VERSION > 8
    /* Tcl 9 keeps its script library in a zip archive of libtcl. */
    TclZipfs_AppHook(&argc, &argv);
#endif
    Tcl_Main(argc, argv, Tcl_Init);
    return 0;
}
