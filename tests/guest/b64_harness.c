/* Fuzz harness for the guest init's base64url decoder (src/uniklab/guest/b64.c): reads
 * length-prefixed inputs (4-byte little-endian length, then the bytes) from stdin until
 * EOF and answers each with one line: "OK <hex of the decoded bytes>" or "ERR". */
#include "b64.h"

#include <stdint.h>
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
        size_t n = 0;
        char *out = b64_decode(in, len, &n);
        if (!out) {
            puts("ERR");
        } else {
            if (out[n] != '\0')
                return 3; /* the promised terminator */
            fputs("OK ", stdout);
            for (size_t i = 0; i < n; i++)
                printf("%02x", (unsigned char)out[i]);
            putchar('\n');
            free(out);
        }
        fflush(stdout);
        free(in);
    }
    return 0;
}
