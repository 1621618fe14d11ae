/*
 * loadgen: the project's compiled load generator for servers that speak the
 * beanstalkd protocol (bsnode, beanstalkd).
 *
 * How this works
 * --------------
 * A Python client spends tens of microseconds of CPU per command, more than a
 * fast server does, so the benchmark figures come from this small C program
 * instead: one thread, non-blocking sockets, level-triggered epoll.  Every
 * connection keeps --pipeline commands in flight ("slots").  A slot's next
 * command depends on the mode and the connection's role:
 *
 *   put, fill            putter:   put, put, ...
 *   put-reserve-delete   cycler:   put -> reserve -> delete -> put ...
 *   produce-consume      half putters, half consumers: reserve -> delete
 *   drain                drainer:  reserve-with-timeout 0 -> delete, until
 *                                  TIMED_OUT (the tube is empty)
 *
 * Replies are parsed straight out of each connection's read buffer; every one
 * is checked (INSERTED <id>, RESERVED <id> <bytes> with the body and its CRLF,
 * DELETED); anything else counts as an error, and a broken stream (no CRLF,
 * a bad RESERVED line, EOF) closes that connection and counts its in-flight
 * commands as errors too.  Latency is the time from the command being queued
 * for writing to its reply being read, one clock read per read(2); it goes
 * into a log-linear histogram (1/64 of an octave wide, fixed size).
 *
 * The run ends after --jobs jobs or --seconds: then no new job starts, the
 * ones in flight finish (for at most --grace seconds).  In produce-consume,
 * consumers reserve exactly as many jobs as producers put, so the tube is
 * empty at the end.  The result is one JSON line on stdout (ops/s, errors,
 * p50/p99/p999 in us, per-command latency, client CPU and, with --server-pid,
 * the server's CPU per op and RSS from /proc).  Exit status: 0 clean run,
 * 1 errors or an incomplete run, 2 bad usage or no server.
 *
 * Only loopback targets are accepted.  Build: cc -O2 -o loadgen loadgen.c
 * (bench/harness.py does this by itself).  C99 + POSIX + Linux epoll.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum mode { M_PUT, M_PRD, M_PC, M_FILL, M_DRAIN };
static const char *const MODE_NAMES[] = {"put", "put-reserve-delete", "produce-consume",
                                         "fill", "drain"};
enum role { PUTTER, CYCLER, CONSUMER, DRAINER };
enum cmd { PUT, RESERVE, DELETE };
static const char *const CMD_NAMES[] = {"put", "reserve", "delete"};

#define NOLIMIT UINT64_MAX
#define READ_CHUNK 65536
#define MAX_LINE 1024
#define MAX_SAMPLES 5

/* ------------------------------------------------------------ options -- */
struct opts {
    const char *host, *label;
    int port, conns, pipeline, tubes, size;
    enum mode mode;
    uint64_t jobs, ops;
    double seconds, grace;
    long pri, ttr, reserve_timeout; /* reserve_timeout < 0: plain reserve */
    uint64_t max_errors;
    long server_pid;
};

static const char USAGE[] =
    "usage: loadgen [--host 127.0.0.1] [--port 11300] [--mode MODE] [--conns N]\n"
    "               [--pipeline D] (--seconds S | --jobs N | --ops N) [--size BYTES]\n"
    "               [--tubes K] [--pri N] [--ttr N] [--reserve-timeout T] [--grace S]\n"
    "               [--max-errors N] [--server-pid PID] [--label TEXT]\n"
    "\n"
    "Puts load on a beanstalkd-protocol server on this machine; prints one JSON line.\n"
    "MODE: put | put-reserve-delete (default; each slot puts, reserves, deletes)\n"
    "      | produce-consume (half the connections put, half reserve and delete)\n"
    "      | fill (put --jobs jobs) | drain (reserve and delete until the tube is empty)\n"
    "--pipeline   commands in flight per connection (default 1)\n"
    "--seconds    run this long, then let in-flight jobs finish (at most --grace s)\n"
    "--jobs       stop after this many jobs; --ops counts commands instead (a\n"
    "             put-reserve-delete job is 3), whichever of these and --seconds ends first\n"
    "--tubes      K > 1: connections use/watch tubes loadgen.0 .. loadgen.K-1 round-robin\n"
    "--server-pid report the server's CPU per op and RSS (from /proc)\n"
    "Only loopback addresses are accepted.  Exit status: 0 no errors, 1 errors or an\n"
    "incomplete run, 2 bad usage or no server to connect to.\n";

