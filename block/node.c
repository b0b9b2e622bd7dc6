/* node.c - opening, closing and I/O dispatch of the node graph. */
#include "internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define QCOW2_MAGIC "QFI\xfb"

static atomic_uint next_node_id = 1;

static const struct bdrv_driver *const format_drivers[] = {&bdrv_raw, &bdrv_qcow2};

int bdrv_parse_cache_mode(const char *mode, unsigned *cache_flags, struct nv_error *err)
{
    if (strcmp(mode, "writeback") == 0)
        *cache_flags = 0;
    else if (strcmp(mode, "none") == 0)
        *cache_flags = BDRV_O_CACHE_NONE;
    else if (strcmp(mode, "directsync") == 0)
        *cache_flags = BDRV_O_CACHE_DIRECTSYNC;
    else
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                   "unknown cache mode '%s' (writeback, none or directsync)", mode);
    return 0;
}

const char *bdrv_cache_mode_name(unsigned flags)
{
    if (flags & BDRV_O_CACHE_DIRECTSYNC)
        return "directsync";
    return (flags & BDRV_O_CACHE_NONE) ? "none" : "writeback";
}

static void node_free(struct bdrv_node *bs)
{
    free(bs->opaque);
    free(bs->filename);
    free(bs);
}

/* A node of drv opened on spec (protocol) or on file (format). */
static struct bdrv_node *node_open(const struct bdrv_driver *drv, const char *spec,
                                   struct bdrv_node *file, unsigned flags, struct fdstash *stash,
                                   struct nv_error *err)
{
    struct bdrv_node *bs = calloc(1, sizeof(*bs));
    const char *name = file ? file->filename : spec;
    if (bs) {
        bs->opaque = calloc(1, drv->state_size ? drv->state_size : 1);
        bs->filename = strdup(name);
    }
    if (!bs || !bs->opaque || !bs->filename) {
        nv_error_set(err, -ENOMEM, "%s: out of memory", name);
        if (bs)
            node_free(bs);
        return NULL;
    }
    bs->drv = drv;
    bs->file = file;
    bs->flags = flags;
    bs->stash = stash;
    bs->id = atomic_fetch_add(&next_node_id, 1);
    if (drv->open(bs, spec, err) < 0 || (drv->is_protocol && bdrv_locks_init(bs, err) < 0)) {
        drv->close(bs);
        node_free(bs);
        return NULL;
    }
    return bs;
}

static const struct bdrv_driver *format_by_name(const char *name)
{
    for (size_t i = 0; i < sizeof(format_drivers) / sizeof(format_drivers[0]); i++)
        if (strcmp(format_drivers[i]->name, name) == 0)
            return format_drivers[i];
    return NULL;
}

/* Probe: qcow2 by its magic, anything else raw. */
static const char *probe_format(struct bdrv_node *file, struct nv_error *err)
{
    uint8_t magic[4];
    if (bdrv_pread(file, 0, magic, sizeof(magic), err) < 0)
        return NULL;
    return memcmp(magic, QCOW2_MAGIC, 4) == 0 ? "qcow2" : "raw";
}

struct bdrv_node *bdrv_open_format(const char *format, const char *spec, unsigned flags,
                                   struct fdstash *stash, struct nv_error *err)
{
    if ((flags & BDRV_O_OWNER) && !(flags & BDRV_O_RDWR)) {
        nv_error_set(err, -EINVAL, "%s: ownership needs a read-write open", spec);
        return NULL;
    }
    const struct bdrv_driver *proto = strncmp(spec, "faults:", 7) == 0 ? &bdrv_faults : &bdrv_file;
    struct bdrv_node *file = node_open(proto, spec, NULL, flags, stash, err);
    if (!file)
        return NULL;
    const char *name = format ? format : probe_format(file, err);
    const struct bdrv_driver *drv = name ? format_by_name(name) : NULL;
    if (!drv) {
        if (name)
            nv_error_set(err, -ENOTSUP, "%s: format '%s' is not supported", file->filename, name);
        bdrv_close(file);
        return NULL;
    }
    struct bdrv_node *bs = node_open(drv, NULL, file, flags, stash, err);
    if (!bs) {
        bdrv_close(file);
        return NULL;
    }
    if (file->drv->open_done)
        file->drv->open_done(file);
    return bs;
}

struct bdrv_node *bdrv_open(const char *spec, unsigned flags, struct fdstash *stash,
                            struct nv_error *err)
{
    return bdrv_open_format(NULL, spec, flags, stash, err);
}

void bdrv_close(struct bdrv_node *bs)
{
    while (bs) {
        struct bdrv_node *child = bs->file;
        bs->drv->close(bs);
        node_free(bs);
        bs = child;
    }
}

struct bdrv_node *bdrv_leaf(const struct bdrv_node *bs)
{
    while (bs->file)
        bs = bs->file;
    return (struct bdrv_node *)bs;
}

