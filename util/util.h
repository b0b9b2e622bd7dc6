/* util.h - helpers shared by every layer: the error object and strict number parsing.
 *
 * Errors travel up as a negative errno return value plus a struct nv_error whose
 * message names the file, field or offset involved, and whose status says
 * what the failure means to the user where the code that detected it knows
 * (the errno is only its cause: an EINVAL from deep down is not a bad command
 * line, an ENOSPC not a damaged image). Everything here sits below
 * fdstash/ in the layer list and calls nothing of the project. */
#ifndef NVTPM_UTIL_H
#define NVTPM_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define NV_ERROR_MSG_MAX 512

/* What a failure means, apart from its errno; the CLI's exit codes follow it.
 * UNSET: the site did not know, and the errno alone is left to go by. */
enum nv_status {
    NV_STATUS_UNSET = 0,
    NV_STATUS_USAGE,        /* a bad option, value or request from the user */
    NV_STATUS_CORRUPT,      /* not an nvtpm NVRAM, damaged, blank, too small */
    NV_STATUS_KEY_MISSING,  /* encrypted, and no key was given */
    NV_STATUS_KEY_WRONG,    /* the key opens nothing */
    NV_STATUS_KEY_UNNEEDED, /* a key was given for something not encrypted */
    NV_STATUS_BUSY,         /* another process holds the image or folder */
    NV_STATUS_NOT_LOADABLE, /* the state cannot be loaded here (TPM version, libtpms) */
    NV_STATUS_IO,           /* the system failed us: I/O, a full disk, memory, permissions */
};

/* The error object. code is a negative errno (0 = no error), the cause;
 * status is the meaning, set where it is known. */
struct nv_error {
    int code;
    enum nv_status status;
    char msg[NV_ERROR_MSG_MAX];
};

#define NV_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Record an error and return it. code may be given as errno or -errno; the
 * stored and returned value is always negative. err may be NULL. The status
 * becomes UNSET: a new message is a new error. */
int nv_error_set(struct nv_error *err, int code, const char *fmt, ...) NV_PRINTF(3, 4);

/* nv_error_set with the error's meaning. */
int nv_error_set_status(struct nv_error *err, enum nv_status status, int code, const char *fmt, ...)
    NV_PRINTF(4, 5);

/* Give the error already recorded its meaning and return code (made
 * negative), as nv_error_prefix does: return nv_error_mark(err, ..., r). */
int nv_error_mark(struct nv_error *err, enum nv_status status, int code);

/* Prepend "<prefix>: " to the message already recorded and return code (made
 * negative), so callers write return nv_error_prefix(err, r, ...) and keep the
 * errno even when err is NULL. The status stays (so for nv_error_append). */
int nv_error_prefix(struct nv_error *err, int code, const char *fmt, ...) NV_PRINTF(3, 4);

/* Append " <suffix>" to the message already recorded; returns like nv_error_prefix. */
int nv_error_append(struct nv_error *err, int code, const char *fmt, ...) NV_PRINTF(3, 4);

void nv_error_clear(struct nv_error *err);

/* The status of err, or NV_STATUS_UNSET (err NULL). */
enum nv_status nv_error_status(const struct nv_error *err);

/* One line on a server's log: prefix (NULL: none; --log's prefix=, which
 * swtpm puts before each of its lines), the message, a newline, in one
 * write() so that two threads' lines do not mix. fd < 0: no log. */
void nv_log(int fd, const char *prefix, const char *fmt, ...) NV_PRINTF(3, 4);

/* Zeroed memory for key material held while the process runs: pages of its
 * own, excluded from core dumps (MADV_DONTDUMP) and locked out of swap
 * where RLIMIT_MEMLOCK allows. NULL (errno set) if the pages cannot be had.
 * A fork's child does not inherit the lock: it calls nv_secret_lock again.
 * nv_secret_free wipes (explicit_bzero) and unmaps. */
void *nv_secret_alloc(size_t size);
void nv_secret_lock(void *p, size_t size);
void nv_secret_free(void *p, size_t size);

/* pages.c: buffers of whole pages of their own, for memory a long-running
 * server holds for its life but touches only now and then (a TPM process per
 * VM: what stays resident counts hundreds of times over). Zeroed at first;
 * only the pages written become resident, and nv_pages_release gives pages
 * back (they read as zeros again) without giving up the address range.
 * nv_pages_alloc returns NULL (errno set) when no mapping can be had. */
void *nv_pages_alloc(size_t size);
/* size rounded up to whole pages (at least one): what nv_pages_alloc maps. */
size_t nv_page_span(size_t size);
void nv_pages_free(void *p, size_t size);
void nv_pages_release(void *p, size_t size);
/* Give back the calling thread's stack pages below its current frame (a
 * page of margin kept): after a deep call that will not come again soon,
 * such as the TPM's start on the main thread. glibc does the same for a
 * thread's stack when the thread ends. */
void nv_stack_release_below(void);

/* Zero memory that held a secret, in a way the compiler does not drop as a
 * dead store (explicit_bzero). */
void nv_wipe(void *p, size_t len);

/* Whether n bytes at p are all zero. memcmp of the buffer against itself
 * shifted by one byte runs at the C library's vectorised speed (a format
 * checks megabytes of a new image this way). */
static inline bool nv_all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    return n == 0 || (b[0] == 0 && memcmp(b, b + 1, n - 1) == 0);
}

/* lazy.c: a library loaded on first use. Each symbol's address goes into
 * the function pointer slot points at. Loaded once (*handle set, kept for
 * the process's life); a failure is -ENOTSUP with a message naming purpose
 * ("reading zstd-compressed clusters"), the library and what is missing, and
 * the next call tries again. Thread-safe; a caller may skip the call once
 * __atomic_load_n(handle, __ATOMIC_ACQUIRE) is set. */
struct nv_lazy_symbol {
    const char *name;
    void *slot;
};
int nv_lazy_load(const char *soname, const char *purpose, struct nv_lazy_symbol *syms, size_t n,
                 void **handle, struct nv_error *err);

/* Parse a whole string as an unsigned decimal number no greater than max.
 * No sign, no spaces, no trailing characters. Returns 0, -EINVAL or -ERANGE. */
int nv_parse_u64(const char *text, uint64_t max, uint64_t *out);

/* Overflow-checked arithmetic: true when the result did not fit. */
static inline bool nv_add_overflow_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_add_overflow(a, b, out);
}

static inline bool nv_mul_overflow_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}

/* Big-endian fields, as qcow2 headers, TPM commands and swtpm's protocol
 * carry them; byte by byte so that p needs no alignment. */
static inline uint16_t nv_be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t nv_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t nv_be64(const uint8_t *p)
{
    return (uint64_t)nv_be32(p) << 32 | nv_be32(p + 4);
}

static inline void nv_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void nv_put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static inline void nv_put_be64(uint8_t *p, uint64_t v)
{
    nv_put_be32(p, (uint32_t)(v >> 32));
    nv_put_be32(p + 4, (uint32_t)v);
}

#endif
