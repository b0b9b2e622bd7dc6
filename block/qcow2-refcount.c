/* qcow2-refcount.c - refcounts, cluster allocation, growth of the refcount
 * structures, and the crash-safe order in which metadata reaches the disk.
 *
 * Invariant on disk at every instant: a cluster referenced by the image has a
 * refcount at least as high as its references. Hence increments are written
 * (and flushed) before the tables that add references, and decrements only
 * after the tables that dropped references are on disk. A crash can leak a
 * cluster, never corrupt the image. */
#include "qcow2.h"

#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Where refcount index lies in its block: the byte, and how many bytes
 * (refcounts of 1, 2 or 4 bits share a byte). */
static uint64_t entry_byte(const struct qcow2_state *s, uint64_t index)
{
    return (index << s->refcount_order) / 8;
}

static uint64_t entry_bytes(const struct qcow2_state *s)
{
    return s->refcount_order <= 3 ? 1 : 1u << (s->refcount_order - 3);
}

static uint64_t refblock_get(const struct qcow2_state *s, const uint8_t *block, uint64_t index)
{
    switch (s->refcount_order) {
    case 0:
    case 1:
    case 2: {
        unsigned bits = 1u << s->refcount_order, per_byte = 8 / bits;
        return (block[index / per_byte] >> ((index % per_byte) * bits)) & ((1u << bits) - 1);
    }
    case 3:
        return block[index];
    case 4: {
        uint16_t v;
        memcpy(&v, block + 2 * index, 2);
        return be16toh(v);
    }
    case 5: {
        uint32_t v;
        memcpy(&v, block + 4 * index, 4);
        return be32toh(v);
    }
    default: {
        uint64_t v;
        memcpy(&v, block + 8 * index, 8);
        return be64toh(v);
    }
    }
}

static void refblock_set(const struct qcow2_state *s, uint8_t *block, uint64_t index,
                         uint64_t value)
{
    switch (s->refcount_order) {
    case 0:
    case 1:
    case 2: {
        unsigned bits = 1u << s->refcount_order, per_byte = 8 / bits;
        unsigned shift = (unsigned)(index % per_byte) * bits;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
        block[index / per_byte] = (uint8_t)((block[index / per_byte] & ~mask) | (value << shift));
        break;
    }
    case 3:
        block[index] = (uint8_t)value;
        break;
    case 4: {
        uint16_t v = htobe16((uint16_t)value);
        memcpy(block + 2 * index, &v, 2);
        break;
    }
    case 5: {
        uint32_t v = htobe32((uint32_t)value);
        memcpy(block + 4 * index, &v, 4);
        break;
    }
    default: {
        uint64_t v = htobe64(value);
        memcpy(block + 8 * index, &v, 8);
        break;
    }
    }
}

static uint64_t refblock_offset(const struct qcow2_state *s, uint64_t index)
{
    return index < s->reftable_entries ? s->reftable[index] & QCOW2_OFFSET_MASK : 0;
}

int qcow2_get_refcount(struct bdrv_node *bs, uint64_t cluster, uint64_t *refcount,
                       struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t block = refblock_offset(s, cluster / s->refblock_entries);
    *refcount = 0;
    if (!block)
        return 0;
    uint8_t *data;
    uint64_t i = cluster % s->refblock_entries;
    int r = qcow2_cache_get_part(bs, &s->refblock_cache, block, entry_byte(s, i), entry_bytes(s),
                                 &data, err);
    if (r < 0)
        return r;
    *refcount = refblock_get(s, data, i);
    return 0;
}