const char *bdrv_filename(const struct bdrv_node *bs)
{
    return bs->filename;
}

const char *bdrv_format_name(const struct bdrv_node *bs)
{
    return bs->drv->name;
}

unsigned bdrv_get_flags(const struct bdrv_node *bs)
{
    return bs->flags;
}

struct bdrv_node *bdrv_file_child(const struct bdrv_node *bs)
{
    return bs->file;
}

int bdrv_pread(struct bdrv_node *bs, uint64_t offset, void *buf, size_t len, struct nv_error *err)
{
    if (len == 0)
        return 0;
    return bs->drv->pread(bs, offset, buf, len, err);
}

/* Writes and resizes need write access and the ownership lock. */
static int check_writable(struct bdrv_node *bs, struct nv_error *err)
{
    if (!(bs->flags & BDRV_O_RDWR))
        return nv_error_set(err, -EBADF, "%s: opened read-only", bs->filename);
    if (!(bs->flags & BDRV_O_OWNER))
        return nv_error_set(err, -EPERM, "%s: not the owner; writes need the ownership lock",
                            bs->filename);
    return 0;
}

/* Remember whether the node's last write or flush failed: that failure was
 * returned to its caller, and a close that meets it again need not repeat it. */
static int noted(struct bdrv_node *bs, int r)
{
    bs->last_write_failed = r < 0;
    return r;
}

int bdrv_pwrite(struct bdrv_node *bs, uint64_t offset, const void *buf, size_t len,
                struct nv_error *err)
{
    int r = check_writable(bs, err);
    if (r < 0 || len == 0)
        return r;
    return noted(bs, bs->drv->pwrite(bs, offset, buf, len, err));
}

int bdrv_flush(struct bdrv_node *bs, struct nv_error *err)
{
    return noted(bs, bs->drv->flush(bs, err));
}

void bdrv_release_memory(struct bdrv_node *bs)
{
    for (; bs; bs = bs->file)
        if (bs->drv->release_memory)
            bs->drv->release_memory(bs);
}

void bdrv_event(struct bdrv_node *bs, enum bdrv_event ev)
{
    struct bdrv_node *leaf = bdrv_leaf(bs);
    if (leaf->drv->event)
        leaf->drv->event(leaf, ev);
}

int64_t bdrv_getlength(struct bdrv_node *bs, struct nv_error *err)
{
    return bs->drv->getlength(bs, err);
}

int bdrv_truncate(struct bdrv_node *bs, uint64_t length, struct nv_error *err)
{
    int r = check_writable(bs, err);
    if (r < 0)
        return r;
    if (!bs->drv->truncate)
        return nv_error_set(err, -ENOTSUP, "%s: format %s cannot be resized", bs->filename,
                            bs->drv->name);
    return bs->drv->truncate(bs, length, err);
}

int bdrv_reserve(struct bdrv_node *bs, uint64_t len, struct nv_error *err)
{
    struct bdrv_node *leaf = bdrv_leaf(bs);
    int r = check_writable(leaf, err);
    if (r < 0 || !leaf->drv->reserve)
        return r;
    return leaf->drv->reserve(leaf, len, err);
}

int bdrv_pwrite_zeroes(struct bdrv_node *bs, uint64_t offset, uint64_t len, struct nv_error *err)
{
    int r = check_writable(bs, err);
    if (r < 0 || len == 0)
        return r;
    if (bs->drv->pwrite_zeroes)
        return noted(bs, bs->drv->pwrite_zeroes(bs, offset, len, err));
    size_t chunk = len < (1u << 20) ? (size_t)len : (1u << 20);
    uint8_t *zeros = calloc(1, chunk);
    if (!zeros)
        return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    while (len && r == 0) {
        size_t n = len < chunk ? (size_t)len : chunk;
        r = noted(bs, bs->drv->pwrite(bs, offset, zeros, n, err));
        offset += n;
        len -= n;
    }
    free(zeros);
    return r;
}

int bdrv_check(struct bdrv_node *bs, struct bdrv_check_result *res, bool repair_leaks,
               struct nv_error *err)
{
    memset(res, 0, sizeof(*res));
    int r = repair_leaks ? check_writable(bs, err) : 0;
    if (r < 0 || !bs->drv->check)
        return r;
    return bs->drv->check(bs, res, repair_leaks, err);
}

int bdrv_check_mapped(struct bdrv_node *bs, uint64_t offset, uint64_t len, struct nv_error *err)
{
    return bs->drv->check_mapped ? bs->drv->check_mapped(bs, offset, len, err) : 0;
}

int bdrv_create(const char *format, const char *path, const struct bdrv_create_opts *opts,
                struct nv_error *err)
{
    const struct bdrv_driver *drv = format ? format_by_name(format) : NULL;
    if (!drv)
        return nv_error_set(err, -ENOTSUP, "%s: cannot create format '%s'", path,
                            format ? format : "(none)");
    return drv->create(path, opts, err);
}
