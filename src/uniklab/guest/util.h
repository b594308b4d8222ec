/* Small helpers shared by the guest init: console logging and file reading. */
#ifndef UNIKLAB_UTIL_H
#define UNIKLAB_UTIL_H

#include <stddef.h>

#define LOG_PREFIX "uniklab-init: "

/* One line to the console, prefixed; never buffered (we are PID 1 and may die). */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print "fatal: ..." and end the VM; never returns. */
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* Sync and reboot (the VM runs with -no-reboot / on_reboot=destroy, so this ends it). */
void power_off(void) __attribute__((noreturn));

/* Read a whole (small) file into a NUL-terminated heap buffer; NULL on error (errno set). */
char *read_file(const char *path, size_t max, size_t *len_out);
/* Milliseconds on CLOCK_MONOTONIC. */
long long mono_ms(void);

#endif
