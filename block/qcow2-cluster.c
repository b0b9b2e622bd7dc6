/* qcow2-cluster.c - guest reads and writes: L2 lookups, cluster allocation,
 * copy-on-write of clusters and L2 tables shared with internal snapshots
 * (refcount above 1, COPIED clear), zero clusters, compressed clusters. */
#include "qcow2.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum cluster_kind { UNALLOCATED, ZERO_PLAIN, ZERO_ALLOC, NORMAL, COMPRESSED };

static uint64_t l2_get(const uint8_t *table, uint64_t i)
{
    uint64_t v;
    memcpy(&v, table + 8 * i, 8);
    return be64toh(v);
}

static void l2_set(uint8_t *table, uint64_t i, uint64_t v)
{
    v = htobe64(v);
    memcpy(table + 8 * i, &v, 8);
}

void qcow2_compressed_range(const struct qcow2_state *s, uint64_t entry, uint64_t *offset,
                            uint64_t *length)
{
    unsigned x = 62 - (s->cluster_bits - 8);
    uint64_t coffset = entry & ((1ull << x) - 1);
    uint64_t sectors = ((entry >> x) & ((1ull << (s->cluster_bits - 8)) - 1)) + 1;
    *offset = coffset & ~511ull;
    *length = sectors * 512;
}

/* Classify an L2 entry, refusing malformed ones. */
static int classify(struct bdrv_node *bs, uint64_t entry, enum cluster_kind *kind,
                    struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        uint64_t start, length;
        qcow2_compressed_range(s, entry, &start, &length);
        int64_t file_len = bdrv_getlength(s->file, err);
        if (file_len < 0)
            return (int)file_len;
        if ((entry & QCOW2_OFLAG_COPIED) || start < s->cluster_size || start >= (uint64_t)file_len)
            return nv_error_set(err, -EIO,
                                "%s: compressed L2 entry 0x%016llx is malformed "
                                "(image corrupt)",
                                bs->filename, (unsigned long long)entry);
        *kind = COMPRESSED;
        return 0;
    }
    uint64_t off = entry & QCOW2_OFFSET_MASK;
    if (entry & QCOW2_L2_RESERVED || (off & (s->cluster_size - 1)) ||
        (s->version == 2 && (entry & QCOW2_OFLAG_ZERO)) || (off && off < s->cluster_size))
        return nv_error_set(err, -EIO, "%s: L2 entry 0x%016llx is malformed (image corrupt)",
                            bs->filename, (unsigned long long)entry);
    if (entry & QCOW2_OFLAG_ZERO)
        *kind = off ? ZERO_ALLOC : ZERO_PLAIN;
    else
        *kind = off ? NORMAL : UNALLOCATED;
    return 0;
}

int qcow2_check_in_file(struct bdrv_node *bs, uint64_t host, const char *what, uint64_t guest,
                        struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    int64_t file_len = bdrv_getlength(s->file, err);
    if (file_len < 0)
        return (int)file_len;
    if (host <= (uint64_t)file_len && s->cluster_size <= (uint64_t)file_len - host)
        return 0;
    if (guest == UINT64_MAX)
        return nv_error_set_status(
            err, NV_STATUS_CORRUPT, -EUCLEAN,
            "%s: the %s at offset %llu extends past the end of the file (%lld "
            "bytes): the image is truncated or corrupt",
            bs->filename, what, (unsigned long long)host, (long long)file_len);
    return nv_error_set_status(
        err, NV_STATUS_CORRUPT, -EUCLEAN,
        "%s: the %s at offset %llu (guest offset %llu) extends past the end of the "
        "file (%lld bytes): the image is truncated or corrupt",
        bs->filename, what, (unsigned long long)host, (unsigned long long)guest,
        (long long)file_len);
}

static uint64_t l1_index(const struct qcow2_state *s, uint64_t guest)
{
    return guest >> (s->cluster_bits + s->cluster_bits - 3);
}

static uint64_t l2_index(const struct qcow2_state *s, uint64_t guest)
{
    return (guest >> s->cluster_bits) & (s->l2_entries - 1);
}

/* How much of len, starting at guest, lies inside guest's cluster: requests
 * are split so that each piece touches one cluster. */
static size_t chunk_len(const struct qcow2_state *s, uint64_t guest, uint64_t len)
{
    uint64_t to_end = s->cluster_size - (guest & (s->cluster_size - 1));
    return (size_t)(to_end < len ? to_end : len);
}

