/* uniklab guest init: PID 1 of every Linux-kernel image uniklab bakes.
 *
 * It mounts the pseudo filesystems, reads the guest config from the kernel command line
 * (uniklab.config=<base64url JSON>, see config.py) and the image description from
 * /uniklab/image.json, loads kernel modules, sets the clock and the network up, then runs
 * the one app and reaps; when the app exits the VM ends (reboot with -no-reboot).  While
 * the app runs it reads control lines from the console (ctl.h: the host's graceful stop).
 * Run as /sbin/poweroff (what Xen's `xl shutdown` makes the guest kernel run), it asks
 * PID 1 to end the app the same way. */
#define _GNU_SOURCE
#include "b64.h"
#include "chan.h"
#include "ctl.h"
#include "json.h"
#include "net.h"
#include "util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define IMAGE_JSON "/uniklab/image.json"
#define CONFIG_KEY "uniklab.config="
#define MAX_NETS 8
#define DEFAULT_PATH "PATH=/bin:/usr/bin:/sbin"

/* linux/rtc.h is not in musl's include path; these are the stable UAPI values. */
struct rtc_time_uapi { int tm_sec, tm_min, tm_hour, tm_mday, tm_mon, tm_year, tm_wday, tm_yday, tm_isdst; };
#define RTC_UIE_ON _IO('p', 0x03)
#define RTC_UIE_OFF _IO('p', 0x04)
#define RTC_RD_TIME _IOR('p', 0x09, struct rtc_time_uapi)

struct nic {
    uint8_t mac[6];
    char mac_str[18];
    int dhcp;
    struct in_addr addr;
    int prefix;
    struct in_addr gw;
};

struct config {
    const char *name;
    struct jv *args;    /* J_ARR of J_STR or NULL */
    struct jv *env;     /* J_OBJ of J_STR or NULL */
    struct nic nets[MAX_NETS];
    int nnets;
    struct jv *dns;     /* J_ARR of J_STR or NULL */
    int clock_rtc;
    const char *timesrc; /* "IP:PORT" of a host clock service, or NULL */
    struct chan_spec chans[CHAN_MAX]; /* channels (chan.h) */
    int nchans;
};

struct image {
    struct jv *entrypoint;
    struct jv *env;
    const char *workdir;
    struct jv *modules;
    struct jv *tmpfs; /* directories to make writable on a read-only root */
};

static char *cmdline;

/* The DHCP clients of the NICs that have one; run_app keeps their leases. */
static struct dhcp_client dhcp[MAX_NETS];
static const struct nic *dhcp_nic[MAX_NETS];
static int ndhcp;

/* ---- early setup ---- */

static void mount_one(const char *src, const char *dir, const char *type, unsigned long flags,
                      const char *data)
{
    mkdir(dir, 0755);
    if (mount(src, dir, type, flags, data) < 0 && errno != EBUSY)
        say("warning: mount %s on %s: %s", type, dir, strerror(errno));
}

static void setup_console(void)
{
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0)
        return;
    for (int i = 0; i < 3; i++)
        if (fd != i)
            dup2(fd, i);
    if (fd > 2)
        close(fd);
}

