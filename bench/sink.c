/*
 * sink.c --
 *
 *	A fast SMTP sink for the benchmarks in this directory.  It accepts
 *	any number of connections on 127.0.0.1, answers every command at
 *	once, offers PIPELINING, 8BITMIME, SIZE, CHUNKING and
 *	ENHANCEDSTATUSCODES, throws message data away as fast as it arrives
 *	and counts what it received.  Postfix's smtp-sink is limited to about
 *	150 MB/s on the machines we measure on, which would hide the client's
 *	own speed; this one is meant to be limited by the loopback device.
 *
 *	Usage: smtp-sink [-p port] [-w]
 *
 *	-p port	listen on this port (default 0: the kernel picks one)
 *	-w	exit when standard input reaches end of file (so the sink
 *		dies with the script that started it)
 *
 *	On start it prints "port N" on standard output.  The counters are
 *	reported in reply to the XSTAT command (one "250" line), on standard
 *	error on SIGUSR1, and on standard error when it exits (SIGTERM,
 *	SIGINT or end of standard input with -w).
 *
 *	Everything is single-threaded around one epoll set; sockets are
 *	non-blocking.  Replies to pipelined commands are collected and
 *	written with one send when the input that is available has been
 *	consumed, which is what a pipelining client expects.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#define READ_SIZE	(1024 * 1024)	/* one read() at most */
#define MAX_LINE	(64 * 1024)	/* longest command line kept */
#define READS_PER_TURN	64		/* reads per event before others */

enum mode {
    MODE_CMD,			/* reading command lines */
    MODE_DATA,			/* after DATA: until CRLF.CRLF */
    MODE_BDAT			/* after BDAT n: n more octets */
};

struct conn {
    int fd;
    enum mode mode;
    uint64_t bdatLeft;		/* octets of the current BDAT chunk */
    int bdatLast;		/* the current chunk ends the message */
    uint64_t msgData;		/* data octets of the current message */
    char tail[4];		/* last octets of DATA seen so far */
    size_t tailLen;
    char *line;			/* a command line split across reads */
    size_t lineLen, lineCap;
    char *out;			/* replies not written yet */
    size_t outLen, outOff, outCap;
    int wantWrite;		/* EPOLLOUT is armed */
    int quitting;		/* close once the replies are out */
};

static struct {
    uint64_t conns;		/* connections accepted */
    uint64_t msgs;		/* messages completed (DATA or BDAT LAST) */
    uint64_t rcpts;		/* RCPT commands */
    uint64_t data;		/* message octets (as sent, dot-stuffed) */
    uint64_t wire;		/* every octet read */
    uint64_t cmds;		/* command lines */
} stats;

static volatile sig_atomic_t reportWanted;
static volatile sig_atomic_t exitWanted;
static int epfd;
static unsigned char readBuf[READ_SIZE];

static const char endMark[] = "\r\n.\r\n";
#define END_LEN 5

static const char ehloReply[] =
    "250-sink.example\r\n"
    "250-PIPELINING\r\n"
    "250-8BITMIME\r\n"
    "250-SIZE 0\r\n"
    "250-CHUNKING\r\n"
    "250 ENHANCEDSTATUSCODES\r\n";

/*
 * Prints the counters in the one-line form XSTAT also uses.
 */

static int
FormatStats(
    char *buf,
    size_t size)
{
    return snprintf(buf, size,
	    "msgs=%" PRIu64 " rcpts=%" PRIu64 " data=%" PRIu64
	    " wire=%" PRIu64 " conns=%" PRIu64 " cmds=%" PRIu64,
	    stats.msgs, stats.rcpts, stats.data, stats.wire, stats.conns,
	    stats.cmds);
}

static void
ReportStats(
    const char *why)
{
    char buf[256];

    FormatStats(buf, sizeof(buf));
    fprintf(stderr, "smtp-sink %s: %s\n", why, buf);
    fflush(stderr);
}