static int lookup(struct bdrv_node *bs, uint64_t guest, uint64_t *entry, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t l2 = s->l1[l1_index(s, guest)] & QCOW2_OFFSET_MASK;
    *entry = 0;
    if (!l2)
        return 0;
    uint8_t *t;
    uint64_t i = l2_index(s, guest);
    int r = qcow2_cache_get_part(bs, &s->l2_cache, l2, i * 8, 8, &t, err);
    if (r == 0)
        *entry = l2_get(t, i);
    return r;
}

/* The whole cluster an entry points at, decompressed (cached by entry). */
static int read_compressed(struct bdrv_node *bs, uint64_t entry, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (s->decomp_valid && s->decomp_entry == entry)
        return 0;
    unsigned x = 62 - (s->cluster_bits - 8);
    uint64_t coffset = entry & ((1ull << x) - 1), start, length;
    qcow2_compressed_range(s, entry, &start, &length);
    uint64_t csize = start + length - coffset;
    /* (the output buffer on first use: nvtpm itself never compresses) */
    if (!s->decomp_buf && !(s->decomp_buf = malloc(s->cluster_size)))
        return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    uint8_t *in = malloc(csize);
    if (!in)
        return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    s->decomp_valid = false;
    int r = qcow2_decompress_load(s, err);
    if (r < 0)
        nv_error_prefix(err, r, "%s", bs->filename);
    if (r == 0)
        r = bdrv_pread(s->file, coffset, in, csize, err);
    if (r == 0 && qcow2_decompress(s, in, csize, s->decomp_buf, s->cluster_size) < 0)
        r = nv_error_set(err, -EIO, "%s: compressed cluster at offset %llu does not decompress",
                         bs->filename, (unsigned long long)coffset);
    free(in);
    if (r == 0) {
        s->decomp_entry = entry;
        s->decomp_valid = true;
    }
    return r;
}

static int read_backing(struct bdrv_node *bs, uint64_t guest, uint8_t *buf, size_t n,
                        struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    memset(buf, 0, n);
    if (!s->backing)
        return 0;
    int64_t blen = bdrv_getlength(s->backing, err);
    if (blen < 0)
        return (int)blen;
    if (guest >= (uint64_t)blen)
        return 0;
    size_t avail = (uint64_t)blen - guest < n ? (size_t)((uint64_t)blen - guest) : n;
    return bdrv_pread(s->backing, guest, buf, avail, err);
}

static int read_chunk(struct bdrv_node *bs, uint64_t guest, uint8_t *buf, size_t n,
                      struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t entry, in_off = guest & (s->cluster_size - 1);
    enum cluster_kind kind;
    int r = lookup(bs, guest, &entry, err);
    if (r == 0)
        r = classify(bs, entry, &kind, err);
    if (r < 0)
        return r;
    switch (kind) {
    case UNALLOCATED:
        return read_backing(bs, guest, buf, n, err);
    case ZERO_PLAIN:
    case ZERO_ALLOC:
        memset(buf, 0, n);
        return 0;
    case COMPRESSED:
        if ((r = read_compressed(bs, entry, err)) == 0)
            memcpy(buf, s->decomp_buf + in_off, n);
        return r;
    case NORMAL:
        break;
    }
    uint64_t host = entry & QCOW2_OFFSET_MASK;
    r = qcow2_check_in_file(bs, host, "data cluster", guest - in_off, err);
    return r < 0 ? r : bdrv_pread(s->file, host + in_off, buf, n, err);
}

int qcow2_check_mapped(struct bdrv_node *bs, uint64_t offset, uint64_t len, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t end =
        offset + len < offset || offset + len > s->virtual_size ? s->virtual_size : offset + len;
    for (uint64_t guest = offset & ~(s->cluster_size - 1); guest < end; guest += s->cluster_size) {
        uint64_t entry;
        enum cluster_kind kind;
        int r = lookup(bs, guest, &entry, err);
        if (r == 0)
            r = classify(bs, entry, &kind, err);
        if (r == 0 && kind == NORMAL)
            r = qcow2_check_in_file(bs, entry & QCOW2_OFFSET_MASK, "data cluster", guest, err);
        if (r < 0)
            return r;
    }
    return 0;
}

int qcow2_read(struct bdrv_node *bs, uint64_t offset, uint8_t *buf, size_t len,
               struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    while (len) {
        size_t n = chunk_len(s, offset, len);
        int r = read_chunk(bs, offset, buf, n, err);
        if (r < 0)
            return r;
        offset += n;
        buf += n;
        len -= n;
    }
    return 0;
}

/* ---- writing ---------------------------------------------------------------- */

static int64_t alloc_cluster(struct bdrv_node *bs, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    int64_t off = qcow2_alloc_clusters(bs, 1, err);
    if (off < 0)
        return off;
    int r = qcow2_check_overlap(bs, (uint64_t)off, s->cluster_size, QCOW2_META_NONE, err);
    return r < 0 ? r : off;
}

