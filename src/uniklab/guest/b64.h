#ifndef UNIKLAB_B64_H
#define UNIKLAB_B64_H

#include <stddef.h>

/* Decode base64url text (padding optional) into a NUL-terminated heap buffer of *outlen
 * bytes (which may contain NUL bytes); NULL on a bad character or length, or no memory. */
char *b64_decode(const char *in, size_t inlen, size_t *outlen);

#endif
