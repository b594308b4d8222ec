/* Guest networking: interfaces found by MAC, ioctl-based addressing, and a DHCP client that
 * speaks raw Ethernet frames so it works before the interface has an address, then keeps
 * its lease over UDP while the app runs. */
#define _GNU_SOURCE
#include "net.h"
#include "util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/if_ether.h>
#include <net/route.h>
#include <netpacket/packet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int parse_mac(const char *s, uint8_t mac[6])
{
    for (int i = 0; i < 6; i++) {
        int hi = hexval(s[0]), lo = hi < 0 ? -1 : hexval(s[1]);
        if (hi < 0 || lo < 0) return -1;
        mac[i] = (uint8_t)(hi << 4 | lo);
        s += 2;
        if (i < 5) {
            if (*s != ':' && *s != '-') return -1;
            s++;
        }
    }
    return *s == '\0' || *s == '\n' ? 0 : -1;
}

static int ifreq_sock(void)
{
    return socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
}

static void set_sin(struct sockaddr *sa, struct in_addr a)
{
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr = a;
    memcpy(sa, &sin, sizeof sin);
}

int net_if_up(const char *ifname)
{
    int s = ifreq_sock();
    if (s < 0) return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    int rc = 0;
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) rc = -errno;
    else {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) rc = -errno;
    }
    close(s);
    return rc;
}

void net_all_down(void)
{
    int s = ifreq_sock();
    DIR *d = opendir("/sys/class/net");
    if (s < 0 || !d) {
        if (s >= 0) close(s);
        if (d) closedir(d);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "lo") == 0 || strlen(e->d_name) >= IFNAMSIZ)
            continue;
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        strcpy(ifr.ifr_name, e->d_name);
        if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_UP)) {
            ifr.ifr_flags &= ~IFF_UP;
            ioctl(s, SIOCSIFFLAGS, &ifr);
        }
    }
    closedir(d);
    close(s);
}

static int set_addr(int s, const char *ifname, unsigned long req, struct in_addr a)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    set_sin(&ifr.ifr_addr, a);
    return ioctl(s, (int)req, &ifr) < 0 ? -errno : 0;
}

static struct in_addr prefix_mask(int prefix)
{
    struct in_addr m;
    m.s_addr = prefix <= 0 ? 0 : htonl(prefix >= 32 ? 0xffffffffu : ~((1u << (32 - prefix)) - 1));
    return m;
}

int net_apply(const char *ifname, const struct lease *l, char *err, size_t errlen)
{
    int s = ifreq_sock();
    if (s < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    struct in_addr mask = prefix_mask(l->prefix);
    struct in_addr bcast;
    bcast.s_addr = (l->addr.s_addr & mask.s_addr) | ~mask.s_addr;
    int rc;
    if ((rc = set_addr(s, ifname, SIOCSIFADDR, l->addr)) < 0) {
        snprintf(err, errlen, "set address: %s", strerror(-rc));
        goto out;
    }
    if ((rc = set_addr(s, ifname, SIOCSIFNETMASK, mask)) < 0) {
        snprintf(err, errlen, "set netmask: %s", strerror(-rc));
        goto out;
    }
    if (l->prefix < 31 && (rc = set_addr(s, ifname, SIOCSIFBRDADDR, bcast)) < 0) {
        snprintf(err, errlen, "set broadcast: %s", strerror(-rc));
        goto out;
    }
    if (l->gw.s_addr) {
        struct rtentry rt;
        char dev[IFNAMSIZ];
        memset(&rt, 0, sizeof rt);
        strncpy(dev, ifname, IFNAMSIZ - 1);
        dev[IFNAMSIZ - 1] = '\0';
        struct in_addr any = { 0 };
        set_sin(&rt.rt_dst, any);
        set_sin(&rt.rt_genmask, any);
        set_sin(&rt.rt_gateway, l->gw);
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = dev;
        if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST) {
            rc = -errno;
            snprintf(err, errlen, "add default route via %s: %s", inet_ntoa(l->gw), strerror(errno));
            goto out;
        }
    }
    rc = 0;
out:
    close(s);
    return rc;
}