/* The L2 table for guest offset, writable: allocated if missing, copied if
 * shared with a snapshot. */
static int writable_l2(struct bdrv_node *bs, uint64_t guest, uint64_t *l2_off, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t idx = l1_index(s, guest), old = s->l1[idx] & QCOW2_OFFSET_MASK;
    if (old && (s->l1[idx] & QCOW2_OFLAG_COPIED)) {
        *l2_off = old;
        return 0;
    }
    uint8_t *copy = NULL, *t;
    int r = 0;
    if (old) {
        if (!(copy = malloc(s->cluster_size)))
            return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
        if ((r = qcow2_cache_get(bs, &s->l2_cache, old, false, &t, err)) == 0)
            memcpy(copy, t, s->cluster_size);
    }
    int64_t fresh = r < 0 ? r : alloc_cluster(bs, err);
    if (fresh >= 0 &&
        (r = qcow2_cache_get(bs, &s->l2_cache, (uint64_t)fresh, true, &t, err)) == 0) {
        if (copy)
            memcpy(t, copy, s->cluster_size);
        qcow2_cache_mark_dirty(&s->l2_cache, (uint64_t)fresh);
        s->l1[idx] = (uint64_t)fresh | QCOW2_OFLAG_COPIED;
        s->l1_dirty = true;
        *l2_off = (uint64_t)fresh;
        if (old)
            r = qcow2_free_later(bs, old, s->cluster_size, err);
    }
    free(copy);
    return fresh < 0 ? (int)fresh : r;
}

static int set_entry(struct bdrv_node *bs, uint64_t l2_off, uint64_t guest, uint64_t entry,
                     struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint8_t *t;
    uint64_t i = l2_index(s, guest);
    int r = qcow2_cache_get_part(bs, &s->l2_cache, l2_off, i * 8, 8, &t, err);
    if (r == 0) {
        l2_set(t, i, entry);
        qcow2_cache_mark_dirty(&s->l2_cache, l2_off);
    }
    return r;
}

/* Give back what an entry held, once the new entry is on disk. */
static int release_entry(struct bdrv_node *bs, uint64_t entry, enum cluster_kind kind,
                         struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (kind == COMPRESSED) {
        uint64_t off, len;
        qcow2_compressed_range(s, entry, &off, &len);
        if (s->decomp_entry == entry)
            s->decomp_valid = false;
        return qcow2_free_later(bs, off, len, err);
    }
    if (kind == NORMAL || kind == ZERO_ALLOC)
        return qcow2_free_later(bs, entry & QCOW2_OFFSET_MASK, s->cluster_size, err);
    return 0;
}

/* The old content of the cluster around a partial write. */
static int old_content(struct bdrv_node *bs, uint64_t entry, enum cluster_kind kind, uint8_t *buf,
                       struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (kind == NORMAL)
        return bdrv_pread(s->file, entry & QCOW2_OFFSET_MASK, buf, s->cluster_size, err);
    if (kind == COMPRESSED) {
        int r = read_compressed(bs, entry, err);
        if (r == 0)
            memcpy(buf, s->decomp_buf, s->cluster_size);
        return r;
    }
    memset(buf, 0, s->cluster_size);
    return 0;
}

/* Write n bytes at in_off into host cluster host, whose other bytes must be
 * those of the old entry. A fresh cluster past the end of the file reads as
 * zeros already, so then only the new bytes are written, and zeros (an
 * fallocate) after them: the file must hold every cluster the tables map
 * whole, or a truncated image could not be told from this one. */
static int fill_cluster(struct bdrv_node *bs, uint64_t host, uint64_t in_off, const uint8_t *buf,
                        size_t n, uint64_t entry, enum cluster_kind kind, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (n == s->cluster_size && nv_all_zero(buf, n)) /* e.g. preallocation */
        return bdrv_pwrite_zeroes(s->file, host, n, err);
    if (n == s->cluster_size)
        return bdrv_pwrite(s->file, host, buf, n, err);
    if (kind != NORMAL && kind != COMPRESSED) {
        int64_t end = bdrv_getlength(s->file, err);
        if (end < 0)
            return (int)end;
        if (host >= (uint64_t)end) {
            uint64_t tail = in_off + n;
            int r = tail < s->cluster_size
                        ? bdrv_pwrite_zeroes(s->file, host + tail, s->cluster_size - tail, err)
                        : 0;
            return r < 0 ? r : bdrv_pwrite(s->file, host + in_off, buf, n, err);
        }
    }
    uint8_t *whole = malloc(s->cluster_size);
    if (!whole)
        return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    int r = old_content(bs, entry, kind, whole, err);
    if (r == 0) {
        memcpy(whole + in_off, buf, n);
        r = bdrv_pwrite(s->file, host, whole, s->cluster_size, err);
    }
    free(whole);
    return r;
}

