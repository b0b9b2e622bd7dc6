/* qcow2-create.c - a new, empty qcow2 image: header, refcount table,
 * refcount blocks and L1 table, laid out as `qemu-img create` does; with
 * preallocation, also the L2 tables and data clusters of the disk's first
 * bytes (qemu-img's preallocation=metadata), so that writing them later
 * changes no metadata: a new TPM's format then flushes its data only. */
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
    uint64_t cs, l1_entries, l1_clusters, reftable_clusters, refblocks;
    uint64_t l2_tables, data_clusters; /* preallocated */
    uint64_t total;
};

static uint64_t l2_start(const struct layout *l)
{
    return 1 + l->reftable_clusters + l->refblocks + l->l1_clusters;
}

/* Header, refcount table, refcount blocks, L1, then the preallocated L2
 * tables and data clusters: the refcount blocks must count every one of
 * these clusters, themselves included. */
static void plan(struct layout *l, uint64_t size, uint64_t prealloc)
{
    uint64_t per_l2 = l->cs * (l->cs / 8), per_block = l->cs * 8 / 16;
    l->l1_entries = div_up(size, per_l2);
    if (!l->l1_entries)
        l->l1_entries = 1;
    l->l1_clusters = div_up(l->l1_entries * 8, l->cs);
    l->data_clusters = div_up(prealloc < size ? prealloc : size, l->cs);
    l->l2_tables = div_up(l->data_clusters, l->cs / 8);
    l->reftable_clusters = l->refblocks = 1;
    for (int i = 0; i < 16; i++) {
        l->total = l2_start(l) + l->l2_tables + l->data_clusters;
        l->refblocks = div_up(l->total, per_block);
        l->reftable_clusters = div_up(l->refblocks * 8, l->cs);
    }
    l->total = l2_start(l) + l->l2_tables + l->data_clusters;
}

/* The L1 clusters and the preallocated L2 tables: each data cluster mapped
 * in order, in use once (COPIED). */
static int write_mapping(int fd, const struct layout *l, uint8_t *buf)
{
    uint64_t per_table = l->cs / 8, l2_first = l2_start(l), data_first = l2_first + l->l2_tables;
    int r = 0;
    for (uint64_t i = 0; r == 0 && i < l->l1_clusters; i++) {
        memset(buf, 0, l->cs);
        for (uint64_t j = 0; j < per_table && i * per_table + j < l->l2_tables; j++)
            nv_put_be64(buf + 8 * j, (l2_first + i * per_table + j) * l->cs | QCOW2_OFLAG_COPIED);
        r = write_all(fd, buf, l->cs, (l2_first - l->l1_clusters + i) * l->cs);
    }
    for (uint64_t t = 0; r == 0 && t < l->l2_tables; t++) {
        memset(buf, 0, l->cs);
        for (uint64_t j = 0; j < per_table && t * per_table + j < l->data_clusters; j++)
            nv_put_be64(buf + 8 * j, (data_first + t * per_table + j) * l->cs | QCOW2_OFLAG_COPIED);
        r = write_all(fd, buf, l->cs, (l2_first + t) * l->cs);
    }
    return r;
}

/* The preallocated data clusters: the file holds them (a table must not map
 * past its end) with their disk space allocated now, so that a full disk
 * fails the creation, never a later write. Where fallocate is not offered
 * (NFS v3, some FUSE file systems) real zeros are written instead: a hole
 * would put the full disk off until a commit. */
static int allocate_data(int fd, uint64_t start, uint64_t len)
{
    int r;
    do {
        r = fallocate(fd, 0, (off_t)start, (off_t)len);
    } while (r < 0 && errno == EINTR);
    if (r == 0)
        return 0;
    if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
        return -errno;
    uint8_t *zeros = calloc(1, 1u << 20);
    if (!zeros)
        return -ENOMEM;
    for (uint64_t off = 0; r == 0 && off < len; off += 1u << 20)
        r = write_all(fd, zeros, len - off < (1u << 20) ? (size_t)(len - off) : 1u << 20,
                      start + off);
    free(zeros);
    return r;
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
    if (r == 0)
        r = write_mapping(fd, l, buf);
    free(buf);
    if (r == 0 && l->data_clusters)
        r = allocate_data(fd, (l->total - l->data_clusters) * l->cs, l->data_clusters * l->cs);
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
    plan(&l, opts->size, opts->prealloc);
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
