# m4/smtp.m4 --
#
#	Autoconf macros for building the smtp extension.  Written for this
#	project (they are not TEA's tcl.m4): just what a small, stubs-enabled
#	Tcl extension that links OpenSSL needs.
#
#	SMTP_TCL_CONFIG     find and load tclConfig.sh (--with-tcl)
#	SMTP_TCLSH          find a tclsh for "make test" / "make demo" (--with-tclsh)
#	SMTP_OPENSSL        find libssl/libcrypto (--with-openssl)
#	SMTP_CFLAG_IFELSE   does the C compiler accept a flag?
#	SMTP_LDFLAG_IFELSE  does the linker accept a flag?
#	SMTP_TCL_LIBDIR     default install libdir that Tcl searches

# SMTP_MULTIARCH
#	Sets smtp_multiarch to the Debian-style multiarch triplet
#	(x86_64-linux-gnu) if it can be found without dpkg-architecture,
#	else to the empty string.
AC_DEFUN([SMTP_MULTIARCH], [
    AC_REQUIRE([AC_PROG_CC])
    smtp_multiarch=`$CC -print-multiarch 2>/dev/null`
    case $smtp_multiarch in
	*-*) ;;
	*) smtp_multiarch= ;;
    esac
])

# SMTP_TCLSH_PROBE(TCLSH, SCRIPT)
#	Runs SCRIPT in TCLSH and puts its output in smtp_probe.  The script
#	goes in a file (conftest.tcl), not on standard input: a Windows
#	tclsh under Wine does not reliably run a script piped to it.
#	SCRIPT goes inside single quotes; write Tcl's brackets as the
#	quadrigraphs @<:@ and @:>@.
AC_DEFUN([SMTP_TCLSH_PROBE], [
    echo '$2' > conftest.tcl
    smtp_probe=`"$1" conftest.tcl 2>/dev/null </dev/null | tr -d '\\r'`
    rm -f conftest.tcl
])

# SMTP_TRY_TCLCONFIG(FILE)
#	Sets smtp_tcl_config to FILE if FILE is a usable tclConfig.sh.
#
#	Debian installs /usr/lib/tcl8.6/tclConfig.sh (and /usr/lib/tclConfig.sh
#	pointing at it) as a two-line wrapper that sources
#	/usr/lib/`dpkg-architecture -qDEB_HOST_MULTIARCH`/tcl8.6/tclConfig.sh.
#	dpkg-architecture comes from dpkg-dev, which a fresh machine does not
#	have, and sourcing the wrapper then fails.  Such a wrapper is never
#	sourced here: the file it points at is worked out with the multiarch
#	triplet from the compiler (or, failing that, a glob) and tried instead.
AC_DEFUN([SMTP_TRY_TCLCONFIG], [
    smtp_try=$1
    if test -z "$smtp_tcl_config" && test -f "$smtp_try"; then
	if grep dpkg-architecture "$smtp_try" >/dev/null 2>&1; then
	    # The wrapper's only real line: . /usr/lib/`dpkg-architecture ...`/tcl8.6/tclConfig.sh
	    smtp_real=`sed -n 's/^\.[[ 	]]*//p' "$smtp_try" | sed 1q`
	    smtp_pre=`echo "$smtp_real" | sed 's/\`.*$//'`
	    smtp_post=`echo "$smtp_real" | sed 's/^[[^\`]]*\`[[^\`]]*\`//'`
	    smtp_try=
	    for smtp_cand in "$smtp_pre$smtp_multiarch$smtp_post" $smtp_pre*$smtp_post; do
		if test -f "$smtp_cand"; then
		    if grep dpkg-architecture "$smtp_cand" >/dev/null 2>&1; then
			:
		    else
			smtp_try=$smtp_cand
			break
		    fi
		fi
	    done
	fi
	# Source it in a subshell first: a broken file must not kill configure.
	if test -n "$smtp_try" && (. "$smtp_try" && test -n "$TCL_VERSION") >/dev/null 2>&1; then
	    smtp_tcl_config=$smtp_try
	fi
    fi
])

