/* Fuzzing harness for the guest init's JSON reader (src/uniklab/guest/json.c).
 *
 * Built by tests/guest/harness.py with ASan and UBSan, and with json.c's allocator calls
 * routed here (-Dmalloc=fuzz_malloc -Dcalloc=fuzz_calloc -Dfree=fuzz_free on json.c only),
 * so that every input is also checked for leaks on its own and allocation failures can be
 * injected.
 *
 *   json_harness            one document on stdin; prints "OK <dump>" or "ERR <message>"
 *   json_harness --batch    many requests on stdin, one answer line each, flushed:
 *                             request: u32 length (LE), u32 fail_at (LE, 0: never), bytes
 *                             answer:  "<allocations> OK <dump>" or "<allocations> ERR <msg>"
 *
 * The dump is JSON that tags every value, so that nothing is lost on the way to Python:
 * ["n"], ["b",0|1], ["i",N] (is_int), ["d"] (any other number: json.c keeps no value),
 * ["s","..."], ["a",[...]], ["o",[["key",value],...]] (members in order, duplicates kept).
 * Invariants the dump cannot show (string lengths, json_get, json_count, no leak) are
 * checked here, and a violation aborts, which the tests report as a crash.
 */
#include "json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- json.c's allocator: counted, leak-checked, failure on demand ---- */

static size_t live, allocs;
static unsigned long fail_at; /* fail the fail_at-th allocation of this input; 0: never */

static int should_fail(void)
{
    allocs++;
    return fail_at && allocs == fail_at;
}

void *fuzz_malloc(size_t n)
{
    if (should_fail())
        return NULL;
    void *p = malloc(n);
    if (p)
        live++;
    return p;
}

void *fuzz_calloc(size_t n, size_t m)
{
    if (should_fail())
        return NULL;
    void *p = calloc(n, m);
    if (p)
        live++;
    return p;
}

void fuzz_free(void *p)
{
    if (p)
        live--;
    free(p);
}

static void die(const char *what)
{
    fprintf(stderr, "json_harness: invariant violated: %s\n", what);
    fflush(stdout);
    abort();
}

/* ---- the dump ---- */

static void dump_str(FILE *out, const char *s, size_t len)
{
    if (!s)
        die("string value without a buffer");
    if (strlen(s) != len)
        die("string length differs from strlen (embedded NUL or wrong len)");
    fputc('"', out);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out); /* json.c has validated the UTF-8 */
    }
    fputc('"', out);
}

/* Past this many members only the last one is looked up: the full check is quadratic. */
#define MAX_CHECKED_MEMBERS 256

static void check_object(const struct jv *obj)
{
    size_t n = 0;
    const struct jv *last_member = NULL;
    for (const struct jv *c = obj->child; c; c = c->next, n++) {
        if (!c->key)
            die("object member without a key");
        last_member = c;
    }
    if (json_count(obj) != n)
        die("json_count disagrees with the members");
    if (last_member && json_get(obj, last_member->key) != last_member)
        die("json_get does not return the last member of that name");
    if (n > MAX_CHECKED_MEMBERS)
        return;
    for (const struct jv *c = obj->child; c; c = c->next) {
        const struct jv *last = c;
        for (const struct jv *d = c->next; d; d = d->next)
            if (strcmp(d->key, c->key) == 0)
                last = d;
        if (json_get(obj, c->key) != last)
            die("json_get does not return the last member of that name");
    }
}

static void dump(FILE *out, const struct jv *v)
{
    switch (v->type) {
    case J_NULL:
        fputs("[\"n\"]", out);
        break;
    case J_BOOL:
        if (v->b != 0 && v->b != 1)
            die("boolean neither 0 nor 1");
        fprintf(out, "[\"b\",%d]", v->b);
        break;
    case J_NUM:
        if (v->is_int)
            fprintf(out, "[\"i\",%lld]", v->num);
        else
            fputs("[\"d\"]", out);
        break;
    case J_STR:
        fputs("[\"s\",", out);
        dump_str(out, v->str, v->len);
        fputc(']', out);
        break;
    case J_ARR: {
        size_t n = 0;
        fputs("[\"a\",[", out);
        for (const struct jv *c = v->child; c; c = c->next, n++) {
            if (c->key)
                die("array element with a key");
            if (n)
                fputc(',', out);
            dump(out, c);
        }
        fputs("]]", out);
        if (json_count(v) != n)
            die("json_count disagrees with the elements");
        if (json_get(v, "x"))
            die("json_get found a member in an array");
        break;
    }
    case J_OBJ: {
        check_object(v);
        fputs("[\"o\",[", out);
        for (const struct jv *c = v->child; c; c = c->next) {
            if (c != v->child)
                fputc(',', out);
            fputc('[', out);
            dump_str(out, c->key, strlen(c->key));
            fputc(',', out);
            dump(out, c);
            fputc(']', out);
        }
        fputs("]]", out);
        break;
    }
    default:
        die("unknown value type");
    }
    if (v->type != J_ARR && v->type != J_OBJ && (v->child || json_count(v)))
        die("scalar with children");
}

/* Parses one document and prints the answer (without the newline). */
static void run_one(FILE *out, const char *data, size_t len, int batch)
{
    /* An exact-size copy, so that ASan sees any read past the end of the input. */
    char *text = malloc(len ? len : 1);
    if (!text)
        die("harness out of memory");
    memcpy(text, data, len);
    char err[128];
    memset(err, 'X', sizeof err);
    err[sizeof err - 1] = '\0';
    live = allocs = 0;
    struct jv *v = json_parse(text, len, err, sizeof err);
    if (batch)
        fprintf(out, "%zu ", allocs);
    if (v) {
        fputs("OK ", out);
        dump(out, v);
        if (json_get(NULL, "x") || json_count(NULL))
            die("NULL handling");
        json_free(v);
    } else {
        if (!memchr(err, '\0', sizeof err) || !err[0] || err[0] == 'X')
            die("failed without an error message");
        if (strchr(err, '\n'))
            die("error message with a newline");
        fprintf(out, "ERR %s", err);
    }
    json_free(NULL);
    if (live)
        die("json.c leaked memory on this input");
    free(text);
}

static int read_full(FILE *in, void *buf, size_t n)
{
    return fread(buf, 1, n, in) == n;
}

static uint32_t le32(const unsigned char *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

int main(int argc, char **argv)
{
    int batch = argc > 1 && strcmp(argv[1], "--batch") == 0;
    if (!batch) {
        size_t cap = 1 << 16, len = 0, r;
        char *buf = malloc(cap);
        while (buf && (r = fread(buf + len, 1, cap - len, stdin)) > 0) {
            len += r;
            if (len == cap) {
                char *nb = realloc(buf, cap *= 2);
                if (!nb)
                    free(buf);
                buf = nb;
            }
        }
        if (!buf)
            die("harness out of memory");
        run_one(stdout, buf, len, 0);
        putchar('\n');
        free(buf);
        return 0;
    }
    unsigned char hdr[8];
    while (read_full(stdin, hdr, sizeof hdr)) {
        uint32_t len = le32(hdr);
        fail_at = le32(hdr + 4);
        char *buf = malloc(len ? len : 1);
        if (!buf)
            die("harness out of memory");
        if (!read_full(stdin, buf, len))
            die("short request");
        run_one(stdout, buf, len, 1);
        putchar('\n');
        fflush(stdout);
        free(buf);
    }
    return 0;
}
