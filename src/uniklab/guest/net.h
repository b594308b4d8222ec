/* Guest networking for the init: loopback, interfaces by MAC, static addresses and DHCP. */
#ifndef UNIKLAB_NET_H
#define UNIKLAB_NET_H

#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>

#define MAX_DNS 8

struct lease {
    struct in_addr addr;
    int prefix;
    struct in_addr gw;      /* 0 when none */
    struct in_addr dns[MAX_DNS];
    int ndns;
};

int net_lo_up(void);
/* Find the interface with this MAC (case-insensitive), waiting up to timeout_ms. 0 on success. */
int net_find_by_mac(const uint8_t mac[6], char ifname[IFNAMSIZ], int timeout_ms);
int net_if_up(const char *ifname);
/* Take every interface but lo down (quiesces NIC drivers before a reboot). */
void net_all_down(void);
/* Address, netmask, broadcast and (if gw set) a default route. 0 on success, else -errno. */
int net_apply(const char *ifname, const struct lease *l, char *err, size_t errlen);
/* Full DISCOVER/OFFER/REQUEST/ACK exchange over AF_PACKET. 0 on success. */
int dhcp_run(const char *ifname, const uint8_t mac[6], const char *hostname, int timeout_ms,
             struct lease *out, char *err, size_t errlen);
int parse_mac(const char *s, uint8_t mac[6]);

#endif
