/* Guest networking: interfaces found by MAC, ioctl-based addressing, and a DHCP client that
 * speaks raw Ethernet frames so it works before the interface has an address. */
#define _GNU_SOURCE
#include "net.h"
#include "util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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

/* ---- DHCP (RFC 2131/2132) ---- */

#define DHCP_DISCOVER 1
#define DHCP_OFFER 2
#define DHCP_REQUEST 3
#define DHCP_ACK 5
#define DHCP_NAK 6

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
};

static size_t build_msg(struct frame *f, const uint8_t mac[6], uint32_t xid, uint16_t secs, int type,
                        const struct offer *sel, const char *hostname)
{
    memset(f, 0, sizeof *f);
    struct bootp *b = &f->b;
    b->op = 1;
    b->htype = 1;
    b->hlen = 6;
    b->xid = xid;
    b->secs = htons(secs);
    b->flags = htons(0x8000); /* broadcast replies: we cannot receive unicast IP yet */
    memcpy(b->chaddr, mac, 6);
    memcpy(b->magic, MAGIC, 4);
    uint8_t *o = b->options, *end = b->options + sizeof b->options - 1;
    *o++ = 53; *o++ = 1; *o++ = (uint8_t)type;
    *o++ = 61; *o++ = 7; *o++ = 1; memcpy(o, mac, 6); o += 6;
    if (type == DHCP_REQUEST && sel) {
        *o++ = 50; *o++ = 4; memcpy(o, &sel->yiaddr, 4); o += 4;
        *o++ = 54; *o++ = 4; memcpy(o, &sel->server_id, 4); o += 4;
    }
    size_t hl = hostname ? strlen(hostname) : 0;
    if (hl > 63) hl = 63;
    if (hl && o + 2 + hl < end) {
        *o++ = 12; *o++ = (uint8_t)hl; memcpy(o, hostname, hl); o += hl;
    }
    *o++ = 57; *o++ = 2; *o++ = 1500 >> 8; *o++ = 1500 & 0xff;
    static const uint8_t prl[] = { 1, 3, 6, 15, 28, 51, 54 };
    *o++ = 55; *o++ = sizeof prl; memcpy(o, prl, sizeof prl); o += sizeof prl;
    *o++ = 255;
    size_t blen = (size_t)(o - (uint8_t *)b);
    if (blen < 300) blen = 300; /* BOOTP minimum; some servers insist */

    memset(f->dst, 0xff, 6);
    memcpy(f->src, mac, 6);
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
    return 14 + 20 + 8 + blen;
}

/* Parse a received frame; returns 1 if it is a DHCP reply for us. */
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
    const uint8_t *bp = udp + 8;
    size_t blen = ulen - 8;
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
        default: break;
        }
        o += len;
    }
    return out->type != 0;
}

static int mask_prefix(uint32_t mask_be)
{
    uint32_t m = ntohl(mask_be);
    int p = 0;
    while (p < 32 && (m & 0x80000000u)) { p++; m <<= 1; }
    return p;
}

int dhcp_run(const char *ifname, const uint8_t mac[6], const char *hostname, int timeout_ms,
             struct lease *out, char *err, size_t errlen)
{
    int ifindex = (int)if_nametoindex(ifname);
    if (!ifindex) {
        snprintf(err, errlen, "no interface %s", ifname);
        return -1;
    }
    int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_IP));
    if (s < 0) {
        snprintf(err, errlen, "packet socket: %s", strerror(errno));
        return -1;
    }
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_IP);
    sll.sll_ifindex = ifindex;
    if (bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) {
        snprintf(err, errlen, "bind packet socket: %s", strerror(errno));
        close(s);
        return -1;
    }
    sll.sll_halen = 6;
    memset(sll.sll_addr, 0xff, 6);

    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint32_t xid = (uint32_t)now.tv_nsec ^ (uint32_t)now.tv_sec * 2654435761u;
    for (int i = 0; i < 6; i++) xid = xid * 31 + mac[i];

    long long start = mono_ms(), deadline = start + timeout_ms;
    int state = DHCP_DISCOVER;
    struct offer sel, rep;
    memset(&sel, 0, sizeof sel);
    int rc = -1;
    int sends = 0;
    snprintf(err, errlen, "no DHCP offer within %d ms", timeout_ms);
    int wait_ms = 1000;
    while (mono_ms() < deadline) {
        struct frame f;
        uint16_t secs = (uint16_t)((mono_ms() - start) / 1000);
        size_t flen = build_msg(&f, mac, xid, secs, state, state == DHCP_REQUEST ? &sel : NULL, hostname);
        if (sendto(s, &f, flen, 0, (struct sockaddr *)&sll, sizeof sll) < 0 && errno != ENETDOWN)
            say("warning: dhcp send on %s: %s", ifname, strerror(errno));
        sends++;
        long long until = mono_ms() + wait_ms;
        if (until > deadline) until = deadline;
        int restart = 0;
        for (;;) {
            long long left = until - mono_ms();
            if (left <= 0) break;
            struct pollfd pfd = { s, POLLIN, 0 };
            int pr = poll(&pfd, 1, (int)left);
            if (pr < 0 && errno == EINTR) continue;
            if (pr <= 0) break;
            uint8_t buf[2048];
            ssize_t n = recv(s, buf, sizeof buf, 0);
            if (n <= 0) continue;
            if (!parse_reply(buf, (size_t)n, mac, xid, &rep)) continue;
            if (state == DHCP_DISCOVER && rep.type == DHCP_OFFER && rep.yiaddr) {
                sel = rep;
                state = DHCP_REQUEST;
                snprintf(err, errlen, "no DHCP ACK within %d ms", timeout_ms);
                restart = 1;
                break;
            }
            if (state == DHCP_REQUEST && rep.type == DHCP_NAK &&
                (!sel.server_id || rep.server_id == sel.server_id)) {
                state = DHCP_DISCOVER;
                snprintf(err, errlen, "DHCP NAK from server");
                restart = 1;
                break;
            }
            if (state == DHCP_REQUEST && rep.type == DHCP_ACK && rep.yiaddr &&
                (!sel.server_id || !rep.server_id || rep.server_id == sel.server_id)) {
                memset(out, 0, sizeof *out);
                out->addr.s_addr = rep.yiaddr;
                uint32_t mask = rep.have_mask ? rep.mask : sel.have_mask ? sel.mask : htonl(0xffffff00u);
                out->prefix = mask_prefix(mask);
                out->gw.s_addr = rep.router ? rep.router : sel.router;
                const struct offer *d = rep.ndns ? &rep : &sel;
                for (int i = 0; i < d->ndns; i++) out->dns[i].s_addr = d->dns[i];
                out->ndns = d->ndns;
                rc = 0;
                goto done;
            }
        }
        if (restart) {
            wait_ms = 1000;
            continue;
        }
        if (wait_ms < 4000) wait_ms *= 2; /* 1, 2, 4, 4 s ... */
    }
done:
    close(s);
    return rc;
}