static void early_mounts(void)
{
    mount_one("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    setup_console();
    mount_one("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_one("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_one("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mount_one("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    mkdir("/dev/pts", 0755);
    mkdir("/dev/shm", 01777);
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666");
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
}

/* ---- kernel command line ---- */

/* Iterate kernel-style: words split on spaces outside double quotes. Returns the next word
 * (quotes kept) in buf, or 0 when done. */
static int next_word(const char **pos, char *buf, size_t buflen)
{
    const char *p = *pos;
    while (*p == ' ' || *p == '\t' || *p == '\n')
        p++;
    if (!*p)
        return 0;
    int inq = 0;
    size_t n = 0;
    while (*p && (inq || (*p != ' ' && *p != '\t' && *p != '\n'))) {
        if (*p == '"')
            inq = !inq;
        if (n + 1 < buflen)
            buf[n++] = *p;
        p++;
    }
    buf[n] = '\0';
    *pos = p;
    return 1;
}

static void normalize_modname(char *s)
{
    for (; *s; s++)
        if (*s == '-')
            *s = '_';
}

/* Collect "param=value" words for module `mod` from the command line, space-separated. */
static void module_params(const char *mod, char *out, size_t outlen)
{
    out[0] = '\0';
    if (!cmdline)
        return;
    size_t used = 0, mlen = strlen(mod);
    const char *pos = cmdline;
    char word[1024];
    while (next_word(&pos, word, sizeof word)) {
        const char *w = word;
        if (*w == '"')
            w++; /* "mod.param=value" quoted as a whole */
        char *dot = strchr(w, '.');
        char *eq = strchr(w, '=');
        if (!dot || (eq && eq < dot) || (size_t)(dot - w) != mlen)
            continue;
        char name[256];
        memcpy(name, w, mlen);
        name[mlen] = '\0';
        normalize_modname(name);
        if (strcmp(name, mod) != 0 || !dot[1])
            continue;
        size_t l = strlen(dot + 1);
        if (word[0] == '"' && l && dot[l] == '"')
            l--; /* drop the closing quote of a whole-word quote */
        if (used + l + 2 > outlen) {
            say("warning: module parameters for %s too long, ignoring the rest", mod);
            return;
        }
        if (used)
            out[used++] = ' ';
        memcpy(out + used, dot + 1, l);
        used += l;
        out[used] = '\0';
    }
}

/* ---- config and image ---- */

static int is_str_array(const struct jv *v)
{
    if (!v || v->type != J_ARR)
        return 0;
    for (const struct jv *c = v->child; c; c = c->next)
        if (c->type != J_STR)
            return 0;
    return 1;
}

static int is_str_object(const struct jv *v)
{
    if (!v || v->type != J_OBJ)
        return 0;
    for (const struct jv *c = v->child; c; c = c->next)
        if (c->type != J_STR || !c->key[0] || strchr(c->key, '='))
            return 0;
    return 1;
}

static int parse_cidr(const char *s, struct in_addr *addr, int *prefix)
{
    char buf[32];
    const char *slash = strchr(s, '/');
    size_t l = slash ? (size_t)(slash - s) : strlen(s);
    if (l >= sizeof buf)
        return -1;
    memcpy(buf, s, l);
    buf[l] = '\0';
    if (inet_pton(AF_INET, buf, addr) != 1)
        return -1;
    if (!slash) {
        *prefix = 24;
        return 0;
    }
    char *end;
    long p = strtol(slash + 1, &end, 10);
    if (!slash[1] || *end || p < 0 || p > 32)
        return -1;
    *prefix = (int)p;
    return 0;
}

/* Optional member: NULL if absent or JSON null. */
static struct jv *opt(const struct jv *obj, const char *key)
{
    struct jv *v = json_get(obj, key);
    return v && v->type == J_NULL ? NULL : v;
}

static void load_config(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->name = "uniklab";
    cfg->clock_rtc = 1;
    if (!cmdline)
        return;
    const char *pos = cmdline, *val = NULL;
    char word[2048];
    char *found = NULL;
    while (next_word(&pos, word, sizeof word)) {
        if (strncmp(word, CONFIG_KEY, strlen(CONFIG_KEY)) == 0) {
            free(found); /* last one wins, as for kernel parameters */
            found = strdup(word + strlen(CONFIG_KEY));
        }
    }
    if (!found) {
        say("no %s on the kernel command line, using defaults", "uniklab.config");
        return;
    }
    val = found;
    size_t jlen;
    char *json = b64_decode(val, strlen(val), &jlen);
    if (!json)
        fatal("bad config: uniklab.config is not valid base64url");
    char err[128] = "";
    struct jv *doc = json_parse(json, jlen, err, sizeof err);
    if (!doc)
        fatal("bad config: invalid JSON: %s", err);
    if (doc->type != J_OBJ)
        fatal("bad config: not a JSON object");
    struct jv *v = opt(doc, "v");
    if (v && !(v->type == J_NUM && v->is_int && v->num == 1))
        fatal("bad config: unsupported version (expected \"v\":1)");
    if ((v = opt(doc, "name"))) {
        if (v->type != J_STR)
            fatal("bad config: \"name\" must be a string");
        if (v->len)
            cfg->name = v->str;
    }
    if ((v = opt(doc, "args")) && !is_str_array(v))
        fatal("bad config: \"args\" must be an array of strings");
    cfg->args = v;
    if ((v = opt(doc, "env")) && !is_str_object(v))
        fatal("bad config: \"env\" must be an object of strings with valid names");
    cfg->env = v;
    if ((v = opt(doc, "dns")) && !is_str_array(v))
        fatal("bad config: \"dns\" must be an array of strings");
    cfg->dns = v;
    if ((v = opt(doc, "clock"))) {
        if (v->type == J_STR && strcmp(v->str, "rtc") == 0)
            cfg->clock_rtc = 1;
        else if (v->type == J_STR && strcmp(v->str, "none") == 0)
            cfg->clock_rtc = 0;
        else
            fatal("bad config: \"clock\" must be \"rtc\" or \"none\"");
    }
    if ((v = opt(doc, "timesrc")) && v->type != J_NULL) {
        if (v->type != J_STR)
            fatal("bad config: \"timesrc\" must be a string \"IP:PORT\"");
        cfg->timesrc = v->str;
    }
    if ((v = opt(doc, "net"))) {
        if (v->type != J_ARR)
            fatal("bad config: \"net\" must be an array");
        if (json_count(v) > MAX_NETS)
            fatal("bad config: at most %d network interfaces", MAX_NETS);
        for (struct jv *n = v->child; n; n = n->next) {
            struct nic *nic = &cfg->nets[cfg->nnets];
            int i = cfg->nnets++;
            if (n->type != J_OBJ)
                fatal("bad config: net[%d] must be an object", i);
            struct jv *mac = opt(n, "mac"), *dhcp = opt(n, "dhcp"), *addr = opt(n, "addr"),
                      *gw = opt(n, "gw");
            if (!mac || mac->type != J_STR || parse_mac(mac->str, nic->mac))
                fatal("bad config: net[%d].mac must be a MAC address", i);
            snprintf(nic->mac_str, sizeof nic->mac_str, "%02x:%02x:%02x:%02x:%02x:%02x",
                     nic->mac[0], nic->mac[1], nic->mac[2], nic->mac[3], nic->mac[4], nic->mac[5]);
            if (dhcp && dhcp->type != J_BOOL)
                fatal("bad config: net[%d].dhcp must be a boolean", i);
            nic->dhcp = dhcp ? dhcp->b : 1;
            if (addr && (addr->type != J_STR || parse_cidr(addr->str, &nic->addr, &nic->prefix)))
                fatal("bad config: net[%d].addr must be an IPv4 CIDR", i);
            if (gw && (gw->type != J_STR || inet_pton(AF_INET, gw->str, &nic->gw) != 1))
                fatal("bad config: net[%d].gw must be an IPv4 address", i);
            if (!nic->dhcp && !addr)
                fatal("bad config: net[%d] is static but has no addr", i);
        }
    }
    char cerr[128];
    if (chan_config(opt(doc, "channels"), cfg->chans, &cfg->nchans, cerr, sizeof cerr))
        fatal("bad config: %s", cerr);
    free(json);
    free(found);
    /* doc is kept: cfg points into it for the life of init. */
}

static void load_image(struct image *img)
{
    memset(img, 0, sizeof *img);
    size_t len;
    char *text = read_file(IMAGE_JSON, 1 << 20, &len);
    if (!text)
        fatal("cannot read %s: %s", IMAGE_JSON, strerror(errno));
    char err[128] = "";
    struct jv *doc = json_parse(text, len, err, sizeof err);
    free(text);
    if (!doc || doc->type != J_OBJ)
        fatal("bad %s: %s", IMAGE_JSON, doc ? "not a JSON object" : err);
    img->entrypoint = opt(doc, "entrypoint");
    if (!is_str_array(img->entrypoint) || !img->entrypoint->child || !img->entrypoint->child->len)
        fatal("bad %s: \"entrypoint\" must be a non-empty array of strings", IMAGE_JSON);
    if ((img->env = opt(doc, "env")) && !is_str_object(img->env))
        fatal("bad %s: \"env\" must be an object of strings", IMAGE_JSON);
    struct jv *w = opt(doc, "workdir");
    if (w && w->type != J_STR)
        fatal("bad %s: \"workdir\" must be a string", IMAGE_JSON);
    img->workdir = w && w->len ? w->str : "/";
    if ((img->modules = opt(doc, "modules")) && !is_str_array(img->modules))
        fatal("bad %s: \"modules\" must be an array of strings", IMAGE_JSON);
    if ((img->tmpfs = opt(doc, "tmpfs")) && !is_str_array(img->tmpfs))
        fatal("bad %s: \"tmpfs\" must be an array of strings", IMAGE_JSON);
}

/* A tmpfs over each directory the app writes in, keeping the directory's mode and owner
 * (the root filesystem is read-only). */
static void mount_writable(const struct jv *dirs)
{
    for (const struct jv *d = dirs ? dirs->child : NULL; d; d = d->next) {
        struct stat st;
        char opts[64] = "mode=0755";
        if (stat(d->str, &st) == 0)
            snprintf(opts, sizeof opts, "mode=%04o,uid=%u,gid=%u", (unsigned)(st.st_mode & 07777),
                     (unsigned)st.st_uid, (unsigned)st.st_gid);
        if (mount("tmpfs", d->str, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
            say("warning: mount tmpfs on %s: %s", d->str, strerror(errno));
    }
}

/* ---- modules ---- */

static void load_modules(const struct jv *mods)
{
    if (!mods || !mods->child)
        return;
    long long t0 = mono_ms();
    int n = 0;
    for (const struct jv *m = mods->child; m; m = m->next) {
        const char *base = strrchr(m->str, '/');
        base = base ? base + 1 : m->str;
        char name[256];
        snprintf(name, sizeof name, "%s", base);
        char *ko = strstr(name, ".ko");
        if (ko)
            *ko = '\0';
        normalize_modname(name);
        char params[1024];
        module_params(name, params, sizeof params);
        int fd = open(m->str, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            say("warning: module %s: %s", m->str, strerror(errno));
            continue;
        }
        if (syscall(SYS_finit_module, fd, params, 0) < 0 && errno != EEXIST)
            say("warning: module %s%s%s: %s", name, params[0] ? " " : "", params, strerror(errno));
        else
            n++;
        close(fd);
    }
    say("loaded %d modules in %lld ms", n, mono_ms() - t0);
}

/* ---- clock ---- */

static void set_clock_from_rtc(void)
{
    int fd = open("/dev/rtc0", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        say("warning: no /dev/rtc0 (%s); clock left as the kernel set it", strerror(errno));
        return;
    }
    struct rtc_time_uapi tm0, tm;
    long long t0 = mono_ms();
    if (ioctl(fd, RTC_RD_TIME, &tm0) < 0) {
        say("warning: reading the RTC: %s; clock left as the kernel set it", strerror(errno));
        close(fd);
        return;
    }
    int ticked = 0;
    struct timespec at; /* CLOCK_MONOTONIC when the tick was seen */
    if (ioctl(fd, RTC_UIE_ON, 0) == 0) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        int pr;
        do
            pr = poll(&pfd, 1, 1500);
        while (pr < 0 && errno == EINTR);
        clock_gettime(CLOCK_MONOTONIC, &at);
        if (pr > 0) {
            unsigned long data;
            if (read(fd, &data, sizeof data) == (ssize_t)sizeof data)
                ticked = 1;
        }
        ioctl(fd, RTC_UIE_OFF, 0);
        if (ticked && ioctl(fd, RTC_RD_TIME, &tm) < 0)
            ticked = 0;
    }
    if (!ticked) {
        /* No update interrupt: poll the seconds register, as hwclock --directisa does. */
        for (;;) {
            if (ioctl(fd, RTC_RD_TIME, &tm) < 0)
                break;
            clock_gettime(CLOCK_MONOTONIC, &at);
            if (tm.tm_sec != tm0.tm_sec) {
                ticked = 1;
                break;
            }
            if (mono_ms() - t0 > 1500)
                break;
            struct timespec ms = { 0, 1000000L };
            nanosleep(&ms, NULL);
        }
    }
    close(fd);
    if (!ticked) {
        say("warning: the RTC did not tick within 1.5 s; clock left as the kernel set it");
        return;
    }
    struct tm t;
    memset(&t, 0, sizeof t);
    t.tm_sec = tm.tm_sec;
    t.tm_min = tm.tm_min;
    t.tm_hour = tm.tm_hour;
    t.tm_mday = tm.tm_mday;
    t.tm_mon = tm.tm_mon;
    t.tm_year = tm.tm_year;
    time_t secs = timegm(&t);
    if (secs == (time_t)-1) {
        say("warning: the RTC holds an invalid time; clock left as the kernel set it");
        return;
    }
    /* Add the time spent since the tick was seen, so the setting is exact. */
    struct timespec now, set;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long since = (long long)(now.tv_sec - at.tv_sec) * 1000000000LL + (now.tv_nsec - at.tv_nsec);
    if (since < 0)
        since = 0;
    set.tv_sec = secs + (time_t)(since / 1000000000LL);
    set.tv_nsec = (long)(since % 1000000000LL);
    if (clock_settime(CLOCK_REALTIME, &set) < 0) {
        say("warning: setting the clock: %s", strerror(errno));
        return;
    }
    say("clock set from rtc (waited %lld ms)", mono_ms() - t0);
}

/* ---- network ---- */

/* One exchange with the host clock service: connect, read "SECONDS.NANOS\n".
 * Returns 0 and the host time at the exchange's monotonic midpoint. */
static int host_time_once(const struct sockaddr_in *sa, struct timespec *host,
                          struct timespec *mid, long long *rtt_us)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timespec t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int rc = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
    if (rc < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    char buf[64];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 1000) <= 0)
            break;
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        if (memchr(buf, '\n', got))
            break;
    }
    clock_gettime(CLOCK_MONOTONIC, &t2);
    close(fd);
    buf[got] = 0;
    char *dot = strchr(buf, '.');
    if (!got || !dot)
        return -1;
    char *end;
    long long sec = strtoll(buf, &end, 10);
    if (end != dot || sec <= 0)
        return -1;
    long long nsec = strtoll(dot + 1, &end, 10);
    if (end == dot + 1 || nsec < 0 || nsec > 999999999)
        return -1;
    host->tv_sec = (time_t)sec;
    host->tv_nsec = (long)nsec;
    long long a = (long long)t1.tv_sec * 1000000000LL + t1.tv_nsec;
    long long b = (long long)t2.tv_sec * 1000000000LL + t2.tv_nsec;
    long long m = a + (b - a) / 2;
    mid->tv_sec = (time_t)(m / 1000000000LL);
    mid->tv_nsec = (long)(m % 1000000000LL);
    *rtt_us = (b - a) / 1000;
    return 0;
}

/* The emulated RTC ticks with a phase set when QEMU started, so it can be up to a second
 * off; a host clock service read over the network, corrected by half the round trip,
 * is good to a few milliseconds.  Best of five exchanges (shortest round trip). */
static int set_clock_from_host(const char *spec)
{
    char ip[32];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof ip)
        return -1;
    memcpy(ip, spec, (size_t)(colon - spec));
    ip[colon - spec] = 0;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    long port = strtol(colon + 1, NULL, 10);
    if (port <= 0 || port > 65535 || inet_pton(AF_INET, ip, &sa.sin_addr) != 1)
        return -1;
    sa.sin_port = htons((uint16_t)port);
    struct timespec best_host = {0}, best_mid = {0};
    long long best_rtt = -1;
    /* Each exchange costs a process start on the host (~10-20 ms); one whose round trip
     * bounds the error to 5 ms is good enough, so stop there. */
    for (int i = 0; i < 5 && !(best_rtt >= 0 && best_rtt <= 10000); i++) {
        struct timespec host, mid;
        long long rtt;
        if (host_time_once(&sa, &host, &mid, &rtt) == 0 && (best_rtt < 0 || rtt < best_rtt)) {
            best_host = host;
            best_mid = mid;
            best_rtt = rtt;
        }
    }
    if (best_rtt < 0)
        return -1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long since = ((long long)now.tv_sec - best_mid.tv_sec) * 1000000000LL +
                      (now.tv_nsec - best_mid.tv_nsec);
    long long t = (long long)best_host.tv_sec * 1000000000LL + best_host.tv_nsec + since;
    struct timespec set = {.tv_sec = (time_t)(t / 1000000000LL),
                           .tv_nsec = (long)(t % 1000000000LL)};
    if (clock_settime(CLOCK_REALTIME, &set) < 0)
        return -1;
    say("clock set from host %s (rtt %lld us)", spec, best_rtt);
    return 0;
}

