/* Prints its argv and environment to stdout (the guest's console), each string hex-encoded
 * on its own line so that no byte can be lost or changed on the way, then exits 0. */
#include <stdio.h>

extern char **environ;

static void line(const char *tag, const char *s)
{
    printf("%s ", tag);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) printf("%02x", *p);
    printf(" .\n");
}

int main(int argc, char **argv)
{
    printf("VERBATIM-BEGIN %d\n", argc);
    for (int i = 1; i < argc; i++) line("VERBATIM-ARG", argv[i]);
    for (char **e = environ; *e; e++) line("VERBATIM-ENV", *e);
    printf("VERBATIM-END\n");
    fflush(stdout);
    return 0;
}
