/* A small, strict JSON reader for the guest init (RFC 8259, UTF-8, depth-limited). */
#ifndef UNIKLAB_JSON_H
#define UNIKLAB_JSON_H

#include <stddef.h>

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct jv {
    enum jtype type;
    int b;             /* J_BOOL */
    long long num;     /* J_NUM: integer value */
    int is_int;        /* J_NUM: 1 if an exact integer that fits */
    char *str;         /* J_STR: decoded UTF-8, NUL-terminated (never contains NUL) */
    size_t len;
    char *key;         /* member name when inside an object */
    struct jv *child;  /* first element / member */
    struct jv *next;   /* next sibling */
};

/* Parse text[0..len); NULL on error with a message in err. The tree is heap-allocated.
 * Refused on purpose, though Python's json takes them: NaN and Infinity, strings holding
 * U+0000 or a lone surrogate, and values nested deeper than 32 (the top level is depth 0).
 * tests/guest/test_guest_json.py checks the rest against Python's json. */
struct jv *json_parse(const char *text, size_t len, char *err, size_t errlen);
void json_free(struct jv *v);
/* Member of an object by name, or NULL. */
struct jv *json_get(const struct jv *obj, const char *key);
size_t json_count(const struct jv *v);

#endif
