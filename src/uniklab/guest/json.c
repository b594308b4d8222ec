/* A small, strict JSON reader: enough for the guest config and image.json, and safe on junk. */
#include "json.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 32

struct parser {
    const char *start, *p, *end;
    char *err;
    size_t errlen;
    int failed;
};

static void fail(struct parser *ps, const char *what)
{
    if (!ps->failed) {
        ps->failed = 1;
        snprintf(ps->err, ps->errlen, "%s at offset %ld", what, (long)(ps->p - ps->start));
    }
}

static void ws(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int hex4(struct parser *ps, unsigned *out)
{
    if (ps->end - ps->p < 4)
        return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = ps->p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    ps->p += 4;
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

/* Validate one raw UTF-8 sequence starting at p; returns its length or 0. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n;
    unsigned cp;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) { n = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { n = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { n = 4; cp = c & 0x07; }
    else return 0;
    if ((size_t)(end - p) < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* Parses a string starting at the opening quote; returns a heap copy, decoded. */
static char *parse_string(struct parser *ps, size_t *len_out)
{
    ps->p++; /* opening quote */
    /* Decoded output is never longer than the escaped input. */
    const char *q = ps->p;
    while (q < ps->end && *q != '"') {
        if (*q == '\\' && q + 1 < ps->end) q++;
        q++;
    }
    if (q >= ps->end) { fail(ps, "unterminated string"); return NULL; }
    char *out = malloc((size_t)(q - ps->p) + 1);
    if (!out) { fail(ps, "out of memory"); return NULL; }
    size_t n = 0;
    while (ps->p < ps->end && *ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20) { fail(ps, "control character in string"); goto bad; }
        if (c != '\\') {
            size_t l = utf8_len((const unsigned char *)ps->p, (const unsigned char *)ps->end);
            if (!l) { fail(ps, "invalid UTF-8 in string"); goto bad; }
            memcpy(out + n, ps->p, l);
            n += l;
            ps->p += l;
            continue;
        }
        ps->p++;
        if (ps->p >= ps->end) { fail(ps, "bad escape"); goto bad; }
        char e = *ps->p++;
        switch (e) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (hex4(ps, &cp)) { fail(ps, "bad \\u escape"); goto bad; }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u') {
                    fail(ps, "lone high surrogate"); goto bad;
                }
                ps->p += 2;
                if (hex4(ps, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    fail(ps, "bad low surrogate"); goto bad;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                fail(ps, "lone low surrogate"); goto bad;
            }
            if (cp == 0) { fail(ps, "NUL character in string"); goto bad; }
            /* \uXXXX is 6 input bytes for <= 3 output; a pair is 12 for 4. */
            n += put_utf8(out + n, cp);
            break;
        }
        default: fail(ps, "bad escape"); goto bad;
        }
    }
    if (ps->p >= ps->end) { fail(ps, "unterminated string"); goto bad; }
    ps->p++; /* closing quote */
    out[n] = '\0';
    *len_out = n;
    return out;
bad:
    free(out);
    return NULL;
}

static int lit(struct parser *ps, const char *word)
{
    size_t l = strlen(word);
    if ((size_t)(ps->end - ps->p) >= l && memcmp(ps->p, word, l) == 0) {
        ps->p += l;
        return 1;
    }
    return 0;
}

static struct jv *parse_value(struct parser *ps, int depth);