static void die_usage(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\n(loadgen --help for the options)\n", stderr);
    exit(2);
}

static double num_arg(const char *key, const char *val, double lo, double hi) {
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || v < lo || v > hi)
        die_usage("%s wants a number from %g to %g, not '%s'", key, lo, hi, val);
    return v;
}

static enum mode parse_mode(const char *val) {
    for (int i = 0; i < 5; i++)
        if (!strcmp(val, MODE_NAMES[i])) return (enum mode)i;
    die_usage("unknown --mode '%s' (put, put-reserve-delete, produce-consume, fill, drain)",
              val);
    return M_PUT;
}

static void parse_opts(int argc, char **argv, struct opts *o) {
    *o = (struct opts){.host = "127.0.0.1", .label = "", .port = 11300, .conns = 1,
                       .pipeline = 1, .tubes = 1, .size = 100, .mode = M_PRD,
                       .jobs = NOLIMIT, .ops = NOLIMIT, .seconds = -1, .grace = 30,
                       .pri = 1024, .ttr = 120, .reserve_timeout = -1,
                       .max_errors = 1000, .server_pid = -1};
    for (int i = 1; i < argc; i++) {
        char *key = argv[i], *val = NULL, *eq = strchr(key, '=');
        if (!strcmp(key, "-h") || !strcmp(key, "--help")) {
            fputs(USAGE, stdout);
            exit(0);
        }
        if (strncmp(key, "--", 2)) die_usage("unexpected argument '%s'", key);
        if (eq) {
            *eq = 0;
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            die_usage("%s needs a value", key);
        }
        if (!strcmp(key, "--host")) o->host = val;
        else if (!strcmp(key, "--label")) o->label = val;
        else if (!strcmp(key, "--mode")) o->mode = parse_mode(val);
        else if (!strcmp(key, "--port")) o->port = (int)num_arg(key, val, 1, 65535);
        else if (!strcmp(key, "--conns")) o->conns = (int)num_arg(key, val, 1, 100000);
        else if (!strcmp(key, "--pipeline")) o->pipeline = (int)num_arg(key, val, 1, 100000);
        else if (!strcmp(key, "--tubes")) o->tubes = (int)num_arg(key, val, 1, 100000);
        else if (!strcmp(key, "--size")) o->size = (int)num_arg(key, val, 0, 1 << 26);
        else if (!strcmp(key, "--jobs")) o->jobs = (uint64_t)num_arg(key, val, 1, 1e15);
        else if (!strcmp(key, "--ops")) o->ops = (uint64_t)num_arg(key, val, 1, 1e15);
        else if (!strcmp(key, "--seconds")) o->seconds = num_arg(key, val, 0.001, 1e6);
        else if (!strcmp(key, "--grace")) o->grace = num_arg(key, val, 0, 1e6);
        else if (!strcmp(key, "--pri")) o->pri = (long)num_arg(key, val, 0, 4294967295.0);
        else if (!strcmp(key, "--ttr")) o->ttr = (long)num_arg(key, val, 0, 4294967295.0);
        else if (!strcmp(key, "--reserve-timeout"))
            o->reserve_timeout = (long)num_arg(key, val, 0, 4294967295.0);
        else if (!strcmp(key, "--max-errors")) o->max_errors = (uint64_t)num_arg(key, val, 0, 1e15);
        else if (!strcmp(key, "--server-pid")) o->server_pid = (long)num_arg(key, val, 1, 1e9);
        else die_usage("unknown option %s", key);
    }
    if (o->mode == M_PC && o->conns < 2)
        die_usage("produce-consume needs --conns 2 or more (half put, half reserve+delete)");
    if (o->mode != M_DRAIN && o->seconds < 0 && o->jobs == NOLIMIT && o->ops == NOLIMIT)
        die_usage("give --seconds, --jobs or --ops");
}

/* -------------------------------------------------------- histogram -- */
/* Values in ns.  Below 64 one bucket per ns; above, 64 buckets per power of
 * two, indexed by the exponent and the 6 bits after the leading one. */
