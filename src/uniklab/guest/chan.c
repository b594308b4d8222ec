/* Channels in the guest init (see chan.h, and src/uniklab/channels.py for the design).
 *
 * One helper process serves every channel in one poll loop, all sockets non-blocking:
 * "in" channels connect each OPEN from the host to 127.0.0.1:port; "out" channels (links)
 * accept on 127.0.0.1:port and OPEN a connection to the host per client.  While the host
 * side of a port is not connected, Linux's virtio_console reports POLLHUP (and read()
 * returns 0) without end: the channel is then "down", its connections are closed, and the
 * device is looked at again every CHAN_RECHECK_MS rather than polled (no spinning). */
#define _GNU_SOURCE
#include "chan.h"
#include "util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHAN_RECHECK_MS 200
#define CONN_MAX 64
#define TX_HIGH (1 << 20)          /* stop reading a channel's sockets past this */
#define BACKLOG_HIGH (256 << 10)   /* stop reading a channel's device past this */
#define DEV_WRITE_MAX 32768        /* what virtio_console takes in one write */

/* ---- the frame format (pure; fuzzed by tests/guest/chan_harness.c) ---- */

void chan_header(unsigned char *o, int kind, uint32_t conn, uint16_t len)
{
    o[0] = (unsigned char)kind;
    o[1] = 0;
    o[2] = (unsigned char)(len >> 8);
    o[3] = (unsigned char)len;
    o[4] = (unsigned char)(conn >> 24);
    o[5] = (unsigned char)(conn >> 16);
    o[6] = (unsigned char)(conn >> 8);
    o[7] = (unsigned char)conn;
}

int chan_feed(struct chan_reader *r, const char *data, size_t n, size_t *used)
{
    size_t i = 0;
    for (;;) {
        if (r->hlen < CHAN_HDR) {
            if (i == n)
                break;
            size_t take = CHAN_HDR - r->hlen < n - i ? CHAN_HDR - r->hlen : n - i;
            memcpy(r->hdr + r->hlen, data + i, take);
            r->hlen += take;
            i += take;
            if (r->hlen < CHAN_HDR)
                continue;
            r->kind = r->hdr[0];
            r->len = (uint16_t)(r->hdr[2] << 8 | r->hdr[3]);
            r->conn = (uint32_t)r->hdr[4] << 24 | (uint32_t)r->hdr[5] << 16 |
                      (uint32_t)r->hdr[6] << 8 | r->hdr[7];
            r->got = 0;
            if (r->kind < CHAN_OPEN || r->kind > CHAN_CLOSE || r->hdr[1] != 0 ||
                r->len > CHAN_PAYLOAD_MAX || (r->kind != CHAN_DATA && r->len)) {
                *used = i;
                return -1;
            }
        }
        size_t take = r->len - r->got < n - i ? r->len - r->got : n - i;
        memcpy(r->payload + r->got, data + i, take);
        r->got += take;
        i += take;
        if (r->got == r->len) {
            r->hlen = 0;
            *used = i;
            return 1;
        }
        if (i == n)
            break;
    }
    *used = i;
    return 0;
}

/* ---- config ---- */

int chan_config(const struct jv *arr, struct chan_spec *specs, int *n, char *err, size_t errlen)
{
    *n = 0;
    if (!arr)
        return 0;
    if (arr->type != J_ARR) {
        snprintf(err, errlen, "\"channels\" must be an array");
        return -1;
    }
    for (const struct jv *c = arr->child; c; c = c->next) {
        int i = *n;
        if (i >= CHAN_MAX) {
            snprintf(err, errlen, "at most %d channels", CHAN_MAX);
            return -1;
        }
        const struct jv *name = c->type == J_OBJ ? json_get(c, "name") : NULL;
        const struct jv *port = c->type == J_OBJ ? json_get(c, "port") : NULL;
        const struct jv *dir = c->type == J_OBJ ? json_get(c, "dir") : NULL;
        if (!name || name->type != J_STR || !name->len || name->len > CHAN_NAME_MAX ||
            strspn(name->str, "abcdefghijklmnopqrstuvwxyz0123456789.") != name->len) {
            snprintf(err, errlen, "channels[%d].name must be 1-%d of [a-z0-9.]", i, CHAN_NAME_MAX);
            return -1;
        }
        if (!port || port->type != J_NUM || !port->is_int || port->num < 1 || port->num > 65535) {
            snprintf(err, errlen, "channels[%d].port must be a port number", i);
            return -1;
        }
        int out = 0;
        if (dir && dir->type != J_NULL) {
            if (dir->type != J_STR || (strcmp(dir->str, "in") && strcmp(dir->str, "out"))) {
                snprintf(err, errlen, "channels[%d].dir must be \"in\" or \"out\"", i);
                return -1;
            }
            out = strcmp(dir->str, "out") == 0;
        }
        for (int j = 0; j < i; j++)
            if (strcmp(specs[j].name, name->str) == 0 ||
                (out && specs[j].out && specs[j].port == port->num)) {
                snprintf(err, errlen, "channels[%d] repeats a name or a link port", i);
                return -1;
            }
        memcpy(specs[i].name, name->str, name->len + 1);
        specs[i].port = (int)port->num;
        specs[i].out = out;
        (*n)++;
    }
    return 0;
}

