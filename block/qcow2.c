/* qcow2.c - the qcow2 format driver: header parsing with every defence the
 * format's history taught (see ../shared/reference), open, close, resize.
 * Reads and writes are in qcow2-cluster.c, refcounts in qcow2-refcount.c. */
#include "qcow2.h"

#include <endian.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define QCOW2_MAX_BACKING_DEPTH 16

static __thread int backing_depth;

#define BAD(...) nv_error_set_status(err, NV_STATUS_CORRUPT, -EUCLEAN, __VA_ARGS__)

/* [offset, offset+len) lies in the file and offset is cluster aligned. */
static int check_table(struct bdrv_node *bs, const char *what, uint64_t offset, uint64_t len,
                       uint64_t file_len, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t end;
    if (offset & (s->cluster_size - 1))
        return BAD("%s: %s offset %llu is not aligned to a cluster", bs->filename, what,
                   (unsigned long long)offset);
    if (offset == 0 && len)
        return BAD("%s: %s offset is 0 (the header)", bs->filename, what);
    if (nv_add_overflow_u64(offset, len, &end) || end > file_len)
        return nv_error_set_status(
            err, NV_STATUS_CORRUPT, -EUCLEAN, /* truncated, or pointing out of it: damage */
            "%s: %s at offset %llu (%llu bytes) extends past the end of the file "
            "(%llu bytes)",
            bs->filename, what, (unsigned long long)offset, (unsigned long long)len,
            (unsigned long long)file_len);
    return 0;
}

static int parse_features(struct bdrv_node *bs, const uint8_t *h, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (s->version == 2) {
        s->refcount_order = 4;
        s->header_length = QCOW2_V2_HEADER_LEN;
        return 0;
    }
    s->incompatible = nv_be64(h + 72);
    s->compatible = nv_be64(h + 80);
    s->autoclear = nv_be64(h + 88);
    s->refcount_order = nv_be32(h + 96);
    s->header_length = nv_be32(h + 100);
    if (s->header_length < QCOW2_V3_HEADER_LEN || s->header_length > s->cluster_size)
        return BAD("%s: header_length %u is outside %u..%llu", bs->filename, s->header_length,
                   QCOW2_V3_HEADER_LEN, (unsigned long long)s->cluster_size);
    if (s->refcount_order > 6)
        return BAD("%s: refcount_order %u is above 6", bs->filename, s->refcount_order);
    if (s->incompatible & QCOW2_INCOMPAT_DATA_FILE)
        return nv_error_set(err, -ENOTSUP,
                            "%s: images with an external data file are not "
                            "supported",
                            bs->filename);
    if (s->incompatible & QCOW2_INCOMPAT_EXTL2)
        return nv_error_set(err, -ENOTSUP,
                            "%s: extended L2 entries (subclusters) are not "
                            "supported",
                            bs->filename);
    if (s->incompatible & ~QCOW2_INCOMPAT_KNOWN)
        return nv_error_set(err, -ENOTSUP, "%s: unknown incompatible features 0x%llx", bs->filename,
                            (unsigned long long)(s->incompatible & ~QCOW2_INCOMPAT_KNOWN));
    s->compression_type = s->header_length > 104 ? h[104] : 0;
    if (s->compression_type > 1)
        return nv_error_set(err, -ENOTSUP, "%s: unknown compression type %u", bs->filename,
                            s->compression_type);
    if ((s->compression_type != 0) != !!(s->incompatible & QCOW2_INCOMPAT_COMPRESSION))
        return BAD("%s: compression type %u disagrees with the compression feature bit",
                   bs->filename, s->compression_type);
    return 0;
}

