/* qcow2-check.c - the image's metadata checked the way `qemu-img check`
 * does: every referenced cluster (header, tables, data, snapshots) must have
 * a refcount equal to its number of references (below: corruption, above: a
 * leak), COPIED exactly when the refcount is 1, entries well formed. Leaks can
 * be repaired by lowering the refcounts. */
#include "qcow2.h"

#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct check {
    struct bdrv_node *bs;
    struct bdrv_check_result *res;
    uint32_t *expected; /* references per host cluster */
    uint64_t nclusters;
    uint64_t file_len;
    bool bitmaps_unknown;        /* the bitmaps' clusters could not all be found */
    uint64_t bitmap_table_bytes; /* read so far: distinct tables fit in the file */
    bool past_eof;               /* something is referenced past the end of the file (truncated) */
};

static void problem(struct check *c, bool leak, const char *fmt, ...)
{
    if (leak)
        c->res->leaks++;
    else
        c->res->corruptions++;
    if (c->res->first_problem[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->res->first_problem, sizeof(c->res->first_problem), fmt, ap);
    va_end(ap);
}

static void reference(struct check *c, uint64_t offset, uint64_t length, const char *what)
{
    struct qcow2_state *s = c->bs->opaque;
    if (!length)
        return;
    uint64_t first = offset >> s->cluster_bits, last = (offset + length - 1) >> s->cluster_bits;
    for (uint64_t i = first; i <= last; i++) {
        if (i >= c->nclusters) {
            problem(c, false, "%s at offset %llu is past the end of the file", what,
                    (unsigned long long)offset);
            c->past_eof = true;
            return;
        }
        if (c->expected[i] < UINT32_MAX)
            c->expected[i]++;
    }
}

static uint64_t entry_at(const uint8_t *t, uint64_t i)
{
    uint64_t v;
    memcpy(&v, t + 8 * i, 8);
    return be64toh(v);
}

static void walk_l2(struct check *c, const uint8_t *t)
{
    struct qcow2_state *s = c->bs->opaque;
    for (uint64_t i = 0; i < s->l2_entries; i++) {
        uint64_t e = entry_at(t, i), off = e & QCOW2_OFFSET_MASK;
        if (e & QCOW2_OFLAG_COMPRESSED) {
            uint64_t coff, len;
            qcow2_compressed_range(s, e, &coff, &len);
            reference(c, coff, len, "compressed cluster");
            continue;
        }
        if ((e & QCOW2_L2_RESERVED) || (off & (s->cluster_size - 1))) {
            problem(c, false, "L2 entry 0x%016llx is malformed", (unsigned long long)e);
            continue;
        }
        reference(c, off, off ? s->cluster_size : 0, "data cluster");
    }
}

/* Count what an L1 table references: its L2 tables and their clusters. */
static int walk_l1(struct check *c, const uint64_t *l1, uint32_t n, struct nv_error *err)
{
    struct qcow2_state *s = c->bs->opaque;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;
        if (!l2)
            continue;
        if (l1[i] & QCOW2_L1_RESERVED || l2 >> s->cluster_bits >= c->nclusters) {
            problem(c, false, "L1 entry %u (0x%016llx) is malformed", i, (unsigned long long)l1[i]);
            continue;
        }
        reference(c, l2, s->cluster_size, "L2 table");
        uint8_t *t;
        int r = qcow2_cache_get(c->bs, &s->l2_cache, l2, false, &t, err);
        if (r < 0)
            return r;
        walk_l2(c, t);
    }
    return 0;
}

