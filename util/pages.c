/* pages.c - buffers made of whole anonymous pages: resident only where
 * written, and given back to the kernel when a server goes idle (see
 * util.h). A malloc'd buffer of the same size would be mapped by malloc too,
 * but with its chunk header in the first page and its data off the page
 * boundaries, so neither the release nor the page accounting line up. */
#include "util.h"

#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

size_t nv_page_span(size_t size)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return ((size ? size : 1) + page - 1) / page * page;
}

void *nv_pages_alloc(size_t size)
{
    void *p =
        mmap(NULL, nv_page_span(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void nv_pages_free(void *p, size_t size)
{
    if (p)
        munmap(p, nv_page_span(size));
}

void nv_pages_release(void *p, size_t size)
{
    /* Private anonymous pages: MADV_DONTNEED frees them at once and the next
     * touch maps a zero page; it cannot fail on a mapping of our own. */
    if (p && size)
        (void)madvise(p, nv_page_span(size), MADV_DONTNEED);
}

/* The lowest address of the calling thread's stack, found once per thread
 * (for the main thread glibc reads /proc/self/maps to find it). */
static uintptr_t stack_low(void)
{
    static __thread uintptr_t low;
    static __thread bool asked; /* (a failure is not asked again) */
    pthread_attr_t attr;
    void *addr;
    size_t size;
    if (!asked && pthread_getattr_np(pthread_self(), &attr) == 0) {
        if (pthread_attr_getstack(&attr, &addr, &size) == 0)
            low = (uintptr_t)addr;
        pthread_attr_destroy(&attr);
    }
    asked = true;
    return low;
}

/* Not inlined: the frame address must be this function's, below the
 * caller's locals. */
__attribute__((noinline)) void nv_stack_release_below(void)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), low = stack_low();
    uintptr_t here = (uintptr_t)__builtin_frame_address(0);
    uintptr_t start = (low + page - 1) & ~(page - 1);
    uintptr_t end = (here & ~(page - 1)) - page; /* the current page and one more stay */
    /* For the main thread the range may reach below what its stack ever
     * grew to: the kernel applies the advice to the mapped part and then
     * says ENOMEM, which changes nothing here. */
    if (low && end > start)
        (void)madvise((void *)start, end - start, MADV_DONTNEED);
}