# SMTP_TCL_CONFIG
#	Finds tclConfig.sh, sources it and substitutes what the Makefile
#	needs.  Looks, in order, at
#	  --with-tcl=DIR (DIR, DIR/lib, DIR/unix; DIR may also name the file),
#	  the library directory of the tclsh given with --with-tclsh or found
#	  on PATH (so that the extension is built for the Tcl that tests it),
#	  $prefix/lib if --prefix was given,
#	  /usr/lib/<multiarch>/tclX.Y and /usr/lib/*/tclX.Y (Debian, Ubuntu),
#	  /usr/lib/tclX.Y, /usr/lib64/tclX.Y, /usr/lib, /usr/lib64,
#	  /usr/local/lib/tclX.Y, /usr/local/lib, $prefix/lib.
#	No step runs dpkg-architecture.
AC_DEFUN([SMTP_TCL_CONFIG], [
    AC_REQUIRE([SMTP_MULTIARCH])
    AC_REQUIRE([SMTP_ARG_TCLSH])
    AC_ARG_WITH([tcl],
	[AS_HELP_STRING([--with-tcl=DIR],
	    [directory containing tclConfig.sh (or the path of the file)])],
	[with_tcl=$withval], [with_tcl=])
    if test "x$with_tcl" = xno; then
	AC_MSG_ERROR([the smtp extension needs Tcl; --without-tcl makes no sense])
    fi

    smtp_tcl_config=
    if test -n "$with_tcl" && test "x$with_tcl" != xyes; then
	AC_MSG_CHECKING([for tclConfig.sh in $with_tcl])
	for smtp_f in "$with_tcl" "$with_tcl/tclConfig.sh" \
		"$with_tcl/lib/tclConfig.sh" "$with_tcl/unix/tclConfig.sh"; do
	    SMTP_TRY_TCLCONFIG([$smtp_f])
	done
	if test -z "$smtp_tcl_config"; then
	    AC_MSG_RESULT([no])
	    AC_MSG_ERROR([--with-tcl=$with_tcl: no usable tclConfig.sh there.
Give the directory that contains tclConfig.sh, e.g.
  --with-tcl=/usr/lib/$smtp_multiarch/tcl8.6 (Debian/Ubuntu) or --with-tcl=/usr/local/lib])
	fi
	AC_MSG_RESULT([$smtp_tcl_config])
    else
	AC_MSG_CHECKING([for tclConfig.sh])
	# Ask the tclsh we will test with where its Tcl lives.
	smtp_hint_ver=
	smtp_hint_libdir=
	smtp_sh=$with_tclsh
	if test -z "$smtp_sh" || test "x$smtp_sh" = xyes || test "x$smtp_sh" = xno; then
	    smtp_sh=tclsh
	fi
	# Not when cross-compiling: this machine's tclsh knows only its own Tcl.
	if test "x$cross_compiling" = xyes && test "x$smtp_sh" = xtclsh; then
	    smtp_sh=
	fi
	if test -n "$smtp_sh" && (command -v "$smtp_sh") >/dev/null 2>&1; then
	    SMTP_TCLSH_PROBE([$smtp_sh], [puts $tcl_version])
	    smtp_hint_ver=$smtp_probe
	    SMTP_TCLSH_PROBE([$smtp_sh],
		[catch {puts @<:@::tcl::pkgconfig get libdir,install@:>@}])
	    smtp_hint_libdir=$smtp_probe
	fi
	smtp_p=$prefix
	test "x$smtp_p" = xNONE && smtp_p=$ac_default_prefix
	smtp_first=
	test "x$prefix" != xNONE && smtp_first="$prefix/lib"
	for smtp_d in $smtp_hint_libdir $smtp_first; do
	    SMTP_TRY_TCLCONFIG([$smtp_d/tclConfig.sh])
	    for smtp_v in $smtp_hint_ver 8.6 9.0; do
		SMTP_TRY_TCLCONFIG([$smtp_d/tcl$smtp_v/tclConfig.sh])
	    done
	done
	for smtp_v in $smtp_hint_ver 8.6 9.0 9.1 8.7; do
	    if test -n "$smtp_multiarch"; then
		SMTP_TRY_TCLCONFIG([/usr/lib/$smtp_multiarch/tcl$smtp_v/tclConfig.sh])
	    fi
	    for smtp_f in /usr/lib/*/tcl$smtp_v/tclConfig.sh \
		    /usr/lib/tcl$smtp_v/tclConfig.sh \
		    /usr/lib64/tcl$smtp_v/tclConfig.sh; do
		SMTP_TRY_TCLCONFIG([$smtp_f])
	    done
	done
	for smtp_f in /usr/lib/tclConfig.sh /usr/lib64/tclConfig.sh \
		/usr/local/lib/tcl*/tclConfig.sh /usr/local/lib/tclConfig.sh \
		"$smtp_p/lib/tclConfig.sh"; do
	    SMTP_TRY_TCLCONFIG([$smtp_f])
	done
	if test -z "$smtp_tcl_config"; then
	    AC_MSG_RESULT([not found])
	    AC_MSG_ERROR([cannot find tclConfig.sh, so Tcl's development files seem to be missing.
On Debian/Ubuntu: apt-get install tcl-dev.  Elsewhere install Tcl 8.6 or 9
with its development files, or point at tclConfig.sh with --with-tcl=DIR.])
	fi
	AC_MSG_RESULT([$smtp_tcl_config])
    fi

    . "$smtp_tcl_config"
    TCL_CONFIG_SH=$smtp_tcl_config
    AC_MSG_NOTICE([using Tcl $TCL_VERSION$TCL_PATCH_LEVEL from $TCL_CONFIG_SH])

    case $TCL_VERSION in
	8.[[0-5]]|[[0-7]].*)
	    AC_MSG_ERROR([Tcl $TCL_VERSION is too old: the smtp extension needs Tcl 8.6 or later]) ;;
    esac
    if test "x$TCL_SUPPORTS_STUBS" = x0 || test -z "$TCL_STUB_LIB_SPEC"; then
	AC_MSG_ERROR([this Tcl ($TCL_CONFIG_SH) has no stub library; the smtp extension is built with stubs])
    fi

    # tclConfig.sh of an uninstalled build tree only has the BUILD_ specs
    # right; of an installed Tcl, the plain ones.
    if test -n "$TCL_STUB_LIB_PATH" && test ! -f "$TCL_STUB_LIB_PATH" \
	    && test -f "$TCL_BUILD_STUB_LIB_PATH"; then
	TCL_STUB_LIB_SPEC=$TCL_BUILD_STUB_LIB_SPEC
	TCL_STUB_LIB_PATH=$TCL_BUILD_STUB_LIB_PATH
    fi
    if test -n "$TCL_STUB_LIB_PATH" && test ! -f "$TCL_STUB_LIB_PATH"; then
	AC_MSG_ERROR([Tcl's stub library $TCL_STUB_LIB_PATH is missing.
On Debian/Ubuntu: apt-get install tcl-dev])
    fi
    if test -z "$TCL_INCLUDE_SPEC" && test -n "$TCL_SRC_DIR"; then
	TCL_INCLUDE_SPEC="-I$TCL_SRC_DIR/generic"
    fi

    # tcl.h must really be there and compile.
    smtp_save_CPPFLAGS=$CPPFLAGS
    CPPFLAGS="$CPPFLAGS $TCL_INCLUDE_SPEC"
    AC_CHECK_HEADER([tcl.h], [],
	[AC_MSG_ERROR([Tcl's header tcl.h was not found with $TCL_INCLUDE_SPEC.
On Debian/Ubuntu: apt-get install tcl-dev.  Elsewhere use --with-tcl=DIR.])])
    AC_MSG_CHECKING([that tcl.h is Tcl $TCL_VERSION])
    AC_COMPILE_IFELSE([AC_LANG_PROGRAM([[#include <tcl.h>]], [[
#if TCL_MAJOR_VERSION != $TCL_MAJOR_VERSION || TCL_MINOR_VERSION != $TCL_MINOR_VERSION
#error tcl.h does not match tclConfig.sh
#endif
]])], [AC_MSG_RESULT([yes])],
	[AC_MSG_RESULT([no])
	 AC_MSG_ERROR([the tcl.h found with $TCL_INCLUDE_SPEC is not Tcl $TCL_VERSION])])
    CPPFLAGS=$smtp_save_CPPFLAGS

    SHLIB_SUFFIX=$TCL_SHLIB_SUFFIX
    test -z "$SHLIB_SUFFIX" && SHLIB_SUFFIX=.so
    SHLIB_CFLAGS=$TCL_SHLIB_CFLAGS
    SHLIB_LD=$TCL_SHLIB_LD
    test -z "$SHLIB_LD" && SHLIB_LD='${CC} ${CFLAGS} ${LDFLAGS} -shared'

    AC_SUBST([TCL_CONFIG_SH])
    AC_SUBST([TCL_VERSION])
    AC_SUBST([TCL_PATCH_LEVEL])
    AC_SUBST([TCL_INCLUDE_SPEC])
    AC_SUBST([TCL_STUB_LIB_SPEC])
    AC_SUBST([TCL_SHLIB_CFLAGS])
    AC_SUBST([TCL_SHLIB_SUFFIX])
    AC_SUBST([SHLIB_SUFFIX])
    AC_SUBST([SHLIB_CFLAGS])
    AC_SUBST([SHLIB_LD])
])

