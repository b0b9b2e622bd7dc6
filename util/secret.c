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

void *nv_secret_alloc(size_t size)
{
    void *p = nv_pages_alloc(size);
    if (!p)
        return NULL;
    if (madvise(p, nv_page_span(size), MADV_DONTDUMP) < 0) { /* the point of these pages */
        int e = errno;
        nv_pages_free(p, size);
        errno = e;
        return NULL;
    }
    nv_secret_lock(p, size);
    return p; /* zeroed: a fresh anonymous mapping */
}

void nv_secret_lock(void *p, size_t size)
{
    if (p)
        (void)mlock(p, nv_page_span(size));
}

void nv_secret_free(void *p, size_t size)
{
    if (!p)
        return;
    explicit_bzero(p, size);
    munlock(p, nv_page_span(size));
    nv_pages_free(p, size);
}

void nv_wipe(void *p, size_t len)
{
    explicit_bzero(p, len);
}