/* ---- the helper ---- */

struct buf {
    char *p;
    size_t len, cap;
};

static int buf_put(struct buf *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
    return 0;
}

static void buf_drop(struct buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    *b = (struct buf){0};
}

struct conn {
    int used, ch, fd;
    uint32_t id;
    int connecting, sent_eof, got_eof, shut;
    struct buf out; /* bytes for the socket */
};

struct chan {
    struct chan_spec s;
    int dev, lfd, up, broken;
    long long recheck;
    uint32_t next_id;
    struct buf tx; /* frames for the device */
    struct chan_reader rd;
};

static struct chan chans[CHAN_MAX];
static int nchans;
static struct conn conns[CONN_MAX];

static int find_device(const char *name)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d)
        return -1;
    int fd = -1;
    struct dirent *e;
    while (fd < 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], got[64];
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        int nf = open(path, O_RDONLY | O_CLOEXEC);
        if (nf < 0)
            continue;
        ssize_t n = read(nf, got, sizeof got - 1);
        close(nf);
        if (n <= 0)
            continue;
        got[n] = '\0';
        got[strcspn(got, "\n")] = '\0';
        if (strcmp(got, name) != 0)
            continue;
        snprintf(path, sizeof path, "/dev/%s", e->d_name);
        fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
            say("warning: channel %s: open %s: %s", name, path, strerror(errno));
    }
    closedir(d);
    return fd;
}

