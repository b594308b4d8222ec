/* uniklab-vchan: the guest side of uniklab's Xen channels (issue 18).
 *
 * The Xen backend puts it in front of an image's entrypoint: it forks a follower of the
 * domain's channel list in xenstore (uniklab/vchan, written by the backend: before the
 * domain is unpaused, and later for a new peer), then execs the app, so the init still
 * supervises the app itself.  The list's words:
 *
 *   PORT:PEER          serve a vchan (libxenvchan: a ring in granted pages and an event
 *                      channel; its ring refs under data/vchan/PORT/PEER in this domain's
 *                      xenstore directory) to domain PEER (0: dom0), and join each of its
 *                      connections to 127.0.0.1:PORT inside the guest;
 *   LOCAL>DOMID/PORT   a link: listen on 127.0.0.1:LOCAL and join each connection to the
 *                      vchan that domain DOMID serves this domain for its PORT (directly
 *                      between the two domains' memory: no dom0 copy).
 *
 * A vchan carries one connection: when either end closes, the other gets EOF and the
 * server offers a fresh vchan for the next one.  Each server writes a generation of its
 * own next to its ring refs (PATH/gen, after them); a client opens a vchan only once it
 * reads a generation it has not used.  Without that, a client that came while the server
 * was still closing the vchan before (it sees the other end go only when next scheduled)
 * mapped that ring again, revived it, and read what the guest had still written there for
 * the connection before.  Without a list it only execs the app.  Needs
 * /dev/xen/{xenbus,evtchn,gntalloc,gntdev} (built in, or modules the init loads).
 *
 * In the dom0, ``uniklab-vchan --listen SOCK DOMID PATH`` is the other end of a guest's
 * port: it listens on the UNIX socket SOCK and joins each connection, one after the
 * other, to the vchan that domain DOMID serves at PATH (in place of Xen's
 * vchan-socket-proxy, whose buffers outlive a connection). */
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
#include <sys/un.h>
#include <time.h>

#include <libxenvchan.h>
#include <xenstore.h>

#define LIST_KEY "uniklab/vchan"
#define RING_BYTES 65536 /* each direction: 16 granted pages */
#define MAX_CHANNELS 32
#define CONNECT_TRIES 30 /* a link: seconds for the peer's server to appear */
#define RETRY_SECONDS 1
#define LIST_POLL_MS 500 /* how often the channel list is read */
#define GEN_POLL_MS 50 /* how often a client reads a server's generation */
#define GEN_BYTES 40

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

/* The generation of the server just started at ``path`` (relative to this domain's
 * directory), readable by domain ``peer``: a new value for each server. */
static int publish_gen(struct xs_handle *xs, const char *path, int self, int peer)
{
    static unsigned long count;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    char key[96], gen[GEN_BYTES];
    snprintf(key, sizeof key, "%s/gen", path);
    int n = snprintf(gen, sizeof gen, "%lx.%lx.%lu", (unsigned long)now.tv_sec,
                     (unsigned long)now.tv_nsec, ++count);
    struct xs_permissions perms[2] = { { (unsigned int)self, XS_PERM_NONE },
                                       { (unsigned int)peer, XS_PERM_READ } };
    if (!xs_write(xs, XBT_NULL, key, gen, (unsigned int)n) ||
        (self >= 0 && !xs_set_permissions(xs, XBT_NULL, key, perms, 2)))
        return -1;
    return 0;
}

static void serve(int port, int peer, int self)
{
    char path[64];
    snprintf(path, sizeof path, "data/vchan/%d/%d", port, peer);
    struct xs_handle *xs = xs_open(0);
    for (;;) {
        struct libxenvchan *v = libxenvchan_server_init(NULL, peer, path, RING_BYTES, RING_BYTES);
        if (!v || !xs || publish_gen(xs, path, self, peer) < 0) {
            say("port %d: vchan server for domain %d: %s", port, peer, strerror(errno));
            if (v)
                libxenvchan_close(v);
            sleep(RETRY_SECONDS);
            if (!xs)
                xs = xs_open(0);
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

/* A vchan of a server of domain ``peer`` at ``path`` whose generation is not ``last``
 * (then ``last`` becomes its generation), for client ``s``: NULL once CONNECT_TRIES
 * seconds pass with none (the server not there yet, or still closing the one before) or
 * once ``s`` hung up while it waited. */
static struct libxenvchan *open_vchan(struct xs_handle *xs, int peer, const char *path,
                                      char last[GEN_BYTES], int s)
{
    char key[128];
    snprintf(key, sizeof key, "%s/gen", path);
    const struct timespec pause = { 0, GEN_POLL_MS * 1000000L };
    for (int i = 0; i < CONNECT_TRIES * 1000 / GEN_POLL_MS; i++, nanosleep(&pause, NULL)) {
        struct pollfd p = { s, 0, 0 }; /* POLLHUP: both ways shut, not a half-close */
        if (poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR))) {
            errno = ECONNRESET;
            return NULL;
        }
        unsigned int len = 0;
        char *gen = xs_read(xs, XBT_NULL, key, &len);
        if (!gen || len == 0 || len >= GEN_BYTES || strcmp(gen, last) == 0) {
            free(gen);
            continue;
        }
        struct libxenvchan *v = libxenvchan_client_init(NULL, peer, path);
        if (v) {
            memcpy(last, gen, len + 1);
            free(gen);
            v->blocking = 0;
            return v;
        }
        free(gen);
    }
    errno = ETIMEDOUT;
    return NULL;
}

/* Each connection on the listening socket ``l``, one after the other, joined to a vchan
 * that domain ``peer`` serves at ``path``; ``what`` names them in messages. */
static void join_each(int l, int peer, const char *path, const char *what)
{
    struct xs_handle *xs = NULL;
    char last[GEN_BYTES] = "";
    for (;;) {
        int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (s < 0) {
            if (errno != EINTR)
                sleep(RETRY_SECONDS);
            continue;
        }
        int one = 1;
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* TCP only: harmless */
        if (!xs)
            xs = xs_open(0);
        struct libxenvchan *v = xs ? open_vchan(xs, peer, path, last, s) : NULL;
        if (!v)
            say("%s: no vchan at %s: %s", what, path, strerror(errno));
        else {
            pump(v, s);
            libxenvchan_close(v);
        }
        close(s);
    }
}

/* A link: 127.0.0.1:local in this guest, each connection joined to domain peer's vchan
 * for its port (the peer serves it to this domain). */
static void link_out(int local, int peer, int port, int self)
{
    char path[96], what[32];
    snprintf(path, sizeof path, "/local/domain/%d/data/vchan/%d/%d", peer, port, self);
    snprintf(what, sizeof what, "link %d", local);
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)local) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 8) < 0) {
        say("link %d: listening on 127.0.0.1:%d: %s", local, local, strerror(errno));
        return;
    }
    join_each(l, peer, path, what);
}

