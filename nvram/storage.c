/* storage.c - one TPM's storage: the image (made if absent), its NVRAM, and
 * the image's ownership, handed between two processes when a VM migrates on
 * shared storage. A claim goes through the block layer's reopen, which reads
 * qcow2's metadata anew, then reads the NVRAM's superblock and every blob's
 * slots anew: another owner may have committed meanwhile, and a commit made
 * from what this process read before would build on a stale past (QEMU's
 * inactivate/invalidate_cache, SQLite's change counter). */
#include "store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CLAIM_RETRY_NS (10 * 1000000L)

struct nvram_storage {
    struct bdrv_node *bs;
    struct nvram *nv;
    bool created;
};

static int create_image(const struct nvram_storage_options *o, bool *created, struct nv_error *err)
{
    if (!o->create || strncmp(o->spec, "fd:", 3) == 0 || access(o->spec, F_OK) == 0)
        return 0;
    struct bdrv_create_opts co = {.size =
                                      o->create_size ? o->create_size : NVRAM_DEFAULT_IMAGE_SIZE,
                                  .mode = o->create_mode ? o->create_mode : 0640,
                                  .prealloc = NVRAM_MIN_DISK_SIZE};
    int r = bdrv_create("qcow2", o->spec, &co, err);
    *created = r == 0;
    return r == -EEXIST ? 0 : r; /* made meanwhile by someone else: open theirs */
}

struct nvram_storage *nvram_storage_open(const struct nvram_storage_options *opts,
                                         struct nv_error *err)
{
    struct nvram_storage *st = calloc(1, sizeof(*st));
    if (!st) {
        nv_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    if (create_image(opts, &st->created, err) == 0)
        st->bs = bdrv_open(opts->spec, BDRV_O_RDWR | BDRV_O_OWNER, opts->stash, err);
    if (!st->bs && err && err->code == -EBUSY && opts->open_unowned_if_busy) {
        nv_error_clear(err);
        st->bs = bdrv_open(opts->spec, BDRV_O_RDWR, opts->stash, err);
    }
    if (!st->bs) {
        free(st);
        return NULL;
    }
    return st;
}

int nvram_storage_open_nvram(struct nvram_storage *st, const struct nvram_options *opts,
                             struct nv_error *err)
{
    struct nvram_options o = *opts;
    o.format_blank = opts->format_blank && nvram_storage_owned(st);
    o.just_created = st->created; /* made by bdrv_create (O_EXCL), owned since */
    st->nv = nvram_open(st->bs, &o, err);
    if (!st->nv && st->created) {
        /* Made by this start and never formatted whole (a full disk): it
         * holds nothing of anyone's, and a half-made image must not stay. */
        unlink(bdrv_filename(st->bs));
        st->created = false;
    }
    return st->nv ? 0 : err ? err->code : -EIO;
}

bool nvram_storage_created(const struct nvram_storage *st)
{
    return st->created;
}

struct nvram *nvram_storage_nvram(const struct nvram_storage *st)
{
    return st->nv;
}

const char *nvram_storage_name(const struct nvram_storage *st)
{
    return bdrv_filename(st->bs);
}

bool nvram_storage_owned(const struct nvram_storage *st)
{
    return bdrv_is_owner(st->bs);
}

int nvram_storage_claim(struct nvram_storage *st, unsigned retries, struct nv_error *err)
{
    if (nvram_storage_owned(st))
        return 0;
    unsigned flags = bdrv_get_flags(st->bs);
    int r;
    for (unsigned i = 0;; i++) {
        struct nv_error attempt = {0};
        r = bdrv_reopen(st->bs, flags | BDRV_O_OWNER, &attempt);
        if (r != -EBUSY || i >= retries) {
            if (r < 0 && err)
                *err = attempt;
            break;
        }
        struct timespec pause = {0, CLAIM_RETRY_NS};
        nanosleep(&pause, NULL);
    }
    if (r == 0 && st->nv && (r = nvram_refresh(st->nv, err)) < 0)
        bdrv_reopen(st->bs, flags, NULL); /* what was read is unusable: give it back */
    return r;
}

int nvram_storage_release(struct nvram_storage *st, struct nv_error *err)
{
    if (!nvram_storage_owned(st))
        return 0;
    return bdrv_reopen(st->bs, bdrv_get_flags(st->bs) & ~(unsigned)BDRV_O_OWNER, err);
}

void nvram_storage_close(struct nvram_storage *st)
{
    if (!st)
        return;
    nvram_close(st->nv);
    bdrv_close(st->bs);
    free(st);
}
