#!/usr/bin/env python3
"""email_parse.py ?FILE ...? -- what Python's email package
(policy.default) makes of the message in each FILE, as JSON (UTF-8) on
standard output, one line per message. Without FILE, reads the names of
the files from standard input, one a line, and answers each at once (so
that a test suite pays for starting Python once). Each line is

  {"headers": [[name, value], ...],   top-level headers, values decoded
   "defects": ["...", ...],           every defect found, in any part
   "tree": PART}

  PART = {"type": "text/plain", "charset": "...", "disposition": "...",
          "filename": "...", "text": "...", "hex": "...", "parts": [PART]}

"text" is get_content() of a text part (the characters a mail reader
shows), "hex" the decoded octets of any leaf; "parts" those of a
multipart, in order.
"""

import json
import sys
from email import policy
from email.parser import BytesParser


def part(p, defects):
    defects.extend(str(d) for d in p.defects)
    for _, v in p.items():
        defects.extend(str(d) for d in getattr(v, "defects", ()))
    node = {
        "type": p.get_content_type(),
        "charset": p.get_content_charset() or "",
        "disposition": p.get_content_disposition() or "",
        "filename": p.get_filename() or "",
        "text": "",
        "hex": "",
        "parts": [],
    }
    if p.is_multipart():
        node["parts"] = [part(q, defects) for q in p.iter_parts()]
    else:
        node["hex"] = (p.get_payload(decode=True) or b"").hex()
        if p.get_content_maintype() == "text":
            node["text"] = p.get_content()
    return node


def describe(path):
    with open(path, "rb") as f:
        msg = BytesParser(policy=policy.default).parse(f)
    defects = []
    out = {
        "headers": [[k, str(v)] for k, v in msg.items()],
        "tree": part(msg, defects),
    }
    out["defects"] = defects
    sys.stdout.buffer.write(json.dumps(out, ensure_ascii=False).encode()
                            + b"\n")
    sys.stdout.buffer.flush()


def main():
    if len(sys.argv) > 1:
        for path in sys.argv[1:]:
            describe(path)
    else:
        for line in sys.stdin.buffer:
            describe(line.rstrip(b"\n").decode())


main()