/* The dom0's end of a guest's port: ``uniklab-vchan --listen SOCK DOMID PATH``. */
static int listen_dom0(const char *sock, const char *domid, const char *path)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    int peer = atoi(domid);
    if (strlen(sock) >= sizeof a.sun_path || peer <= 0 || path[0] != '/') {
        say("usage: uniklab-vchan --listen SOCK DOMID /local/domain/DOMID/...");
        return 2;
    }
    strcpy(a.sun_path, sock);
    signal(SIGPIPE, SIG_IGN);
    unlink(sock);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 8) < 0) {
        say("listening on %s: %s", sock, strerror(errno));
        return 1;
    }
    char what[32];
    snprintf(what, sizeof what, "domain %d", peer);
    join_each(l, peer, path, what);
    return 1;
}

/* Start what one word of the list asks for, in a process of its own. */
static void start_word(const char *w, int self)
{
    int port = 0, peer = -1, local = 0;
    char tail;
    int server = sscanf(w, "%d:%d%c", &port, &peer, &tail) == 2;
    int link = !server && sscanf(w, "%d>%d/%d%c", &local, &peer, &port, &tail) == 3;
    if ((!server && !link) || port < 1 || port > 65535 || peer < 0 || peer > 0x7ff0 ||
        (link && (local < 1 || local > 65535))) {
        say("bad channel %.40s: ignored", w);
        return;
    }
    pid_t pid = fork();
    if (pid < 0) {
        say("fork: %s", strerror(errno));
        return;
    }
    if (pid > 0) {
        if (server)
            say("port %d: vchan for domain %d", port, peer);
        else
            say("link 127.0.0.1:%d: domain %d's port %d", local, peer, port);
        return;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    if (server)
        serve(port, peer, self);
    else
        link_out(local, peer, port, self);
    _exit(1);
}

/* Follow the channel list; start each word once.  It is read every LIST_POLL_MS rather
 * than watched: registering a xenstore watch from this static binary (libxenstore's
 * reader thread) fails with EINVAL in some boots, for good, while reads always work; the
 * list changes only when a link is added, and a link's client waits CONNECT_TRIES
 * seconds for its server. */
static void follow_list(void)
{
    struct xs_handle *xs = xs_open(0);
    if (!xs) {
        say("no xenstore (%s): no channels", strerror(errno));
        _exit(0);
    }
    unsigned int len = 0;
    char *id = xs_read(xs, XBT_NULL, "domid", &len);
    int self = id ? atoi(id) : -1;
    free(id);
    static char started[MAX_CHANNELS][48];
    int nstarted = 0;
    const struct timespec pause = { LIST_POLL_MS / 1000, (LIST_POLL_MS % 1000) * 1000000L };
    for (;; nanosleep(&pause, NULL)) {
        char *list = xs_read(xs, XBT_NULL, LIST_KEY, &len);
        for (char *save = NULL, *w = list ? strtok_r(list, " ", &save) : NULL; w;
             w = strtok_r(NULL, " ", &save)) {
            int seen = strlen(w) >= sizeof started[0];
            for (int i = 0; i < nstarted && !seen; i++)
                seen = strcmp(started[i], w) == 0;
            if (seen || nstarted == MAX_CHANNELS)
                continue;
            strcpy(started[nstarted++], w);
            start_word(w, self);
        }
        free(list);
    }
}

static void start_follower(void)
{
    struct xs_handle *xs = xs_open(0);
    if (!xs)
        return; /* not on Xen, or no xenbus: nothing to serve */
    unsigned int len = 0;
    char *list = xs_read(xs, XBT_NULL, LIST_KEY, &len);
    xs_close(xs);
    if (!list)
        return;
    free(list);
    pid_t pid = fork();
    if (pid < 0)
        say("fork: %s", strerror(errno));
    if (pid == 0) {
        signal(SIGCHLD, SIG_IGN); /* its servers are reaped by the kernel */
        follow_list();
    }
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--listen") == 0)
        return listen_dom0(argv[2], argv[3], argv[4]);
    int first = 1;
    if (argc > 1 && strcmp(argv[1], "--") == 0)
        first = 2;
    if (first >= argc) {
        say("usage: uniklab-vchan [--] APP [ARG...]");
        return 2;
    }
    start_follower();
    execvp(argv[first], argv + first);
    say("exec %s: %s", argv[first], strerror(errno));
    return 127;
}
