/* uniklab-vchan: the guest side of uniklab's Xen channels (issue 18).
 *
 * Baked by the Xen backend in front of an image's entrypoint: it reads the domain's
 * channel list from xenstore (uniklab/vchan, written by the backend before the domain
 * is unpaused), forks one server per channel, then execs the app, so the init still
 * supervises the app itself.  A channel "PORT:PEER" serves a vchan (libxenvchan: a ring
 * in granted pages and an event channel, its ring refs under data/vchan/PORT in this
 * domain's xenstore directory) to domain PEER, and bridges each connection to
 * 127.0.0.1:PORT inside the guest.  A vchan carries one connection: when either end
 * closes, the other gets EOF and the server offers a fresh vchan for the next one.
 * Without a channel list it only execs the app.
 *
 * Needs /dev/xen/{xenbus,evtchn,gntalloc} (xen-evtchn and xen-gntalloc: built in, or
 * loaded by the init from the image's module list). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/prctl.h>

#include <libxenvchan.h>
#include <xenstore.h>

#define LIST_KEY "uniklab/vchan"
#define RING_BYTES 65536 /* each direction: 16 granted pages */
#define MAX_CHANNELS 16
#define RETRY_SECONDS 1

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char line[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* The console, like the init's lines (the app's stdout may be elsewhere later). */
    dprintf(2, "uniklab-vchan: %s\n", line);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int connect_local(int port)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return s;
}

/* Bytes both ways until one end closes. */
static void pump(struct libxenvchan *v, int s)
{
    static char buf[RING_BYTES];
    int vfd = libxenvchan_fd_for_select(v);
    for (;;) {
        while (libxenvchan_data_ready(v) > 0) {
            int n = libxenvchan_read(v, buf, sizeof buf);
            if (n <= 0 || write_all(s, buf, (size_t)n) < 0)
                return;
        }
        if (!libxenvchan_is_open(v))
            return;
        int space = libxenvchan_buffer_space(v);
        struct pollfd p[2] = { { vfd, POLLIN, 0 }, { s, space > 0 ? POLLIN : 0, 0 } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        if (p[0].revents & POLLIN)
            libxenvchan_wait(v); /* consumes the event; the state is read above */
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(s, buf, (size_t)space < sizeof buf ? (size_t)space : sizeof buf);
            if (n < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (n <= 0 || libxenvchan_write(v, buf, (size_t)n) != (int)n)
                return;
        }
    }
}

static void serve(int port, int peer)
{
    char path[64];
    snprintf(path, sizeof path, "data/vchan/%d", port);
    for (;;) {
        struct libxenvchan *v = libxenvchan_server_init(NULL, peer, path, RING_BYTES, RING_BYTES);
        if (!v) {
            say("port %d: vchan server for domain %d: %s", port, peer, strerror(errno));
            sleep(RETRY_SECONDS);
            continue;
        }
        v->blocking = 1;
        while (libxenvchan_is_open(v) == 2)
            libxenvchan_wait(v); /* until a client maps the ring */
        v->blocking = 0;
        int s = connect_local(port);
        if (s < 0)
            say("port %d: connecting to 127.0.0.1:%d: %s", port, port, strerror(errno));
        else {
            pump(v, s);
            close(s);
        }
        libxenvchan_close(v);
    }
}

/* "PORT:PEER PORT:PEER ...": the channels to serve. */
static int parse(const char *list, int ports[], int peers[])
{
    int n = 0;
    const char *p = list;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        char *end;
        long port = strtol(p, &end, 10);
        if (end == p || *end != ':' || port < 1 || port > 65535)
            return -1;
        p = end + 1;
        long peer = strtol(p, &end, 10);
        if (end == p || (*end && *end != ' ') || peer < 0 || peer > 0x7ff0)
            return -1;
        p = end;
        if (n == MAX_CHANNELS)
            return -1;
        ports[n] = (int)port;
        peers[n++] = (int)peer;
    }
    return n;
}

static void start_servers(void)
{
    struct xs_handle *xs = xs_open(0);
    if (!xs) {
        say("no xenstore (%s): no channels", strerror(errno));
        return;
    }
    unsigned int len = 0;
    char *list = xs_read(xs, XBT_NULL, LIST_KEY, &len);
    xs_close(xs);
    if (!list)
        return;
    int ports[MAX_CHANNELS], peers[MAX_CHANNELS];
    int n = parse(list, ports, peers);
    if (n < 0)
        say("bad channel list %.80s: no channels", list);
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            say("fork: %s", strerror(errno));
            break;
        }
        if (pid == 0) {
            /* A server outlives nothing: it goes with the app's end (the init then
             * kills everything) or when the app's session goes. */
            signal(SIGPIPE, SIG_IGN);
            serve(ports[i], peers[i]);
            _exit(1);
        }
        say("port %d: vchan for domain %d", ports[i], peers[i]);
    }
    free(list);
}

int main(int argc, char **argv)
{
    int first = 1;
    if (argc > 1 && strcmp(argv[1], "--") == 0)
        first = 2;
    if (first >= argc) {
        say("usage: uniklab-vchan [--] APP [ARG...]");
        return 2;
    }
    start_servers();
    execvp(argv[first], argv + first);
    say("exec %s: %s", argv[first], strerror(errno));
    return 127;
}
