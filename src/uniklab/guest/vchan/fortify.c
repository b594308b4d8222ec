/* Debian's static Xen libraries are built by glibc with _FORTIFY_SOURCE: their objects
 * call glibc's checked variants of a few functions, which musl lacks.  These forward to
 * the plain ones (the checks are glibc's hardening, not the libraries' logic). */
#ifndef __GLIBC__
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

int __snprintf_chk(char *s, size_t n, int flag, size_t slen, const char *fmt, ...)
{
    (void)flag, (void)slen;
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(s, n, fmt, ap);
    va_end(ap);
    return r;
}

int __sprintf_chk(char *s, int flag, size_t slen, const char *fmt, ...)
{
    (void)flag;
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(s, slen, fmt, ap);
    va_end(ap);
    return r;
}

int __vfprintf_chk(FILE *f, int flag, const char *fmt, va_list ap)
{
    (void)flag;
    return vfprintf(f, fmt, ap);
}

int __fprintf_chk(FILE *f, int flag, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = __vfprintf_chk(f, flag, fmt, ap);
    va_end(ap);
    return r;
}

int __open_2(const char *path, int flags)
{
    return open(path, flags);
}
#endif