# SMTP_ARG_TCLSH
#	Declares --with-tclsh (read by SMTP_TCL_CONFIG and SMTP_TCLSH).
AC_DEFUN([SMTP_ARG_TCLSH], [
    AC_ARG_WITH([tclsh],
	[AS_HELP_STRING([--with-tclsh=PATH],
	    [tclsh that runs "make test" and "make demo"])],
	[with_tclsh=$withval], [with_tclsh=])
])

# SMTP_TCLSH
#	Finds the tclsh that "make test" and "make demo" run: --with-tclsh=PATH,
#	else tclshX.Y or tclsh on PATH (and in Tcl's bin directory); when
#	cross-compiling never this machine's tclsh, but what SMTP_WIN_TCLSH
#	finds (a Windows tclsh under Wine) or none.  Not
#	fatal when missing: only those targets need it.  Warns when its Tcl
#	version is not the one the extension is built for (such a tclsh
#	could not load it).
AC_DEFUN([SMTP_TCLSH], [
    AC_REQUIRE([SMTP_ARG_TCLSH])
    if test -n "$with_tclsh" && test "x$with_tclsh" != xyes && test "x$with_tclsh" != xno; then
	AC_MSG_CHECKING([for tclsh])
	TCLSH=$with_tclsh
	if test ! -x "$TCLSH"; then
	    smtp_t=`command -v "$TCLSH" 2>/dev/null`
	    if test -z "$smtp_t"; then
		AC_MSG_RESULT([no])
		AC_MSG_ERROR([--with-tclsh=$with_tclsh: no such program])
	    fi
	    TCLSH=$smtp_t
	fi
	AC_MSG_RESULT([$TCLSH])
    elif test "x$cross_compiling" = xyes; then
	SMTP_WIN_TCLSH
    else
	AC_PATH_PROGS([TCLSH], [tclsh$TCL_VERSION tclsh], [],
	    [$PATH$PATH_SEPARATOR$TCL_EXEC_PREFIX/bin])
    fi
    if test -z "$TCLSH" && test "x$cross_compiling" = xyes; then
	TCLSH=none
    elif test -z "$TCLSH"; then
	AC_MSG_WARN([no tclsh found: "make test" and "make demo" need one (use --with-tclsh=PATH)])
	TCLSH=tclsh
    else
	AC_MSG_CHECKING([the Tcl version of $TCLSH])
	SMTP_TCLSH_PROBE([$TCLSH], [puts $tcl_version])
	AC_MSG_RESULT([${smtp_probe:-unknown}])
	if test "x$smtp_probe" != "x$TCL_VERSION"; then
	    AC_MSG_WARN([$TCLSH runs Tcl ${smtp_probe:-?}, but the extension is built for Tcl $TCL_VERSION; "make test" may fail to load it (see --with-tclsh, --with-tcl)])
	fi
    fi
    AC_SUBST([TCLSH])
])

