/* Fuzz harness for the guest init's DHCP reply parser (src/uniklab/guest/net.c, included
 * whole for its static functions): reads length-prefixed inputs (4-byte little-endian
 * length, then a mode byte, 'F' for an Ethernet frame or 'B' for a bare BOOTP message, then
 * the bytes) from stdin until EOF and answers each with one line: "NO" or
 * "OK type yiaddr server mask have_mask router dns,...|- lease t1 t2 | prefix lease t1 t2":
 * the parsed fields (addresses as hex bytes) and the lease lease_from makes of them. */
#include "net.c"

static const uint8_t HMAC[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };

static uint32_t raw32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static void hex4(const char *sep, uint32_t v)
{
    const uint8_t *p = (const uint8_t *)&v;
    printf("%s%02x%02x%02x%02x", sep, p[0], p[1], p[2], p[3]);
}

int main(void)
{
    unsigned char len4[4];
    const uint8_t xid_bytes[4] = { 1, 2, 3, 4 };
    uint32_t xid = raw32(xid_bytes);
    while (fread(len4, 1, 4, stdin) == 4) {
        size_t len = (size_t)len4[0] | (size_t)len4[1] << 8 | (size_t)len4[2] << 16 |
                     (size_t)len4[3] << 24;
        uint8_t *in = malloc(len ? len : 1); /* exactly len bytes: ASan sees any overread */
        if (!in || fread(in, 1, len, stdin) != len)
            return 2;
        struct offer o;
        int ok = 0;
        if (len >= 1 && in[0] == 'F')
            ok = parse_reply(in + 1, len - 1, HMAC, xid, &o);
        else if (len >= 1 && in[0] == 'B')
            ok = parse_bootp(in + 1, len - 1, HMAC, xid, &o);
        if (!ok) {
            puts("NO");
        } else {
            printf("OK %d", o.type);
            hex4(" ", o.yiaddr);
            hex4(" ", o.server_id);
            hex4(" ", o.mask);
            printf(" %d", o.have_mask);
            hex4(" ", o.router);
            printf(" ");
            for (int i = 0; i < o.ndns; i++)
                hex4(i ? "," : "", o.dns[i]);
            printf("%s %u %u %u |", o.ndns ? "" : "-", o.lease_s, o.t1_s, o.t2_s);
            struct lease dflt, l;
            memset(&dflt, 0, sizeof dflt);
            dflt.prefix = 24;
            lease_from(&o, &dflt, &l);
            printf(" %d %u %u %u\n", l.prefix, l.lease_s, l.t1_s, l.t2_s);
        }
        fflush(stdout);
        free(in);
    }
    return 0;
}
