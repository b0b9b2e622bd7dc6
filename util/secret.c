/* secret.c - memory for key material that a process holds while it runs:
 * whole pages of their own, left out of core dumps (MADV_DONTDUMP, which the
 * kernel's dumps and gdb's gcore honour) and kept out of swap (mlock, best
 * effort: RLIMIT_MEMLOCK may refuse), wiped when freed; and the wipe that
 * every layer uses for key material on the stack or the heap. */
#include "util.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static size_t secret_span(size_t size)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return (size + page - 1) / page * page;
}

void *nv_secret_alloc(size_t size)
{
    size_t span = secret_span(size);
    void *p = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    if (madvise(p, span, MADV_DONTDUMP) < 0) { /* the point of these pages */
        int e = errno;
        munmap(p, span);
        errno = e;
        return NULL;
    }
    nv_secret_lock(p, size);
    return p; /* zeroed: a fresh anonymous mapping */
}

void nv_secret_lock(void *p, size_t size)
{
    if (p)
        (void)mlock(p, secret_span(size));
}

void nv_secret_free(void *p, size_t size)
{
    if (!p)
        return;
    explicit_bzero(p, size);
    munlock(p, secret_span(size));
    munmap(p, secret_span(size));
}

void nv_wipe(void *p, size_t len)
{
    explicit_bzero(p, len);
}
