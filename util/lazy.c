/* lazy.c - a shared library loaded the first time it is needed (dlopen), not
 * at start: `nvtpm socket`, one process per VM, then maps no compression or
 * JSON library it never calls (zlib and zstd only for an image someone
 * compressed with qemu-img, json-c only for a command's JSON output). */
#include "util.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;

static int resolve(void *handle, struct nv_lazy_symbol *syms, size_t n, const char **missing)
{
    for (size_t i = 0; i < n; i++) {
        void *address = dlsym(handle, syms[i].name);
        if (!address) {
            *missing = syms[i].name;
            return -ENOENT;
        }
        /* (a function pointer's bytes: POSIX gives them void *'s form) */
        memcpy(syms[i].slot, &address, sizeof(address));
    }
    return 0;
}

int nv_lazy_load(const char *soname, const char *purpose, struct nv_lazy_symbol *syms, size_t n,
                 void **handle, struct nv_error *err)
{
    pthread_mutex_lock(&load_lock);
    int r = 0;
    if (!*handle) {
        const char *missing = NULL;
        void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
        if (!h)
            r = nv_error_set(err, -ENOTSUP, "%s needs %s, which cannot be loaded: %s", purpose,
                             soname, dlerror());
        else if (resolve(h, syms, n, &missing) < 0) {
            r = nv_error_set(err, -ENOTSUP, "%s needs %s, which lacks %s", purpose, soname,
                             missing);
            dlclose(h);
        } else /* last: a caller that sees it (an acquire load) sees the symbols too */
            __atomic_store_n(handle, h, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&load_lock);
    return r;
}