static void write_resolv_conf(const struct config *cfg, const struct in_addr *dns, int ndns)
{
    char buf[1024];
    size_t n = 0;
    const char *seen[32];
    int nseen = 0;
    char tmp[MAX_NETS * MAX_DNS][INET_ADDRSTRLEN];
    int ntmp = 0;
    if (cfg->dns)
        for (const struct jv *d = cfg->dns->child; d && nseen < 32; d = d->next)
            seen[nseen++] = d->str;
    for (int i = 0; i < ndns && nseen < 32 && ntmp < MAX_NETS * MAX_DNS; i++) {
        inet_ntop(AF_INET, &dns[i], tmp[ntmp], INET_ADDRSTRLEN);
        seen[nseen++] = tmp[ntmp++];
    }
    for (int i = 0; i < nseen; i++) {
        int dup = 0;
        for (int j = 0; j < i; j++)
            if (strcmp(seen[i], seen[j]) == 0)
                dup = 1;
        if (dup || strchr(seen[i], '\n'))
            continue;
        int w = snprintf(buf + n, sizeof buf - n, "nameserver %s\n", seen[i]);
        if (w < 0 || (size_t)w >= sizeof buf - n)
            break;
        n += (size_t)w;
    }
    if (!n)
        return;
    mkdir("/etc", 0755);
    int fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, buf, n) != (ssize_t)n)
        say("warning: writing /etc/resolv.conf: %s", strerror(errno));
    if (fd >= 0)
        close(fd);
}