int net_lo_up(void)
{
    struct lease l;
    memset(&l, 0, sizeof l);
    l.addr.s_addr = htonl(0x7f000001);
    l.prefix = 8;
    int s = ifreq_sock();
    if (s < 0) return -errno;
    int rc = set_addr(s, "lo", SIOCSIFADDR, l.addr);
    if (!rc) rc = set_addr(s, "lo", SIOCSIFNETMASK, prefix_mask(8));
    close(s);
    if (rc) return rc;
    return net_if_up("lo");
}

int net_find_by_mac(const uint8_t mac[6], char ifname[IFNAMSIZ], int timeout_ms)
{
    long long deadline = mono_ms() + timeout_ms;
    for (;;) {
        DIR *d = opendir("/sys/class/net");
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (e->d_name[0] == '.' || strlen(e->d_name) >= IFNAMSIZ) continue;
                char path[300];
                snprintf(path, sizeof path, "/sys/class/net/%s/address", e->d_name);
                char *addr = read_file(path, 256, NULL);
                if (!addr) continue;
                uint8_t m[6];
                int ok = parse_mac(addr, m) == 0 && memcmp(m, mac, 6) == 0;
                free(addr);
                if (ok) {
                    strcpy(ifname, e->d_name);
                    closedir(d);
                    return 0;
                }
            }
            closedir(d);
        }
        if (mono_ms() >= deadline) return -1;
        struct timespec ts = { 0, 20 * 1000000L };
        nanosleep(&ts, NULL);
    }
}

int net_mac_of(const char *ifname, uint8_t mac[6])
{
    char path[64];
    snprintf(path, sizeof path, "/sys/class/net/%s/address", ifname);
    char *addr = read_file(path, 256, NULL);
    if (!addr) return -1;
    int rc = parse_mac(addr, mac);
    free(addr);
    return rc;
}

int net_clear(const char *ifname)
{
    int s = ifreq_sock();
    if (s < 0) return -errno;
    struct in_addr any = { 0 };
    int rc = set_addr(s, ifname, SIOCSIFADDR, any); /* 0.0.0.0 deletes the address */
    close(s);
    return rc;
}

/* ---- DHCP (RFC 2131/2132) ---- */

#define DHCP_DISCOVER 1
#define DHCP_OFFER 2
#define DHCP_REQUEST 3
#define DHCP_ACK 5
#define DHCP_NAK 6

enum { D_SELECTING, D_REQUESTING, D_BOUND, D_RENEWING, D_REBINDING };

/* A shorter lease would keep the init doing nothing but DHCP. */
#define MIN_LEASE_S 4
/* RFC 2131 4.4.5 halves the wait between retransmissions down to 60 s; with dnsmasq's
 * shortest lease (2 minutes) that is one try before T2 and one before expiry. */
#define RETRY_FLOOR_MS 10000

struct bootp {
    uint8_t op, htype, hlen, hops;
    uint32_t xid;
    uint16_t secs, flags;
    uint32_t ciaddr, yiaddr, siaddr, giaddr;
    uint8_t chaddr[16];
    uint8_t sname[64];
    uint8_t file[128];
    uint8_t magic[4];
    uint8_t options[312];
} __attribute__((packed));

struct frame {
    uint8_t dst[6], src[6];
    uint16_t ethertype;
    /* IPv4 header, no options */
    uint8_t vihl, tos;
    uint16_t tot_len, id, frag;
    uint8_t ttl, proto;
    uint16_t csum;
    uint32_t saddr, daddr;
    /* UDP */
    uint16_t sport, dport, ulen, ucsum;
    struct bootp b;
} __attribute__((packed));

static const uint8_t MAGIC[4] = { 99, 130, 83, 99 };