# SMTP_OPENSSL
#	Finds libssl and libcrypto (OpenSSL 1.1 or later).  Sets and
#	substitutes OPENSSL_CFLAGS and OPENSSL_LIBS.  With --with-openssl=DIR
#	uses DIR/include and DIR/lib (or DIR/lib64); else pkg-config when it
#	knows "openssl"; else the compiler's default paths.  Fatal when
#	missing.
AC_DEFUN([SMTP_OPENSSL], [
    AC_ARG_WITH([openssl],
	[AS_HELP_STRING([--with-openssl=DIR],
	    [OpenSSL installation prefix (DIR/include, DIR/lib)])],
	[with_openssl=$withval], [with_openssl=])
    if test "x$with_openssl" = xno; then
	AC_MSG_ERROR([the smtp extension needs OpenSSL; --without-openssl is not supported])
    fi
    AC_PATH_PROG([PKG_CONFIG], [pkg-config], [])

    OPENSSL_CFLAGS=
    OPENSSL_LIBS=
    smtp_ssl_how=
    if test -n "$with_openssl" && test "x$with_openssl" != xyes; then
	OPENSSL_CFLAGS="-I$with_openssl/include"
	smtp_ssl_libdir=$with_openssl/lib
	if test ! -d "$smtp_ssl_libdir" && test -d "$with_openssl/lib64"; then
	    smtp_ssl_libdir=$with_openssl/lib64
	fi
	OPENSSL_LIBS="-L$smtp_ssl_libdir -lssl -lcrypto"
	if test ! -f "$with_openssl/include/openssl/ssl.h"; then
	    AC_MSG_ERROR([--with-openssl=$with_openssl: there is no include/openssl/ssl.h there])
	fi
	smtp_ssl_how="--with-openssl=$with_openssl"
    elif test -n "$PKG_CONFIG" && "$PKG_CONFIG" --exists openssl 2>/dev/null; then
	OPENSSL_CFLAGS=`"$PKG_CONFIG" --cflags openssl`
	OPENSSL_LIBS=`"$PKG_CONFIG" --libs openssl`
	smtp_ssl_how="pkg-config"
    fi

    smtp_save_CPPFLAGS=$CPPFLAGS
    smtp_save_LIBS=$LIBS
    CPPFLAGS="$CPPFLAGS $OPENSSL_CFLAGS"
    AC_CHECK_HEADER([openssl/ssl.h], [],
	[AC_MSG_ERROR([OpenSSL's header openssl/ssl.h was not found.
On Debian/Ubuntu: apt-get install libssl-dev.  Elsewhere use --with-openssl=DIR.])])
    if test -z "$smtp_ssl_how"; then
	# No pkg-config: plain library checks in the default paths.
	LIBS=
	AC_CHECK_LIB([crypto], [EVP_DigestInit_ex], [],
	    [AC_MSG_ERROR([libcrypto (OpenSSL) was not found.
On Debian/Ubuntu: apt-get install libssl-dev.  Elsewhere use --with-openssl=DIR.])])
	AC_CHECK_LIB([ssl], [SSL_CTX_new], [],
	    [AC_MSG_ERROR([libssl (OpenSSL) was not found.
On Debian/Ubuntu: apt-get install libssl-dev.  Elsewhere use --with-openssl=DIR.])],
	    [-lcrypto])
	OPENSSL_LIBS=$LIBS
	smtp_ssl_how="default paths"
    fi
    # What a static libcrypto needs besides (pkg-config's Libs.private:
    # -lws2_32 -lgdi32 -lcrypt32 on Windows, -ldl -pthread on Linux), tried
    # only when linking without it fails.
    smtp_ssl_private=
    smtp_ssl_pc=
    if test "x$smtp_ssl_how" = "x--with-openssl=$with_openssl" \
	    && test -f "$smtp_ssl_libdir/pkgconfig/openssl.pc"; then
	smtp_ssl_pc=$smtp_ssl_libdir/pkgconfig
    fi
    if test -n "$PKG_CONFIG" && test -n "$smtp_ssl_pc"; then
	smtp_ssl_private=`PKG_CONFIG_LIBDIR="$smtp_ssl_pc" PKG_CONFIG_PATH= "$PKG_CONFIG" --static --libs-only-l openssl 2>/dev/null`
    elif test -n "$PKG_CONFIG" && test "x$smtp_ssl_how" = xpkg-config; then
	smtp_ssl_private=`"$PKG_CONFIG" --static --libs-only-l openssl 2>/dev/null`
    fi
    smtp_ssl_x=
    for smtp_l in $smtp_ssl_private; do
	case " $OPENSSL_LIBS $smtp_ssl_x " in *" $smtp_l "*) ;; *) smtp_ssl_x="$smtp_ssl_x $smtp_l" ;; esac
    done
    smtp_ssl_private=$smtp_ssl_x
    if test -z "$smtp_ssl_private" && test "x$smtp_windows" = xyes; then
	smtp_ssl_private=" -lws2_32 -lgdi32 -lcrypt32"
    fi
    smtp_ssl_ok=no
    for smtp_ssl_extra in "" "$smtp_ssl_private"; do
	LIBS="$OPENSSL_LIBS$smtp_ssl_extra $smtp_save_LIBS"
	AC_MSG_CHECKING([that OpenSSL 1.1 or later links ($smtp_ssl_how$smtp_ssl_extra)])
	AC_LINK_IFELSE([AC_LANG_PROGRAM([[
#include <openssl/ssl.h>
#include <openssl/evp.h>
]], [[
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    EVP_MD_CTX_free(md);
    SSL_CTX_free(ctx);
]])], [AC_MSG_RESULT([yes])
	    smtp_ssl_ok=yes
	    OPENSSL_LIBS="$OPENSSL_LIBS$smtp_ssl_extra"],
	    [AC_MSG_RESULT([no])])
	if test "$smtp_ssl_ok" = yes || test -z "$smtp_ssl_private"; then
	    break
	fi
    done
    if test "$smtp_ssl_ok" != yes; then
	AC_MSG_ERROR([cannot link a program with OpenSSL ($OPENSSL_CFLAGS $OPENSSL_LIBS).
OpenSSL 1.1 or later with its development files is needed.
On Debian/Ubuntu: apt-get install libssl-dev.  Elsewhere use --with-openssl=DIR.])
    fi
    CPPFLAGS=$smtp_save_CPPFLAGS
    LIBS=$smtp_save_LIBS
    AC_SUBST([OPENSSL_CFLAGS])
    AC_SUBST([OPENSSL_LIBS])
])