/* Set a refcount in a refcount block that exists. */
static int set_in_block(struct bdrv_node *bs, uint64_t cluster, uint64_t refcount,
                        struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t block = refblock_offset(s, cluster / s->refblock_entries);
    if (refcount > s->refcount_max)
        return nv_error_set(err, -EMLINK, "%s: refcount of cluster %llu would exceed %llu",
                            bs->filename, (unsigned long long)cluster,
                            (unsigned long long)s->refcount_max);
    uint8_t *data;
    uint64_t i = cluster % s->refblock_entries;
    int r = qcow2_cache_get_part(bs, &s->refblock_cache, block, entry_byte(s, i), entry_bytes(s),
                                 &data, err);
    if (r < 0)
        return r;
    refblock_set(s, data, i, refcount);
    qcow2_cache_mark_dirty(&s->refblock_cache, block);
    return 0;
}

/* A missing refcount block i lives at the first cluster of the range it
 * describes; that cluster is never handed out while the block is missing. */
static int create_refblock(struct bdrv_node *bs, uint64_t index, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t first = index * s->refblock_entries, offset;
    if (nv_mul_overflow_u64(first, s->cluster_size, &offset) || offset > (1ull << 56))
        return nv_error_set(err, -EFBIG, "%s: image too large", bs->filename);
    int r = qcow2_check_overlap(bs, offset, s->cluster_size, QCOW2_META_NONE, err);
    uint8_t *data;
    if (r == 0)
        r = qcow2_cache_get(bs, &s->refblock_cache, offset, true, &data, err);
    if (r < 0)
        return r;
    refblock_set(s, data, 0, 1); /* itself */
    qcow2_cache_mark_dirty(&s->refblock_cache, offset);
    s->reftable[index] = offset;
    s->reftable_dirty = true;
    return 0;
}

/* Grow the refcount table to hold entry index. The new table goes right after
 * refcount block index (which is missing), inside the range that block
 * describes, so the block counts both itself and the table. */
static int grow_reftable(struct bdrv_node *bs, uint64_t index, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t per_cluster = s->cluster_size / 8;
    uint64_t want[2] = {index + 1 > 2 * s->reftable_entries ? index + 1 : 2 * s->reftable_entries,
                        index + 1};
    uint64_t entries = 0, clusters = 0;
    for (int i = 0; i < 2 && !entries; i++) { /* doubled if it fits, else just enough */
        uint64_t c = (want[i] + per_cluster - 1) / per_cluster;
        if (c + 1 <= s->refblock_entries && c * s->cluster_size <= QCOW2_MAX_REFTABLE_BYTES) {
            clusters = c;
            entries = c * per_cluster;
        }
    }
    if (!entries)
        return nv_error_set(err, -EFBIG,
                            "%s: the refcount table cannot grow further with %llu-byte clusters",
                            bs->filename, (unsigned long long)s->cluster_size);
    uint64_t block = index * s->refblock_entries * s->cluster_size,
             table_off = block + s->cluster_size;
    uint64_t *table = qcow2_sparse_table_new(entries);
    uint8_t *data;
    if (!table)
        return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    int r = qcow2_check_overlap(bs, block, (clusters + 1) * s->cluster_size, QCOW2_META_NONE, err);
    if (r == 0)
        r = qcow2_cache_get(bs, &s->refblock_cache, block, true, &data, err);
    if (r < 0) { /* nothing changed yet */
        qcow2_sparse_table_free(table, entries);
        return r;
    }
    /* The new block counts itself and the table right after it. */
    for (uint64_t i = 0; i <= clusters; i++)
        refblock_set(s, data, i, 1);
    qcow2_cache_mark_dirty(&s->refblock_cache, block);
    memcpy(table, s->reftable, s->reftable_entries * 8);
    table[index] = block;
    /* From here on nothing fails: switch to the new table. */
    uint64_t old_offset = s->reftable_offset, old_clusters = s->reftable_clusters;
    qcow2_sparse_table_free(s->reftable, s->reftable_entries);
    s->reftable = table;
    s->reftable_entries = entries;
    s->reftable_offset = table_off;
    s->reftable_clusters = (uint32_t)clusters;
    s->reftable_dirty = s->header_reftable_dirty = true;
    r = qcow2_free_later(bs, old_offset, old_clusters * s->cluster_size, err);
    /* Rare: put the new structures on disk right away, in order. */
    return r < 0 ? r : qcow2_flush_metadata(bs, err);
}