static void
OnSignal(
    int sig)
{
    if (sig == SIGUSR1) {
	reportWanted = 1;
    } else {
	exitWanted = 1;
    }
}

static void *
Grow(
    void *p,
    size_t *cap,
    size_t need)
{
    size_t n = *cap ? *cap : 256;

    while (n < need) {
	n *= 2;
    }
    p = realloc(p, n);
    if (p == NULL) {
	perror("smtp-sink: realloc");
	exit(1);
    }
    *cap = n;
    return p;
}

/*
 * Queues reply bytes; they are written when the input at hand is used up.
 */

static void
Reply(
    struct conn *c,
    const char *s,
    size_t len)
{
    if (c->outLen + len > c->outCap) {
	c->out = Grow(c->out, &c->outCap, c->outLen + len);
    }
    memcpy(c->out + c->outLen, s, len);
    c->outLen += len;
}

static void
ReplyStr(
    struct conn *c,
    const char *s)
{
    Reply(c, s, strlen(s));
}

static void
CloseConn(
    struct conn *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->line);
    free(c->out);
    free(c);
}

/*
 * Writes queued replies.  Returns 0, or -1 when the connection is gone
 * (and has been freed).
 */

static int
Flush(
    struct conn *c)
{
    while (c->outOff < c->outLen) {
	ssize_t n = write(c->fd, c->out + c->outOff, c->outLen - c->outOff);

	if (n < 0) {
	    if (errno == EINTR) {
		continue;
	    }
	    if (errno == EAGAIN || errno == EWOULDBLOCK) {
		if (!c->wantWrite) {
		    struct epoll_event ev = {EPOLLIN | EPOLLOUT, {.ptr = c}};

		    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
		    c->wantWrite = 1;
		}
		return 0;
	    }
	    CloseConn(c);
	    return -1;
	}
	c->outOff += (size_t) n;
    }
    c->outOff = c->outLen = 0;
    if (c->wantWrite) {
	struct epoll_event ev = {EPOLLIN, {.ptr = c}};

	epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
	c->wantWrite = 0;
    }
    if (c->quitting) {
	CloseConn(c);
	return -1;
    }
    return 0;
}

static void
MessageDone(
    struct conn *c)
{
    char buf[64];

    stats.msgs++;
    stats.data += c->msgData;
    c->msgData = 0;
    snprintf(buf, sizeof(buf), "250 2.0.0 Ok: queued as %" PRIu64 "\r\n",
	    stats.msgs);
    ReplyStr(c, buf);
}

/*
 * Parses "BDAT size [LAST]" (the verb already matched).  Returns 0 and
 * sets the chunk state, or -1 for a malformed command.
 */

static int
StartBdat(
    struct conn *c,
    const char *args,
    size_t len)
{
    const char *p = args, *end = args + len;
    uint64_t n = 0;
    int digits = 0;

    while (p < end && *p == ' ') {
	p++;
    }
    while (p < end && *p >= '0' && *p <= '9') {
	if (n > UINT64_MAX / 10 - 10) {
	    return -1;
	}
	n = n * 10 + (uint64_t) (*p - '0');
	p++;
	digits++;
    }
    if (digits == 0) {
	return -1;
    }
    while (p < end && *p == ' ') {
	p++;
    }
    c->bdatLast = 0;
    if (end - p == 4 && strncasecmp(p, "LAST", 4) == 0) {
	c->bdatLast = 1;
    } else if (p != end) {
	return -1;
    }
    c->bdatLeft = n;
    c->mode = MODE_BDAT;
    return 0;
}

/*
 * Answers one command line (without its line ending).
 */

