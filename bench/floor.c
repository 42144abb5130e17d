/*
 * floor.c --
 *
 *	The "floor" client of the benchmarks: the least a correct SMTP client
 *	can do to send the small message of scenarios 1 and 4, one connection
 *	per message, in plain C with blocking sockets.  Nothing is parsed or
 *	built per message: the message file is read once, the commands are
 *	made once, and every connection only writes them and reads the
 *	replies.  What it reaches is the limit that this machine, its
 *	loopback and the sink set for any client; run.tcl shows it beside the
 *	others.
 *
 *	Usage: smtp-floor [-w] PORT MSGFILE COUNT RCPTS
 *
 *	PORT	the sink's port on 127.0.0.1
 *	MSGFILE	the message (CRLF lines, not dot-stuffed), e.g. s1.eml
 *	COUNT	messages to send, each over its own connection
 *	RCPTS	recipients per message: b@example.org when 1, otherwise
 *		r0001@example.org ... (as client.tcl and client.py use)
 *	-w	wait for the MAIL and RCPT replies before sending the message,
 *		as the package does with several recipients (without
 *		-atleastone), instead of pipelining BDAT (or DATA) behind them
 *		as it does with one
 *
 *	The dialogue: the 220 greeting; EHLO client.example, noting
 *	PIPELINING, CHUNKING and SIZE; MAIL FROM (with SIZE= when offered),
 *	the RCPTs and, with CHUNKING, "BDAT n LAST" and the message, all in
 *	one write when PIPELINING is offered (without it, one command at a
 *	time); without CHUNKING, DATA, the 354, the dot-stuffed message and
 *	the final dot; then QUIT (with PIPELINING in the same write as the
 *	message, as the package does) and its 221.  Any other reply ends the run
 *	with status 1 and a message on standard error.
 *
 *	It prints one line, as client.tcl does:
 *
 *	    RESULT secs=S msgs=N base_kb=K hwm_kb=H pkg=-
 *
 *	secs is the time from before the first connect to after the last
 *	close (CLOCK_MONOTONIC); base_kb is VmRSS before that loop and hwm_kb
 *	VmHWM after it (/proc/self/status).
 */

#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#define RBUF_SIZE	(64 * 1024)	/* longest reply (all its lines) */

#define CAP_PIPELINING	1
#define CAP_CHUNKING	2
#define CAP_SIZE	4

/* A growable byte buffer. */
struct buf {
    char *p;
    size_t len, cap;
};

/* The reading side of one connection. */
struct reader {
    int fd;
    char data[RBUF_SIZE];
    size_t start;		/* first octet not consumed */
    size_t len;			/* octets in data */
};

/* What is sent, made once for the capabilities the server offers. */
struct plan {
    int caps;			/* capabilities it was made for; -1: none */
    struct buf mail;		/* MAIL FROM line */
    struct buf batch;		/* with PIPELINING: everything up to the body */
    struct buf body;		/* the message as written after the replies
				 * (BDAT line and message, or the dot-stuffed
				 * message), with QUIT behind it when
				 * PIPELINING is offered */
};

static const char *progName = "smtp-floor";
static int msgNo;		/* message being sent, for error messages */