/* Make sure refcount block index exists; *grew tells that the table moved. */
static int ensure_refblock(struct bdrv_node *bs, uint64_t index, bool *grew, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (refblock_offset(s, index))
        return 0;
    if (index >= s->reftable_entries) {
        *grew = true;
        return grow_reftable(bs, index, err);
    }
    return create_refblock(bs, index, err);
}

int qcow2_set_refcount(struct bdrv_node *bs, uint64_t cluster, uint64_t refcount,
                       struct nv_error *err)
{
    bool grew = false;
    struct qcow2_state *s = bs->opaque;
    int r = ensure_refblock(bs, cluster / s->refblock_entries, &grew, err);
    return r < 0 ? r : set_in_block(bs, cluster, refcount, err);
}

static int cluster_is_free(struct bdrv_node *bs, uint64_t cluster, bool *is_free,
                           struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (!refblock_offset(s, cluster / s->refblock_entries)) {
        *is_free = cluster % s->refblock_entries != 0; /* reserved for the block */
        return 0;
    }
    uint64_t rc;
    int r = qcow2_get_refcount(bs, cluster, &rc, err);
    *is_free = rc == 0;
    return r;
}

/* The end of the clusters the existing refcount blocks describe. */
static uint64_t backed_end(const struct qcow2_state *s)
{
    for (uint64_t i = s->reftable_entries; i > 0; i--)
        if (refblock_offset(s, i - 1))
            return i * s->refblock_entries;
    return 0;
}

static int find_free_run(struct bdrv_node *bs, uint64_t n, uint64_t *start, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t run = 0, c = s->free_hint, end = backed_end(s);
    /* Past the existing refcount blocks the first cluster of every range is
     * kept for its block, so no run can be longer than a range less one. */
    if (n >= s->refblock_entries && c + n > end)
        return nv_error_set(err, -EFBIG,
                            "%s: %llu contiguous clusters cannot be allocated with %llu-byte "
                            "clusters and %u-bit refcounts; use larger clusters",
                            bs->filename, (unsigned long long)n,
                            (unsigned long long)s->cluster_size, 1u << s->refcount_order);
    *start = c;
    while (run < n) {
        bool is_free;
        int r = cluster_is_free(bs, c, &is_free, err);
        if (r < 0)
            return r;
        if (is_free) {
            run++;
        } else {
            run = 0;
            *start = c + 1;
        }
        if (++c > (1ull << (56 - s->cluster_bits)))
            return nv_error_set(err, -ENOSPC, "%s: no free clusters below 64 PiB", bs->filename);
    }
    return 0;
}

int64_t qcow2_alloc_clusters(struct bdrv_node *bs, uint64_t n, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    for (;;) {
        uint64_t start = 0;
        int r = find_free_run(bs, n, &start, err);
        if (r < 0)
            return r;
        bool grew = false;
        uint64_t last = (start + n - 1) / s->refblock_entries;
        for (uint64_t i = start / s->refblock_entries; i <= last && !grew; i++)
            if ((r = ensure_refblock(bs, i, &grew, err)) < 0)
                return r;
        if (grew)
            continue; /* the new table took clusters: search again */
        for (uint64_t c = start; c < start + n; c++)
            if ((r = set_in_block(bs, c, 1, err)) < 0)
                return r;
        s->free_hint = start + n;
        return (int64_t)(start << s->cluster_bits);
    }
}

int qcow2_free_later(struct bdrv_node *bs, uint64_t offset, uint64_t length, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (!length)
        return 0;
    if (s->npending == s->pending_cap) {
        size_t cap = s->pending_cap ? 2 * s->pending_cap : 64;
        struct qcow2_pending_free *p = realloc(s->pending, cap * sizeof(*p));
        if (!p)
            return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
        s->pending = p;
        s->pending_cap = cap;
    }
    s->pending[s->npending++] = (struct qcow2_pending_free){offset, length};
    return 0;
}