static void log_net(const char *ifname, const struct nic *nic, const struct lease *l)
{
    char a[INET_ADDRSTRLEN], g[INET_ADDRSTRLEN], m[18];
    inet_ntop(AF_INET, &l->addr, a, sizeof a);
    if (l->gw.s_addr)
        inet_ntop(AF_INET, &l->gw, g, sizeof g);
    else
        strcpy(g, "none");
    uint8_t mac[6];
    if (net_mac_of(ifname, mac)) /* the MAC it has now: a clone's may not be the config's */
        memcpy(mac, nic->mac, 6);
    snprintf(m, sizeof m, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3],
             mac[4], mac[5]);
    say("net %s %s %s/%d via %s gw %s", ifname, m, a, l->prefix, nic->dhcp ? "dhcp" : "static",
        g);
}

static void setup_network(const struct config *cfg)
{
    int rc = net_lo_up();
    if (rc)
        say("warning: bringing lo up: %s", strerror(-rc));
    struct in_addr dns[MAX_NETS * MAX_DNS];
    int ndns = 0;
    for (int i = 0; i < cfg->nnets; i++) {
        const struct nic *nic = &cfg->nets[i];
        char ifname[IFNAMSIZ], err[160];
        if (net_find_by_mac(nic->mac, ifname, 5000))
            fatal("no network interface with MAC %s appeared within 5 s", nic->mac_str);
        if ((rc = net_if_up(ifname)))
            fatal("bringing %s up: %s", ifname, strerror(-rc));
        struct lease l;
        memset(&l, 0, sizeof l);
        if (nic->dhcp) {
            struct dhcp_client *c = &dhcp[ndhcp];
            if (dhcp_acquire(c, ifname, nic->mac, cfg->name, 10000, err, sizeof err))
                fatal("dhcp on %s (%s): %s", ifname, nic->mac_str, err);
            dhcp_nic[ndhcp++] = nic;
            l = c->l;
            for (int k = 0; k < l.ndns && ndns < MAX_NETS * MAX_DNS; k++)
                dns[ndns++] = l.dns[k];
        } else {
            l.addr = nic->addr;
            l.prefix = nic->prefix;
            l.gw = nic->gw;
        }
        if (net_apply(ifname, &l, err, sizeof err))
            fatal("configuring %s: %s", ifname, err);
        log_net(ifname, nic, &l);
    }
    write_resolv_conf(cfg, dns, ndns);
}

