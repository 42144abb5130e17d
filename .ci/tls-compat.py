#!/usr/bin/env python3
"""tls-compat.py -- lets trixie's tcl-tls 1.8.0 for Tcl 9 load on Debian 12
(used by .ci/build-tcl9 only; see there why).

    tls-compat.py weak LIB VERSION
        Marks LIB's need for symbol version VERSION (of any library) weak
        (VER_FLG_WEAK in .gnu.version_r), so that the dynamic linker loads
        LIB although no library defines that version; the symbols of that
        version must then come from a library loaded before, globally.

    tls-compat.py source
        Prints the C source of that library (libtlscompat.so): the two
        OpenSSL 3.2 functions tcl-tls 1.8.0 uses, for OpenSSL 3.0, and an
        empty Tlscompat_Init so that Tcl's "load -global" takes it.
"""
import struct
import sys

SHT_GNU_VERNEED = 0x6ffffffe
VER_FLG_WEAK = 0x2

SOURCE = r'''/* libtlscompat.so: OpenSSL 3.2's SSL_is_tls and SSL_is_quic for 3.0. */
#include <openssl/ssl.h>

int Tlscompat_Init(void *interp) { (void) interp; return 0; }
int compat_SSL_is_tls(const SSL *s) { return !SSL_is_dtls(s); }
int compat_SSL_is_quic(const SSL *s) { (void) s; return 0; }
__asm__(".symver compat_SSL_is_tls,SSL_is_tls@@OPENSSL_3.2.0");
__asm__(".symver compat_SSL_is_quic,SSL_is_quic@@OPENSSL_3.2.0");
'''


def weak(path, want):
    data = bytearray(open(path, 'rb').read())
    if data[:4] != b'\x7fELF' or data[4] != 2 or data[5] != 1:
        sys.exit('%s: not a 64-bit little-endian ELF file' % path)
    shoff, = struct.unpack_from('<Q', data, 0x28)
    shentsize, shnum = struct.unpack_from('<HH', data, 0x3A)
    secs = [struct.unpack_from('<IIQQQQIIQQ', data, shoff + i * shentsize)
            for i in range(shnum)]
    found = 0
    for sec in secs:
        if sec[1] != SHT_GNU_VERNEED:
            continue
        strtab = secs[sec[6]][4]            # sh_link: the string table
        def name(off):
            o = strtab + off
            return bytes(data[o:data.index(b'\0', o)])
        vn = sec[4]
        for _ in range(sec[8]):              # sh_info: number of entries
            _, cnt, _, aux, nxt = struct.unpack_from('<HHIII', data, vn)
            a = vn + aux
            for _ in range(cnt):
                _, flags, _, nm, anext = struct.unpack_from('<IHHII', data, a)
                if name(nm) == want.encode():
                    struct.pack_into('<H', data, a + 4, flags | VER_FLG_WEAK)
                    found += 1
                a += anext
            vn += nxt
    if not found:
        sys.exit('%s: needs no version %s' % (path, want))
    open(path, 'wb').write(data)


if __name__ == '__main__':
    if len(sys.argv) == 4 and sys.argv[1] == 'weak':
        weak(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 2 and sys.argv[1] == 'source':
        sys.stdout.write(SOURCE)
    else:
        sys.exit(__doc__)