/* Drop one reference per cluster; *done counts the clusters released. */
static int release(struct bdrv_node *bs, const struct qcow2_pending_free *p, uint64_t *done,
                   struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t first = p->offset >> s->cluster_bits;
    uint64_t last = (p->offset + p->length - 1) >> s->cluster_bits;
    *done = 0;
    for (uint64_t c = first; c <= last; c++, (*done)++) {
        uint64_t rc;
        int r = qcow2_get_refcount(bs, c, &rc, err);
        if (r < 0)
            return r;
        if (rc == 0)
            return nv_error_set(err, -EIO, "%s: freeing cluster %llu whose refcount is already 0",
                                bs->filename, (unsigned long long)c);
        if ((r = set_in_block(bs, c, rc - 1, err)) < 0)
            return r;
        if (rc == 1 && c < s->free_hint)
            s->free_hint = c;
    }
    return 0;
}

int qcow2_sync(struct bdrv_node *bs, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (!s->need_sync)
        return 0;
    int r = bdrv_flush(s->file, err);
    if (r == 0)
        s->need_sync = false;
    return r;
}

static int write_table(struct bdrv_node *bs, uint64_t offset, const uint64_t *table,
                       uint64_t entries, uint64_t disk_bytes, enum qcow2_meta kind,
                       struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t bytes = qcow2_round_up(entries * 8, 512);
    if (bytes > disk_bytes)
        bytes = entries * 8;
    uint64_t *be = calloc(1, bytes);
    if (!be)
        return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    for (uint64_t i = 0; i < entries; i++)
        be[i] = htobe64(table[i]);
    int r = qcow2_check_overlap(bs, offset, bytes, kind, err);
    if (r == 0) {
        qcow2_announce_write(s->file, kind);
        r = bdrv_pwrite(s->file, offset, be, bytes, err);
    }
    free(be);
    s->need_sync = true;
    return r;
}

static int apply_pending_frees(struct bdrv_node *bs, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    struct qcow2_pending_free *list = s->pending;
    size_t n = s->npending;
    s->pending = NULL;
    s->npending = s->pending_cap = 0;
    int r = 0;
    size_t i;
    uint64_t done = 0;
    for (i = 0; i < n; i++)
        if ((r = release(bs, &list[i], &done, err)) < 0)
            break;
    for (; i < n; i++, done = 0) { /* what was not released waits for the next flush */
        uint64_t skip = (list[i].offset & (s->cluster_size - 1)) + (done << s->cluster_bits);
        uint64_t start = (list[i].offset & ~(s->cluster_size - 1)) + (done << s->cluster_bits);
        if (skip < (list[i].offset & (s->cluster_size - 1)) + list[i].length)
            qcow2_free_later(
                bs, start, (list[i].offset & (s->cluster_size - 1)) + list[i].length - skip, NULL);
    }
    free(list);
    int w = qcow2_cache_write_dirty(bs, &s->refblock_cache, QCOW2_META_REFBLOCK, err);
    return r < 0 ? r : w;
}

/* The order: refcount increments, the refcount table, the header's pointer to
 * it, L2 tables, the L1 table, the header's pointer to that, and last the
 * decrements. Each stage starts with a flush of what came before. */
