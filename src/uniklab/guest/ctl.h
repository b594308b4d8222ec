/* The guest init's control channel: lines the host writes to the console.
 *
 * A control line is "\x1buniklab:<verb>[ <arg>]" ended by a newline; the escape makes it
 * one no program prints or a person types by chance.  Verbs: "stop [SECONDS]" (SIGTERM to
 * the app, SIGKILL after SECONDS, default CTL_STOP_DEFAULT); "restored SECONDS.FRACTION"
 * (this guest is a clone just restored from its template's saved state: the host's
 * wall clock, in Unix seconds with 1-9 fraction digits, when it wrote the line); any
 * other verb or argument is reported as CTL_UNKNOWN so that a newer host's words are
 * ignored. */
#ifndef UNIKLAB_CTL_H
#define UNIKLAB_CTL_H

#include <stddef.h>

#define CTL_PREFIX "\x1buniklab:"
#define CTL_LINE_MAX 256
#define CTL_STOP_DEFAULT 10
#define CTL_STOP_MAX 86400
#define CTL_TIME_MAX 999999999999LL /* seconds of a "restored" time (year ~33000) */

enum ctl_kind { CTL_NONE = 0, CTL_STOP, CTL_RESTORED, CTL_UNKNOWN };

struct ctl_cmd {
    enum ctl_kind kind;
    int seconds;    /* CTL_STOP: how long the app has before SIGKILL */
    long long sec;  /* CTL_RESTORED: the host's time, seconds */
    long nsec;      /* and nanoseconds (0-999999999) */
};

/* What one line (without its newline; it may hold NULs) asks: the last control word in it,
 * so that a partial line typed before the host's wins nothing.  CTL_NONE if none. */
enum ctl_kind ctl_parse(const char *line, size_t len, struct ctl_cmd *out);

/* Lines split across reads (an app may set the console raw): bytes gather here until a
 * newline; a line longer than CTL_LINE_MAX is dropped whole. */
struct ctl_reader {
    char buf[CTL_LINE_MAX];
    size_t len;
    int overflow;
};

/* Feed bytes read from the console; returns the kind of the last command completed by
 * them (its details in *out), CTL_NONE if none. */
enum ctl_kind ctl_feed(struct ctl_reader *r, const char *data, size_t n, struct ctl_cmd *out);

#endif
