# m4/smtpwin.m4 --
#
#	Autoconf macros for building the smtp extension for Windows with
#	MinGW-w64 (natively under MSYS2, or cross-compiled from Linux with
#	--host=x86_64-w64-mingw32).  Kept apart from m4/smtp.m4: everything
#	Windows-only is here, and configure.in calls it in blocks of its own.
#
#	SMTP_WIN_DETECT     does $CC build for Windows? (smtp_windows, PLATFORM_DIR)
#	SMTP_WIN_TCLSH      a tclsh for the tests when cross-compiling (Wine)
#	SMTP_WIN_SETUP      libraries, linker flags and the DLL's name
#	SMTP_WIN_PREFIX     the default --prefix: the Tcl's own

# SMTP_WIN_DETECT
#	Sets smtp_windows to yes when the C compiler makes Windows programs
#	(it defines _WIN32: MinGW-w64, natively or as a cross-compiler), else
#	to no.  Substitutes PLATFORM_DIR, the directory of platform code that
#	the Makefile compiles: win or unix.
AC_DEFUN([SMTP_WIN_DETECT], [
    AC_REQUIRE([AC_PROG_CC])
    AC_MSG_CHECKING([whether $CC builds for Windows])
    AC_COMPILE_IFELSE([AC_LANG_PROGRAM([], [[
#ifndef _WIN32
#error not Windows
#endif
]])], [smtp_windows=yes], [smtp_windows=no])
    AC_MSG_RESULT([$smtp_windows])
    if test "$smtp_windows" = yes; then
	PLATFORM_DIR=win
    else
	PLATFORM_DIR=unix
    fi
    AC_SUBST([PLATFORM_DIR])
])

# SMTP_WIN_WINE
#	Sets smtp_wine to a Wine loader that runs 64-bit programs (wine64,
#	wine, or Debian's /usr/lib/wine/wine64) and smtp_wineserver to the
#	wineserver beside it (or on PATH), or both to the empty string.
AC_DEFUN([SMTP_WIN_WINE], [
    smtp_wine=
    smtp_wineserver=
    for smtp_w in wine64 wine /usr/lib/wine/wine64 /usr/lib/wine/wine; do
	smtp_t=`command -v "$smtp_w" 2>/dev/null`
	if test -n "$smtp_t" && test -x "$smtp_t"; then
	    smtp_wine=$smtp_t
	    break
	fi
    done
    if test -n "$smtp_wine"; then
	smtp_t=`dirname "$smtp_wine"`
	for smtp_w in "$smtp_t/wineserver" "$smtp_t/wineserver64" \
		`command -v wineserver 2>/dev/null` /usr/lib/wine/wineserver; do
	    if test -x "$smtp_w"; then
		smtp_wineserver=$smtp_w
		break
	    fi
	done
	test -n "$smtp_wineserver" || smtp_wine=
    fi
])

