/* log.c - lines on a server's log (--log): each one written whole, after the
 * user's prefix (--log ...,prefix=), as swtpm writes its lines. */
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* A line longer than this is cut: the log is for humans, and one write()
 * keeps lines of two threads (the TPM thread, the control thread) apart. */
#define NV_LOG_LINE_MAX 4096

void nv_log(int fd, const char *prefix, const char *fmt, ...)
{
    char line[NV_LOG_LINE_MAX];
    size_t cap = sizeof(line) - 1; /* room for the newline */
    if (fd < 0)
        return;
    int n = snprintf(line, cap, "%s", prefix ? prefix : "");
    n = n < 0 ? 0 : n;
    va_list ap;
    va_start(ap, fmt);
    int m = (size_t)n < cap ? vsnprintf(line + n, cap - (size_t)n, fmt, ap) : 0;
    va_end(ap);
    n += m > 0 ? m : 0;
    if ((size_t)n >= cap) /* cut: what fitted, without the terminating NUL */
        n = (int)cap - 1;
    line[n++] = '\n';
    for (size_t off = 0; off < (size_t)n;) { /* a log is a file or a pipe: rarely short */
        ssize_t w = write(fd, line + off, (size_t)n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}