#define SUB_BITS 6
#define SUB (1 << SUB_BITS)
#define HBUCKETS (SUB + (64 - SUB_BITS) * SUB)

struct hist {
    uint64_t count[HBUCKETS];
    uint64_t n, max;
    double sum;
};

static int hbucket(uint64_t v) {
    if (v < SUB) return (int)v;
    int e = 63 - __builtin_clzll(v); /* position of the leading one, >= SUB_BITS */
    int shift = e - SUB_BITS;
    return SUB + shift * SUB + (int)((v >> shift) - SUB);
}

static uint64_t hmid(int i) {
    if (i < SUB) return (uint64_t)i;
    int shift = (i - SUB) / SUB;
    uint64_t lo = (uint64_t)(SUB + (i - SUB) % SUB) << shift;
    return lo + ((1ULL << shift) - 1) / 2;
}

static void hrecord(struct hist *h, uint64_t v) {
    h->count[hbucket(v)]++;
    h->n++;
    h->sum += (double)v;
    if (v > h->max) h->max = v;
}

static void hmerge(struct hist *into, const struct hist *h) {
    for (int i = 0; i < HBUCKETS; i++) into->count[i] += h->count[i];
    into->n += h->n;
    into->sum += h->sum;
    if (h->max > into->max) into->max = h->max;
}

static double hpct_us(const struct hist *h, double q) {
    if (!h->n) return 0;
    uint64_t rank = (uint64_t)(q * (double)h->n + 0.999999), seen = 0;
    if (rank < 1) rank = 1;
    if (rank > h->n) rank = h->n;
    for (int i = 0; i < HBUCKETS; i++) {
        seen += h->count[i];
        if (seen >= rank) {
            uint64_t v = hmid(i);
            return (double)(v < h->max ? v : h->max) / 1000.0;
        }
    }
    return (double)h->max / 1000.0;
}

/* ------------------------------------------------------------- state -- */
struct conn {
    int fd;
    enum role role;
    int dead, stopped, want_out;
    char *rbuf;
    size_t rstart, rend, rcap;
    char *wbuf;
    size_t wpos, wlen, wcap;
    /* in-flight commands, oldest first: a ring of `pipeline` entries */
    unsigned char *cmd;
    uint64_t *sent;
    int head, count;
};

struct run {
    const struct opts *o;
    int ep;
    struct conn *conns;
    char *put_cmd, *reserve_cmd;
    size_t put_len, reserve_len;
    uint64_t target;   /* jobs to start: puts by putters/cyclers, reserves by consumers */
    uint64_t started;  /* puts started by putters and cyclers */
    uint64_t reserves; /* reserves started by consumers and drainers */
    uint64_t inflight, jobs, errors, timeouts, ok[3];
    struct hist hist[3];
    char samples[MAX_SAMPLES][160];
    int nsamples;
    struct timespec base;
};

static uint64_t now_ns(const struct run *r) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)(t.tv_sec - r->base.tv_sec) * 1000000000ULL + (uint64_t)t.tv_nsec -
           (uint64_t)r->base.tv_nsec;
}

static void error_at(struct run *r, const char *fmt, ...) {
    r->errors++;
    if (r->nsamples >= MAX_SAMPLES) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->samples[r->nsamples], sizeof r->samples[0], fmt, ap);
    va_end(ap);
    fprintf(stderr, "loadgen: error: %s\n", r->samples[r->nsamples++]);
}

static void *must_alloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fputs("loadgen: out of memory\n", stderr);
        exit(1);
    }
    return p;
}

static void wreserve(struct conn *c, size_t more) {
    if (c->wlen + more <= c->wcap) return;
    while (c->wlen + more > c->wcap) c->wcap *= 2;
    c->wbuf = realloc(c->wbuf, c->wcap);
    if (!c->wbuf) {
        fputs("loadgen: out of memory\n", stderr);
        exit(1);
    }
}