static uint16_t ip_csum(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < len; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (len & 1) sum += (uint32_t)p[len - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return htons((uint16_t)~sum);
}

struct offer {
    int type;
    uint32_t yiaddr;
    uint32_t server_id;
    uint32_t mask;
    int have_mask;
    uint32_t router;
    uint32_t dns[MAX_DNS];
    int ndns;
    uint32_t lease_s, t1_s, t2_s; /* host order; 0 when absent (a lease of 0 reads as 1) */
};

static size_t build_msg(struct frame *f, const struct dhcp_client *c)
{
    int type = c->state == D_SELECTING ? DHCP_DISCOVER : DHCP_REQUEST;
    memset(f, 0, sizeof *f);
    struct bootp *b = &f->b;
    b->op = 1;
    b->htype = 1;
    b->hlen = 6;
    b->xid = c->xid;
    b->secs = htons((uint16_t)((c->sent - c->begun) / 1000));
    if (c->state >= D_RENEWING)
        b->ciaddr = c->l.addr.s_addr; /* RFC 2131 4.3.2: renewing or rebinding, no 50/54 */
    else
        b->flags = htons(0x8000); /* broadcast replies: we cannot receive unicast IP yet */
    memcpy(b->chaddr, c->mac, 6);
    memcpy(b->magic, MAGIC, 4);
    uint8_t *o = b->options, *end = b->options + sizeof b->options - 1;
    *o++ = 53; *o++ = 1; *o++ = (uint8_t)type;
    *o++ = 61; *o++ = 7; *o++ = 1; memcpy(o, c->mac, 6); o += 6;
    if (c->state == D_REQUESTING) {
        *o++ = 50; *o++ = 4; memcpy(o, &c->offer.addr, 4); o += 4;
        *o++ = 54; *o++ = 4; memcpy(o, &c->offer.server, 4); o += 4;
    }
    size_t hl = c->hostname ? strlen(c->hostname) : 0;
    if (hl > 63) hl = 63;
    if (hl && o + 2 + hl < end) {
        *o++ = 12; *o++ = (uint8_t)hl; memcpy(o, c->hostname, hl); o += hl;
    }
    *o++ = 57; *o++ = 2; *o++ = 1500 >> 8; *o++ = 1500 & 0xff;
    static const uint8_t prl[] = { 1, 3, 6, 15, 28, 51, 54, 58, 59 };
    *o++ = 55; *o++ = sizeof prl; memcpy(o, prl, sizeof prl); o += sizeof prl;
    *o++ = 255;
    size_t blen = (size_t)(o - (uint8_t *)b);
    if (blen < 300) blen = 300; /* BOOTP minimum; some servers insist */

    memset(f->dst, 0xff, 6);
    memcpy(f->src, c->mac, 6);
    f->ethertype = htons(ETH_P_IP);
    f->vihl = 0x45;
    f->tot_len = htons((uint16_t)(20 + 8 + blen));
    f->ttl = 64;
    f->proto = 17;
    f->saddr = 0;
    f->daddr = 0xffffffffu;
    f->csum = ip_csum(&f->vihl, 20);
    f->sport = htons(68);
    f->dport = htons(67);
    f->ulen = htons((uint16_t)(8 + blen));
    f->ucsum = 0; /* optional over IPv4 */
    return offsetof(struct frame, b) + blen;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Parse a BOOTP message (a UDP payload); returns 1 if it is a DHCP reply for us. */
static int parse_bootp(const uint8_t *bp, size_t blen, const uint8_t mac[6], uint32_t xid,
                       struct offer *out)
{
    size_t fixed = offsetof(struct bootp, options);
    if (blen < fixed) return 0;
    struct bootp b;
    memset(&b, 0, sizeof b);
    memcpy(&b, bp, blen > sizeof b ? sizeof b : blen);
    if (b.op != 2 || b.xid != xid || memcmp(b.chaddr, mac, 6) || memcmp(b.magic, MAGIC, 4)) return 0;
    memset(out, 0, sizeof *out);
    out->yiaddr = b.yiaddr;
    const uint8_t *o = bp + fixed, *end = bp + blen;
    while (o < end) {
        uint8_t code = *o++;
        if (code == 0) continue;
        if (code == 255) break;
        if (o >= end) break;
        uint8_t len = *o++;
        if ((size_t)(end - o) < len) break;
        switch (code) {
        case 53: if (len >= 1) out->type = o[0]; break;
        case 54: if (len >= 4) memcpy(&out->server_id, o, 4); break;
        case 1: if (len >= 4) { memcpy(&out->mask, o, 4); out->have_mask = 1; } break;
        case 3: if (len >= 4) memcpy(&out->router, o, 4); break;
        case 6:
            for (int i = 0; i + 4 <= len && out->ndns < MAX_DNS; i += 4)
                memcpy(&out->dns[out->ndns++], o + i, 4);
            break;
        case 51: if (len >= 4) out->lease_s = be32(o) ? be32(o) : 1; break;
        case 58: if (len >= 4) out->t1_s = be32(o); break;
        case 59: if (len >= 4) out->t2_s = be32(o); break;
        default: break;
        }
        o += len;
    }
    return out->type != 0;
}

/* Parse a received Ethernet frame; returns 1 if it is a DHCP reply for us. */
static int parse_reply(const uint8_t *buf, size_t n, const uint8_t mac[6], uint32_t xid,
                       struct offer *out)
{
    if (n < 14 + 20) return 0;
    if (buf[12] != 0x08 || buf[13] != 0x00) return 0;
    const uint8_t *ip = buf + 14;
    size_t iplen = n - 14;
    if ((ip[0] >> 4) != 4) return 0;
    size_t ihl = (size_t)(ip[0] & 0xf) * 4;
    if (ihl < 20 || ihl + 8 > iplen || ip[9] != 17) return 0;
    if ((ip[6] & 0x3f) || ip[7]) return 0; /* fragment */
    size_t tot = (size_t)(ip[2] << 8 | ip[3]);
    if (tot < ihl + 8 || tot > iplen) return 0;
    const uint8_t *udp = ip + ihl;
    if ((udp[2] << 8 | udp[3]) != 68) return 0;
    size_t ulen = (size_t)(udp[4] << 8 | udp[5]);
    if (ulen < 8 || ulen > tot - ihl) return 0;
    return parse_bootp(udp + 8, ulen - 8, mac, xid, out);
}

static int mask_prefix(uint32_t mask_be)
{
    uint32_t m = ntohl(mask_be);
    int p = 0;
    while (p < 32 && (m & 0x80000000u)) { p++; m <<= 1; }
    return p;
}

/* The lease an OFFER or ACK describes; what it leaves out comes from `base` (the OFFER, or
 * the lease being renewed).  T1 and T2 default to 1/2 and 7/8 of the lease (RFC 2131 4.4.5). */
static void lease_from(const struct offer *o, const struct lease *base, struct lease *l)
{
    *l = *base;
    l->addr.s_addr = o->yiaddr;
    if (o->have_mask) l->prefix = mask_prefix(o->mask);
    if (o->router) l->gw.s_addr = o->router;
    if (o->ndns) {
        for (int i = 0; i < o->ndns; i++) l->dns[i].s_addr = o->dns[i];
        l->ndns = o->ndns;
    }
    if (o->server_id) l->server.s_addr = o->server_id;
    uint32_t t = o->lease_s ? o->lease_s : base->lease_s ? base->lease_s : DHCP_INFINITE;
    if (t < MIN_LEASE_S) t = MIN_LEASE_S;
    l->lease_s = t;
    l->t1_s = o->t1_s && o->t1_s < t ? o->t1_s : t / 2;
    l->t2_s = o->t2_s && o->t2_s < t && o->t2_s >= l->t1_s ? o->t2_s : (uint32_t)((uint64_t)t * 7 / 8);
    if (l->t2_s < l->t1_s) l->t2_s = l->t1_s;
}

static uint32_t new_xid(const uint8_t mac[6])
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint32_t xid = (uint32_t)now.tv_nsec ^ (uint32_t)now.tv_sec * 2654435761u;
    for (int i = 0; i < 6; i++) xid = xid * 31 + mac[i];
    return xid;
}

static int packet_socket(int ifindex)
{
    int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_IP));
    if (s < 0) return -1;
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_IP);
    sll.sll_ifindex = ifindex;
    if (bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return s;
}

