#!/usr/bin/env python3
# email_read.py --
#
#	What an independent reader makes of a message: Python's email package
#	with policy.default.  Usage: email_read.py FILE QUERY ...  Each query
#	prints one line, the hex of the UTF-8 of its answer (so that any text
#	reaches Tcl intact).  With --serve, requests are read from stdin, one
#	a line (FILE QUERY ..., separated by tabs), each answered by its lines
#	and a line ".".  The queries:
#	    h:NAME       the decoded value of header NAME ("" when absent)
#	    names:NAME   display names of the addresses in NAME, "|" between
#	    addrs:NAME   addr-specs of the addresses in NAME, "|" between
#	    dnames:NAME  display names as the older API reads them
#	                 (email.utils.getaddresses, email.header.decode_header)
#	    decoded:NAME the raw header NAME through decode_header (comments
#	                 included, which policy.default leaves out)
#	    files        get_filename() of every leaf part, "|" between
#	    words:NAME   "ok" when every encoded word of the raw header NAME
#	                 decodes as complete UTF-8 on its own, else the first
#	                 that does not
#	    defects      the header and message defects Python found, "|"
#	                 between
#
#	policy.default (Python 3.11) puts a space between adjacent encoded
#	words in a display name, where RFC 2047 6.2 says the white space
#	between them is to be ignored; the older API does not: a display name
#	longer than one encoded word is checked with dnames.
#
#	A message whose headers are UTF-8 (RFC 6532) is read as text: the
#	byte parser takes header octets beyond ASCII for undecodable ones.

import base64
import binascii
import email
import email.header
import email.policy
import email.utils
import re
import sys


def words_ok(raw):
    for m in re.finditer(r'=\?([^?]+)\?([BbQq])\?([^?]*)\?=', raw):
        cs, enc, txt = m.groups()
        if enc in 'Bb':
            data = base64.b64decode(txt)
        else:
            data = re.sub(rb'=([0-9A-Fa-f]{2})',
                          lambda x: bytes([int(x.group(1), 16)]),
                          txt.replace('_', ' ').encode('ascii'))
        try:
            data.decode(cs, 'strict')
        except (UnicodeDecodeError, LookupError):
            return m.group(0)
    return 'ok'


def answer(path, queries):
    with open(path, 'rb') as f:
        data = f.read()
    head = data.split(b'\r\n\r\n', 1)[0]
    try:
        utf8 = any(c >= 0x80 for c in head) and bool(head.decode('utf-8'))
    except UnicodeDecodeError:
        utf8 = False
    if utf8:
        text = data.decode('utf-8', 'surrogateescape')
        msg = email.message_from_string(text, policy=email.policy.default)
        raw = email.message_from_string(text, policy=email.policy.compat32)
    else:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        raw = email.message_from_bytes(data,
                                       policy=email.policy.compat32)
    for q in queries:
        kind, _, name = q.partition(':')
        if kind == 'h':
            v = msg[name]
            out = '' if v is None else str(v)
        elif kind in ('names', 'addrs'):
            v = msg[name]
            out = '|'.join(a.display_name if kind == 'names' else a.addr_spec
                           for a in v.addresses)
        elif kind == 'dnames':
            pairs = email.utils.getaddresses(raw.get_all(name, []))
            out = '|'.join(str(email.header.make_header(
                email.header.decode_header(n))) for n, a in pairs)
        elif kind == 'decoded':
            v = raw.get(name)
            out = '' if v is None else str(email.header.make_header(
                email.header.decode_header(str(v))))
        elif kind == 'files':
            out = '|'.join(p.get_filename() or '' for p in msg.walk()
                           if not p.is_multipart())
        elif kind == 'words':
            v = raw.get(name)
            out = words_ok('' if v is None else str(v))
        elif kind == 'defects':
            d = [type(x).__name__ for x in msg.defects]
            for k, v in msg.items():
                d.extend(type(x).__name__ for x in
                         getattr(v, 'defects', ()))
            out = '|'.join(d)
        else:
            out = '?'
        print(binascii.hexlify(out.encode('utf-8')).decode('ascii'))


if sys.argv[1] == '--serve':
    for line in sys.stdin:
        req = line.rstrip('\n').split('\t')
        answer(req[0], req[1:])
        print('.', flush=True)
else:
    answer(sys.argv[1], sys.argv[2:])