static void
Command(
    struct conn *c,
    const char *line,
    size_t len)
{
    char verb[5];
    size_t i;

    stats.cmds++;
    if (len < 4) {
	ReplyStr(c, "500 5.5.2 Error: bad syntax\r\n");
	return;
    }
    for (i = 0; i < 4; i++) {
	verb[i] = (char) (line[i] & ~0x20);
    }
    verb[4] = '\0';

    if (strcmp(verb, "EHLO") == 0) {
	Reply(c, ehloReply, sizeof(ehloReply) - 1);
    } else if (strcmp(verb, "HELO") == 0) {
	ReplyStr(c, "250 sink.example\r\n");
    } else if (strcmp(verb, "MAIL") == 0) {
	c->msgData = 0;
	ReplyStr(c, "250 2.1.0 Ok\r\n");
    } else if (strcmp(verb, "RCPT") == 0) {
	stats.rcpts++;
	ReplyStr(c, "250 2.1.5 Ok\r\n");
    } else if (strcmp(verb, "DATA") == 0 && len == 4) {
	c->mode = MODE_DATA;
	c->msgData = 0;
	/* The CRLF that ended DATA may begin the end mark (empty body). */
	memcpy(c->tail, "\r\n", 2);
	c->tailLen = 2;
	ReplyStr(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
    } else if (strcmp(verb, "BDAT") == 0 && (len == 4 || line[4] == ' ')) {
	if (StartBdat(c, line + 4, len - 4) != 0) {
	    ReplyStr(c, "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
	} else if (c->bdatLeft == 0) {
	    c->mode = MODE_CMD;
	    if (c->bdatLast) {
		MessageDone(c);
	    } else {
		ReplyStr(c, "250 2.0.0 0 octets received\r\n");
	    }
	}
    } else if (strcmp(verb, "RSET") == 0 || strcmp(verb, "NOOP") == 0) {
	c->msgData = 0;
	ReplyStr(c, "250 2.0.0 Ok\r\n");
    } else if (strcmp(verb, "QUIT") == 0) {
	ReplyStr(c, "221 2.0.0 Bye\r\n");
	c->quitting = 1;
    } else if (strcmp(verb, "VRFY") == 0) {
	ReplyStr(c, "252 2.0.0 Cannot VRFY\r\n");
    } else if (strcmp(verb, "XSTA") == 0) {
	char buf[300];
	int n;

	memcpy(buf, "250 ", 4);
	n = FormatStats(buf + 4, sizeof(buf) - 6);
	memcpy(buf + 4 + n, "\r\n", 2);
	Reply(c, buf, (size_t) n + 6);
    } else {
	ReplyStr(c, "502 5.5.2 Error: command not recognized\r\n");
    }
}

/*
 * Looks for the end of DATA in the next len octets.  The end mark may
 * straddle reads, so the last octets seen are kept in c->tail and tried
 * together with the head of this buffer.  Returns the number of octets of
 * buf that belong to the message including the end mark, or -1 when the
 * mark is not in it.
 */

static ssize_t
FindDataEnd(
    struct conn *c,
    const unsigned char *buf,
    size_t len)
{
    const unsigned char *hit;

    if (c->tailLen > 0) {
	char joint[8];
	size_t head = len < END_LEN - 1 ? len : END_LEN - 1;
	const char *j;

	memcpy(joint, c->tail, c->tailLen);
	memcpy(joint + c->tailLen, buf, head);
	j = memmem(joint, c->tailLen + head, endMark, END_LEN);
	if (j != NULL && (size_t) (j - joint) < c->tailLen) {
	    return (ssize_t) ((size_t) (j - joint) + END_LEN - c->tailLen);
	}
    }
    /*
     * Every line ends in LF, so memchr for LF and a look around it beats
     * memmem for the whole mark (about 10 GB/s against 2-3 GB/s here).
     */
    for (hit = buf; (hit = memchr(hit, '\n', len - (size_t) (hit - buf)))
	    != NULL; hit++) {
	size_t i = (size_t) (hit - buf);

	if (i + 3 >= len) {
	    break;		/* an unfinished mark is kept in the tail */
	}
	if (i >= 1 && hit[-1] == '\r' && hit[1] == '.' && hit[2] == '\r'
		&& hit[3] == '\n') {
	    return (ssize_t) (i + 4);
	}
    }

    /* Keep the last four octets of tail + buf for the next read. */
    if (len >= END_LEN - 1) {
	memcpy(c->tail, buf + len - (END_LEN - 1), END_LEN - 1);
	c->tailLen = END_LEN - 1;
    } else {
	size_t keep = c->tailLen + len;
	char t[8];

	memcpy(t, c->tail, c->tailLen);
	memcpy(t + c->tailLen, buf, len);
	if (keep > END_LEN - 1) {
	    memcpy(c->tail, t + keep - (END_LEN - 1), END_LEN - 1);
	    c->tailLen = END_LEN - 1;
	} else {
	    memcpy(c->tail, t, keep);
	    c->tailLen = keep;
	}
    }
    return -1;
}

/*
 * Consumes one read's worth of input.  Returns 0, or -1 when the line
 * buffer overflowed and the connection should be dropped.
 */

static int
Consume(
    struct conn *c,
    const unsigned char *buf,
    size_t len)
{
    size_t pos = 0;

    while (pos < len && !c->quitting) {
	const unsigned char *p = buf + pos;
	size_t avail = len - pos;

	if (c->mode == MODE_DATA) {
	    ssize_t end = FindDataEnd(c, p, avail);

	    if (end < 0) {
		c->msgData += avail;
		pos = len;
	    } else {
		/* The message ends before the ".CRLF" of the mark. */
		c->msgData += (size_t) end;
		c->msgData = c->msgData >= 3 ? c->msgData - 3 : 0;
		c->mode = MODE_CMD;
		c->tailLen = 0;
		pos += (size_t) end;
		MessageDone(c);
	    }
	} else if (c->mode == MODE_BDAT) {
	    size_t take = avail < c->bdatLeft ? avail : (size_t) c->bdatLeft;

	    c->bdatLeft -= take;
	    c->msgData += take;
	    pos += take;
	    if (c->bdatLeft == 0) {
		c->mode = MODE_CMD;
		if (c->bdatLast) {
		    MessageDone(c);
		} else {
		    ReplyStr(c, "250 2.0.0 chunk received\r\n");
		}
	    }
	} else {
	    const unsigned char *nl = memchr(p, '\n', avail);
	    const char *line;
	    size_t lineLen, used;

	    if (nl == NULL) {
		if (c->lineLen + avail > MAX_LINE) {
		    return -1;
		}
		if (c->lineLen + avail > c->lineCap) {
		    c->line = Grow(c->line, &c->lineCap, c->lineLen + avail);
		}
		memcpy(c->line + c->lineLen, p, avail);
		c->lineLen += avail;
		break;
	    }
	    used = (size_t) (nl - p) + 1;
	    if (c->lineLen > 0) {
		if (c->lineLen + used > MAX_LINE) {
		    return -1;
		}
		if (c->lineLen + used > c->lineCap) {
		    c->line = Grow(c->line, &c->lineCap, c->lineLen + used);
		}
		memcpy(c->line + c->lineLen, p, used);
		line = c->line;
		lineLen = c->lineLen + used;
		c->lineLen = 0;
	    } else {
		line = (const char *) p;
		lineLen = used;
	    }
	    lineLen--;				/* the LF */
	    if (lineLen > 0 && line[lineLen - 1] == '\r') {
		lineLen--;
	    }
	    pos += used;
	    Command(c, line, lineLen);
	}
    }
    return 0;
}

/*
 * Reads what a connection has (up to READS_PER_TURN reads), then writes
 * the replies in one go.
 */

static void
Readable(
    struct conn *c)
{
    int i;

    for (i = 0; i < READS_PER_TURN; i++) {
	ssize_t n = read(c->fd, readBuf, sizeof(readBuf));

	if (n > 0) {
	    stats.wire += (uint64_t) n;
	    if (c->quitting) {
		continue;
	    }
	    if (Consume(c, readBuf, (size_t) n) != 0) {
		ReplyStr(c, "500 5.5.0 Error: line too long\r\n");
		c->quitting = 1;
		break;
	    }
	    if ((size_t) n < sizeof(readBuf)) {
		break;
	    }
	    continue;
	}
	if (n < 0 && errno == EINTR) {
	    continue;
	}
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
	    break;
	}
	CloseConn(c);		/* end of file or a real error */
	return;
    }
    Flush(c);
}

static void
Accept(
    int lfd)
{
    for (;;) {
	int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	int one = 1;
	struct conn *c;
	struct epoll_event ev;

	if (fd < 0) {
	    if (errno == EINTR) {
		continue;
	    }
	    if (errno != EAGAIN && errno != EWOULDBLOCK) {
		perror("smtp-sink: accept");
	    }
	    return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
	    perror("smtp-sink: calloc");
	    exit(1);
	}
	c->fd = fd;
	c->mode = MODE_CMD;
	ev.events = EPOLLIN;
	ev.data.ptr = c;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
	    perror("smtp-sink: epoll_ctl");
	    close(fd);
	    free(c);
	    continue;
	}
	stats.conns++;
	ReplyStr(c, "220 sink.example ESMTP\r\n");
	Flush(c);
    }
}