/* A guest may outlive its lease: renew it, or give the address up when it is lost (another
 * guest may get it) and ask again.  resolv.conf stays as written at boot. */
static void keep_leases(void)
{
    for (int i = 0; i < ndhcp; i++) {
        struct dhcp_client *c = &dhcp[i];
        char a[INET_ADDRSTRLEN], err[160];
        inet_ntop(AF_INET, &c->l.addr, a, sizeof a);
        switch (dhcp_step(c)) {
        case DHCP_RENEWED:
            say("net %s lease %s renewed for %u s", c->ifname, a, c->l.lease_s);
            break;
        case DHCP_LOST:
            say("net %s lease %s %s: address removed, rediscovering", c->ifname, a, c->why);
            break;
        case DHCP_BOUND:
            if (net_apply(c->ifname, &c->l, err, sizeof err))
                say("warning: configuring %s: %s", c->ifname, err);
            log_net(c->ifname, dhcp_nic[i], &c->l);
            break;
        default:
            break;
        }
    }
}

/* A clone restored from a template wakes with the template's leases, and on Xen with NICs
 * of its own MACs: a NIC whose MAC changed gives the template's address up and asks for
 * one of its own.  Looked at when the host speaks (its "restored" line follows a restore). */
static void follow_moved_nics(void)
{
    for (int i = 0; i < ndhcp; i++) {
        struct dhcp_client *c = &dhcp[i];
        uint8_t mac[6];
        if (net_mac_of(c->ifname, mac) || memcmp(mac, c->mac, 6) == 0)
            continue;
        char a[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &c->l.addr, a, sizeof a);
        say("net %s has MAC %02x:%02x:%02x:%02x:%02x:%02x now: lease %s given up, "
            "rediscovering", c->ifname, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], a);
        dhcp_moved(c, mac);
    }
}