# SMTP_WIN_TCLSH
#	Called by SMTP_TCLSH when cross-compiling without --with-tclsh: the
#	build machine's own tclsh cannot load a Windows DLL, so it is never
#	taken.  For a Windows build, when Tcl's tclshXY.exe is installed next
#	to the Tcl we build against and Wine is there, writes ./wine-tclsh (a
#	script that runs that tclsh under Wine, in a Wine prefix of its own
#	in the build directory) and sets TCLSH to it.  Otherwise leaves TCLSH
#	empty: "make test" then says that --with-tclsh is needed.
AC_DEFUN([SMTP_WIN_TCLSH], [
    TCLSH=
    smtp_exe=
    if test "$smtp_windows" = yes; then
	smtp_nodot=`echo "$TCL_VERSION" | tr -d .`
	for smtp_d in "$TCL_EXEC_PREFIX/bin" "$TCL_PREFIX/bin" \
		`dirname "$TCL_CONFIG_SH"`/../bin; do
	    for smtp_n in tclsh$smtp_nodot.exe tclsh$TCL_VERSION.exe tclsh.exe; do
		if test -z "$smtp_exe" && test -f "$smtp_d/$smtp_n"; then
		    smtp_exe=`cd "$smtp_d" && pwd`/$smtp_n
		fi
	    done
	done
	SMTP_WIN_WINE
    fi
    AC_MSG_CHECKING([for a tclsh to test with (cross-compiling)])
    if test -n "$smtp_exe" && test -n "$smtp_wine"; then
	smtp_abs_builddir=`pwd`
	cat > wine-tclsh <<SMTP_EOF
#!/bin/sh
# wine-tclsh -- written by configure: runs $smtp_exe
# under Wine ($smtp_wine), for "make test" of a cross-compiled build.
# Its Wine prefix is kept in the build directory unless WINEPREFIX says
# otherwise.  Headless Wine needs the null graphics driver, or Tcl finds
# no sockets ("sockets are not available on this system"); a new prefix
# is ready only once its wineserver is done.  Tcl's bin directory goes on
# PATH (openssl.exe, if installed there, for the TLS tests).  No Wine Mono
# or Gecko, which a new prefix would otherwise offer to download.
WINEPREFIX=\${WINEPREFIX:-$smtp_abs_builddir/wineprefix}
WINEDEBUG=\${WINEDEBUG:--all}
WINEPATH=\`dirname "$smtp_exe"\`
WINEDLLOVERRIDES=\${WINEDLLOVERRIDES:-'mscoree=;mshtml='}
export WINEPREFIX WINEDEBUG WINEPATH WINEDLLOVERRIDES
if test ! -f "\$WINEPREFIX/.smtp-graphics-null"; then
    "$smtp_wine" reg add 'HKCU\\Software\\Wine\\Drivers' /v Graphics /d null /f \\
	>/dev/null 2>&1 </dev/null && "$smtp_wineserver" -w \\
	&& touch "\$WINEPREFIX/.smtp-graphics-null"
fi
exec "$smtp_wine" "$smtp_exe" "\$[]@"
SMTP_EOF
	chmod +x wine-tclsh
	TCLSH=$smtp_abs_builddir/wine-tclsh
	AC_MSG_RESULT([$TCLSH (runs $smtp_exe under $smtp_wine)])
    elif test "$smtp_windows" = yes; then
	AC_MSG_RESULT([none])
	AC_MSG_WARN([cross-compiling: the tests need a Windows tclsh; ${smtp_exe:-no tclsh$smtp_nodot.exe was found beside Tcl}${smtp_exe:+ was found, but not Wine}: give --with-tclsh=PATH (a script that runs tclsh$smtp_nodot.exe under Wine) for "make test"])
    else
	AC_MSG_RESULT([none])
	AC_MSG_WARN([cross-compiling: this machine's tclsh cannot load the library; give --with-tclsh=PATH for "make test"])
    fi
])

# SMTP_WIN_SETUP
#	For a Windows build: the libraries win/ needs (Winsock; Crypt32 for
#	the certificate store), no -Wl,-z,defs (a DLL is always linked with
#	every symbol resolved, and the PE linker refuses the flag), libgcc
#	linked in, and the DLL named as Tcl names them: smtp160.dll for
#	Tcl 8, tcl9smtp160.dll for Tcl 9 (version without dots).
AC_DEFUN([SMTP_WIN_SETUP], [
    if test "$smtp_windows" = yes; then
	LIBS="$LIBS -lcrypt32 -lws2_32"
	SHLIB_LDFLAGS="-static-libgcc"
	smtp_nodots=`echo "$PACKAGE_VERSION" | tr -d .`
	PKG_LIB_FILE8="${PACKAGE_NAME}${smtp_nodots}.dll"
	PKG_LIB_FILE9="tcl9${PACKAGE_NAME}${smtp_nodots}.dll"
	case $TCL_MAJOR_VERSION in
	    8) PKG_LIB_FILE=$PKG_LIB_FILE8 ;;
	    *) PKG_LIB_FILE=$PKG_LIB_FILE9 ;;
	esac
    fi
])

# SMTP_WIN_PREFIX
#	For a Windows build without --prefix: the prefix of the Tcl built
#	against (TCL_PREFIX in its tclConfig.sh), as TEA does, rather than
#	/usr/local.  "make install" then puts smtp1.6.0/ in that Tcl's lib
#	directory, which a Windows tclsh searches by itself (auto_path holds
#	the directory above tcl_library): C:/Tcl/lib with a Tcl in C:/Tcl,
#	/mingw64/lib under MSYS2, the cross-built Tcl's lib when
#	cross-compiling (a tree to copy to Windows as a whole).
AC_DEFUN([SMTP_WIN_PREFIX], [
    if test "$smtp_windows" = yes && test "x$prefix" = xNONE \
	    && test -n "$TCL_PREFIX"; then
	prefix=$TCL_PREFIX
	AC_MSG_NOTICE([--prefix defaulting to Tcl's prefix, $prefix])
    fi
])