static int parse_sizes(struct bdrv_node *bs, const uint8_t *h, uint64_t file_len,
                       struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    s->virtual_size = nv_be64(h + 24);
    s->l1_size = nv_be32(h + 36);
    s->l1_offset = nv_be64(h + 40);
    s->disk_l1_size = s->l1_size;
    s->disk_l1_offset = s->l1_offset;
    s->disk_virtual_size = s->virtual_size;
    s->reftable_offset = nv_be64(h + 48);
    s->reftable_clusters = nv_be32(h + 56);
    s->nb_snapshots = nv_be32(h + 60);
    s->snapshots_offset = nv_be64(h + 64);
    s->l2_entries = s->cluster_size / 8;
    s->refcount_max = s->refcount_order == 6 ? UINT64_MAX : (1ull << (1u << s->refcount_order)) - 1;
    s->refblock_entries = s->cluster_size * 8 >> s->refcount_order;

    uint64_t per_l2 = s->cluster_size * s->l2_entries;
    if (s->virtual_size > (1ull << 62))
        return BAD("%s: virtual size %llu is absurd", bs->filename,
                   (unsigned long long)s->virtual_size);
    uint64_t l1_needed = (s->virtual_size + per_l2 - 1) / per_l2;
    if ((uint64_t)s->l1_size * 8 > QCOW2_MAX_L1_BYTES)
        return BAD("%s: l1_size %u is too large", bs->filename, s->l1_size);
    if (s->l1_size < l1_needed)
        return BAD("%s: l1_size %u is too small for the virtual size %llu", bs->filename,
                   s->l1_size, (unsigned long long)s->virtual_size);
    int r = check_table(bs, "L1 table", s->l1_offset, (uint64_t)s->l1_size * 8, file_len, err);
    if (r < 0)
        return r;
    if (s->reftable_clusters == 0)
        return BAD("%s: refcount_table_clusters is 0", bs->filename);
    if ((uint64_t)s->reftable_clusters * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES)
        return BAD("%s: refcount table of %u clusters is too large", bs->filename,
                   s->reftable_clusters);
    s->reftable_entries = (uint64_t)s->reftable_clusters * s->cluster_size / 8;
    r = check_table(bs, "refcount table", s->reftable_offset,
                    (uint64_t)s->reftable_clusters * s->cluster_size, file_len, err);
    if (r < 0)
        return r;
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
        return BAD("%s: %u snapshots is too many", bs->filename, s->nb_snapshots);
    if (s->nb_snapshots && (r = check_table(bs, "snapshot table", s->snapshots_offset,
                                            (uint64_t)s->nb_snapshots * 40, file_len, err)) < 0)
        return r;
    return 0;
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

static int parse_header(struct bdrv_node *bs, uint64_t file_len, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint8_t h[112] = {0};
    int r = bdrv_pread(s->file, 0, h, file_len < sizeof(h) ? file_len : sizeof(h), err);
    if (r < 0)
        return r;
    if (file_len < QCOW2_V2_HEADER_LEN && file_len >= 4 && nv_be32(h) == QCOW2_MAGIC_BE)
        return nv_error_set_status(
            err, NV_STATUS_CORRUPT, -EUCLEAN,
            "%s: the qcow2 header is cut short: %llu bytes is shorter than a header", bs->filename,
            (unsigned long long)file_len);
    if (file_len < QCOW2_V2_HEADER_LEN)
        return BAD("%s: not a qcow2 image: %llu bytes is shorter than a header", bs->filename,
                   (unsigned long long)file_len);
    if (nv_be32(h) != QCOW2_MAGIC_BE)
        return BAD("%s: not a qcow2 image (bad magic)", bs->filename);
    s->version = nv_be32(h + 4);
    if (s->version != 2 && s->version != 3)
        return nv_error_set(err, -ENOTSUP, "%s: qcow2 version %u is not supported (2 or 3)",
                            bs->filename, s->version);
    if (s->version == 3 && file_len < QCOW2_V3_HEADER_LEN)
        return nv_error_set_status(err, NV_STATUS_CORRUPT, -EUCLEAN,
                                   "%s: version 3 header cut short", bs->filename);
    s->cluster_bits = nv_be32(h + 20);
    if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS || s->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return BAD("%s: cluster_bits %u is outside %d..%d", bs->filename, s->cluster_bits,
                   QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
    s->cluster_size = 1ull << s->cluster_bits;
    if (nv_be32(h + 32) != 0)
        return nv_error_set(err, -ENOTSUP,
                            "%s: encrypted qcow2 images (crypt_method %u) are "
                            "not supported",
                            bs->filename, nv_be32(h + 32));
    s->backing_file_offset = nv_be64(h + 8);
    s->backing_file_size = nv_be32(h + 16);
    if ((r = parse_features(bs, h, err)) < 0 || (r = parse_sizes(bs, h, file_len, err)) < 0)
        return r;
    uint64_t cs = s->cluster_size;
    if (overlaps(s->l1_offset, (uint64_t)s->l1_size * 8, s->reftable_offset,
                 (uint64_t)s->reftable_clusters * cs))
        return BAD("%s: the L1 table and the refcount table overlap", bs->filename);
    if (s->nb_snapshots &&
        (overlaps(s->snapshots_offset, 40, s->l1_offset, (uint64_t)s->l1_size * 8) ||
         overlaps(s->snapshots_offset, 40, s->reftable_offset,
                  (uint64_t)s->reftable_clusters * cs)))
        return BAD("%s: the snapshot table overlaps another table", bs->filename);
    if (s->backing_file_size > QCOW2_MAX_BACKING_NAME ||
        (s->backing_file_size &&
         (s->backing_file_offset > cs || s->backing_file_offset + s->backing_file_size > cs ||
          s->backing_file_offset + s->backing_file_size > file_len)))
        return BAD("%s: backing file name (%u bytes at %llu) is not inside the header cluster",
                   bs->filename, s->backing_file_size, (unsigned long long)s->backing_file_offset);
    return 0;
}

/* Header extensions: bounds-checked, the backing format and where the bitmaps
 * extension lies remembered, all of them (unknown ones included) left
 * untouched on disk. */
static int parse_extensions(struct bdrv_node *bs, uint64_t file_len, char *backing_fmt,
                            size_t fmt_size, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t end = s->backing_file_size ? s->backing_file_offset : s->cluster_size;
    if (end > file_len)
        end = file_len;
    uint64_t pos = s->header_length;
    backing_fmt[0] = '\0';
    while (pos + 8 <= end) {
        uint8_t e[8];
        int r = bdrv_pread(s->file, pos, e, 8, err);
        if (r < 0)
            return r;
        uint32_t type = nv_be32(e), len = nv_be32(e + 4);
        if (type == QCOW2_EXT_END)
            return 0;
        if (len > end - pos - 8)
            return BAD("%s: header extension 0x%08x at offset %llu overruns the header",
                       bs->filename, type, (unsigned long long)pos);
        if (type == QCOW2_EXT_BACKING_FORMAT) {
            if (len >= fmt_size)
                return BAD("%s: backing format name too long", bs->filename);
            if ((r = bdrv_pread(s->file, pos + 8, backing_fmt, len, err)) < 0)
                return r;
            backing_fmt[len] = '\0';
        } else if (type == QCOW2_EXT_BITMAPS) { /* checked by qcow2_check */
            s->bitmaps_ext = pos + 8;
            s->bitmaps_ext_len = len;
        }
        pos += 8 + qcow2_round_up(len, 8);
    }
    return 0;
}

static int load_table(struct bdrv_node *bs, uint64_t offset, uint64_t entries, uint64_t **out,
                      struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t *t = calloc(entries ? entries : 1, 8);
    if (!t)
        return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    int r = entries ? bdrv_pread(s->file, offset, t, entries * 8, err) : 0;
    if (r < 0) {
        free(t);
        return r;
    }
    for (uint64_t i = 0; i < entries; i++)
        t[i] = be64toh(t[i]);
    *out = t;
    return 0;
}

static size_t sparse_table_bytes(uint64_t entries)
{
    return qcow2_round_up((entries ? entries : 1) * 8, (uint64_t)sysconf(_SC_PAGESIZE));
}

uint64_t *qcow2_sparse_table_new(uint64_t entries)
{
    return nv_pages_alloc(sparse_table_bytes(entries));
}

void qcow2_sparse_table_free(uint64_t *t, uint64_t entries)
{
    nv_pages_free(t, sparse_table_bytes(entries));
}

/* The refcount table, read a page at a time: only pages with an entry in
 * them are copied, so a 64 KiB table that points at one refcount block keeps
 * one resident page (a host runs one TPM process per VM). */
static int load_sparse_table(struct bdrv_node *bs, uint64_t offset, uint64_t entries,
                             uint64_t **out, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t *t = qcow2_sparse_table_new(entries), page[512];
    if (!t)
        return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    for (uint64_t i = 0; i < entries; i += 512) {
        uint64_t n = entries - i < 512 ? entries - i : 512;
        int r = bdrv_pread(s->file, offset + i * 8, page, n * 8, err);
        if (r < 0) {
            qcow2_sparse_table_free(t, entries);
            return r;
        }
        if (nv_all_zero(page, n * 8))
            continue;
        for (uint64_t j = 0; j < n; j++)
            t[i + j] = be64toh(page[j]);
    }
    *out = t;
    return 0;
}

/* Every L1 and refcount-table entry: reserved bits clear, aligned, in the file. */
static int check_entries(struct bdrv_node *bs, const char *what, const uint64_t *t, uint64_t n,
                         uint64_t reserved, uint64_t file_len, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t off = t[i] & QCOW2_OFFSET_MASK;
        if (t[i] & reserved)
            return BAD("%s: %s entry %llu has reserved bits set (0x%016llx)", bs->filename, what,
                       (unsigned long long)i, (unsigned long long)t[i]);
        if (off && (off & (s->cluster_size - 1)))
            return BAD("%s: %s entry %llu: offset %llu is not cluster aligned", bs->filename, what,
                       (unsigned long long)i, (unsigned long long)off);
        if (off && off < s->cluster_size)
            return BAD("%s: %s entry %llu: offset %llu is outside the file", bs->filename, what,
                       (unsigned long long)i, (unsigned long long)off);
        /* The table it points at must be in the file whole: a truncated
         * image is damaged, not one whose tables end in zeros. */
        if (off && (off > file_len || file_len - off < s->cluster_size))
            return nv_error_set_status(err, NV_STATUS_CORRUPT, -EUCLEAN,
                                       "%s: %s entry %llu: offset %llu is outside the file (%llu "
                                       "bytes): the image is truncated or corrupt",
                                       bs->filename, what, (unsigned long long)i,
                                       (unsigned long long)off, (unsigned long long)file_len);
    }
    return 0;
}

struct meta_range {
    uint64_t start, end;
    const char *kind;
};

static int compare_ranges(const void *a, const void *b)
{
    const struct meta_range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* No two metadata structures of different kinds may share a byte: every L2
 * table and refcount block against the header, the tables and each other.
 * Sorted, so a hostile image cannot make it quadratic. */
static int check_metadata_layout(struct bdrv_node *bs, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    size_t cap = 4 + (size_t)s->l1_size + (size_t)s->reftable_entries, n = 0;
    struct meta_range *r = malloc(cap * sizeof(*r));
    if (!r)
        return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    uint64_t cs = s->cluster_size;
    r[n++] = (struct meta_range){0, cs, "header"};
    r[n++] = (struct meta_range){s->l1_offset, s->l1_offset + (uint64_t)s->l1_size * 8, "L1 table"};
    r[n++] = (struct meta_range){s->reftable_offset,
                                 s->reftable_offset + (uint64_t)s->reftable_clusters * cs,
                                 "refcount table"};
    for (uint32_t i = 0; i < s->l1_size; i++)
        if (s->l1[i] & QCOW2_OFFSET_MASK)
            r[n++] = (struct meta_range){s->l1[i] & QCOW2_OFFSET_MASK,
                                         (s->l1[i] & QCOW2_OFFSET_MASK) + cs, "L2 table"};
    for (uint64_t i = 0; i < s->reftable_entries; i++)
        if (s->reftable[i] & QCOW2_OFFSET_MASK)
            r[n++] =
                (struct meta_range){s->reftable[i] & QCOW2_OFFSET_MASK,
                                    (s->reftable[i] & QCOW2_OFFSET_MASK) + cs, "refcount block"};
    qsort(r, n, sizeof(*r), compare_ranges);
    int ret = 0;
    for (size_t i = 1; i < n && ret == 0; i++) {
        /* The furthest-reaching earlier range, against this one. */
        if (r[i - 1].end > r[i].start && r[i - 1].start < r[i].end &&
            strcmp(r[i - 1].kind, r[i].kind) != 0)
            ret = BAD("%s: the %s at offset %llu overlaps the %s at offset %llu", bs->filename,
                      r[i].kind, (unsigned long long)r[i].start, r[i - 1].kind,
                      (unsigned long long)r[i - 1].start);
        if (r[i].end < r[i - 1].end)
            r[i] = (struct meta_range){r[i].start, r[i - 1].end, r[i - 1].kind};
    }
    free(r);
    return ret;
}

static int load_snapshots(struct bdrv_node *bs, uint64_t file_len, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (!s->nb_snapshots)
        return 0;
    s->snapshots = calloc(s->nb_snapshots, sizeof(*s->snapshots));
    if (!s->snapshots)
        return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    uint64_t pos = s->snapshots_offset;
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        uint8_t e[40];
        if (pos + 40 > file_len || pos - s->snapshots_offset > (64u << 20))
            return BAD("%s: snapshot table entry %u is outside the file", bs->filename, i);
        int r = bdrv_pread(s->file, pos, e, 40, err);
        if (r < 0)
            return r;
        s->snapshots[i].l1_offset = nv_be64(e);
        s->snapshots[i].l1_size = nv_be32(e + 8);
        uint64_t extra = nv_be32(e + 36), id = (uint16_t)(e[12] << 8 | e[13]),
                 name = (uint16_t)(e[14] << 8 | e[15]);
        if (extra > (1u << 20))
            return BAD("%s: snapshot %u has %llu bytes of extra data", bs->filename, i,
                       (unsigned long long)extra);
        if ((uint64_t)s->snapshots[i].l1_size * 8 > QCOW2_MAX_L1_BYTES)
            return BAD("%s: snapshot %u: L1 table too large", bs->filename, i);
        if ((r = check_table(bs, "snapshot L1 table", s->snapshots[i].l1_offset,
                             (uint64_t)s->snapshots[i].l1_size * 8, file_len, err)) < 0)
            return r;
        /* The padding after the last entry need not exist in the file. */
        if (pos + 40 + extra + id + name > file_len)
            return BAD("%s: snapshot table entry %u extends past the end of the file", bs->filename,
                       i);
        s->snapshots_size = pos + 40 + extra + id + name - s->snapshots_offset;
        pos += qcow2_round_up(40 + extra + id + name, 8);
    }
    return 0;
}

/* A backing file, read-only, relative names taken from the image's folder. */
static int open_backing(struct bdrv_node *bs, const char *fmt, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    char name[QCOW2_MAX_BACKING_NAME + 1], path[PATH_MAX];
    int r = bdrv_pread(s->file, s->backing_file_offset, name, s->backing_file_size, err);
    if (r < 0)
        return r;
    name[s->backing_file_size] = '\0';
    if (strlen(name) != s->backing_file_size || strchr(name, ':'))
        return nv_error_set(err, -ENOTSUP, "%s: backing file '%s' is not a plain file name",
                            bs->filename, name);
    if (bs->flags & BDRV_O_RDWR)
        return nv_error_set(err, -ENOTSUP,
                            "%s: writing to an image with a backing file ('%s') "
                            "is not supported; open it read-only",
                            bs->filename, name);
    if (backing_depth >= QCOW2_MAX_BACKING_DEPTH)
        return nv_error_set(err, -ELOOP, "%s: backing chain longer than %d", bs->filename,
                            QCOW2_MAX_BACKING_DEPTH);
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", bs->filename);
    if (name[0] == '/')
        snprintf(path, sizeof(path), "%s", name);
    else
        snprintf(path, sizeof(path), "%s/%s", dirname(dir), name);
    backing_depth++;
    s->backing = bdrv_open_format(fmt[0] ? fmt : NULL, path, 0, NULL, err);
    backing_depth--;
    return s->backing
               ? 0
               : nv_error_prefix(err, err ? err->code : -EIO, "%s: backing file", bs->filename);
}

int qcow2_write_header_fields(struct bdrv_node *bs, bool with_l1, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (with_l1) {
        s->disk_l1_size = s->l1_size;
        s->disk_l1_offset = s->l1_offset;
        s->disk_virtual_size = s->virtual_size;
    }
    uint8_t h[QCOW2_V3_HEADER_LEN] = {0};
    nv_put_be32(h, QCOW2_MAGIC_BE);
    nv_put_be32(h + 4, s->version);
    nv_put_be64(h + 8, s->backing_file_offset);
    nv_put_be32(h + 16, s->backing_file_size);
    nv_put_be32(h + 20, s->cluster_bits);
    nv_put_be64(h + 24, s->disk_virtual_size);
    nv_put_be32(h + 36, s->disk_l1_size);
    nv_put_be64(h + 40, s->disk_l1_offset);
    nv_put_be64(h + 48, s->reftable_offset);
    nv_put_be32(h + 56, s->reftable_clusters);
    nv_put_be32(h + 60, s->nb_snapshots);
    nv_put_be64(h + 64, s->snapshots_offset);
    nv_put_be64(h + 72, s->incompatible);
    nv_put_be64(h + 80, s->compatible);
    nv_put_be64(h + 88, s->autoclear);
    nv_put_be32(h + 96, s->refcount_order);
    nv_put_be32(h + 100, s->header_length);
    size_t len = s->version == 2 ? QCOW2_V2_HEADER_LEN : QCOW2_V3_HEADER_LEN;
    s->need_sync = true;
    bdrv_event(s->file, BDRV_EV_QCOW2_HEADER_UPDATE);
    return bdrv_pwrite(s->file, 0, h, len, err);
}

static unsigned cache_count(uint64_t budget, uint64_t cluster_size, unsigned max)
{
    uint64_t n = budget / cluster_size;
    return n < 4 ? 4 : n > max ? max : (unsigned)n;
}

/* Read-write opens refuse what nvtpm must not write. They write nothing:
 * the caller may still refuse the open (a wrong key, a busy image), and a
 * refused open must leave the image as it was. */
static int prepare_for_writing(struct bdrv_node *bs, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (s->incompatible & QCOW2_INCOMPAT_CORRUPT)
        return nv_error_set_status(err, NV_STATUS_CORRUPT, -EUCLEAN,
                                   "%s: the image is marked corrupt; repair it with "
                                   "'qemu-img check -r all' first",
                                   bs->filename);
    if (s->incompatible & QCOW2_INCOMPAT_DIRTY)
        return nv_error_set_status(err, NV_STATUS_CORRUPT, -EUCLEAN,
                                   "%s: the image is marked dirty (its refcounts may be "
                                   "stale); repair it with 'qemu-img check -r all' first",
                                   bs->filename);
    return 0;
}

int qcow2_clear_autoclear(struct bdrv_node *bs, uint64_t keep, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t was = s->autoclear;
    if (!(was & ~keep))
        return 0;
    s->autoclear = was & keep;
    int r = qcow2_write_header_fields(bs, false, err);
    if (r == 0)
        r = qcow2_sync(bs, err); /* on disk before the change it announces */
    if (r < 0)
        s->autoclear = was; /* the next change tries again */
    return r;
}

static int qcow2_open(struct bdrv_node *bs, const char *spec, struct nv_error *err)
{
    (void)spec;
    struct qcow2_state *s = bs->opaque;
    s->file = bs->file;
    int64_t file_len = bdrv_getlength(s->file, err);
    char backing_fmt[32];
    int r = file_len < 0 ? (int)file_len : parse_header(bs, (uint64_t)file_len, err);
    if (r == 0)
        r = parse_extensions(bs, (uint64_t)file_len, backing_fmt, sizeof(backing_fmt), err);
    if (r == 0)
        r = load_table(bs, s->l1_offset, s->l1_size, &s->l1, err);
    if (r == 0)
        r = check_entries(bs, "L1", s->l1, s->l1_size, QCOW2_L1_RESERVED, (uint64_t)file_len, err);
    if (r == 0)
        r = load_sparse_table(bs, s->reftable_offset, s->reftable_entries, &s->reftable, err);
    if (r == 0)
        r = check_entries(bs, "refcount table", s->reftable, s->reftable_entries,
                          QCOW2_REFT_RESERVED, (uint64_t)file_len, err);
    if (r == 0)
        r = load_snapshots(bs, (uint64_t)file_len, err);
    if (r == 0)
        r = check_metadata_layout(bs, err);
    if (r == 0)
        s->l1_clusters_allocated =
            (uint32_t)(qcow2_round_up((uint64_t)s->l1_size * 8, s->cluster_size) >>
                       s->cluster_bits);
    /* No more L2 tables than the L1 table points at (a TPM's image has one
     * or two; at least 4, for an L1 table that grows later): each slot costs
     * its descriptor in every TPM process. */
    uint64_t l2_budget = (uint64_t)(s->l1_size ? s->l1_size : 1) * s->cluster_size;
    if (r == 0 &&
        (qcow2_cache_init(
             &s->l2_cache, QCOW2_META_L2,
             cache_count(l2_budget < (4u << 20) ? l2_budget : (4u << 20), s->cluster_size, 1024),
             s->cluster_size) < 0 ||
         qcow2_cache_init(&s->refblock_cache, QCOW2_META_REFBLOCK,
                          cache_count(1u << 20, s->cluster_size, 256), s->cluster_size) < 0))
        r = nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    if (r == 0 && s->backing_file_size)
        r = open_backing(bs, backing_fmt, err);
    if (r == 0 && (bs->flags & BDRV_O_OWNER)) /* only an owner writes */
        r = prepare_for_writing(bs, err);
    return r; /* on failure the caller closes, which frees what was loaded */
}

/* Free what qcow2_open loaded, writing nothing back. */
static void free_state(struct qcow2_state *s)
{
    qcow2_cache_destroy(&s->l2_cache);
    qcow2_cache_destroy(&s->refblock_cache);
    free(s->l1);
    qcow2_sparse_table_free(s->reftable, s->reftable_entries);
    free(s->snapshots);
    free(s->pending);
    free(s->decomp_buf);
    if (s->backing)
        bdrv_close(s->backing);
    memset(s, 0, sizeof(*s));
}

static void qcow2_close(struct bdrv_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    if ((bs->flags & BDRV_O_OWNER) && s->l1) {
        struct nv_error err = {0};
        bool known = bs->file->last_write_failed; /* the caller was told already */
        if ((qcow2_flush_metadata(bs, &err) < 0 || qcow2_sync(bs, &err) < 0) && !known)
            fprintf(stderr, "nvtpm: %s\n", err.msg);
    }
    free_state(s);
}

/* Ownership was just taken: another owner may have changed the header, the
 * tables and the clusters they point to, so all of it is read anew into a
 * fresh state, as at open, and the old state goes only once that worked. It
 * holds nothing unwritten: it was flushed when the node gave up ownership (or
 * never owned the file). */
static int qcow2_invalidate(struct bdrv_node *bs, struct nv_error *err)
{
    struct qcow2_state *old = bs->opaque, *fresh = calloc(1, sizeof(*fresh));
    if (!fresh)
        return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    bs->opaque = fresh;
    int r = qcow2_open(bs, NULL, err);
    struct qcow2_state *gone = r < 0 ? fresh : old;
    bs->opaque = r < 0 ? old : fresh;
    free_state(gone);
    free(gone);
    return r;
}

static int check_request(struct bdrv_node *bs, const char *what, uint64_t offset, uint64_t len,
                         struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t end;
    if (nv_add_overflow_u64(offset, len, &end) || end > s->virtual_size)
        return nv_error_set(err, -ERANGE,
                            "%s: %s of %llu bytes at offset %llu is past the end of the image "
                            "(%llu bytes)",
                            bs->filename, what, (unsigned long long)len, (unsigned long long)offset,
                            (unsigned long long)s->virtual_size);
    return 0;
}

static int qcow2_pread(struct bdrv_node *bs, uint64_t offset, void *buf, size_t len,
                       struct nv_error *err)
{
    int r = check_request(bs, "read", offset, len, err);
    return r < 0 ? r : qcow2_read(bs, offset, buf, len, err);
}

static int qcow2_flush(struct bdrv_node *bs, struct nv_error *err);

/* directsync: a write is durable when it returns, its metadata included. */
static int after_write(struct bdrv_node *bs, int r, struct nv_error *err)
{
    return r == 0 && (bs->flags & BDRV_O_CACHE_DIRECTSYNC) ? qcow2_flush(bs, err) : r;
}

static int qcow2_pwrite(struct bdrv_node *bs, uint64_t offset, const void *buf, size_t len,
                        struct nv_error *err)
{
    int r = check_request(bs, "write", offset, len, err);
    if (r == 0)
        r = qcow2_clear_autoclear(bs, 0, err);
    return r < 0 ? r : after_write(bs, qcow2_write(bs, offset, buf, len, err), err);
}

static int qcow2_pwrite_zeroes(struct bdrv_node *bs, uint64_t offset, uint64_t len,
                               struct nv_error *err)
{
    int r = check_request(bs, "write", offset, len, err);
    if (r == 0)
        r = qcow2_clear_autoclear(bs, 0, err);
    return r < 0 ? r : after_write(bs, qcow2_write_zeroes(bs, offset, len, err), err);
}

static int qcow2_flush(struct bdrv_node *bs, struct nv_error *err)
{
    int r = qcow2_flush_metadata(bs, err);
    if (r < 0)
        return r;
    /* Durability even when nothing was written since: the caller asked. */
    ((struct qcow2_state *)bs->opaque)->need_sync = true;
    return qcow2_sync(bs, err);
}

static void qcow2_release_memory(struct bdrv_node *bs)
{
    struct qcow2_state *s = bs->opaque;
    qcow2_cache_release(&s->l2_cache, s->cluster_size);
    qcow2_cache_release(&s->refblock_cache, s->cluster_size);
}

static int64_t qcow2_getlength(struct bdrv_node *bs, struct nv_error *err)
{
    (void)err;
    return (int64_t)((struct qcow2_state *)bs->opaque)->virtual_size;
}

/* Grow the L1 table to hold n entries: a new table elsewhere, then the
 * header points at it, then the old one is freed (all by the flush order). */
static int grow_l1(struct bdrv_node *bs, uint32_t n, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t clusters = qcow2_round_up((uint64_t)n * 8, s->cluster_size) >> s->cluster_bits;
    uint64_t *l1 = calloc(n, 8);
    if (!l1)
        return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
    int64_t off = qcow2_alloc_clusters(bs, clusters, err);
    if (off < 0) {
        free(l1);
        return (int)off;
    }
    memcpy(l1, s->l1, (uint64_t)s->l1_size * 8);
    int r = qcow2_free_later(bs, s->l1_offset,
                             (uint64_t)s->l1_clusters_allocated << s->cluster_bits, err);
    free(s->l1);
    s->l1 = l1;
    s->l1_size = n;
    s->l1_offset = (uint64_t)off;
    s->l1_clusters_allocated = (uint32_t)clusters;
    s->l1_dirty = s->header_l1_dirty = true;
    return r;
}

int qcow2_resize(struct bdrv_node *bs, uint64_t new_size, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (new_size < s->virtual_size)
        return nv_error_set(err, -ENOTSUP, "%s: shrinking a qcow2 image is not supported",
                            bs->filename);
    uint64_t per_l2 = s->cluster_size * s->l2_entries;
    if (new_size > (1ull << 62) || (new_size + per_l2 - 1) / per_l2 * 8 > QCOW2_MAX_L1_BYTES)
        return nv_error_set(err, -EFBIG, "%s: %llu bytes is too large", bs->filename,
                            (unsigned long long)new_size);
    uint32_t needed = (uint32_t)((new_size + per_l2 - 1) / per_l2);
    /* a bitmap covers the whole virtual disk: a new size makes it stale */
    int r = new_size == s->virtual_size ? 0 : qcow2_clear_autoclear(bs, 0, err);
    if (r == 0 && needed > s->l1_size)
        r = grow_l1(bs, needed, err);
    if (r < 0)
        return r;
    s->virtual_size = new_size;
    s->header_l1_dirty = true;
    r = qcow2_flush_metadata(bs, err);
    return r < 0 ? r : qcow2_sync(bs, err);
}

static int qcow2_truncate(struct bdrv_node *bs, uint64_t length, struct nv_error *err)
{
    return qcow2_resize(bs, length, err);
}

static int qcow2_reopen_check(struct bdrv_node *bs, unsigned new_flags, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    bool was_rw = bs->flags & BDRV_O_RDWR, will_rw = new_flags & BDRV_O_RDWR;
    if (was_rw && (bs->flags & BDRV_O_OWNER) && !(will_rw && (new_flags & BDRV_O_OWNER)))
        return qcow2_flush(bs, err); /* nothing cached may be left unwritable */
    if (!was_rw && will_rw) {
        if (s->backing)
            return nv_error_set(err, -ENOTSUP,
                                "%s: writing to an image with a backing file is "
                                "not supported",
                                bs->filename);
        if (s->incompatible & (QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_DIRTY))
            return nv_error_set_status(
                err, NV_STATUS_CORRUPT, -EUCLEAN,
                "%s: the image is marked %s; repair it with "
                "'qemu-img check -r all' first",
                bs->filename, (s->incompatible & QCOW2_INCOMPAT_CORRUPT) ? "corrupt" : "dirty");
    }
    return 0;
}

const struct bdrv_driver bdrv_qcow2 = {
    .name = "qcow2",
    .state_size = sizeof(struct qcow2_state),
    .open = qcow2_open,
    .close = qcow2_close,
    .pread = qcow2_pread,
    .pwrite = qcow2_pwrite,
    .pwrite_zeroes = qcow2_pwrite_zeroes,
    .flush = qcow2_flush,
    .release_memory = qcow2_release_memory,
    .getlength = qcow2_getlength,
    .truncate = qcow2_truncate,
    .check = qcow2_check,
    .check_mapped = qcow2_check_mapped,
    .create = qcow2_create,
    .reopen_check = qcow2_reopen_check,
    .invalidate = qcow2_invalidate,
};