static void
Usage(void)
{
    fprintf(stderr, "usage: smtp-sink [-p port] [-w]\n");
    exit(2);
}

int
main(
    int argc,
    char **argv)
{
    int lfd, opt, one = 1, watchStdin = 0, port = 0;
    struct sockaddr_in sa;
    socklen_t salen = sizeof(sa);
    struct epoll_event ev, events[64];
    struct sigaction act;
    static char listenTag;	/* epoll data for the listening socket */
    static char stdinTag;	/* and for standard input */

    while ((opt = getopt(argc, argv, "p:w")) != -1) {
	switch (opt) {
	case 'p':
	    port = atoi(optarg);
	    break;
	case 'w':
	    watchStdin = 1;
	    break;
	default:
	    Usage();
	}
    }
    if (optind != argc) {
	Usage();
    }

    memset(&act, 0, sizeof(act));
    act.sa_handler = OnSignal;
    sigaction(SIGUSR1, &act, NULL);
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);
    signal(SIGPIPE, SIG_IGN);

    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) {
	perror("smtp-sink: socket");
	return 1;
    }
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *) &sa, sizeof(sa)) != 0
	    || listen(lfd, 4096) != 0
	    || getsockname(lfd, (struct sockaddr *) &sa, &salen) != 0) {
	perror("smtp-sink: bind/listen");
	return 1;
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
	perror("smtp-sink: epoll_create1");
	return 1;
    }
    ev.events = EPOLLIN;
    ev.data.ptr = &listenTag;
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    if (watchStdin) {
	ev.events = EPOLLIN;
	ev.data.ptr = &stdinTag;
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev) != 0) {
	    perror("smtp-sink: cannot watch standard input");
	    return 1;
	}
    }

    printf("port %d\n", ntohs(sa.sin_port));
    fflush(stdout);

    while (!exitWanted) {
	int i, n = epoll_wait(epfd, events, 64, -1);

	if (reportWanted) {
	    reportWanted = 0;
	    ReportStats("SIGUSR1");
	}
	if (n < 0) {
	    if (errno == EINTR) {
		continue;
	    }
	    perror("smtp-sink: epoll_wait");
	    return 1;
	}
	for (i = 0; i < n; i++) {
	    void *tag = events[i].data.ptr;

	    if (tag == &listenTag) {
		Accept(lfd);
	    } else if (tag == &stdinTag) {
		char junk[512];

		if (read(0, junk, sizeof(junk)) <= 0) {
		    exitWanted = 1;
		}
	    } else {
		struct conn *c = tag;

		/*
		 * A connection freed earlier in this batch cannot appear
		 * here: closing removes it from the set before the next
		 * epoll_wait, and each fd shows up once per batch.
		 */
		if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		    Readable(c);
		} else if (events[i].events & EPOLLOUT) {
		    Flush(c);
		}
	    }
	}
    }
    ReportStats("exit");
    return 0;
}
