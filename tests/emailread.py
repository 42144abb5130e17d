#!/usr/bin/env python3
"""emailread.py FILE... -- what Python's email package reads in messages.

For charset.test: each FILE holds one message as received (CRLF line
ends). Parsed with email.policy.default, every leaf part is printed as one
line of tab-separated fields: the file's index (from 0), the part's
number among the leaves (from 0), its content type, its charset parameter
(or "-"), its Content-Transfer-Encoding (or "-"), the defects Python
found (a count), and what get_content() gives: for text, the string in
UTF-8, for anything else the bytes, both in hex.
"""

import email
import email.policy
import sys


def main():
    out = []
    for i, name in enumerate(sys.argv[1:]):
        with open(name, "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.default)
        leaves = [p for p in msg.walk() if not p.is_multipart()]
        for k, part in enumerate(leaves):
            content = part.get_content()
            if isinstance(content, str):
                data = content.encode("utf-8", "surrogatepass")
            else:
                data = bytes(content)
            defects = len(part.defects) + (len(msg.defects) if k == 0 else 0)
            out.append("\t".join([
                str(i), str(k), part.get_content_type(),
                part.get_param("charset") or "-",
                part.get("content-transfer-encoding", "-").strip().lower(),
                str(defects), data.hex()]))
    sys.stdout.write("\n".join(out) + "\n")


main()