static void push(struct run *r, struct conn *c, enum cmd cmd, uint64_t id, uint64_t t) {
    if (cmd == PUT) {
        wreserve(c, r->put_len);
        memcpy(c->wbuf + c->wlen, r->put_cmd, r->put_len);
        c->wlen += r->put_len;
    } else if (cmd == RESERVE) {
        wreserve(c, r->reserve_len);
        memcpy(c->wbuf + c->wlen, r->reserve_cmd, r->reserve_len);
        c->wlen += r->reserve_len;
    } else {
        wreserve(c, 32);
        c->wlen += (size_t)sprintf(c->wbuf + c->wlen, "delete %llu\r\n", (unsigned long long)id);
    }
    int slot = (c->head + c->count) % r->o->pipeline;
    c->cmd[slot] = (unsigned char)cmd;
    c->sent[slot] = t;
    c->count++;
    r->inflight++;
}

/* Start new jobs on `c` until its slots are full or the target is reached. */
static void refill(struct run *r, struct conn *c, uint64_t t) {
    if (c->dead || c->stopped) return;
    while (c->count < r->o->pipeline) {
        if (c->role == PUTTER || c->role == CYCLER) {
            if (r->started >= r->target) return;
            r->started++;
            push(r, c, PUT, 0, t);
        } else {
            if (r->reserves >= r->target) return;
            r->reserves++;
            push(r, c, RESERVE, 0, t);
        }
    }
}

static void set_events(struct run *r, struct conn *c, int want_out) {
    if (c->want_out == want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
                             .data.ptr = c};
    epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void close_conn(struct run *r, struct conn *c, const char *why) {
    if (c->dead) return;
    error_at(r, "connection closed: %s (%d commands in flight lost)", why, c->count);
    r->errors += (uint64_t)c->count;
    r->inflight -= (uint64_t)c->count;
    c->count = 0;
    c->dead = 1;
    epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd, NULL);
    shutdown(c->fd, SHUT_RDWR);
}

static void flush(struct run *r, struct conn *c) {
    while (!c->dead && c->wpos < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->wpos, c->wlen - c->wpos, MSG_NOSIGNAL);
        if (n > 0) {
            c->wpos += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(r, c, 1);
            return;
        } else {
            close_conn(r, c, n < 0 ? strerror(errno) : "send returned 0");
            return;
        }
    }
    c->wpos = c->wlen = 0;
    set_events(r, c, 0);
}

/* ----------------------------------------------------------- replies -- */
static int parse_uint(const char *s, const char *end, uint64_t *out) {
    uint64_t v = 0;
    if (s == end || end - s > 19) return 0;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9') return 0;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 1;
}

/* A reply that does not fit the command: count it and give the job back, so
 * the run still reaches its target and no consumer waits for a job that will
 * never be put. */
static void wrong_reply(struct run *r, struct conn *c, enum cmd cmd, const char *line,
                        size_t len) {
    error_at(r, "%s got '%.*s'", CMD_NAMES[cmd], (int)(len < 80 ? len : 80), line);
    if (c->role == PUTTER || c->role == CYCLER) r->started--;
    else if (c->role == CONSUMER) r->reserves--;
}

/* Handle one complete reply.  Returns 0 when the stream cannot be trusted. */
static int on_reply(struct run *r, struct conn *c, const char *line, size_t len,
                    uint64_t id, uint64_t t) {
    if (!c->count) {
        error_at(r, "reply with nothing in flight: '%.*s'", (int)(len < 80 ? len : 80), line);
        return 0;
    }
    enum cmd cmd = (enum cmd)c->cmd[c->head];
    uint64_t lat = t - c->sent[c->head];
    c->head = (c->head + 1) % r->o->pipeline;
    c->count--;
    r->inflight--;
    uint64_t dummy;
    if (cmd == PUT && len > 9 && !memcmp(line, "INSERTED ", 9) &&
        parse_uint(line + 9, line + len, &dummy)) {
        r->ok[PUT]++;
        hrecord(&r->hist[PUT], lat);
        if (c->role == CYCLER) push(r, c, RESERVE, 0, t);
        else if (r->o->mode != M_PC) r->jobs++; /* in produce-consume the delete ends it */
    } else if (cmd == RESERVE && len > 9 && !memcmp(line, "RESERVED ", 9)) {
        r->ok[RESERVE]++;
        hrecord(&r->hist[RESERVE], lat);
        push(r, c, DELETE, id, t);
    } else if (cmd == DELETE && len == 7 && !memcmp(line, "DELETED", 7)) {
        r->ok[DELETE]++;
        hrecord(&r->hist[DELETE], lat);
        r->jobs++;
    } else if (cmd == RESERVE && len == 9 && !memcmp(line, "TIMED_OUT", 9) &&
               c->role != CYCLER) {
        if (c->role == DRAINER) c->stopped = 1; /* the tube is empty */
        else r->reserves--;                     /* --reserve-timeout: ask again */
    } else {
        wrong_reply(r, c, cmd, line, len);
    }
    return 1;
}

