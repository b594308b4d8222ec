/* Test payload for the guest init's boot tests: reports what it was given, then (after
 * PAYLOAD_SLEEP seconds, if set) either exits with a chosen status, serves its wall-clock
 * time over TCP, or (term-init) sends SIGTERM to PID 1 and waits for it to come back, or
 * (poweroff) runs /sbin/poweroff and waits likewise, or (ignore-term) outlives SIGTERM. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static void dump_file(const char *label, const char *path)
{
    FILE *f = fopen(path, "r");
    char line[256];
    if (!f) { printf("payload: %s missing\n", label); return; }
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        printf("payload: %s %s\n", label, line);
    }
    fclose(f);
}

int main(int argc, char **argv)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    printf("payload: time %lld.%09ld\n", (long long)ts.tv_sec, ts.tv_nsec);
    for (int i = 0; i < argc; i++) printf("payload: argv[%d]=<%s>\n", i, argv[i]);
    for (char **e = environ; *e; e++) printf("payload: env <%s>\n", *e);
    char host[128] = "", cwd[256] = "";
    gethostname(host, sizeof host);
    if (!getcwd(cwd, sizeof cwd)) strcpy(cwd, "?");
    printf("payload: hostname <%s> cwd <%s> pid %d\n", host, cwd, (int)getpid());
    dump_file("resolv", "/etc/resolv.conf");
    dump_file("route", "/proc/net/route");
    fflush(stdout);
    const char *nap = getenv("PAYLOAD_SLEEP"); /* seconds to live before the mode's action */
    if (nap) sleep((unsigned)atoi(nap));
    const char *mode = getenv("PAYLOAD_MODE");
    if (mode && strcmp(mode, "term-init") == 0) {
        kill(1, SIGTERM); /* PID 1 forwards it to the app: to us */
        for (;;) pause();
    }
    if (mode && strcmp(mode, "poweroff") == 0) {
        /* What a Xen guest's kernel runs on `xl shutdown`: the init, as /sbin/poweroff. */
        if (fork() == 0) {
            execl("/sbin/poweroff", "/sbin/poweroff", (char *)NULL);
            _exit(127);
        }
        for (;;) pause();
    }
    if (mode && strcmp(mode, "ignore-term") == 0) {
        signal(SIGTERM, SIG_IGN);
        printf("payload: ignoring SIGTERM\n");
        fflush(stdout);
        for (;;) pause();
    }
    if (!mode || strcmp(mode, "serve") != 0)
        return mode ? atoi(mode) : 0;
    /* serve: each connection gets "<realtime ns>\n"; a connection sending 'q' ends us. */
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(7777) };
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 8)) { perror("payload: listen"); return 2; }
    printf("payload: listening\n");
    fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        char cmd = 0;
        if (read(c, &cmd, 1) != 1) { close(c); continue; }
        clock_gettime(CLOCK_REALTIME, &ts);
        char buf[64];
        int n = snprintf(buf, sizeof buf, "%lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
        if (write(c, buf, (size_t)n) < 0) {}
        close(c);
        if (cmd == 'q') return 0;
    }
}