/* Renewing and rebinding speak UDP from the leased address: the kernel finds the server's
 * MAC, and the server answers unicast to that address (RFC 2131 4.1). */
static int udp_socket(const char *ifname)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), one = 1;
    if (s < 0) return -1;
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(68);
    if (setsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, ifname, (socklen_t)strlen(ifname) + 1) < 0 ||
        setsockopt(s, SOL_SOCKET, SO_BROADCAST, &one, sizeof one) < 0 ||
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(s, (struct sockaddr *)&sin, sizeof sin) < 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return s;
}

static void dhcp_send(struct dhcp_client *c)
{
    int udp = c->state >= D_RENEWING;
    if (c->fd < 0) c->fd = udp ? udp_socket(c->ifname) : packet_socket(c->ifindex);
    c->sent = mono_ms();
    struct frame f;
    size_t flen = build_msg(&f, c);
    ssize_t r = -1;
    if (c->fd >= 0 && udp) {
        struct sockaddr_in to;
        memset(&to, 0, sizeof to);
        to.sin_family = AF_INET;
        to.sin_port = htons(67);
        /* renewing: unicast to the server that gave the lease; rebinding: any server */
        to.sin_addr.s_addr = c->state == D_RENEWING && c->l.server.s_addr ? c->l.server.s_addr
                                                                           : INADDR_BROADCAST;
        r = sendto(c->fd, &f.b, flen - offsetof(struct frame, b), 0, (struct sockaddr *)&to, sizeof to);
    } else if (c->fd >= 0) {
        struct sockaddr_ll sll;
        memset(&sll, 0, sizeof sll);
        sll.sll_family = AF_PACKET;
        sll.sll_protocol = htons(ETH_P_IP);
        sll.sll_ifindex = c->ifindex;
        sll.sll_halen = 6;
        memset(sll.sll_addr, 0xff, 6);
        r = sendto(c->fd, &f, flen, 0, (struct sockaddr *)&sll, sizeof sll);
    }
    if (r < 0 && errno != ENETDOWN)
        say("warning: dhcp send on %s: %s", c->ifname, strerror(errno));
}