/* Parse every complete reply in c's read buffer; returns 0 on a broken stream. */
static int parse_replies(struct run *r, struct conn *c, uint64_t t) {
    while (c->rstart < c->rend) {
        char *line = c->rbuf + c->rstart;
        size_t avail = c->rend - c->rstart;
        char *nl = memchr(line, '\n', avail);
        if (!nl) {
            if (avail > MAX_LINE) {
                close_conn(r, c, "protocol: a reply line longer than 1024 bytes");
                return 0;
            }
            return 1;
        }
        size_t len = (size_t)(nl - line);
        if (len == 0 || line[len - 1] != '\r') {
            close_conn(r, c, "protocol: a reply line not ended by CRLF");
            return 0;
        }
        len--;
        size_t used = len + 2;
        uint64_t id = 0;
        if (len > 9 && !memcmp(line, "RESERVED ", 9)) {
            char *sp = memchr(line + 9, ' ', len - 9);
            uint64_t bytes;
            if (!sp || !parse_uint(line + 9, sp, &id) ||
                !parse_uint(sp + 1, line + len, &bytes) || bytes > (1ULL << 31)) {
                close_conn(r, c, "protocol: a malformed RESERVED line");
                return 0;
            }
            if (avail < used + bytes + 2) return 1; /* the body is not all here yet */
            if (memcmp(line + used + bytes, "\r\n", 2)) {
                close_conn(r, c, "protocol: a job body not followed by CRLF");
                return 0;
            }
            if (bytes != (uint64_t)r->o->size)
                error_at(r, "RESERVED a %llu-byte body, not --size %d",
                         (unsigned long long)bytes, r->o->size);
            used += bytes + 2;
        }
        c->rstart += used;
        if (!on_reply(r, c, line, len, id, t)) {
            close_conn(r, c, "protocol: out of step with the server");
            return 0;
        }
    }
    c->rstart = c->rend = 0;
    return 1;
}

static void on_readable(struct run *r, struct conn *c) {
    if (c->rstart > 0) { /* keep the unparsed tail at the front */
        memmove(c->rbuf, c->rbuf + c->rstart, c->rend - c->rstart);
        c->rend -= c->rstart;
        c->rstart = 0;
    }
    if (c->rcap - c->rend < READ_CHUNK) {
        c->rcap = c->rcap * 2 + READ_CHUNK;
        c->rbuf = realloc(c->rbuf, c->rcap);
        if (!c->rbuf) {
            fputs("loadgen: out of memory\n", stderr);
            exit(1);
        }
    }
    ssize_t n = recv(c->fd, c->rbuf + c->rend, c->rcap - c->rend, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) {
        close_conn(r, c, n == 0 ? "the server closed it" : strerror(errno));
        return;
    }
    c->rend += (size_t)n;
    uint64_t t = now_ns(r);
    if (!parse_replies(r, c, t)) return;
    refill(r, c, t);
    flush(r, c);
}

/* ------------------------------------------------------------- setup -- */
static void tube_name(char *out, size_t n, int i) {
    snprintf(out, n, "loadgen.%d", i);
}

/* One command and its one-line reply, blocking; used before the run only. */
static int setup_cmd(int fd, const char *cmd, const char *expect, char *err, size_t errn) {
    size_t len = strlen(cmd);
    if (send(fd, cmd, len, MSG_NOSIGNAL) != (ssize_t)len) {
        snprintf(err, errn, "sending '%.40s': %s", cmd, strerror(errno));
        return 0;
    }
    char line[256];
    size_t got = 0;
    while (got < 2 || line[got - 2] != '\r' || line[got - 1] != '\n') {
        if (got + 1 >= sizeof line || recv(fd, line + got, 1, 0) != 1) {
            snprintf(err, errn, "no reply to '%.40s'", cmd);
            return 0;
        }
        got++;
    }
    line[got - 2] = 0;
    if (strncmp(line, expect, strlen(expect))) {
        snprintf(err, errn, "'%.40s' answered '%.100s'", cmd, line);
        return 0;
    }
    return 1;
}