static int walk_snapshots(struct check *c, struct nv_error *err)
{
    struct qcow2_state *s = c->bs->opaque;
    reference(c, s->snapshots_offset, s->snapshots_size, "snapshot table");
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        uint32_t n = s->snapshots[i].l1_size;
        uint64_t *l1 = calloc(n ? n : 1, 8);
        if (!l1)
            return nv_error_set(err, -ENOMEM, "out of memory");
        reference(c, s->snapshots[i].l1_offset, (uint64_t)n * 8, "snapshot L1 table");
        int r = n ? bdrv_pread(s->file, s->snapshots[i].l1_offset, l1, (uint64_t)n * 8, err) : 0;
        for (uint32_t j = 0; r == 0 && j < n; j++)
            l1[j] = be64toh(l1[j]);
        if (r == 0)
            r = walk_l1(c, l1, n, err);
        free(l1);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- bitmaps (the bitmaps header extension) ---- */

#define BITMAP_ENTRY_FIXED    24
#define BITMAP_DIR_MAX        (64u << 20)
#define BITMAP_TABLE_RESERVED 0xff000000000001feull

/* A bitmap structure nvtpm cannot follow: its clusters are unknown, so no
 * leak may be repaired (it could be one of them). */
static void bitmap_problem(struct check *c, const char *what, uint64_t offset)
{
    c->bitmaps_unknown = true;
    problem(c, false, "%s at offset %llu is malformed", what, (unsigned long long)offset);
}

static bool in_file(struct check *c, uint64_t offset, uint64_t length)
{
    uint64_t end;
    return !nv_add_overflow_u64(offset, length, &end) && end <= c->file_len;
}

/* One bitmap table: itself and the data clusters its entries point at. */
static int walk_bitmap_table(struct check *c, uint64_t offset, uint32_t entries,
                             struct nv_error *err)
{
    struct qcow2_state *s = c->bs->opaque;
    uint64_t bytes = (uint64_t)entries * 8;
    c->bitmap_table_bytes += bytes; /* tables sharing bytes cannot make this quadratic */
    if ((offset & (s->cluster_size - 1)) || !offset || !in_file(c, offset, bytes) ||
        c->bitmap_table_bytes > c->file_len) {
        bitmap_problem(c, "the bitmap table", offset);
        return 0;
    }
    reference(c, offset, bytes, "bitmap table");
    uint8_t *t = malloc(s->cluster_size);
    if (!t)
        return nv_error_set(err, -ENOMEM, "out of memory");
    int r = 0;
    for (uint64_t done = 0; done < bytes && r == 0; done += s->cluster_size) {
        uint64_t n = bytes - done < s->cluster_size ? bytes - done : s->cluster_size;
        if ((r = bdrv_pread(s->file, offset + done, t, n, err)) < 0)
            break;
        for (uint64_t i = 0; i < n / 8; i++) {
            uint64_t e = entry_at(t, i), data = e & QCOW2_OFFSET_MASK;
            if ((e & BITMAP_TABLE_RESERVED) || (data && (e & 1)) ||
                (data & (s->cluster_size - 1)) || (data && !in_file(c, data, s->cluster_size)))
                bitmap_problem(c, "a bitmap table entry", offset + done + 8 * i);
            else if (data)
                reference(c, data, s->cluster_size, "bitmap data cluster");
        }
    }
    free(t);
    return r;
}

/* The length of the directory entry at e, or 0 when it overruns the avail
 * bytes left of the directory. */
static uint64_t bitmap_entry_len(const uint8_t *e, uint64_t avail)
{
    if (avail < BITMAP_ENTRY_FIXED)
        return 0;
    uint64_t extra = nv_be32(e + 20), name = nv_be16(e + 18);
    uint64_t len = qcow2_round_up(BITMAP_ENTRY_FIXED + extra + name, 8);
    return len <= avail ? len : 0;
}

/* The directory's entries, nb of them filling it exactly. */
static int walk_bitmap_dir(struct check *c, const uint8_t *dir, uint64_t size, uint32_t nb,
                           uint64_t dir_offset, struct nv_error *err)
{
    uint64_t pos = 0;
    for (uint32_t i = 0; i < nb; i++) {
        uint64_t len = bitmap_entry_len(dir + pos, size - pos);
        if (!len) {
            bitmap_problem(c, "the bitmap directory entry", dir_offset + pos);
            return 0;
        }
        int r = walk_bitmap_table(c, nv_be64(dir + pos), nv_be32(dir + pos + 8), err);
        if (r < 0)
            return r;
        pos += len;
    }
    if (pos != size)
        bitmap_problem(c, "the bitmap directory (its size disagrees with its entries)", dir_offset);
    return 0;
}

/* The bitmaps extension counts only while its autoclear bit says it is
 * consistent; with the bit clear (a program that does not know bitmaps wrote
 * the image) it is stale and its clusters are leaks, as qemu-img check says. */
static int walk_bitmaps(struct check *c, struct nv_error *err)
{
    struct qcow2_state *s = c->bs->opaque;
    if (!s->bitmaps_ext || !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
        return 0;
    uint8_t ext[24] = {0};
    int r =
        s->bitmaps_ext_len == sizeof(ext) ? bdrv_pread(s->file, s->bitmaps_ext, ext, 24, err) : 0;
    if (r < 0)
        return r;
    uint32_t nb = nv_be32(ext);
    uint64_t size = nv_be64(ext + 8), offset = nv_be64(ext + 16);
    if (s->bitmaps_ext_len != sizeof(ext) || nb == 0 || nv_be32(ext + 4) || size == 0 ||
        size > BITMAP_DIR_MAX || !offset || (offset & (s->cluster_size - 1)) ||
        !in_file(c, offset, size)) {
        bitmap_problem(c, "the bitmaps header extension", s->bitmaps_ext - 8);
        return 0;
    }
    reference(c, offset, size, "bitmap directory");
    uint8_t *dir = malloc(size);
    if (!dir)
        return nv_error_set(err, -ENOMEM, "out of memory");
    r = bdrv_pread(s->file, offset, dir, size, err);
    if (r == 0)
        r = walk_bitmap_dir(c, dir, size, nb, offset, err);
    free(dir);
    return r;
}

/* COPIED must be set exactly when the refcount is 1 (active tables only). */
static int check_copied(struct check *c, struct nv_error *err)
{
    struct qcow2_state *s = c->bs->opaque;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK, rc;
        if (!l2 || l2 >> s->cluster_bits >= c->nclusters)
            continue;
        int r = qcow2_get_refcount(c->bs, l2 >> s->cluster_bits, &rc, err);
        if (r < 0)
            return r;
        if (!!(s->l1[i] & QCOW2_OFLAG_COPIED) != (rc == 1))
            problem(c, false, "L1 entry %u: COPIED is %s but the refcount is %llu", i,
                    (s->l1[i] & QCOW2_OFLAG_COPIED) ? "set" : "clear", (unsigned long long)rc);
        uint8_t *t;
        if ((r = qcow2_cache_get(c->bs, &s->l2_cache, l2, false, &t, err)) < 0)
            return r;
        for (uint64_t j = 0; j < s->l2_entries; j++) {
            uint64_t e = entry_at(t, j), off = e & QCOW2_OFFSET_MASK;
            if ((e & QCOW2_OFLAG_COMPRESSED) || !off || off >> s->cluster_bits >= c->nclusters)
                continue;
            if ((r = qcow2_get_refcount(c->bs, off >> s->cluster_bits, &rc, err)) < 0)
                return r;
            if (!!(e & QCOW2_OFLAG_COPIED) != (rc == 1))
                problem(c, false,
                        "L2 entry for cluster at %llu: COPIED is %s but the refcount "
                        "is %llu",
                        (unsigned long long)off, (e & QCOW2_OFLAG_COPIED) ? "set" : "clear",
                        (unsigned long long)rc);
        }
    }
    return 0;
}

static int compare_cluster(struct check *c, uint64_t cl, bool repair, struct nv_error *err)
{
    struct qcow2_state *s = c->bs->opaque;
    uint64_t rc, want = cl < c->nclusters ? c->expected[cl] : 0;
    int r = qcow2_get_refcount(c->bs, cl, &rc, err);
    if (r < 0)
        return r;
    /* as qemu-img: a leaked cluster inside the file still counts */
    if (want || (rc && cl < c->nclusters))
        c->res->image_end = (cl + 1) << s->cluster_bits;
    if (rc < want) {
        problem(c, false, "cluster %llu has refcount %llu but %llu references",
                (unsigned long long)cl, (unsigned long long)rc, (unsigned long long)want);
    } else if (rc > want) {
        problem(c, true, "cluster %llu is leaked (refcount %llu, %llu references)",
                (unsigned long long)cl, (unsigned long long)rc, (unsigned long long)want);
        if (repair) {
            /* Only unreferenced clusters change, the bitmaps' included in the
             * count: they stay consistent, so their bit stays. */
            if ((r = qcow2_clear_autoclear(c->bs, QCOW2_AUTOCLEAR_BITMAPS, err)) < 0 ||
                (r = qcow2_set_refcount(c->bs, cl, want, err)) < 0)
                return r;
            c->res->leaks_fixed++;
        }
    }
    return 0;
}

/* Refcounts for clusters past the end of the file are leaks. Each distinct
 * refcount block is looked at once, and only where its bytes are not zero,
 * so a hostile refcount table cannot make this run for hours. */
static int compare_beyond_file(struct check *c, bool repair, struct nv_error *err)
{
    struct qcow2_state *s = c->bs->opaque;
    uint8_t *seen = calloc(c->nclusters + 1, 1);
    if (!seen)
        return nv_error_set(err, -ENOMEM, "out of memory");
    uint64_t bytes_per_entry_bits = 1u << s->refcount_order; /* bits */
    int r = 0;
    for (uint64_t i = 0; i < s->reftable_entries && r == 0; i++) {
        uint64_t block = s->reftable[i] & QCOW2_OFFSET_MASK, first = i * s->refblock_entries;
        uint64_t bc = block >> s->cluster_bits;
        if (!block || first + s->refblock_entries <= c->nclusters || bc >= c->nclusters || seen[bc])
            continue;
        seen[bc] = 1;
        uint8_t *data;
        if ((r = qcow2_cache_get(c->bs, &s->refblock_cache, block, false, &data, err)) < 0)
            break;
        uint64_t from = first < c->nclusters ? c->nclusters - first : 0;
        uint64_t byte = from * bytes_per_entry_bits / 8;
        bool any = false;
        for (uint64_t k = byte; k < s->cluster_size && !any; k++)
            any = data[k] != 0;
        for (uint64_t e = from; any && e < s->refblock_entries && r == 0; e++)
            r = compare_cluster(c, first + e, repair, err);
    }
    free(seen);
    return r;
}

static int compare(struct check *c, bool repair, struct nv_error *err)
{
    int r = 0;
    for (uint64_t cl = 0; cl < c->nclusters && r == 0; cl++)
        r = compare_cluster(c, cl, repair, err);
    /* A truncated image still references the clusters it lost: their
     * refcounts are not leaks, and lowering them would let new allocations
     * land where its tables point. The truncation is reported already. */
    return r < 0 || c->past_eof ? r : compare_beyond_file(c, repair, err);
}

int qcow2_check(struct bdrv_node *bs, struct bdrv_check_result *res, bool repair_leaks,
                struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    memset(res, 0, sizeof(*res));
    int r = (bs->flags & BDRV_O_RDWR) ? qcow2_flush_metadata(bs, err) : 0;
    int64_t file_len = r < 0 ? r : bdrv_getlength(s->file, err);
    if (file_len < 0)
        return (int)file_len;
    struct check c = {.bs = bs,
                      .res = res,
                      .file_len = (uint64_t)file_len,
                      .nclusters =
                          qcow2_round_up((uint64_t)file_len, s->cluster_size) >> s->cluster_bits};
    if (c.nclusters > (1ull << 32) || !(c.expected = calloc(c.nclusters + 1, 4)))
        return nv_error_set(err, -ENOMEM, "%s: too many clusters to check", bs->filename);
    reference(&c, 0, s->cluster_size, "header");
    reference(&c, s->l1_offset, (uint64_t)s->l1_size * 8, "L1 table");
    reference(&c, s->reftable_offset, (uint64_t)s->reftable_clusters * s->cluster_size,
              "refcount table");
    for (uint64_t i = 0; i < s->reftable_entries; i++)
        reference(&c, s->reftable[i] & QCOW2_OFFSET_MASK,
                  (s->reftable[i] & QCOW2_OFFSET_MASK) ? s->cluster_size : 0, "refcount block");
    r = walk_l1(&c, s->l1, s->l1_size, err);
    if (r == 0)
        r = walk_snapshots(&c, err);
    if (r == 0)
        r = walk_bitmaps(&c, err);
    if (r == 0)
        r = compare(&c, repair_leaks && !c.bitmaps_unknown, err);
    if (r == 0)
        r = check_copied(&c, err);
    if (r == 0 && repair_leaks && res->leaks_fixed) {
        r = qcow2_flush_metadata(bs, err);
        if (r == 0)
            r = qcow2_sync(bs, err);
        if (r == 0) /* the clusters are free again */
            s->free_hint = 0;
    }
    free(c.expected);
    return r;
}