static int flush_stages(struct bdrv_node *bs, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    int r = qcow2_cache_write_dirty(bs, &s->refblock_cache, QCOW2_META_REFBLOCK, err);
    if (r == 0 && s->reftable_dirty && (r = qcow2_sync(bs, err)) == 0 &&
        (r = write_table(bs, s->reftable_offset, s->reftable, s->reftable_entries,
                         (uint64_t)s->reftable_clusters * s->cluster_size, QCOW2_META_REFTABLE,
                         err)) == 0)
        s->reftable_dirty = false;
    if (r == 0 && s->header_reftable_dirty && (r = qcow2_sync(bs, err)) == 0 &&
        (r = qcow2_write_header_fields(bs, false, err)) == 0)
        s->header_reftable_dirty = false;
    if (r == 0 && qcow2_cache_has_dirty(&s->l2_cache) && (r = qcow2_sync(bs, err)) == 0)
        r = qcow2_cache_write_dirty(bs, &s->l2_cache, QCOW2_META_L2, err);
    if (r == 0 && s->l1_dirty && (r = qcow2_sync(bs, err)) == 0 &&
        (r = write_table(bs, s->l1_offset, s->l1, s->l1_size,
                         (uint64_t)s->l1_clusters_allocated * s->cluster_size, QCOW2_META_L1,
                         err)) == 0)
        s->l1_dirty = false;
    if (r == 0 && s->header_l1_dirty && (r = qcow2_sync(bs, err)) == 0 &&
        (r = qcow2_write_header_fields(bs, true, err)) == 0)
        s->header_l1_dirty = false;
    if (r == 0 && s->npending && (r = qcow2_sync(bs, err)) == 0)
        r = apply_pending_frees(bs, err);
    return r;
}

int qcow2_flush_metadata(struct bdrv_node *bs, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (s->in_flush)
        return 0;
    s->in_flush = true;
    int r = flush_stages(bs, err);
    s->in_flush = false;
    return r;
}

/* ---- overlap checks -------------------------------------------------------- */

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

static int overlap_error(struct bdrv_node *bs, uint64_t offset, uint64_t length, const char *what,
                         uint64_t at, struct nv_error *err)
{
    return nv_error_set(err, -EIO,
                        "%s: refusing to write %llu bytes at offset %llu over the %s at offset "
                        "%llu (image corrupt?)",
                        bs->filename, (unsigned long long)length, (unsigned long long)offset, what,
                        (unsigned long long)at);
}

int qcow2_check_overlap(struct bdrv_node *bs, uint64_t offset, uint64_t length, enum qcow2_meta own,
                        struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t cs = s->cluster_size;
    /* own: the kind of structure being written at offset, which it may
     * overlap (itself); anything else at that place is refused. */
    if (overlaps(offset, length, 0, cs))
        return overlap_error(bs, offset, length, "header", 0, err);
    if (!(own == QCOW2_META_L1 && offset == s->l1_offset) &&
        overlaps(offset, length, s->l1_offset, (uint64_t)s->l1_size * 8))
        return overlap_error(bs, offset, length, "L1 table", s->l1_offset, err);
    if (!(own == QCOW2_META_REFTABLE && offset == s->reftable_offset) &&
        overlaps(offset, length, s->reftable_offset, (uint64_t)s->reftable_clusters * cs))
        return overlap_error(bs, offset, length, "refcount table", s->reftable_offset, err);
    if (overlaps(offset, length, s->snapshots_offset, s->snapshots_size))
        return overlap_error(bs, offset, length, "snapshot table", s->snapshots_offset, err);
    for (uint32_t i = 0; i < s->nb_snapshots; i++)
        if (overlaps(offset, length, s->snapshots[i].l1_offset,
                     (uint64_t)s->snapshots[i].l1_size * 8))
            return overlap_error(bs, offset, length, "snapshot L1 table", s->snapshots[i].l1_offset,
                                 err);
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;
        if (l2 && !(own == QCOW2_META_L2 && l2 == offset) && overlaps(offset, length, l2, cs))
            return overlap_error(bs, offset, length, "L2 table", l2, err);
    }
    for (uint64_t i = 0; i < s->reftable_entries; i++) {
        uint64_t rb = s->reftable[i] & QCOW2_OFFSET_MASK;
        if (rb && !(own == QCOW2_META_REFBLOCK && rb == offset) && overlaps(offset, length, rb, cs))
            return overlap_error(bs, offset, length, "refcount block", rb, err);
    }
    return 0;
}