static int tube_setup(int fd, enum role role, int k, int tubes, char *err, size_t errn) {
    char cmd[64], name[32];
    if (tubes == 1) return 1;
    tube_name(name, sizeof name, k % tubes);
    if (role == PUTTER || role == CYCLER) {
        snprintf(cmd, sizeof cmd, "use %s\r\n", name);
        if (!setup_cmd(fd, cmd, "USING ", err, errn)) return 0;
    }
    if (role == PUTTER) return 1;
    for (int t = 0; t < tubes; t++) { /* cyclers watch their own tube, consumers all */
        if (role == CYCLER && t != k % tubes) continue;
        tube_name(name, sizeof name, t);
        snprintf(cmd, sizeof cmd, "watch %s\r\n", name);
        if (!setup_cmd(fd, cmd, "WATCHING ", err, errn)) return 0;
    }
    return setup_cmd(fd, "ignore default\r\n", "WATCHING ", err, errn);
}

static int open_conn(const struct sockaddr_in *addr, enum role role, int k, int tubes,
                     char *err, size_t errn) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct timeval tv = {.tv_sec = 10};
    if (fd < 0) {
        snprintf(err, errn, "socket: %s", strerror(errno));
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* bounds connect() too */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr)) {
        snprintf(err, errn, "connect to 127.0.0.1:%d: %s", ntohs(addr->sin_port),
                 strerror(errno));
        close(fd);
        return -1;
    }
    if (!tube_setup(fd, role, k, tubes, err, errn)) {
        close(fd);
        return -1;
    }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        snprintf(err, errn, "non-blocking: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* The target: a dotted IPv4 loopback address or "localhost"; nothing else. */
static void resolve(const char *host, int port, struct sockaddr_in *addr) {
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_port = htons((uint16_t)port);
    const char *ip = strcmp(host, "localhost") ? host : "127.0.0.1";
    if (inet_pton(AF_INET, ip, &addr->sin_addr) != 1)
        die_usage("--host '%s' is not an IPv4 address (only 127.0.0.1 and the rest of "
                  "127.0.0.0/8 are allowed)", host);
    if ((ntohl(addr->sin_addr.s_addr) >> 24) != 127)
        die_usage("refusing --host %s: loadgen only targets loopback (127.0.0.0/8)", host);
}

static enum role role_of(const struct opts *o, int i) {
    switch (o->mode) {
    case M_PUT: case M_FILL: return PUTTER;
    case M_PRD: return CYCLER;
    case M_DRAIN: return DRAINER;
    default: return i < o->conns / 2 ? PUTTER : CONSUMER;
    }
}

static void build_commands(struct run *r) {
    const struct opts *o = r->o;
    char head[96];
    int n = snprintf(head, sizeof head, "put %ld 0 %ld %d\r\n", o->pri, o->ttr, o->size);
    r->put_len = (size_t)n + (size_t)o->size + 2;
    r->put_cmd = must_alloc(r->put_len);
    memcpy(r->put_cmd, head, (size_t)n);
    for (int i = 0; i < o->size; i++) r->put_cmd[n + i] = (char)('a' + i % 26);
    memcpy(r->put_cmd + n + o->size, "\r\n", 2);
    char res[64];
    if (o->mode == M_DRAIN) snprintf(res, sizeof res, "reserve-with-timeout 0\r\n");
    else if (o->reserve_timeout >= 0)
        snprintf(res, sizeof res, "reserve-with-timeout %ld\r\n", o->reserve_timeout);
    else snprintf(res, sizeof res, "reserve\r\n");
    r->reserve_len = strlen(res);
    r->reserve_cmd = must_alloc(r->reserve_len + 1);
    memcpy(r->reserve_cmd, res, r->reserve_len + 1);
}

static void open_all(struct run *r, const struct sockaddr_in *addr) {
    const struct opts *o = r->o;
    r->conns = must_alloc(sizeof *r->conns * (size_t)o->conns);
    for (int i = 0; i < o->conns; i++) {
        struct conn *c = &r->conns[i];
        char err[200];
        c->role = role_of(o, i);
        /* producers and consumers each count their own tube sequence */
        int k = c->role == CONSUMER ? i - o->conns / 2 : i;
        c->fd = open_conn(addr, c->role, k, o->tubes, err, sizeof err);
        if (c->fd < 0) {
            fprintf(stderr, "loadgen: setting up connection %d failed: %s\n", i + 1, err);
            exit(2);
        }
        c->rcap = 4 * READ_CHUNK;
        c->rbuf = must_alloc(c->rcap);
        c->wcap = (size_t)o->pipeline * (r->put_len + 32) + 64;
        c->wbuf = must_alloc(c->wcap);
        c->cmd = must_alloc((size_t)o->pipeline);
        c->sent = must_alloc(sizeof *c->sent * (size_t)o->pipeline);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev)) {
            perror("loadgen: epoll_ctl");
            exit(1);
        }
    }
}

