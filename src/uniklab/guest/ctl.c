/* The control-line parser of the guest init (see ctl.h); pure, fuzzed by tests/guest. */
#include "ctl.h"

#include <string.h>

static const char *find_last(const char *s, size_t len, const char *needle, size_t nlen)
{
    if (len < nlen)
        return NULL;
    for (size_t i = len - nlen + 1; i-- > 0;)
        if (memcmp(s + i, needle, nlen) == 0)
            return s + i;
    return NULL;
}

/* Digits in [p, end): their value, or -1 if there are none, another byte, or the value
 * exceeds max. */
static long long digits(const char *p, const char *end, long long max)
{
    if (p == end)
        return -1;
    long long v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
        if (v > max)
            return -1;
    }
    return v;
}

static int word(const char **p, const char *end, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(end - *p) < n || memcmp(*p, w, n) != 0)
        return 0;
    *p += n;
    return 1;
}

static enum ctl_kind parse_stop(const char *p, const char *end, struct ctl_cmd *out)
{
    long long v = CTL_STOP_DEFAULT;
    if (p != end) {
        if (*p != ' ')
            return CTL_UNKNOWN;
        v = digits(p + 1, end, CTL_STOP_MAX);
        if (v < 0)
            return CTL_UNKNOWN;
    }
    out->seconds = (int)v;
    return CTL_STOP;
}

static enum ctl_kind parse_restored(const char *p, const char *end, struct ctl_cmd *out)
{
    if (p == end || *p++ != ' ')
        return CTL_UNKNOWN;
    const char *dot = memchr(p, '.', (size_t)(end - p));
    if (!dot)
        return CTL_UNKNOWN;
    long long sec = digits(p, dot, CTL_TIME_MAX);
    long long frac = end - (dot + 1) > 9 ? -1 : digits(dot + 1, end, 999999999);
    if (sec < 0 || frac < 0)
        return CTL_UNKNOWN;
    for (long n = end - (dot + 1); n < 9; n++)
        frac *= 10;
    out->sec = sec;
    out->nsec = (long)frac;
    return CTL_RESTORED;
}

enum ctl_kind ctl_parse(const char *line, size_t len, struct ctl_cmd *out)
{
    static const char prefix[] = CTL_PREFIX;
    const size_t plen = sizeof prefix - 1;
    *out = (struct ctl_cmd){.kind = CTL_NONE};
    while (len && (line[len - 1] == '\r' || line[len - 1] == '\n'))
        len--;
    const char *p = find_last(line, len, prefix, plen);
    if (!p)
        return CTL_NONE;
    const char *end = line + len;
    p += plen;
    if (word(&p, end, "stop"))
        out->kind = parse_stop(p, end, out);
    else if (word(&p, end, "restored"))
        out->kind = parse_restored(p, end, out);
    else
        out->kind = CTL_UNKNOWN;
    return out->kind;
}

enum ctl_kind ctl_feed(struct ctl_reader *r, const char *data, size_t n, struct ctl_cmd *out)
{
    enum ctl_kind last = CTL_NONE;
    *out = (struct ctl_cmd){.kind = CTL_NONE};
    for (size_t i = 0; i < n; i++) {
        char c = data[i];
        if (c == '\n' || c == '\r') {
            struct ctl_cmd cmd;
            if (!r->overflow && ctl_parse(r->buf, r->len, &cmd) != CTL_NONE) {
                *out = cmd;
                last = cmd.kind;
            }
            r->len = 0;
            r->overflow = 0;
        } else if (r->len < sizeof r->buf) {
            r->buf[r->len++] = c;
        } else {
            r->overflow = 1;
        }
    }
    return last;
}
