/* raw.c - the raw format driver: the image is the file's bytes, nothing more.
 * Requests must lie inside the image; bdrv_truncate changes its size. */
#include "internal.h"

#include <errno.h>

struct raw_state {
    uint64_t length; /* cached; refreshed before refusing a request past it */
};

static int refresh_length(struct bdrv_node *bs, struct nv_error *err)
{
    int64_t len = bdrv_getlength(bs->file, err);
    if (len < 0)
        return (int)len;
    ((struct raw_state *)bs->opaque)->length = (uint64_t)len;
    return 0;
}

static int raw_open(struct bdrv_node *bs, const char *spec, struct nv_error *err)
{
    (void)spec;
    return refresh_length(bs, err);
}

static void raw_close(struct bdrv_node *bs)
{
    (void)bs;
}

static int check_range(struct bdrv_node *bs, const char *what, uint64_t offset, size_t len,
                       struct nv_error *err)
{
    struct raw_state *s = bs->opaque;
    uint64_t end;
    if (nv_add_overflow_u64(offset, len, &end))
        return nv_error_set(err, -EINVAL, "%s: %s at offset %llu overflows", bs->filename, what,
                            (unsigned long long)offset);
    if (end > s->length) {
        int r = refresh_length(bs, err);
        if (r < 0)
            return r;
    }
    if (end > s->length)
        return nv_error_set(err, -ERANGE,
                            "%s: %s of %zu bytes at offset %llu is past the end of the image "
                            "(%llu bytes)",
                            bs->filename, what, len, (unsigned long long)offset,
                            (unsigned long long)s->length);
    return 0;
}

static int raw_pread(struct bdrv_node *bs, uint64_t offset, void *buf, size_t len,
                     struct nv_error *err)
{
    int r = check_range(bs, "read", offset, len, err);
    return r < 0 ? r : bdrv_pread(bs->file, offset, buf, len, err);
}

static int raw_pwrite(struct bdrv_node *bs, uint64_t offset, const void *buf, size_t len,
                      struct nv_error *err)
{
    int r = check_range(bs, "write", offset, len, err);
    return r < 0 ? r : bdrv_pwrite(bs->file, offset, buf, len, err);
}

static int raw_flush(struct bdrv_node *bs, struct nv_error *err)
{
    return bdrv_flush(bs->file, err);
}

static int64_t raw_getlength(struct bdrv_node *bs, struct nv_error *err)
{
    int r = refresh_length(bs, err);
    return r < 0 ? r : (int64_t)((struct raw_state *)bs->opaque)->length;
}

static int raw_truncate(struct bdrv_node *bs, uint64_t length, struct nv_error *err)
{
    int r = bdrv_truncate(bs->file, length, err);
    if (r == 0)
        ((struct raw_state *)bs->opaque)->length = length;
    return r;
}

const struct bdrv_driver bdrv_raw = {
    .name = "raw",
    .state_size = sizeof(struct raw_state),
    .open = raw_open,
    .close = raw_close,
    .pread = raw_pread,
    .pwrite = raw_pwrite,
    .flush = raw_flush,
    .getlength = raw_getlength,
    .truncate = raw_truncate,
    .create = bdrv_raw_create,
};