# SMTP_CFLAG_IFELSE(FLAG, [ACTION-IF-OK], [ACTION-IF-NOT])
#	Does the C compiler accept FLAG (without warning about it)?
AC_DEFUN([SMTP_CFLAG_IFELSE], [
    AC_MSG_CHECKING([whether $CC accepts $1])
    smtp_save_CFLAGS=$CFLAGS
    CFLAGS="$CFLAGS $1 -Werror"
    AC_COMPILE_IFELSE([AC_LANG_PROGRAM([], [])],
	[CFLAGS=$smtp_save_CFLAGS; AC_MSG_RESULT([yes]); $2],
	[CFLAGS=$smtp_save_CFLAGS; AC_MSG_RESULT([no]); $3])
])

# SMTP_LDFLAG_IFELSE(FLAG, [ACTION-IF-OK], [ACTION-IF-NOT])
#	Does linking a shared library with FLAG work?
AC_DEFUN([SMTP_LDFLAG_IFELSE], [
    AC_MSG_CHECKING([whether the linker accepts $1])
    smtp_save_LDFLAGS=$LDFLAGS
    LDFLAGS="$LDFLAGS $1"
    AC_LINK_IFELSE([AC_LANG_PROGRAM([], [])],
	[LDFLAGS=$smtp_save_LDFLAGS; AC_MSG_RESULT([yes]); $2],
	[LDFLAGS=$smtp_save_LDFLAGS; AC_MSG_RESULT([no]); $3])
])