/* ---- the app ---- */

static char **build_env(const struct image *img, const struct config *cfg)
{
    size_t cap = json_count(img->env) + json_count(cfg->env) + 2, n = 0;
    char **env = calloc(cap, sizeof *env);
    if (!env)
        fatal("out of memory");
    const struct jv *srcs[2] = { img->env, cfg->env };
    for (int s = 0; s < 2; s++) {
        for (const struct jv *e = srcs[s] ? srcs[s]->child : NULL; e; e = e->next) {
            size_t kl = strlen(e->key);
            char *kv = malloc(kl + 1 + e->len + 1);
            if (!kv)
                fatal("out of memory");
            memcpy(kv, e->key, kl);
            kv[kl] = '=';
            memcpy(kv + kl + 1, e->str, e->len + 1);
            size_t i;
            for (i = 0; i < n; i++)
                if (strncmp(env[i], kv, kl + 1) == 0)
                    break;
            if (i < n) {
                free(env[i]);
                env[i] = kv;
            } else {
                env[n++] = kv;
            }
        }
    }
    size_t i;
    for (i = 0; i < n; i++)
        if (strncmp(env[i], "PATH=", 5) == 0)
            break;
    if (i == n)
        env[n++] = (char *)DEFAULT_PATH;
    env[n] = NULL;
    return env;
}

static char **build_argv(const struct image *img, const struct config *cfg)
{
    size_t n = json_count(img->entrypoint) + json_count(cfg->args), i = 0;
    char **argv = calloc(n + 1, sizeof *argv);
    if (!argv)
        fatal("out of memory");
    for (const struct jv *a = img->entrypoint->child; a; a = a->next)
        argv[i++] = a->str;
    for (const struct jv *a = cfg->args ? cfg->args->child : NULL; a; a = a->next)
        argv[i++] = a->str;
    argv[i] = NULL;
    return argv;
}