/* To SELECTING: a new exchange, DISCOVER now (the packet socket works without an address). */
static void restart(struct dhcp_client *c)
{
    if (c->state >= D_RENEWING && c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->state = D_SELECTING;
    c->xid = new_xid(c->mac);
    c->begun = mono_ms();
    c->wait_ms = 1000;
    dhcp_send(c);
    c->next = c->sent + c->wait_ms;
}

static void bound(struct dhcp_client *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = D_BOUND;
    if (c->l.lease_s == DHCP_INFINITE) {
        c->t1 = c->t2 = c->expiry = c->next = LLONG_MAX;
        return;
    }
    /* The lease runs from when the request was sent (RFC 2131 4.4.1). */
    c->t1 = c->sent + c->l.t1_s * 1000LL;
    c->t2 = c->sent + c->l.t2_s * 1000LL;
    c->expiry = c->sent + c->l.lease_s * 1000LL;
    c->next = c->t1;
}

static int lose(struct dhcp_client *c, const char *why)
{
    c->why = why;
    net_clear(c->ifname);
    restart(c);
    return DHCP_LOST;
}

static int on_reply(struct dhcp_client *c, const struct offer *rep)
{
    if (c->state == D_SELECTING) {
        if (rep->type != DHCP_OFFER || !rep->yiaddr) return DHCP_NONE;
        struct lease dflt;
        memset(&dflt, 0, sizeof dflt);
        dflt.prefix = 24;
        lease_from(rep, &dflt, &c->offer);
        c->state = D_REQUESTING;
        c->tries = 0;
        c->wait_ms = 1000;
        c->nak = 0;
        dhcp_send(c);
        c->next = c->sent + c->wait_ms;
        return DHCP_NONE;
    }
    /* requesting or renewing: the server we asked; rebinding: any */
    uint32_t asked = c->state == D_REQUESTING ? c->offer.server.s_addr
                     : c->state == D_RENEWING ? c->l.server.s_addr : 0;
    if (asked && rep->server_id && rep->server_id != asked) return DHCP_NONE;
    if (rep->type == DHCP_NAK && c->state == D_REQUESTING) {
        c->nak = 1;
        restart(c);
        return DHCP_NONE;
    }
    if (rep->type == DHCP_NAK) return lose(c, "refused (DHCPNAK)");
    if (rep->type != DHCP_ACK || !rep->yiaddr) return DHCP_NONE;
    struct lease old = c->l;
    int renewing = c->state != D_REQUESTING;
    lease_from(rep, renewing ? &old : &c->offer, &c->l);
    bound(c);
    if (!renewing) return DHCP_BOUND;
    if (c->l.addr.s_addr == old.addr.s_addr && c->l.prefix == old.prefix &&
        c->l.gw.s_addr == old.gw.s_addr)
        return DHCP_RENEWED;
    net_clear(c->ifname);
    return DHCP_BOUND;
}

static int on_timer(struct dhcp_client *c)
{
    long long now = mono_ms();
    if (c->state == D_SELECTING || c->state == D_REQUESTING) {
        if (c->wait_ms < 4000) c->wait_ms *= 2; /* 1, 2, 4, 4 s ... */
        if (c->state == D_REQUESTING && ++c->tries >= 4) {
            restart(c); /* no answer to the REQUEST: start over (RFC 2131 4.4.1) */
            return DHCP_NONE;
        }
        dhcp_send(c);
        c->next = c->sent + c->wait_ms;
        return DHCP_NONE;
    }
    if (now >= c->expiry) return lose(c, "expired");
    if (c->state == D_BOUND) {
        c->xid = new_xid(c->mac);
        c->begun = now;
    }
    c->state = now >= c->t2 ? D_REBINDING : D_RENEWING;
    dhcp_send(c);
    long long until = c->state == D_RENEWING ? c->t2 : c->expiry;
    long long wait = (until - now) / 2;
    c->next = now + (wait < RETRY_FLOOR_MS ? RETRY_FLOOR_MS : wait);
    if (c->next > until) c->next = until;
    return DHCP_NONE;
}

int dhcp_moved(struct dhcp_client *c, const uint8_t mac[6])
{
    memcpy(c->mac, mac, 6);
    if (c->fd >= 0) close(c->fd); /* bound to the exchange of the old MAC */
    c->fd = -1;
    c->state = D_SELECTING;
    return lose(c, "held by the template");
}

int dhcp_step(struct dhcp_client *c)
{
    uint8_t buf[2048];
    struct offer rep;
    ssize_t n;
    while (c->fd >= 0 && (n = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT)) >= 0) {
        int ok = c->state >= D_RENEWING ? parse_bootp(buf, (size_t)n, c->mac, c->xid, &rep)
                                        : parse_reply(buf, (size_t)n, c->mac, c->xid, &rep);
        int ev = ok ? on_reply(c, &rep) : DHCP_NONE;
        if (ev != DHCP_NONE) return ev;
    }
    return mono_ms() >= c->next ? on_timer(c) : DHCP_NONE;
}

