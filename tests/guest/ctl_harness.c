/* Fuzz harness for the guest init's control-line reader (src/uniklab/guest/ctl.c): reads
 * length-prefixed inputs (4-byte little-endian length, then the bytes) from stdin until
 * EOF.  An input's first byte is a chunk size (1-256), the rest is fed to a fresh reader in
 * chunks of that size, as reads from the console would bring it; the answer is one line
 * with a word per chunk that completed a command: "S<seconds>" (stop), "R<sec>.<nsec, 9
 * digits>" (restored) or "U" (unknown). */
#include "ctl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    unsigned char len4[4];
    while (fread(len4, 1, 4, stdin) == 4) {
        size_t len = (size_t)len4[0] | (size_t)len4[1] << 8 | (size_t)len4[2] << 16 |
                     (size_t)len4[3] << 24;
        char *in = malloc(len ? len : 1); /* exactly len bytes: ASan sees any overread */
        if (!in || fread(in, 1, len, stdin) != len)
            return 2;
        struct ctl_reader r;
        memset(&r, 0xa5, sizeof r); /* the reader must not depend on more than len/overflow */
        r.len = 0;
        r.overflow = 0;
        size_t chunk = len ? (size_t)(unsigned char)in[0] + 1 : 1;
        fputs("A", stdout);
        for (size_t at = 1; at < len; at += chunk) {
            size_t n = len - at < chunk ? len - at : chunk;
            char *piece = malloc(n); /* its own allocation: an overread of a chunk shows */
            if (!piece)
                return 2;
            memcpy(piece, in + at, n);
            struct ctl_cmd cmd;
            enum ctl_kind k = ctl_feed(&r, piece, n, &cmd);
            if (k != cmd.kind || r.len > CTL_LINE_MAX)
                return 3;
            if (k == CTL_STOP)
                printf(" S%d", cmd.seconds);
            else if (k == CTL_RESTORED)
                printf(" R%lld.%09ld", cmd.sec, cmd.nsec);
            else if (k == CTL_UNKNOWN)
                fputs(" U", stdout);
            else if (k != CTL_NONE)
                return 4;
            free(piece);
        }
        putchar('\n');
        fflush(stdout);
        free(in);
    }
    return 0;
}