static struct jv *parse_number(struct parser *ps, struct jv *v)
{
    int neg = 0, frac = 0;
    unsigned long long acc = 0;
    int overflow = 0;
    if (ps->p < ps->end && *ps->p == '-') { neg = 1; ps->p++; }
    /* The magnitude of a negative number may reach 2^63: LLONG_MIN fits, its opposite not. */
    unsigned long long limit = (unsigned long long)LLONG_MAX + (neg ? 1 : 0);
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') { fail(ps, "bad number"); return v; }
    if (*ps->p == '0') ps->p++;
    else {
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
            unsigned d = (unsigned)(*ps->p++ - '0');
            if (overflow || acc > (limit - d) / 10) overflow = 1;
            else acc = acc * 10 + d;
        }
    }
    if (ps->p < ps->end && *ps->p == '.') {
        frac = 1;
        ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') { fail(ps, "bad number"); return v; }
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        frac = 1;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') { fail(ps, "bad number"); return v; }
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    v->type = J_NUM;
    v->is_int = !frac && !overflow;
    if (!neg) v->num = (long long)acc;
    else v->num = acc > (unsigned long long)LLONG_MAX ? LLONG_MIN : -(long long)acc;
    return v;
}

static struct jv *parse_value(struct parser *ps, int depth)
{
    if (depth > MAX_DEPTH) { fail(ps, "nesting too deep"); return NULL; }
    ws(ps);
    if (ps->p >= ps->end) { fail(ps, "unexpected end"); return NULL; }
    struct jv *v = calloc(1, sizeof *v);
    if (!v) { fail(ps, "out of memory"); return NULL; }
    char c = *ps->p;
    if (c == '"') {
        v->type = J_STR;
        v->str = parse_string(ps, &v->len);
    } else if (c == '{' || c == '[') {
        int obj = c == '{';
        char close = obj ? '}' : ']';
        v->type = obj ? J_OBJ : J_ARR;
        ps->p++;
        ws(ps);
        struct jv **tail = &v->child;
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
        } else {
            for (;;) {
                char *key = NULL;
                size_t klen;
                ws(ps);
                if (obj) {
                    if (ps->p >= ps->end || *ps->p != '"') { fail(ps, "expected member name"); break; }
                    key = parse_string(ps, &klen);
                    if (!key) break;
                    ws(ps);
                    if (ps->p >= ps->end || *ps->p != ':') { free(key); fail(ps, "expected ':'"); break; }
                    ps->p++;
                }
                struct jv *item = parse_value(ps, depth + 1);
                if (!item) { free(key); break; }
                item->key = key;
                *tail = item;
                tail = &item->next;
                if (ps->failed) break;
                ws(ps);
                if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
                if (ps->p < ps->end && *ps->p == close) { ps->p++; break; }
                fail(ps, obj ? "expected ',' or '}'" : "expected ',' or ']'");
                break;
            }
        }
    } else if (lit(ps, "true")) {
        v->type = J_BOOL; v->b = 1;
    } else if (lit(ps, "false")) {
        v->type = J_BOOL; v->b = 0;
    } else if (lit(ps, "null")) {
        v->type = J_NULL;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        parse_number(ps, v);
    } else {
        fail(ps, "unexpected character");
    }
    return v;
}

void json_free(struct jv *v)
{
    while (v) {
        struct jv *next = v->next;
        json_free(v->child);
        free(v->str);
        free(v->key);
        free(v);
        v = next;
    }
}

struct jv *json_parse(const char *text, size_t len, char *err, size_t errlen)
{
    struct parser ps = { text, text, text + len, err, errlen, 0 };
    struct jv *v = parse_value(&ps, 0);
    if (!ps.failed) {
        ws(&ps);
        if (ps.p != ps.end) fail(&ps, "trailing data");
    }
    if (ps.failed) {
        json_free(v);
        return NULL;
    }
    return v;
}

struct jv *json_get(const struct jv *obj, const char *key)
{
    if (!obj || obj->type != J_OBJ) return NULL;
    struct jv *found = NULL;
    /* Last duplicate wins, as in Python's json module. */
    for (struct jv *c = obj->child; c; c = c->next)
        if (c->key && strcmp(c->key, key) == 0) found = c;
    return found;
}

size_t json_count(const struct jv *v)
{
    size_t n = 0;
    for (const struct jv *c = v ? v->child : NULL; c; c = c->next) n++;
    return n;
}