/* Before a write lands on, or gives back, the cluster an entry points at:
 * it must not be one of the image's metadata structures. */
static int check_entry_target(struct bdrv_node *bs, uint64_t entry, enum cluster_kind kind,
                              struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t off = entry & QCOW2_OFFSET_MASK, len = s->cluster_size;
    if (kind == COMPRESSED)
        qcow2_compressed_range(s, entry, &off, &len);
    else if (kind != NORMAL && kind != ZERO_ALLOC)
        return 0;
    int r = qcow2_check_overlap(bs, off, len, QCOW2_META_NONE, err);
    return r < 0 ? nv_error_prefix(err, r, "an L2 entry points at metadata") : 0;
}

static int write_chunk(struct bdrv_node *bs, uint64_t guest, const uint8_t *buf, size_t n,
                       struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t l2_off, entry, in_off = guest & (s->cluster_size - 1);
    enum cluster_kind kind;
    int r = writable_l2(bs, guest, &l2_off, err);
    if (r == 0)
        r = lookup(bs, guest, &entry, err);
    if (r == 0)
        r = classify(bs, entry, &kind, err);
    if (r == 0)
        r = check_entry_target(bs, entry, kind, err);
    if (r == 0 && kind == NORMAL) /* a zero cluster's content is known without the file */
        r = qcow2_check_in_file(bs, entry & QCOW2_OFFSET_MASK, "data cluster", guest - in_off, err);
    if (r < 0)
        return r;
    uint64_t host = entry & QCOW2_OFFSET_MASK;
    s->need_sync = true;
    if (kind == NORMAL && (entry & QCOW2_OFLAG_COPIED))
        return bdrv_pwrite(s->file, host + in_off, buf, n, err);
    if (kind == ZERO_ALLOC && (entry & QCOW2_OFLAG_COPIED)) {
        /* Preallocated zero cluster: fill it in place, then drop the flag. */
        r = fill_cluster(bs, host, in_off, buf, n, entry, ZERO_PLAIN, err);
        return r < 0 ? r : set_entry(bs, l2_off, guest, host | QCOW2_OFLAG_COPIED, err);
    }
    int64_t fresh = alloc_cluster(bs, err);
    if (fresh < 0)
        return (int)fresh;
    r = fill_cluster(bs, (uint64_t)fresh, in_off, buf, n, entry, kind, err);
    if (r == 0)
        r = set_entry(bs, l2_off, guest, (uint64_t)fresh | QCOW2_OFLAG_COPIED, err);
    return r < 0 ? r : release_entry(bs, entry, kind, err);
}

int qcow2_write(struct bdrv_node *bs, uint64_t offset, const uint8_t *buf, size_t len,
                struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    while (len) {
        size_t n = chunk_len(s, offset, len);
        int r = write_chunk(bs, offset, buf, n, err);
        if (r < 0)
            return r;
        offset += n;
        buf += n;
        len -= n;
    }
    return 0;
}

/* A whole cluster becomes a zero cluster (version 3): nothing to write but
 * the entry, and its old cluster is freed. */
static int zero_cluster(struct bdrv_node *bs, uint64_t guest, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t l2_off, entry;
    enum cluster_kind kind;
    int r = lookup(bs, guest, &entry, err);
    if (r == 0)
        r = classify(bs, entry, &kind, err);
    if (r == 0)
        r = check_entry_target(bs, entry, kind, err);
    if (r < 0 || kind == ZERO_PLAIN || (kind == UNALLOCATED && !s->backing))
        return r;
    if ((r = writable_l2(bs, guest, &l2_off, err)) < 0 ||
        (r = set_entry(bs, l2_off, guest, QCOW2_OFLAG_ZERO, err)) < 0)
        return r;
    return release_entry(bs, entry, kind, err);
}

int qcow2_write_zeroes(struct bdrv_node *bs, uint64_t offset, uint64_t len, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint8_t *zeros = NULL;
    int r = 0;
    while (len && r == 0) {
        size_t n = chunk_len(s, offset, len);
        if (s->version >= 3 && n == s->cluster_size) {
            r = zero_cluster(bs, offset, err);
        } else {
            if (!zeros && !(zeros = calloc(1, s->cluster_size)))
                return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
            r = write_chunk(bs, offset, zeros, n, err);
        }
        offset += n;
        len -= n;
    }
    free(zeros);
    return r;
}
