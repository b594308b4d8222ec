/* rumprun's NetBSD 7.99 libm has llround and roundl but not C99's llroundl, which Redis
 * 7's HyperLogLog code calls (hyperloglog.c: llroundl). */
long double roundl(long double);

long long llroundl(long double x) { return (long long)roundl(x); }