/* execve, searching PATH (from the app's environment) when argv[0] has no slash. */
static void exec_app(char **argv, char **envp)
{
    if (strchr(argv[0], '/')) {
        execve(argv[0], argv, envp);
        return;
    }
    const char *path = "/bin:/usr/bin:/sbin";
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            path = *e + 5;
    int saved = ENOENT;
    while (*path) {
        const char *colon = strchrnul(path, ':');
        char full[4096];
        int l = snprintf(full, sizeof full, "%.*s/%s", (int)(colon - path), path, argv[0]);
        if (l > 0 && (size_t)l < sizeof full) {
            execve(full, argv, envp);
            if (errno != ENOENT)
                saved = errno;
        }
        path = *colon ? colon + 1 : colon;
    }
    errno = saved;
}

static void log_exec_line(char **argv)
{
    char line[900];
    size_t n = 0;
    for (char **a = argv; *a && n < sizeof line - 1; a++) {
        int w = snprintf(line + n, sizeof line - n, "%s%s", a == argv ? "" : " ", *a);
        if (w < 0)
            break;
        n += (size_t)w;
        if (n >= sizeof line) {
            n = sizeof line - 1;
            break;
        }
    }
    line[n] = '\0';
    say("exec %s", line);
}

static void log_uptime(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    say("ready-to-exec uptime=%ld.%03ld", (long)ts.tv_sec, ts.tv_nsec / 1000000L);
}

/* Where this guest reads the host's clock (the config's timesrc), or NULL. */
static const char *host_clock;

/* A clone's first words from the host: its clock is its template's, minutes or days old.
 * The line's time is good to the console's latency; the time service, if any, refines it
 * (its round trip measured). */
/* How far past the host's "restored" line a clone's clock may be and still be kept. */
#define RESTORED_AHEAD_MAX_MS 2000LL

static void restored(const struct ctl_cmd *cmd)
{
    /* The host wrote its time before this line arrived: a lower bound of the time now.
     * A clock behind it is the template's (QEMU keeps the saved clock): set it forward.
     * A clock at or past it, and not far past, is already right (Xen's PV clock follows
     * the hypervisor's across a restore): setting it back to the line would make it late
     * by the line's delivery time. */
    struct timespec t = {.tv_sec = (time_t)cmd->sec, .tv_nsec = cmd->nsec}, now;
    clock_gettime(CLOCK_REALTIME, &now);
    long long ahead_ms = ((long long)now.tv_sec - (long long)t.tv_sec) * 1000LL +
                         (now.tv_nsec - t.tv_nsec) / 1000000L;
    if (ahead_ms >= 0 && ahead_ms <= RESTORED_AHEAD_MAX_MS) {
        say("restored: clock kept (%lld ms past the host's line)", ahead_ms);
    } else {
        if (clock_settime(CLOCK_REALTIME, &t) < 0)
            say("warning: restored: clock_settime: %s", strerror(errno));
        say("restored: clock set from the host's line");
    }
    if (host_clock && set_clock_from_host(host_clock) < 0)
        say("warning: no answer from the host clock at %s", host_clock);
}

/* A control line from the host: "stop" sends the app SIGTERM and arms the SIGKILL;
 * "restored" resets the clock of a clone. */
static void control(const struct ctl_cmd *cmd, pid_t app, long long *kill_at)
{
    if (cmd->kind == CTL_RESTORED) {
        restored(cmd);
    } else if (cmd->kind == CTL_STOP) {
        say("stop requested: SIGTERM to the app, SIGKILL in %d s", cmd->seconds);
        kill(app, SIGTERM);
        long long at = mono_ms() + 1000LL * cmd->seconds;
        if (*kill_at == 0 || at < *kill_at)
            *kill_at = at;
    } else if (cmd->kind == CTL_UNKNOWN) {
        say("warning: unknown control line ignored");
    }
}

