/* Guest networking for the init: loopback, interfaces by MAC, static addresses and DHCP. */
#ifndef UNIKLAB_NET_H
#define UNIKLAB_NET_H

#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>

#define MAX_DNS 8

#define DHCP_INFINITE 0xffffffffu

struct lease {
    struct in_addr addr;
    int prefix;
    struct in_addr gw;      /* 0 when none */
    struct in_addr dns[MAX_DNS];
    int ndns;
    struct in_addr server;  /* DHCP: the server's id (option 54), 0 when none */
    uint32_t lease_s, t1_s, t2_s; /* DHCP: seconds (options 51, 58, 59); DHCP_INFINITE */
};

/* The DHCP client of one NIC.  dhcp_acquire gets the boot lease; while the app runs,
 * dhcp_step keeps it (RFC 2131 4.4.5): renew with the server at T1, rebind with any at T2,
 * and on a NAK or at expiry remove the address and start over. */
struct dhcp_client {
    char ifname[IFNAMSIZ];
    int ifindex;
    uint8_t mac[6];
    const char *hostname;
    struct lease l;         /* in force; after DHCP_LOST, the one lost */
    struct lease offer;     /* while requesting: what the OFFER said */
    int state;
    int fd;                 /* the socket of the exchange under way, or -1 */
    uint32_t xid;
    int tries, wait_ms, nak;
    /* CLOCK_MONOTONIC ms: the exchange began, last send, next step (LLONG_MAX: none) */
    long long begun, sent, next;
    long long t1, t2, expiry;
    const char *why;        /* DHCP_LOST: "refused (DHCPNAK)" or "expired" */
};

/* What dhcp_step did. */
enum { DHCP_NONE, DHCP_BOUND, DHCP_RENEWED, DHCP_LOST };

int net_lo_up(void);
/* Find the interface with this MAC (case-insensitive), waiting up to timeout_ms. 0 on success. */
int net_find_by_mac(const uint8_t mac[6], char ifname[IFNAMSIZ], int timeout_ms);
int net_if_up(const char *ifname);
/* Take every interface but lo down (quiesces NIC drivers before a reboot). */
void net_all_down(void);
/* Address, netmask, broadcast and (if gw set) a default route. 0 on success, else -errno. */
int net_apply(const char *ifname, const struct lease *l, char *err, size_t errlen);
/* Remove the interface's IPv4 address (and so the routes through it). 0 or -errno. */
int net_clear(const char *ifname);
/* Full DISCOVER/OFFER/REQUEST/ACK exchange over AF_PACKET; the lease is in c->l. 0 on success. */
int dhcp_acquire(struct dhcp_client *c, const char *ifname, const uint8_t mac[6],
                 const char *hostname, int timeout_ms, char *err, size_t errlen);
/* Read the client's replies, act on its timer if due (c->fd and c->next say when to call
 * again).  DHCP_BOUND: a new lease to apply (any old address is gone); DHCP_RENEWED: the
 * same lease, extended; DHCP_LOST: the address was removed and discovery restarted. */
int dhcp_step(struct dhcp_client *c);
/* The NIC answers to another MAC now (a clone restored from a template, on Xen): the lease
 * is the template's (another guest holds it): remove the address and discover with ``mac``.
 * Returns DHCP_LOST; dhcp_step then brings the new lease as DHCP_BOUND. */
int dhcp_moved(struct dhcp_client *c, const uint8_t mac[6]);
/* The interface's MAC now. 0 on success. */
int net_mac_of(const char *ifname, uint8_t mac[6]);
int parse_mac(const char *s, uint8_t mac[6]);

#endif
