/* base64url (RFC 4648 section 5) decoding of the guest config on the kernel command line;
 * the standard alphabet's '+' and '/' and trailing '=' padding are accepted too. */
#include "b64.h"

#include <stdint.h>
#include <stdlib.h>

static int b64val(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-' || c == '+') return 62;
    if (c == '_' || c == '/') return 63;
    return -1;
}

char *b64_decode(const char *in, size_t inlen, size_t *outlen)
{
    while (inlen && in[inlen - 1] == '=')
        inlen--;
    if (inlen % 4 == 1)
        return NULL;
    char *out = malloc(inlen / 4 * 3 + 3 + 1);
    if (!out)
        return NULL;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < inlen; i++) {
        int v = b64val(in[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (char)(acc >> bits & 0xff);
        }
    }
    out[n] = '\0';
    *outlen = n;
    return out;
}