static int run_app(const struct image *img, const struct config *cfg)
{
    char **argv = build_argv(img, cfg);
    char **envp = build_env(img, cfg);
    log_uptime();
    log_exec_line(argv);

    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    chan_start(cfg->chans, cfg->nchans); /* a helper process; reaped below like any child */
    pid_t pid = fork();
    if (pid < 0)
        fatal("fork: %s", strerror(errno));
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setsid();
        if (chdir(img->workdir) < 0) {
            say("fatal: chdir %s: %s", img->workdir, strerror(errno));
            _exit(126);
        }
        exec_app(argv, envp);
        say("fatal: exec %s: %s", argv[0], strerror(errno));
        _exit(127);
    }

    /* PID 1: signals (all blocked) arrive on a signalfd; reap everyone, forward TERM/INT/
     * HUP/QUIT to the app, and wake for the DHCP clients' replies and timers and for
     * control lines on the console (an open of its own, non-blocking: the app's stdin
     * stays as it was). */
    int sfd = signalfd(-1, &all, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0)
        fatal("signalfd: %s", strerror(errno));
    int cfd = open("/dev/console", O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    struct ctl_reader ctl = { .len = 0 };
    long long kill_at = 0; /* when a stop's SIGKILL is due; 0: no stop asked */
    for (;;) {
        struct pollfd pfd[2 + MAX_NETS];
        long long next = kill_at ? kill_at : LLONG_MAX;
        pfd[0] = (struct pollfd){ sfd, POLLIN, 0 };
        pfd[1] = (struct pollfd){ cfd, POLLIN, 0 }; /* -1 (no console): ignored */
        for (int i = 0; i < ndhcp; i++) {
            pfd[2 + i] = (struct pollfd){ dhcp[i].fd, POLLIN, 0 }; /* -1: ignored */
            if (dhcp[i].next < next)
                next = dhcp[i].next;
        }
        long long wait = next == LLONG_MAX ? -1 : next - mono_ms();
        if (wait > INT_MAX)
            wait = INT_MAX;
        poll(pfd, 2 + (nfds_t)ndhcp, next == LLONG_MAX ? -1 : wait < 0 ? 0 : (int)wait);
        keep_leases();
        if (cfd >= 0 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            char buf[CTL_LINE_MAX];
            ssize_t n = read(cfd, buf, sizeof buf);
            struct ctl_cmd cmd;
            if (n > 0) {
                if (ctl_feed(&ctl, buf, (size_t)n, &cmd) != CTL_NONE) {
                    follow_moved_nics();
                    control(&cmd, pid, &kill_at);
                }
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                close(cfd); /* a hung-up console: stop watching it rather than spin */
                cfd = -1;
            }
        }
        if (kill_at && mono_ms() >= kill_at) {
            say("stop: the app did not end in time: SIGKILL");
            kill(pid, SIGKILL);
            kill_at = 0;
        }
        struct signalfd_siginfo si;
        while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
            int sig = (int)si.ssi_signo;
            if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP || sig == SIGQUIT) {
                kill(pid, sig);
                continue;
            }
            if (sig != SIGCHLD)
                continue;
            for (;;) {
                int status;
                pid_t r = waitpid(-1, &status, WNOHANG);
                if (r <= 0)
                    break;
                if (r != pid)
                    continue;
                if (WIFEXITED(status))
                    say("app exited status %d", WEXITSTATUS(status));
                else if (WIFSIGNALED(status))
                    say("app killed by signal %d", WTERMSIG(status));
                close(sfd);
                if (cfd >= 0)
                    close(cfd);
                return status;
            }
        }
    }
}

int main(int argc, char **argv)
{
    const char *self = argc > 0 ? strrchr(argv[0], '/') : NULL;
    self = self ? self + 1 : argc > 0 ? argv[0] : "";
    if (getpid() != 1 && strcmp(self, "poweroff") == 0) {
        /* The guest kernel's orderly poweroff (Xen's `xl shutdown`): PID 1 forwards
         * SIGTERM to the app and powers off when the app has ended. */
        return kill(1, SIGTERM) == 0 ? 0 : 1;
    }
    if (getpid() != 1)
        say("warning: not running as PID 1");
    early_mounts();
    say("start");
    umask(022);
    cmdline = read_file("/proc/cmdline", 65536, NULL);
    if (!cmdline)
        say("warning: cannot read /proc/cmdline: %s", strerror(errno));

    struct config cfg;
    struct image img;
    load_config(&cfg);
    load_image(&img);

    /* The kernel caps hostnames at 64 bytes; a longer name is cut, not refused. */
    size_t hl = strlen(cfg.name);
    if (sethostname(cfg.name, hl > 64 ? 64 : hl) < 0)
        say("warning: sethostname: %s", strerror(errno));

    load_modules(img.modules);
    mount_writable(img.tmpfs);
    if (cfg.clock_rtc && !cfg.timesrc)
        set_clock_from_rtc();
    setup_network(&cfg);
    host_clock = cfg.timesrc;
    if (cfg.timesrc && set_clock_from_host(cfg.timesrc) < 0) {
        say("warning: no answer from the host clock at %s; using the RTC", cfg.timesrc);
        if (cfg.clock_rtc)
            set_clock_from_rtc();
    }
    run_app(&img, &cfg);
    /* Rebooting while a NIC still has traffic in flight (the app's sockets closing) has
     * been seen to soft-lock the kernel in ksoftirqd under TCG; end everything and quiesce
     * the NICs first. */
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    net_all_down();
    power_off();
}
