/* parse.c - strict number parsing for command-line options and protocol text. */
#include "util.h"

#include <errno.h>

int nv_parse_u64(const char *text, uint64_t max, uint64_t *out)
{
    if (!text || !*text)
        return -EINVAL;
    uint64_t value = 0;
    for (const char *p = text; *p; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        if (nv_mul_overflow_u64(value, 10, &value) ||
            nv_add_overflow_u64(value, (uint64_t)(*p - '0'), &value))
            return -ERANGE;
    }
    if (value > max)
        return -ERANGE;
    *out = value;
    return 0;
}
