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

enum ctl_kind ctl_parse(const char *line, size_t len, struct ctl_cmd *out)
{
    static const char prefix[] = CTL_PREFIX;
    const size_t plen = sizeof prefix - 1;
    out->kind = CTL_NONE;
    out->seconds = 0;
    while (len && (line[len - 1] == '\r' || line[len - 1] == '\n'))
        len--;
    const char *p = find_last(line, len, prefix, plen);
    if (!p)
        return CTL_NONE;
    const char *end = line + len;
    p += plen;
    out->kind = CTL_UNKNOWN;
    if (end - p < 4 || memcmp(p, "stop", 4) != 0)
        return CTL_UNKNOWN;
    p += 4;
    if (p == end) {
        out->kind = CTL_STOP;
        out->seconds = CTL_STOP_DEFAULT;
        return CTL_STOP;
    }
    if (*p != ' ' || ++p == end)
        return CTL_UNKNOWN;
    long v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return CTL_UNKNOWN;
        v = v * 10 + (*p - '0');
        if (v > CTL_STOP_MAX)
            return CTL_UNKNOWN;
    }
    out->kind = CTL_STOP;
    out->seconds = (int)v;
    return CTL_STOP;
}

enum ctl_kind ctl_feed(struct ctl_reader *r, const char *data, size_t n, struct ctl_cmd *out)
{
    enum ctl_kind last = CTL_NONE;
    out->kind = CTL_NONE;
    out->seconds = 0;
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