# SMTP_TCL_LIBDIR
#	Picks the default libdir, under which "make install" puts smtpX.Y.Z/.
#	If --libdir was given, it is used as it is.  Otherwise, when Tcl
#	searches $exec_prefix/lib/tcltk (it is in the tcl_pkgPath compiled into
#	Tcl, TCL_PACKAGE_PATH in tclConfig.sh), as Debian's and Ubuntu's Tcl
#	does for /usr/local/lib/tcltk and /usr/lib/tcltk, that becomes the
#	default, so that a plain "tclsh" finds the package after "make
#	install" (Debian's Tcl does not search /usr/local/lib).  Otherwise the
#	usual $exec_prefix/lib stays; if Tcl does not search that either,
#	configure says that auto_path must be told.
AC_DEFUN([SMTP_TCL_LIBDIR], [
    AC_MSG_CHECKING([where to install the package])
    smtp_p=$prefix
    test "x$smtp_p" = xNONE && smtp_p=$ac_default_prefix
    smtp_ep=$exec_prefix
    test "x$smtp_ep" = xNONE && smtp_ep=$smtp_p
    # TCL_PACKAGE_PATH is a space-separated list in Tcl 8.6; allow braces
    # and colons (other versions) too.
    smtp_pkgpath=`echo "$TCL_PACKAGE_PATH" | tr ':{}' '   '`
    smtp_pkgpath=`echo $smtp_pkgpath`
    smtp_in_path() {
	for smtp_x in $smtp_pkgpath; do
	    test "x$smtp_x" = "x$[]1" && return 0
	    test "x$smtp_x" = "x$[]1/" && return 0
	done
	return 1
    }
    smtp_libdir_note=
    if test "x$libdir" = 'x${exec_prefix}/lib'; then
	if smtp_in_path "$smtp_ep/lib/tcltk"; then
	    libdir='${exec_prefix}/lib/tcltk'
	elif smtp_in_path "$smtp_ep/lib"; then
	    :
	else
	    smtp_libdir_note=yes
	fi
    fi
    smtp_libdir_x=`prefix=$smtp_p; exec_prefix=$smtp_ep; eval echo "$libdir"`
    AC_MSG_RESULT([$smtp_libdir_x/$PACKAGE_NAME$PACKAGE_VERSION])
    if test -n "$smtp_libdir_note"; then
	AC_MSG_NOTICE([$smtp_ep/lib is not in Tcl's package path ($smtp_pkgpath):
after "make install", add it to auto_path or TCLLIBPATH])
    fi
])