static void flush_dev(struct chan *c)
{
    while (c->tx.len) {
        size_t n = c->tx.len < DEV_WRITE_MAX ? c->tx.len : DEV_WRITE_MAX;
        ssize_t w = write(c->dev, c->tx.p, n);
        if (w > 0) {
            buf_drop(&c->tx, (size_t)w);
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        return; /* EAGAIN: POLLOUT will tell; an error: POLLHUP will */
    }
}

static void send_frame(struct chan *c, int kind, uint32_t id, const char *data, uint16_t len)
{
    if (!c->up)
        return;
    unsigned char h[CHAN_HDR];
    chan_header(h, kind, id, len);
    if (buf_put(&c->tx, h, sizeof h) || (len && buf_put(&c->tx, data, len))) {
        say("warning: channel %s: out of memory", c->s.name);
        return;
    }
    flush_dev(c);
}

static void free_conn(struct conn *k)
{
    if (k->fd >= 0)
        close(k->fd);
    buf_free(&k->out);
    *k = (struct conn){.fd = -1};
}

/* Gone on our side: tell the host (CLOSE) and forget it. */
static void abort_conn(struct conn *k)
{
    send_frame(&chans[k->ch], CHAN_CLOSE, k->id, NULL, 0);
    free_conn(k);
}

static struct conn *new_conn(int ch, uint32_t id, int fd)
{
    for (int i = 0; i < CONN_MAX; i++)
        if (!conns[i].used) {
            conns[i] = (struct conn){.used = 1, .ch = ch, .fd = fd, .id = id};
            return &conns[i];
        }
    return NULL;
}

static struct conn *find_conn(int ch, uint32_t id)
{
    for (int i = 0; i < CONN_MAX; i++)
        if (conns[i].used && conns[i].ch == ch && conns[i].id == id)
            return &conns[i];
    return NULL;
}

/* After progress on a connection: pass on the host's EOF once the backlog is written,
 * and forget the connection once both ways have ended. */
static void settle(struct conn *k)
{
    if (k->got_eof && !k->shut && !k->connecting && !k->out.len) {
        shutdown(k->fd, SHUT_WR);
        k->shut = 1;
    }
    if (k->shut && k->sent_eof)
        free_conn(k);
}

static void flush_conn(struct conn *k)
{
    while (k->out.len) {
        ssize_t w = send(k->fd, k->out.p, k->out.len, MSG_NOSIGNAL);
        if (w > 0) {
            buf_drop(&k->out, (size_t)w);
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        abort_conn(k);
        return;
    }
    settle(k);
}

static void chan_down(struct chan *c, int ch, const char *why)
{
    if (c->up)
        say("channel %s: %s", c->s.name, why);
    for (int i = 0; i < CONN_MAX; i++)
        if (conns[i].used && conns[i].ch == ch)
            free_conn(&conns[i]);
    c->up = 0;
    c->tx.len = 0;
    c->rd.hlen = 0;
    c->recheck = mono_ms() + CHAN_RECHECK_MS;
}

static void on_open(struct chan *c, int ch, uint32_t id)
{
    struct conn *k = find_conn(ch, id);
    if (c->s.out || k) { /* the host opens only "in" channels, each id once */
        if (k)
            free_conn(k);
        send_frame(c, CHAN_CLOSE, id, NULL, 0);
        return;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->s.port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || !(k = new_conn(ch, id, fd))) {
        if (fd >= 0)
            close(fd);
        send_frame(c, CHAN_CLOSE, id, NULL, 0);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
        return;
    if (errno == EINPROGRESS)
        k->connecting = 1;
    else
        abort_conn(k);
}

static void on_frame(struct chan *c, int ch, const struct chan_reader *r)
{
    struct conn *k = r->kind == CHAN_OPEN ? NULL : find_conn(ch, r->conn);
    switch (r->kind) {
    case CHAN_OPEN:
        on_open(c, ch, r->conn);
        break;
    case CHAN_DATA:
        if (!k || k->got_eof)
            break;
        if (buf_put(&k->out, r->payload, r->len)) {
            abort_conn(k);
            break;
        }
        if (!k->connecting)
            flush_conn(k);
        break;
    case CHAN_EOF:
        if (k) {
            k->got_eof = 1;
            settle(k);
        }
        break;
    case CHAN_CLOSE:
        if (k)
            free_conn(k);
        break;
    }
}

static void read_dev(struct chan *c, int ch)
{
    static char buf[65536];
    for (int rounds = 0; rounds < 16 && c->up; rounds++) {
        ssize_t n = read(c->dev, buf, sizeof buf);
        if (n == 0) {
            chan_down(c, ch, "host disconnected");
            return;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                chan_down(c, ch, strerror(errno));
            return;
        }
        size_t at = 0, used;
        while (at < (size_t)n && c->up) {
            int rc = chan_feed(&c->rd, buf + at, (size_t)n - at, &used);
            at += used;
            if (rc < 0) {
                chan_down(c, ch, "bad frame from the host: channel closed");
                c->broken = 1;
                return;
            }
            if (rc == 1)
                on_frame(c, ch, &c->rd);
        }
    }
}

static int backlog_full(int ch)
{
    for (int i = 0; i < CONN_MAX; i++)
        if (conns[i].used && conns[i].ch == ch && conns[i].out.len > BACKLOG_HIGH)
            return 1;
    return 0;
}

static void accept_all(struct chan *c, int ch)
{
    for (;;) {
        int fd = accept4(c->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct conn *k = c->up ? new_conn(ch, ++c->next_id, fd) : NULL;
        if (!k) { /* no host, or too many: the client sees EOF at once */
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        send_frame(c, CHAN_OPEN, k->id, NULL, 0);
    }
}

static void conn_event(struct conn *k, short re)
{
    struct chan *c = &chans[k->ch];
    if (k->connecting) {
        int err = 0;
        socklen_t l = sizeof err;
        if (getsockopt(k->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err) {
            abort_conn(k);
            return;
        }
        k->connecting = 0;
        flush_conn(k);
        return;
    }
    if (re & POLLERR || (re & POLLHUP && k->sent_eof)) {
        abort_conn(k);
        return;
    }
    if (re & POLLOUT)
        flush_conn(k);
    if (!k->used || !(re & (POLLIN | POLLHUP)) || k->sent_eof)
        return;
    char buf[CHAN_PAYLOAD_MAX];
    ssize_t n = recv(k->fd, buf, sizeof buf, 0);
    if (n > 0) {
        send_frame(c, CHAN_DATA, k->id, buf, (uint16_t)n);
    } else if (n == 0) {
        send_frame(c, CHAN_EOF, k->id, NULL, 0);
        k->sent_eof = 1;
        settle(k);
    } else if (errno != EAGAIN && errno != EINTR) {
        abort_conn(k);
    }
}

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 64) < 0) {
        say("warning: link on 127.0.0.1:%d: %s", port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Look at a down (or not yet found) channel's device again. */
static void recheck(struct chan *c, long long now)
{
    if (c->broken || now < c->recheck)
        return;
    c->recheck = now + CHAN_RECHECK_MS;
    if (c->dev < 0 && (c->dev = find_device(c->s.name)) < 0)
        return;
    struct pollfd p = {c->dev, POLLIN, 0};
    if (poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP)) {
        c->up = 1;
        say("channel %s: host connected (127.0.0.1:%d %s)", c->s.name, c->s.port,
            c->s.out ? "link" : "served");
    }
}

static void __attribute__((noreturn)) serve(void)
{
    enum { P_DEV, P_LISTEN, P_CONN };
    struct pollfd pfd[2 * CHAN_MAX + CONN_MAX];
    int what[2 * CHAN_MAX + CONN_MAX], idx[2 * CHAN_MAX + CONN_MAX];
    for (;;) {
        long long now = mono_ms();
        int n = 0, waiting = 0;
        for (int i = 0; i < nchans; i++) {
            struct chan *c = &chans[i];
            if (!c->up) {
                recheck(c, now);
                waiting |= !c->up && !c->broken;
            }
            if (c->up) {
                short ev = (short)((backlog_full(i) ? 0 : POLLIN) | (c->tx.len ? POLLOUT : 0));
                pfd[n] = (struct pollfd){c->dev, ev, 0};
                what[n] = P_DEV;
                idx[n++] = i;
            }
            if (c->lfd >= 0) {
                pfd[n] = (struct pollfd){c->lfd, POLLIN, 0};
                what[n] = P_LISTEN;
                idx[n++] = i;
            }
        }
        for (int i = 0; i < CONN_MAX; i++) {
            struct conn *k = &conns[i];
            if (!k->used)
                continue;
            int reading = !k->connecting && !k->sent_eof && chans[k->ch].tx.len < TX_HIGH;
            short ev = (short)((reading ? POLLIN : 0) | (k->connecting || k->out.len ? POLLOUT : 0));
            pfd[n] = (struct pollfd){k->fd, ev, 0};
            what[n] = P_CONN;
            idx[n++] = i;
        }
        if (poll(pfd, (nfds_t)n, waiting ? CHAN_RECHECK_MS : -1) < 0 && errno != EINTR) {
            say("warning: channels: poll: %s", strerror(errno));
            sleep(1);
        }
        for (int j = 0; j < n; j++) {
            short re = pfd[j].revents;
            if (!re)
                continue;
            if (what[j] == P_DEV) {
                struct chan *c = &chans[idx[j]];
                if (!c->up || c->dev != pfd[j].fd)
                    continue;
                if (re & (POLLIN | POLLHUP | POLLERR))
                    read_dev(c, idx[j]); /* read() = 0 says the host went */
                if (c->up && (re & POLLHUP))
                    chan_down(c, idx[j], "host disconnected");
                if (c->up && (re & POLLOUT))
                    flush_dev(c);
            } else if (what[j] == P_LISTEN) {
                accept_all(&chans[idx[j]], idx[j]);
            } else {
                struct conn *k = &conns[idx[j]];
                if (k->used && k->fd == pfd[j].fd)
                    conn_event(k, re);
            }
        }
    }
}

pid_t chan_start(const struct chan_spec *specs, int n)
{
    if (n <= 0)
        return 0;
    pid_t pid = fork();
    if (pid < 0) {
        say("warning: channels: fork: %s", strerror(errno));
        return -1;
    }
    if (pid > 0)
        return pid;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < CONN_MAX; i++)
        conns[i].fd = -1;
    nchans = n;
    for (int i = 0; i < n; i++) {
        chans[i] = (struct chan){.s = specs[i], .dev = -1, .lfd = -1};
        if (specs[i].out)
            chans[i].lfd = listen_on(specs[i].port);
    }
    serve();
}