static void
Fail(
    const char *fmt,
    ...)
{
    va_list ap;

    if (msgNo > 0) {
	fprintf(stderr, "%s: message %d: ", progName, msgNo);
    } else {
	fprintf(stderr, "%s: ", progName);
    }
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void
BufAdd(
    struct buf *b,
    const void *p,
    size_t n)
{
    if (b->len + n > b->cap) {
	size_t cap = b->cap ? b->cap : 256;

	while (cap < b->len + n) {
	    cap *= 2;
	}
	b->p = realloc(b->p, cap);
	if (b->p == NULL) {
	    Fail("out of memory");
	}
	b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void
BufStr(
    struct buf *b,
    const char *s)
{
    BufAdd(b, s, strlen(s));
}

/*
 * One field of /proc/self/status in kB, 0 when it cannot be read.
 */

static long
StatusKb(
    const char *field)
{
    char line[256];
    size_t n = strlen(field);
    long kb = 0;
    FILE *f = fopen("/proc/self/status", "r");

    if (f == NULL) {
	return 0;
    }
    while (fgets(line, sizeof(line), f)) {
	if (strncmp(line, field, n) == 0 && line[n] == ':') {
	    kb = strtol(line + n + 1, NULL, 10);
	    break;
	}
    }
    fclose(f);
    return kb;
}

static void
WriteAll(
    int fd,
    const char *p,
    size_t n)
{
    while (n > 0) {
	ssize_t k = send(fd, p, n, MSG_NOSIGNAL);

	if (k < 0) {
	    if (errno == EINTR) {
		continue;
	    }
	    Fail("send: %s", strerror(errno));
	}
	p += k;
	n -= (size_t) k;
    }
}

/*
 * Reads one complete reply (one or more lines "ddd-text" ... "ddd text")
 * and returns its code; *text and *textLen get the whole reply, valid
 * until the next call.  Replies may arrive several in one read or split
 * across reads.
 */

static int
ReadReply(
    struct reader *r,
    const char **text,
    size_t *textLen)
{
    size_t pos = r->start;	/* start of the line being looked at */
    int code = -1;

    for (;;) {
	char *nl = memchr(r->data + pos, '\n', r->len - pos);

	if (nl == NULL) {
	    ssize_t k;

	    /* Keep the reply so far, moved to the front, and read more. */
	    if (r->start > 0) {
		memmove(r->data, r->data + r->start, r->len - r->start);
		pos -= r->start;
		r->len -= r->start;
		r->start = 0;
	    }
	    if (r->len == sizeof(r->data)) {
		Fail("reply longer than %zu octets", sizeof(r->data));
	    }
	    do {
		k = recv(r->fd, r->data + r->len, sizeof(r->data) - r->len, 0);
	    } while (k < 0 && errno == EINTR);
	    if (k < 0) {
		Fail("recv: %s", strerror(errno));
	    }
	    if (k == 0) {
		Fail("the server closed the connection");
	    }
	    r->len += (size_t) k;
	    continue;
	}

	size_t lineLen = (size_t) (nl - (r->data + pos));	/* without LF */
	const char *line = r->data + pos;
	int c;

	if (lineLen > 0 && line[lineLen - 1] == '\r') {
	    lineLen--;
	}
	if (lineLen < 3 || line[0] < '2' || line[0] > '5'
		|| line[1] < '0' || line[1] > '9'
		|| line[2] < '0' || line[2] > '9'
		|| (lineLen > 3 && line[3] != ' ' && line[3] != '-')) {
	    Fail("malformed reply line: %.*s", (int) lineLen, line);
	}
	c = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	if (code >= 0 && c != code) {
	    Fail("reply lines with codes %d and %d", code, c);
	}
	code = c;
	pos = (size_t) (nl - r->data) + 1;
	if (lineLen == 3 || line[3] == ' ') {
	    *text = r->data + r->start;
	    *textLen = pos - r->start;
	    r->start = pos;
	    if (r->start == r->len) {
		r->start = r->len = 0;
	    }
	    return code;
	}
    }
}

/*
 * Reads a reply and fails unless its code is want (250 also takes 251,
 * the other positive completion a RCPT may get).
 */

static void
Expect(
    struct reader *r,
    int want,
    const char *after)
{
    const char *text;
    size_t len;
    int code = ReadReply(r, &text, &len);

    if (code == want || (want == 250 && code == 251)) {
	return;
    }
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r')) {
	len--;
    }
    Fail("%s: expected %d, got: %.*s", after, want, (int) len, text);
}

/*
 * Whether an EHLO reply offers the keyword (case-insensitive, the first
 * word after "250-" or "250 " on one of its lines).
 */

static int
Offers(
    const char *text,
    size_t len,
    const char *kw)
{
    size_t n = strlen(kw);
    const char *end = text + len;
    const char *line = text;

    while (line < end) {
	const char *nl = memchr(line, '\n', (size_t) (end - line));
	const char *eol = nl ? nl : end;

	if (eol - line >= 4 + (long) n
		&& strncasecmp(line + 4, kw, n) == 0
		&& (line + 4 + n == eol || line[4 + n] == ' '
		    || line[4 + n] == '\r')) {
	    return 1;
	}
	line = eol + 1;
    }
    return 0;
}

/*
 * Dot-stuffs a message with CRLF lines and adds the final dot.
 */

static void
Stuff(
    struct buf *out,
    const char *msg,
    size_t len)
{
    size_t i, from = 0;

    for (i = 0; i < len; i++) {
	if (msg[i] == '.' && (i == 0 || msg[i - 1] == '\n')) {
	    BufAdd(out, msg + from, i - from);
	    BufAdd(out, ".", 1);
	    from = i;
	}
    }
    BufAdd(out, msg + from, len - from);
    if (len > 0 && msg[len - 1] != '\n') {
	BufAdd(out, "\r\n", 2);
    }
    BufAdd(out, ".\r\n", 3);
}

static int
Connect(
    unsigned short port)
{
    struct sockaddr_in sa;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0) {
	Fail("socket: %s", strerror(errno));
    }
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0) {
	Fail("TCP_NODELAY: %s", strerror(errno));
    }
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    while (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
	if (errno != EINTR) {
	    Fail("connect to 127.0.0.1:%u: %s", port, strerror(errno));
	}
    }
    return fd;
}

