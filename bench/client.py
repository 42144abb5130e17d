"""Benchmark helpers in Python: the smtplib client, a timer for external
clients (curl, smtp-source) and the generator of the input files.

    python3 client.py smtplib PORT FILE COUNT RCPTS
        Send the message in FILE (CRLF lines, not dot-stuffed) COUNT times,
        one connection each, to RCPTS recipients (b@example.org when 1,
        r0001@example.org ... otherwise) with smtplib.
    python3 client.py exec [--rss] CMD ARG...
        Run a command, wait for it and report its wall time, and with --rss
        its peak RSS.
    python3 client.py gen DIR NAME BYTES
        Write one input file (see gen below).

The first two print one line

    RESULT secs=S msgs=N base_kb=K hwm_kb=H pkg=VERSION

as client.tcl does.  For smtplib, secs covers the sends only and base_kb is
VmRSS before the message file is read (smtplib needs the whole message in
memory, which is part of what it costs).  For exec, secs is the wall time
of the whole command and hwm_kb the VmHWM of the command's process, read
from /proc every 10 ms (getrusage would count this Python process, which
the child is a fork of until it execs); 0 without --rss, where the command
is a shell loop whose own VmHWM would mean nothing; base_kb is 0.
"""

import os
import random
import smtplib
import subprocess
import sys
import time


def status_kb(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    return 0


def recipients(count):
    if count == 1:
        return ['b@example.org']
    return ['r%04d@example.org' % i for i in range(1, count + 1)]


def run_smtplib(port, path, count, nrcpt):
    base = status_kb('VmRSS')
    with open(path, 'rb') as f:
        msg = f.read()
    rcpts = recipients(nrcpt)
    t0 = time.perf_counter()
    for _ in range(count):
        with smtplib.SMTP('127.0.0.1', port,
                          local_hostname='client.example') as conn:
            conn.sendmail('a@example.com', rcpts, msg)
    secs = time.perf_counter() - t0
    print('RESULT secs=%.6f msgs=%d base_kb=%d hwm_kb=%d pkg=%s' % (
        secs, count, base, status_kb('VmHWM'), sys.version.split()[0]))


def child_hwm(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_exec(argv):
    rss = argv[0] == '--rss'
    if rss:
        argv = argv[1:]
    hwm = 0
    t0 = time.perf_counter()
    child = subprocess.Popen(argv)
    if rss:
        while True:
            try:
                code = child.wait(0.01)
                break
            except subprocess.TimeoutExpired:
                hwm = max(hwm, child_hwm(child.pid))
    else:
        code = child.wait()
    secs = time.perf_counter() - t0
    if code != 0:
        sys.stderr.write('client.py: %s exited with %d\n' % (argv[0], code))
        sys.exit(1)
    print('RESULT secs=%.6f msgs=0 base_kb=0 hwm_kb=%d pkg=-' % (secs, hwm))


WORDS = ('mail message server client header body line text encode quoted '
         'printable transfer sink source bench speed tcl extension socket '
         'buffer pipeline chunk octet reply envelope recipient').split()


def gen_text(path, size, rng):
    """Lines of 80 to 160 characters, longer than quoted-printable allows,
    with '=' signs, tabs and trailing blanks, so that mime chooses
    quoted-printable and the encoder has work on every line."""
    out = []
    total = 0
    while total < size:
        width = rng.randint(80, 160)
        words = []
        n = 0
        while n < width:
            w = rng.choice(WORDS)
            r = rng.random()
            if r < 0.05:
                w += '=' + str(rng.randint(0, 99))
            elif r < 0.08:
                w += '\t'
            elif r < 0.15:
                w += '.'
            words.append(w)
            n += len(w) + 1
        line = ' '.join(words)
        if rng.random() < 0.1:
            line += '  '
        line += '\n'
        out.append(line)
        total += len(line)
    data = ''.join(out).encode('ascii')[:size]
    data = data[:data.rfind(b'\n') + 1]
    with open(path, 'wb') as f:
        f.write(data)


INTL = ('Prix café crème déjà Grüße Straße naïve Ελληνικά κείμενο '
        'Русский текст почта сообщение 日本語 メール 送信 中文 邮件 '
        '한국어 메일 10€ «guillemets» “quotes” — … ✓').split()


def gen_intl(path, size, rng):
    """Text in many scripts (Latin with accents, Greek, Cyrillic, CJK,
    symbols; one to three octets a character in UTF-8), in lines of at
    most 72 characters as a mail client wraps them, written in UTF-8."""
    out = []
    total = 0
    while total < size:
        words = []
        n = 0
        while True:
            w = rng.choice(INTL)
            if n + len(w) + 1 > 72:
                break
            words.append(w)
            n += len(w) + 1
        line = (' '.join(words) + '\n').encode('utf-8')
        out.append(line)
        total += len(line)
    data = b''.join(out)[:size]
    data = data[:data.rfind(b'\n') + 1]
    with open(path, 'wb') as f:
        f.write(data)


def gen(directory, name, size):
    rng = random.Random(name)
    path = os.path.join(directory, name)
    tmp = path + '.tmp'
    if name.endswith('.txt') and size <= 4096:
        lines = ['Line %d of a small benchmark message, plain ASCII text.\n'
                 % i for i in range(1, 9)]
        with open(tmp, 'w') as f:
            f.write(''.join(lines))
    elif name.endswith('-intl.txt'):
        gen_intl(tmp, size, rng)
    elif name.endswith('.txt'):
        gen_text(tmp, size, rng)
    else:
        with open(tmp, 'wb') as f:
            left = size
            while left > 0:
                n = min(left, 1 << 24)
                f.write(rng.randbytes(n))
                left -= n
    os.replace(tmp, path)


def main(argv):
    if len(argv) >= 6 and argv[1] == 'smtplib':
        run_smtplib(int(argv[2]), argv[3], int(argv[4]), int(argv[5]))
    elif len(argv) >= 3 and argv[1] == 'exec':
        run_exec(argv[2:])
    elif len(argv) == 5 and argv[1] == 'gen':
        gen(argv[2], argv[3], int(argv[4]))
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == '__main__':
    main(sys.argv)
