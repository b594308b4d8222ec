/* Fuzz harness for the guest init's channel frame reader (src/uniklab/guest/chan.c):
 * reads length-prefixed inputs (4-byte little-endian length, then the bytes) from stdin
 * until EOF.  An input's first byte is a chunk size less one (1-256); the rest is fed to a
 * fresh reader in chunks of that size, as reads from a virtio-serial port bring it.  The
 * answer is one line: "A", then " K<kind>:<conn>:<payload hex>" per frame, and " E" (then
 * nothing more) at a bad header. */
#include "chan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    static struct chan_reader r;
    unsigned char len4[4];
    while (fread(len4, 1, 4, stdin) == 4) {
        size_t len = (size_t)len4[0] | (size_t)len4[1] << 8 | (size_t)len4[2] << 16 |
                     (size_t)len4[3] << 24;
        char *in = malloc(len ? len : 1); /* exactly len bytes: ASan sees any overread */
        if (!in || fread(in, 1, len, stdin) != len)
            return 2;
        memset(&r, 0xa5, sizeof r); /* the reader must depend on hlen alone at the start */
        r.hlen = 0;
        size_t chunk = len ? (size_t)(unsigned char)in[0] + 1 : 1;
        int bad = 0;
        fputs("A", stdout);
        for (size_t at = 1; at < len && !bad; at += chunk) {
            size_t n = len - at < chunk ? len - at : chunk;
            char *piece = malloc(n); /* its own allocation: an overread of a chunk shows */
            if (!piece)
                return 2;
            memcpy(piece, in + at, n);
            size_t off = 0;
            while (off < n) {
                size_t used = 0;
                int rc = chan_feed(&r, piece + off, n - off, &used);
                if (used > n - off)
                    return 3;
                off += used;
                if (rc < 0) {
                    fputs(" E", stdout);
                    bad = 1;
                    break;
                }
                if (rc == 1) {
                    if (r.len > CHAN_PAYLOAD_MAX)
                        return 4;
                    printf(" K%u:%u:", r.kind, r.conn);
                    for (size_t i = 0; i < r.len; i++)
                        printf("%02x", (unsigned char)r.payload[i]);
                } else if (off != n) {
                    return 5; /* 0: every byte must have been taken */
                }
            }
            free(piece);
        }
        putchar('\n');
        fflush(stdout);
        free(in);
    }
    return 0;
}
