"""Checks bench/sink.c before the benchmarks trust it.

    python3 sinktest.py PATH-TO-SINK

Pipelined commands, DATA whose end mark and dot-stuffing straddle reads
(sent one byte at a time and in random pieces), BDAT chunks, the counters
of XSTAT, and an smtplib session.  Prints "sink ok" or fails with the
first difference.  run.tcl runs it before every benchmark run.
"""

import random
import smtplib
import socket
import subprocess
import sys
import time


def lines(f, n):
    return [f.readline().decode().rstrip('\r\n') for _ in range(n)]


def session(port):
    s = socket.create_connection(('127.0.0.1', port))
    f = s.makefile('rb')
    greeting = f.readline()
    assert greeting.startswith(b'220 '), greeting
    return s, f


def stats(port):
    s, f = session(port)
    s.sendall(b'XSTAT\r\nQUIT\r\n')
    reply = f.readline().decode().split()
    s.close()
    assert reply[0] == '250', reply
    return {k: int(v) for k, v in (kv.split('=') for kv in reply[1:])}


def send_in_pieces(s, data, how, rng):
    if how == 'bytes':
        for i in range(len(data)):
            s.send(data[i:i + 1])
    elif how == 'random':
        i = 0
        while i < len(data):
            n = rng.randint(1, 9)
            s.send(data[i:i + n])
            i += n
    else:
        s.sendall(data)


def check_ehlo(port):
    s, f = session(port)
    s.sendall(b'EHLO client.example\r\n')
    got = lines(f, 6)
    want = ['250-sink.example', '250-PIPELINING', '250-8BITMIME',
            '250-SIZE 0', '250-CHUNKING', '250 ENHANCEDSTATUSCODES']
    assert got == want, got
    s.close()


def check_pipelining(port, rng):
    """One pipelined stream: a DATA message, a BDAT message in two chunks
    and an empty DATA message, delivered three ways."""
    stream = (b'EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\n'
              b'DATA\r\n'
              b'line\r\n..starts with a dot\r\n.\r\n'
              b'MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\n'
              b'BDAT 10\r\n0123456789BDAT 5 LAST\r\n\r\n.\r\n'
              b'RSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nDATA\r\n.\r\n'
              b'QUIT\r\n')
    want = (['250-sink.example', '250-PIPELINING', '250-8BITMIME',
             '250-SIZE 0', '250-CHUNKING', '250 ENHANCEDSTATUSCODES',
             '250 2.1.0 Ok', '250 2.1.5 Ok', '250 2.1.5 Ok',
             '354 End data with <CR><LF>.<CR><LF>'],
            ['250 2.1.0 Ok', '250 2.1.5 Ok', '250 2.0.0 chunk received'],
            ['250 2.0.0 Ok', '250 2.1.0 Ok', '250 2.1.5 Ok',
             '354 End data with <CR><LF>.<CR><LF>'],
            ['221 2.0.0 Bye'])
    for how in ('bytes', 'random', 'whole'):
        before = stats(port)
        s, f = session(port)
        send_in_pieces(s, stream, how, rng)
        got = [f.readline().decode().rstrip('\r\n') for _ in range(21)]
        s.close()
        flat = [l for group in want for l in group]
        for g, w in zip(got, flat[:10]):
            assert g == w, (how, got)
        assert got[10].startswith('250 2.0.0 Ok: queued as'), (how, got)
        assert got[11:14] == flat[10:13], (how, got)
        assert got[14].startswith('250 2.0.0 Ok: queued as'), (how, got)
        assert got[15:19] == flat[13:17], (how, got)
        assert got[19].startswith('250 2.0.0 Ok: queued as'), (how, got)
        assert got[20] == '221 2.0.0 Bye', (how, got)
        after = stats(port)
        # 27 octets of DATA (as sent, dot-stuffed), 15 of BDAT, 0 for the
        # empty message.
        assert after['msgs'] - before['msgs'] == 3, (how, before, after)
        assert after['rcpts'] - before['rcpts'] == 4, (how, before, after)
        assert after['data'] - before['data'] == 42, (how, before, after)


def check_random_bodies(port, rng):
    """Many dot-stuffed bodies built from the awkward pieces, sent in
    random pieces: every message and every octet must be counted."""
    atoms = [b'\r\n', b'.', b'\r', b'\n', b'..', b'x', b'\r\n.\r', b'.\r\n']
    before = stats(port)
    msgs = octets = 0
    for _ in range(20):
        s, f = session(port)
        stream = b'EHLO c\r\n'
        for _ in range(rng.randint(1, 15)):
            body = b''.join(rng.choice(atoms) for _ in range(rng.randint(0, 30)))
            if body and not body.endswith(b'\r\n'):
                body += b'\r\n'
            body = body.replace(b'\r\n.', b'\r\n..')
            if body.startswith(b'.'):
                body = b'.' + body
            assert b'\r\n.\r\n' not in b'\r\n' + body
            stream += b'MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n' + body + b'.\r\n'
            msgs += 1
            octets += len(body)
        stream += b'QUIT\r\n'
        send_in_pieces(s, stream, 'random', rng)
        while s.recv(65536):
            pass
        s.close()
    after = stats(port)
    assert after['msgs'] - before['msgs'] == msgs, (msgs, before, after)
    assert after['data'] - before['data'] == octets, (octets, before, after)


def check_smtplib(port):
    before = stats(port)
    with smtplib.SMTP('127.0.0.1', port, local_hostname='c.example') as c:
        c.sendmail('a@b', ['c@d', 'e@f'], b'Subject: x\r\n\r\n.dot\r\nend\r\n')
    after = stats(port)
    assert after['msgs'] - before['msgs'] == 1
    assert after['rcpts'] - before['rcpts'] == 2
    assert after['data'] - before['data'] == len(b'Subject: x\r\n\r\n..dot\r\nend\r\n')


def main():
    if len(sys.argv) != 2:
        sys.stderr.write(__doc__)
        sys.exit(2)
    sink = subprocess.Popen([sys.argv[1], '-w'], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        port = int(sink.stdout.readline().split()[1])
        rng = random.Random(9)
        check_ehlo(port)
        check_pipelining(port, rng)
        check_random_bodies(port, rng)
        check_smtplib(port)
    finally:
        sink.stdin.close()
        deadline = time.time() + 5
        while sink.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        if sink.poll() is None:
            sink.kill()
    print('sink ok')


if __name__ == '__main__':
    main()