int dhcp_acquire(struct dhcp_client *c, const char *ifname, const uint8_t mac[6],
                 const char *hostname, int timeout_ms, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    snprintf(c->ifname, sizeof c->ifname, "%s", ifname);
    memcpy(c->mac, mac, 6);
    c->hostname = hostname;
    c->ifindex = (int)if_nametoindex(ifname);
    if (!c->ifindex) {
        snprintf(err, errlen, "no interface %s", ifname);
        return -1;
    }
    c->fd = packet_socket(c->ifindex);
    if (c->fd < 0) {
        snprintf(err, errlen, "packet socket: %s", strerror(errno));
        return -1;
    }
    restart(c);
    long long deadline = mono_ms() + timeout_ms;
    for (;;) {
        long long now = mono_ms(), until = c->next < deadline ? c->next : deadline;
        if (now >= deadline) break;
        struct pollfd pfd = { c->fd, POLLIN, 0 };
        if (until > now) poll(&pfd, 1, (int)(until - now));
        if (dhcp_step(c) == DHCP_BOUND) return 0;
    }
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    if (c->state == D_REQUESTING)
        snprintf(err, errlen, "no DHCP ACK within %d ms", timeout_ms);
    else if (c->nak)
        snprintf(err, errlen, "DHCP NAK from server");
    else
        snprintf(err, errlen, "no DHCP offer within %d ms", timeout_ms);
    return -1;
}
