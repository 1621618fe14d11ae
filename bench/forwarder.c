/*
 * A bare TCP forwarder: the floor under any proxy's second hop
 * (bench/bench_proxy.py --forwarder).
 *
 * How this works: each connection accepted on 127.0.0.1:LISTEN_PORT gets its
 * own connection to 127.0.0.1:UPSTREAM_PORT; one epoll loop copies what is
 * read on either side to the other.  Nothing is parsed or routed, so what a
 * proxy keeps of a direct connection beside this shows what its own work
 * costs, apart from the hop that any proxy, in any language, must make.  A
 * benchmark baseline, not a beanstalkd proxy.  Built by bench/harness.py.
 *
 *     forwarder LISTEN_PORT UPSTREAM_PORT
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FDS 65536
#define EVENTS 64

static int other_end[MAX_FDS]; /* fd -> the fd its bytes are copied to */

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void watch(int ep, int fd) {
    int one = 1;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

static void pair_up(int ep, int listener, int upstream_port) {
    int client = accept(listener, NULL, NULL);
    if (client < 0)
        return;
    int upstream = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in to = loopback(upstream_port);
    if (upstream < 0 || client >= MAX_FDS || upstream >= MAX_FDS ||
        connect(upstream, (struct sockaddr *)&to, sizeof to) != 0) {
        close(client);
        if (upstream >= 0)
            close(upstream);
        return;
    }
    other_end[client] = upstream;
    other_end[upstream] = client;
    watch(ep, client);
    watch(ep, upstream);
}

/* Copy what ``fd`` has to its other end (blocking on a full socket is rare
 * with a benchmark's small writes; it spins until the bytes are taken). */
static void relay(int fd) {
    static char buf[1 << 16];
    ssize_t got = read(fd, buf, sizeof buf);
    if (got < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (got <= 0) {
        close(other_end[fd]);
        close(fd);
        return;
    }
    for (ssize_t off = 0; off < got;) {
        ssize_t put = write(other_end[fd], buf + off, (size_t)(got - off));
        if (put < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (put < 0) {
            close(other_end[fd]);
            close(fd);
            return;
        }
        off += put;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_PORT\n", argv[0]);
        return 2;
    }
    int listen_port = atoi(argv[1]), upstream_port = atoi(argv[2]), one = 1;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in at = loopback(listen_port);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&at, sizeof at) != 0 || listen(listener, 128) != 0) {
        perror("forwarder: listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener}, ready[EVENTS];
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    fprintf(stderr, "listening on 127.0.0.1:%d\n", listen_port);
    for (;;) {
        int n = epoll_wait(ep, ready, EVENTS, -1);
        for (int i = 0; i < n; i++) {
            if (ready[i].data.fd == listener)
                pair_up(ep, listener, upstream_port);
            else
                relay(ready[i].data.fd);
        }
    }
}
