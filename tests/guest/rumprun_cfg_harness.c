/* Reads a rumprun config document on stdin and prints what rumprun itself takes from
 * it, with rumprun's own jsmn.c and parseargs.c (built from the pinned sources): every
 * top-level string value and every string of a top-level object, as the raw token text
 * config.c's token2cstr() hands over, and the cmdline split by rumprun_parseargs().
 * One line each, values in hex:  KEY[.SUBKEY] HEX   and   argv HEX. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bmk-core/jsmn.h>
#include <rumprun-base/parseargs.h>

static void hex(const char *s, int n) {
    for (int i = 0; i < n; i++) printf("%02x", (unsigned char)s[i]);
    printf("\n");
}

int main(void) {
    static char data[1 << 16];
    size_t len = fread(data, 1, sizeof(data) - 1, stdin);
    data[len] = '\0';
    jsmntok_t tokens[256];
    jsmn_parser p;
    jsmn_init(&p);
    int n = jsmn_parse(&p, data, len, tokens, 256);
    if (n < 0) { printf("error jsmn %d\n", n); return 1; }
    if (tokens[0].type != JSMN_OBJECT) { printf("error not an object\n"); return 1; }
    int t = 1;
    for (int pair = 0; pair < tokens[0].size; pair++) {
        jsmntok_t *k = &tokens[t], *v = &tokens[t + 1];
        int klen = k->end - k->start;
        if (v->type == JSMN_OBJECT) {
            int inner = v->size;
            t += 2;
            for (int j = 0; j < inner; j++, t += 2) {
                jsmntok_t *ik = &tokens[t], *iv = &tokens[t + 1];
                printf("%.*s.%.*s ", klen, data + k->start, ik->end - ik->start,
                       data + ik->start);
                hex(data + iv->start, iv->end - iv->start);
            }
            continue;
        }
        printf("%.*s ", klen, data + k->start);
        hex(data + v->start, v->end - v->start);
        if (klen == 7 && strncmp(data + k->start, "cmdline", 7) == 0) {
            char buf[1 << 16];
            int vlen = v->end - v->start, nargs = 0;
            memcpy(buf, data + v->start, vlen);
            buf[vlen] = '\0';
            char *args[1024];
            rumprun_parseargs(buf, &nargs, args);
            for (int a = 0; a < nargs; a++) { printf("argv "); hex(args[a], strlen(args[a])); }
        }
        t += 2;
    }
    return 0;
}
