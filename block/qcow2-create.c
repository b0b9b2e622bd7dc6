/* qcow2-create.c - a new, empty qcow2 image: header, refcount table,
 * refcount blocks and L1 table, laid out as `qemu-img create` does. */
#include "qcow2.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return (a + b - 1) / b;
}

static int write_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

struct layout {
    uint64_t cs, l1_entries, l1_clusters, reftable_clusters, refblocks, total;
};

/* Header, refcount table, refcount blocks, L1: the refcount blocks must
 * count every one of these clusters, themselves included. */
static void plan(struct layout *l, uint64_t size)
{
    uint64_t per_l2 = l->cs * (l->cs / 8), per_block = l->cs * 8 / 16;
    l->l1_entries = div_up(size, per_l2);
    if (!l->l1_entries)
        l->l1_entries = 1;
    l->l1_clusters = div_up(l->l1_entries * 8, l->cs);
    l->reftable_clusters = l->refblocks = 1;
    for (int i = 0; i < 16; i++) {
        l->total = 1 + l->reftable_clusters + l->refblocks + l->l1_clusters;
        l->refblocks = div_up(l->total, per_block);
        l->reftable_clusters = div_up(l->refblocks * 8, l->cs);
    }
    l->total = 1 + l->reftable_clusters + l->refblocks + l->l1_clusters;
}

static int write_layout(int fd, const struct layout *l, uint64_t size, int version)
{
    uint8_t *buf = calloc(1, l->cs);
    if (!buf)
        return -ENOMEM;
    nv_put_be32(buf, QCOW2_MAGIC_BE);
    nv_put_be32(buf + 4, (uint32_t)version);
    nv_put_be32(buf + 20, (uint32_t)__builtin_ctzll(l->cs));
    nv_put_be64(buf + 24, size);
    nv_put_be32(buf + 36, (uint32_t)l->l1_entries);
    nv_put_be64(buf + 40, (1 + l->reftable_clusters + l->refblocks) * l->cs);
    nv_put_be64(buf + 48, l->cs);
    nv_put_be32(buf + 56, (uint32_t)l->reftable_clusters);
    if (version == 3) {
        nv_put_be32(buf + 96, 4);    /* refcount_order: 16-bit refcounts */
        nv_put_be32(buf + 100, 112); /* header_length: with the compression type byte */
    }
    int r = write_all(fd, buf, l->cs, 0);
    for (uint64_t i = 0; r == 0 && i < l->reftable_clusters; i++) {
        memset(buf, 0, l->cs);
        for (uint64_t j = 0; j < l->cs / 8 && i * (l->cs / 8) + j < l->refblocks; j++)
            nv_put_be64(buf + 8 * j, (1 + l->reftable_clusters + i * (l->cs / 8) + j) * l->cs);
        r = write_all(fd, buf, l->cs, (1 + i) * l->cs);
    }
    uint64_t per_block = l->cs / 2;
    for (uint64_t b = 0; r == 0 && b < l->refblocks; b++) {
        memset(buf, 0, l->cs);
        for (uint64_t j = 0; j < per_block && b * per_block + j < l->total; j++)
            buf[2 * j + 1] = 1;
        r = write_all(fd, buf, l->cs, (1 + l->reftable_clusters + b) * l->cs);
    }
    memset(buf, 0, l->cs);
    for (uint64_t i = 0; r == 0 && i < l->l1_clusters; i++)
        r = write_all(fd, buf, l->cs, (l->total - l->l1_clusters + i) * l->cs);
    free(buf);
    return r;
}

int qcow2_create(const char *path, const struct bdrv_create_opts *opts, struct nv_error *err)
{
    struct layout l = {.cs = opts->cluster_size ? opts->cluster_size : 65536};
    int version = opts->version ? opts->version : 3;
    if (l.cs < 512 || l.cs > (2u << 20) || (l.cs & (l.cs - 1)))
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                   "%s: cluster size %llu is not a power of two from 512 "
                                   "to 2 MiB",
                                   path, (unsigned long long)l.cs);
    if (version != 2 && version != 3)
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL, "%s: qcow2 version %d (2 or 3)",
                                   path, version);
    if (opts->size > (1ull << 50))
        return nv_error_set(err, -EFBIG, "%s: %llu bytes is too large", path,
                            (unsigned long long)opts->size);
    plan(&l, opts->size);
    if (l.l1_entries * 8 > QCOW2_MAX_L1_BYTES || l.refblocks > l.cs / 8 * l.reftable_clusters)
        return nv_error_set(err, -EFBIG, "%s: too large for %llu-byte clusters", path,
                            (unsigned long long)l.cs);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, opts->mode ? opts->mode : 0600);
    if (fd < 0)
        return nv_error_set(err, -errno, "%s: cannot create: %s%s", path, strerror(errno),
                            errno == EEXIST ? " (refusing to overwrite it)" : "");
    int r = write_layout(fd, &l, opts->size, version);
    if (r == 0 && fsync(fd) < 0)
        r = -errno;
    close(fd);
    if (r < 0) {
        unlink(path);
        return nv_error_set(err, r, "%s: cannot write the new image: %s", path, strerror(-r));
    }
    return 0;
}
