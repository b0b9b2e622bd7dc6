/* error.c - the error object: a negative errno, a status and a message for humans. */
#include "util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int normalise_code(int code)
{
    if (code > 0)
        return -code;
    return code ? code : -EIO;
}

static int set_v(struct nv_error *err, enum nv_status status, int code, const char *fmt, va_list ap)
    NV_PRINTF(4, 0);

static int set_v(struct nv_error *err, enum nv_status status, int code, const char *fmt, va_list ap)
{
    code = normalise_code(code);
    if (!err)
        return code;
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    err->code = code;
    err->status = status;
    return code;
}

int nv_error_set(struct nv_error *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    code = set_v(err, NV_STATUS_UNSET, code, fmt, ap);
    va_end(ap);
    return code;
}

int nv_error_set_status(struct nv_error *err, enum nv_status status, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    code = set_v(err, status, code, fmt, ap);
    va_end(ap);
    return code;
}

int nv_error_mark(struct nv_error *err, enum nv_status status, int code)
{
    code = normalise_code(code);
    if (err)
        err->status = status;
    return code;
}

enum nv_status nv_error_status(const struct nv_error *err)
{
    return err ? err->status : NV_STATUS_UNSET;
}

int nv_error_prefix(struct nv_error *err, int code, const char *fmt, ...)
{
    code = normalise_code(code);
    if (!err)
        return code;
    char prefix[NV_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);

    /* Room for both in full; the message keeps what fits. */
    char joined[2 * NV_ERROR_MSG_MAX + 2];
    snprintf(joined, sizeof(joined), "%s: %s", prefix, err->msg);
    memcpy(err->msg, joined, sizeof(err->msg) - 1);
    err->msg[sizeof(err->msg) - 1] = '\0';
    err->code = code;
    return code;
}

int nv_error_append(struct nv_error *err, int code, const char *fmt, ...)
{
    code = normalise_code(code);
    if (!err)
        return code;
    size_t used = strlen(err->msg);
    if (used + 1 < sizeof(err->msg)) {
        err->msg[used] = ' ';
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg + used + 1, sizeof(err->msg) - used - 1, fmt, ap);
        va_end(ap);
    }
    err->code = code;
    return code;
}

void nv_error_clear(struct nv_error *err)
{
    if (err) {
        err->code = 0;
        err->status = NV_STATUS_UNSET;
        err->msg[0] = '\0';
    }
}