/* ------------------------------------------------------------ /proc -- */
static double self_cpu_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* utime + stime of a process, all threads, in seconds; < 0 if unreadable. */
static double proc_cpu_s(long pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and ')' */
    unsigned long long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                     &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_rss_kb(long pid) {
    char path[64], line[256];
    long kb = -1;
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* -------------------------------------------------------------- loop -- */
/* Time is up: start no new jobs, let the ones in flight finish.  In
 * produce-consume every reserve already sent needs a job, so producers top
 * up to the number of reserves, and consumers take every job put. */
static void stop_starting(struct run *r) {
    if (r->o->mode == M_PC) r->target = r->started > r->reserves ? r->started : r->reserves;
    else if (r->o->mode == M_DRAIN) r->target = r->reserves;
    else r->target = r->started;
    uint64_t t = now_ns(r);
    for (int i = 0; i < r->o->conns; i++) {
        refill(r, &r->conns[i], t);
        flush(r, &r->conns[i]);
    }
}

/* Returns 1 if the run finished, 0 if it was cut off (errors or time). */
static int event_loop(struct run *r, uint64_t *end_ns) {
    const struct opts *o = r->o;
    uint64_t soft = o->seconds > 0 ? (uint64_t)(o->seconds * 1e9) : NOLIMIT;
    uint64_t hard = (uint64_t)(((o->seconds > 0 ? o->seconds : 600.0) + o->grace) * 1e9);
    struct epoll_event evs[256];
    for (int i = 0; i < o->conns; i++) {
        refill(r, &r->conns[i], 0);
        flush(r, &r->conns[i]);
    }
    for (;;) {
        uint64_t t = now_ns(r);
        *end_ns = t;
        if (!r->inflight) return 1;
        if (r->errors > o->max_errors) {
            fprintf(stderr, "loadgen: more than %llu errors: stopping\n",
                    (unsigned long long)o->max_errors);
            return 0;
        }
        if (t >= soft) {
            soft = NOLIMIT;
            stop_starting(r);
            continue;
        }
        if (t >= hard) {
            fprintf(stderr, "loadgen: time limit reached with %llu commands in flight\n",
                    (unsigned long long)r->inflight);
            r->timeouts = r->inflight;
            r->errors += r->inflight;
            return 0;
        }
        uint64_t next = soft < hard ? soft : hard;
        int wait_ms = (int)((next - t) / 1000000 + 1);
        int n = epoll_wait(r->ep, evs, 256, wait_ms > 100 ? 100 : wait_ms);
        if (n < 0 && errno != EINTR) {
            perror("loadgen: epoll_wait");
            exit(1);
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->dead) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(r, c);
            if (!c->dead && (evs[i].events & EPOLLOUT)) flush(r, c);
        }
    }
}

/* ------------------------------------------------------------ output -- */
static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

static void json_hist(const char *name, const struct hist *h) {
    printf("\"%s\":{\"n\":%llu,\"mean_us\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
           "\"p999_us\":%.1f,\"max_us\":%.1f}",
           name, (unsigned long long)h->n, h->n ? h->sum / (double)h->n / 1000.0 : 0.0,
           hpct_us(h, 0.5), hpct_us(h, 0.99), hpct_us(h, 0.999), (double)h->max / 1000.0);
}

static void report(const struct run *r, double elapsed, int complete, double cpu,
                   double server_cpu, long rss) {
    const struct opts *o = r->o;
    uint64_t ops = r->ok[PUT] + r->ok[RESERVE] + r->ok[DELETE];
    double el = elapsed > 1e-9 ? elapsed : 1e-9;
    static struct hist all;
    for (int i = 0; i < 3; i++) hmerge(&all, &r->hist[i]);
    putchar('{');
    if (*o->label) {
        printf("\"label\":");
        json_string(o->label);
        putchar(',');
    }
    printf("\"tool\":\"bench/loadgen.c\",\"mode\":\"%s\",\"conns\":%d,\"pipeline\":%d,"
           "\"size\":%d,\"tubes\":%d,\"target\":\"%s:%d\",",
           MODE_NAMES[o->mode], o->conns, o->pipeline, o->size, o->tubes,
           strcmp(o->host, "localhost") ? o->host : "127.0.0.1", o->port);
    printf("\"ops\":%llu,\"elapsed_s\":%.3f,\"ops_per_s\":%.0f,\"jobs\":%llu,"
           "\"jobs_per_s\":%.0f,\"errors\":%llu,\"timeouts\":%llu,\"incomplete\":%s,",
           (unsigned long long)ops, elapsed, (double)ops / el, (unsigned long long)r->jobs,
           (double)r->jobs / el, (unsigned long long)r->errors,
           (unsigned long long)r->timeouts, complete ? "false" : "true");
    printf("\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,\"lat\":{",
           hpct_us(&all, 0.5), hpct_us(&all, 0.99), hpct_us(&all, 0.999),
           (double)all.max / 1000.0);
    for (int i = 0; i < 3; i++) {
        json_hist(CMD_NAMES[i], &r->hist[i]);
        putchar(i < 2 ? ',' : '}');
    }
    printf(",\"client_cpu_s\":%.3f,\"client_cpu_us_per_op\":%.3f", cpu,
           ops ? cpu * 1e6 / (double)ops : 0.0);
    if (server_cpu >= 0)
        printf(",\"server_cpu_s\":%.2f,\"server_cpu_us_per_op\":%.3f", server_cpu,
               ops ? server_cpu * 1e6 / (double)ops : 0.0);
    if (rss >= 0) printf(",\"server_rss_kb\":%ld", rss);
    if (r->nsamples) {
        printf(",\"error_samples\":[");
        for (int i = 0; i < r->nsamples; i++) {
            if (i) putchar(',');
            json_string(r->samples[i]);
        }
        putchar(']');
    }
    printf("}\n");
}

int main(int argc, char **argv) {
    static struct run r; /* large (histograms): not on the stack */
    struct opts o;
    struct sockaddr_in addr;
    parse_opts(argc, argv, &o);
    resolve(o.host, o.port, &addr);
    r.o = &o;
    r.target = o.jobs;
    if (o.ops != NOLIMIT) {
        uint64_t per_job = o.mode == M_PRD || o.mode == M_PC ? 3 : o.mode == M_DRAIN ? 2 : 1;
        uint64_t j = o.ops / per_job ? o.ops / per_job : 1;
        if (j < r.target) r.target = j;
    }
    r.ep = epoll_create1(EPOLL_CLOEXEC);
    if (r.ep < 0) {
        perror("loadgen: epoll_create1");
        return 1;
    }
    build_commands(&r);
    open_all(&r, &addr);
    double server0 = o.server_pid > 0 ? proc_cpu_s(o.server_pid) : -1;
    double cpu0 = self_cpu_s();
    clock_gettime(CLOCK_MONOTONIC, &r.base);
    uint64_t end_ns = 0;
    int complete = event_loop(&r, &end_ns);
    double cpu = self_cpu_s() - cpu0;
    double server1 = o.server_pid > 0 ? proc_cpu_s(o.server_pid) : -1;
    long rss = o.server_pid > 0 ? proc_rss_kb(o.server_pid) : -1;
    report(&r, (double)end_ns / 1e9, complete, cpu,
           server0 >= 0 && server1 >= 0 ? server1 - server0 : -1, rss);
    return r.errors || !complete ? 1 : 0;
}