int
main(
    int argc,
    char **argv)
{
    struct reader *r;
    struct plan plan;
    struct buf msg = {0}, stuffed = {0}, rcptLines = {0};
    struct timespec t0, t1;
    size_t *rcptOff;
    char line[128];
    long base, hwm, port;
    int count, nrcpt, i, waitRcpt = 0;
    FILE *f;

    if (argc > 1 && strcmp(argv[1], "-w") == 0) {
	waitRcpt = 1;
	argc--;
	argv++;
    }
    if (argc != 5) {
	fprintf(stderr, "usage: %s [-w] PORT MSGFILE COUNT RCPTS\n", progName);
	return 2;
    }
    port = strtol(argv[1], NULL, 10);
    count = atoi(argv[3]);
    nrcpt = atoi(argv[4]);
    if (port <= 0 || port > 65535 || count < 1 || nrcpt < 1
	    || nrcpt > 9999) {
	fprintf(stderr, "%s: bad PORT, COUNT or RCPTS\n", progName);
	return 2;
    }

    /* The message and the recipients, once. */
    f = fopen(argv[2], "rb");
    if (f == NULL) {
	fprintf(stderr, "%s: %s: %s\n", progName, argv[2], strerror(errno));
	return 1;
    }
    for (;;) {
	char chunk[65536];
	size_t n = fread(chunk, 1, sizeof(chunk), f);

	if (n == 0) {
	    break;
	}
	BufAdd(&msg, chunk, n);
    }
    if (ferror(f)) {
	fprintf(stderr, "%s: %s: read error\n", progName, argv[2]);
	return 1;
    }
    fclose(f);
    if (msg.len == 0) {
	fprintf(stderr, "%s: %s is empty\n", progName, argv[2]);
	return 1;
    }
    Stuff(&stuffed, msg.p, msg.len);
    rcptOff = calloc((size_t) nrcpt + 1, sizeof(*rcptOff));
    if (rcptOff == NULL) {
	Fail("out of memory");
    }
    for (i = 0; i < nrcpt; i++) {
	if (nrcpt == 1) {
	    snprintf(line, sizeof(line), "RCPT TO:<b@example.org>\r\n");
	} else {
	    snprintf(line, sizeof(line), "RCPT TO:<r%04d@example.org>\r\n",
		    i + 1);
	}
	rcptOff[i] = rcptLines.len;
	BufStr(&rcptLines, line);
    }
    rcptOff[nrcpt] = rcptLines.len;
    memset(&plan, 0, sizeof(plan));
    plan.caps = -1;
    r = malloc(sizeof(*r));
    if (r == NULL) {
	Fail("out of memory");
    }

    base = StatusKb("VmRSS");
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (msgNo = 1; msgNo <= count; msgNo++) {
	const char *text;
	size_t len;
	int caps = 0, code;

	r->fd = Connect((unsigned short) port);
	r->start = r->len = 0;
	Expect(r, 220, "greeting");
	WriteAll(r->fd, "EHLO client.example\r\n", 21);
	code = ReadReply(r, &text, &len);
	if (code != 250) {
	    Fail("EHLO: expected 250, got %d", code);
	}
	caps |= Offers(text, len, "PIPELINING") ? CAP_PIPELINING : 0;
	caps |= Offers(text, len, "CHUNKING") ? CAP_CHUNKING : 0;
	caps |= Offers(text, len, "SIZE") ? CAP_SIZE : 0;

	if (caps != plan.caps) {
	    plan.caps = caps;
	    plan.mail.len = plan.batch.len = plan.body.len = 0;
	    snprintf(line, sizeof(line), "MAIL FROM:<a@example.com>");
	    BufStr(&plan.mail, line);
	    if (caps & CAP_SIZE) {
		snprintf(line, sizeof(line), " SIZE=%zu", msg.len);
		BufStr(&plan.mail, line);
	    }
	    BufAdd(&plan.mail, "\r\n", 2);
	    BufAdd(&plan.batch, plan.mail.p, plan.mail.len);
	    BufAdd(&plan.batch, rcptLines.p, rcptLines.len);
	    if (!waitRcpt) {
		if (caps & CAP_CHUNKING) {
		    snprintf(line, sizeof(line), "BDAT %zu LAST\r\n", msg.len);
		    BufStr(&plan.batch, line);
		    BufAdd(&plan.batch, msg.p, msg.len);
		    BufStr(&plan.batch, "QUIT\r\n");
		} else {
		    BufStr(&plan.batch, "DATA\r\n");
		}
	    }
	    if (caps & CAP_CHUNKING) {
		snprintf(line, sizeof(line), "BDAT %zu LAST\r\n", msg.len);
		BufStr(&plan.body, line);
		BufAdd(&plan.body, msg.p, msg.len);
	    } else {
		BufAdd(&plan.body, stuffed.p, stuffed.len);
	    }
	    if (caps & CAP_PIPELINING) {
		/* As the package does: QUIT behind the message. */
		BufStr(&plan.body, "QUIT\r\n");
	    }
	}

	if (caps & CAP_PIPELINING) {
	    WriteAll(r->fd, plan.batch.p, plan.batch.len);
	    Expect(r, 250, "MAIL");
	    for (i = 0; i < nrcpt; i++) {
		Expect(r, 250, "RCPT");
	    }
	} else {
	    WriteAll(r->fd, plan.mail.p, plan.mail.len);
	    Expect(r, 250, "MAIL");
	    for (i = 0; i < nrcpt; i++) {
		WriteAll(r->fd, rcptLines.p + rcptOff[i],
			rcptOff[i + 1] - rcptOff[i]);
		Expect(r, 250, "RCPT");
	    }
	}
	if (caps & CAP_CHUNKING) {
	    if (waitRcpt || !(caps & CAP_PIPELINING)) {
		WriteAll(r->fd, plan.body.p, plan.body.len);
	    }
	    Expect(r, 250, "BDAT LAST");
	} else {
	    if (waitRcpt || !(caps & CAP_PIPELINING)) {
		WriteAll(r->fd, "DATA\r\n", 6);
	    }
	    Expect(r, 354, "DATA");
	    WriteAll(r->fd, plan.body.p, plan.body.len);
	    Expect(r, 250, "end of data");
	}
	if (!(caps & CAP_PIPELINING)) {
	    WriteAll(r->fd, "QUIT\r\n", 6);
	}
	Expect(r, 221, "QUIT");
	if (r->start != r->len) {
	    Fail("%zu octets after the reply to QUIT", r->len - r->start);
	}
	close(r->fd);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    hwm = StatusKb("VmHWM");
    printf("RESULT secs=%.6f msgs=%d base_kb=%ld hwm_kb=%ld pkg=-\n",
	    (double) (t1.tv_sec - t0.tv_sec)
	    + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9,
	    count, base, hwm);
    return 0;
}
