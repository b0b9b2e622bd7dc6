/* qcow2.h - the qcow2 format driver's private interface, shared by the
 * qcow2*.c files of block/. QEMU's docs/interop/qcow2 specification is the
 * authority on the format; docs/qcow2.md says what nvtpm supports.
 *
 * Metadata goes through a write-back table cache whose flush keeps the
 * on-disk image consistent at every instant (see qcow2_flush_metadata). */
#ifndef NVTPM_BLOCK_QCOW2_H
#define NVTPM_BLOCK_QCOW2_H

#include "internal.h"

#define QCOW2_MAGIC_BE           0x514649fbu
#define QCOW2_V2_HEADER_LEN      72
#define QCOW2_V3_HEADER_LEN      104
#define QCOW2_MIN_CLUSTER_BITS   9
#define QCOW2_MAX_CLUSTER_BITS   21
#define QCOW2_MAX_L1_BYTES       (32u << 20)
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_SNAPSHOTS      65536
#define QCOW2_MAX_BACKING_NAME   1023

/* Header features. */
#define QCOW2_INCOMPAT_DIRTY       (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT     (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2       (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN                                                                       \
    (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_COMPRESSION)

/* Autoclear bits: an extension is consistent only while its bit is set. */
#define QCOW2_AUTOCLEAR_BITMAPS (1ull << 0)

#define QCOW2_EXT_END            0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_DATA_FILE      0x44415441u
#define QCOW2_EXT_BITMAPS        0x23852875u

/* L1, L2 and reftable entries. */
#define QCOW2_OFLAG_COPIED     (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO       (1ull << 0)
#define QCOW2_OFFSET_MASK      0x00fffffffffffe00ull
#define QCOW2_L1_RESERVED      0x7f000000000001ffull
#define QCOW2_L2_RESERVED      0x3f000000000001feull
#define QCOW2_REFT_RESERVED    0x00000000000001ffull

/* A cached cluster-sized table (an L2 table or a refcount block), kept in
 * its on-disk (big-endian) form. */
/* A table is read a 4 KiB page at a time, as its entries are asked for: an
 * nvtpm image uses a few hundred bytes of its one L2 table and refcount
 * block, and a TPM's process need not hold their 64 KiB each (issue 19). */
#define QCOW2_CACHE_PAGE  4096u
#define QCOW2_CACHE_PAGES ((2u << 20) / QCOW2_CACHE_PAGE) /* of the largest cluster */

struct qcow2_table {
    uint64_t offset; /* host offset; 0 = empty slot */
    uint8_t *data;
    bool dirty;
    uint64_t used;                           /* for LRU */
    uint64_t loaded[QCOW2_CACHE_PAGES / 64]; /* a bit per page read (or zeroed) */
};

/* Kinds of metadata, for overlap checks: a structure may be written over
 * itself, never over another. */
enum qcow2_meta {
    QCOW2_META_NONE,
    QCOW2_META_L1,
    QCOW2_META_REFTABLE,
    QCOW2_META_L2,
    QCOW2_META_REFBLOCK,
};

struct qcow2_cache {
    enum qcow2_meta kind;
    struct qcow2_table *tables;
    uint8_t *memory; /* the tables' data, one block: pages never used stay unmapped */
    size_t size;     /* of memory */
    unsigned count;
    uint64_t tick;
    unsigned last; /* index of the last hit */
};

struct qcow2_snapshot {
    uint64_t l1_offset;
    uint32_t l1_size;
};

/* A reference to give back once the metadata that dropped it is on disk. */
struct qcow2_pending_free {
    uint64_t offset;
    uint64_t length;
};

struct qcow2_state {
    struct bdrv_node *file;
    uint32_t version;
    unsigned cluster_bits;
    uint64_t cluster_size;
    uint64_t l2_entries;
    uint64_t virtual_size;
    uint64_t incompatible, compatible, autoclear;
    uint32_t header_length;
    uint8_t compression_type; /* 0 zlib, 1 zstd */
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    /* The bitmaps extension (nvtpm keeps it, and counts its clusters while
     * its autoclear bit says it is consistent); bitmaps_ext = 0: none. */
    uint64_t bitmaps_ext; /* file offset of its data */
    uint32_t bitmaps_ext_len;

    unsigned refcount_order;
    uint64_t refcount_max;
    uint64_t refblock_entries;

    uint64_t *l1; /* host byte order */
    uint32_t l1_size;
    uint64_t l1_offset;
    uint32_t disk_l1_size; /* what the header on disk says */
    uint64_t disk_l1_offset, disk_virtual_size;
    uint32_t l1_clusters_allocated; /* clusters of the table on disk */

    uint64_t *reftable; /* host byte order */
    uint64_t reftable_entries;
    uint64_t reftable_offset;
    uint32_t reftable_clusters;

    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t snapshots_size; /* bytes of the snapshot table */
    struct qcow2_snapshot *snapshots;

    struct qcow2_cache l2_cache, refblock_cache;

    /* What the next metadata flush must write, in order. */
    bool reftable_dirty, header_reftable_dirty, l1_dirty, header_l1_dirty;
    bool need_sync; /* something was written since the last fdatasync */
    bool in_flush;
    struct qcow2_pending_free *pending;
    size_t npending, pending_cap;

    uint64_t free_hint; /* cluster index where the free-cluster search starts */

    struct bdrv_node *backing;
    uint8_t *decomp_buf; /* the last decompressed cluster */
    uint64_t decomp_entry;
    bool decomp_valid;
};

static inline uint64_t qcow2_round_up(uint64_t v, uint64_t align)
{
    return (v + align - 1) & ~(align - 1);
}

/* qcow2.c: the refcount table's memory, an anonymous mapping of its own
 * (zeroed; pages that only ever hold zeros never become resident). */
uint64_t *qcow2_sparse_table_new(uint64_t entries);
void qcow2_sparse_table_free(uint64_t *t, uint64_t entries);

/* qcow2-cache.c */
int qcow2_cache_init(struct qcow2_cache *c, enum qcow2_meta kind, unsigned count,
                     uint64_t cluster_size);
void qcow2_cache_destroy(struct qcow2_cache *c);
/* Give back the memory of every clean table (its pages are read again when
 * asked for); dirty tables stay. */
void qcow2_cache_release(struct qcow2_cache *c, uint64_t cluster_size);
/* Find or load the table at offset, all of it; fresh = start from zeros, not disk. */
int qcow2_cache_get(struct bdrv_node *bs, struct qcow2_cache *c, uint64_t offset, bool fresh,
                    uint8_t **data, struct nv_error *err);
/* The same, but only bytes [byte, byte + len) of the table need be loaded:
 * what one entry's read or update touches. */
int qcow2_cache_get_part(struct bdrv_node *bs, struct qcow2_cache *c, uint64_t offset,
                         uint64_t byte, uint64_t len, uint8_t **data, struct nv_error *err);
void qcow2_cache_mark_dirty(struct qcow2_cache *c, uint64_t offset);
/* Announce the write of a metadata table of this kind (bdrv_event). */
void qcow2_announce_write(struct bdrv_node *bs, enum qcow2_meta kind);
/* Write every dirty table of c (after an overlap check each): the pages of
 * it that were loaded, the others being on disk as they are. */
int qcow2_cache_write_dirty(struct bdrv_node *bs, struct qcow2_cache *c, enum qcow2_meta kind,
                            struct nv_error *err);
bool qcow2_cache_has_dirty(const struct qcow2_cache *c);
void qcow2_cache_forget(struct qcow2_cache *c, uint64_t offset);

/* qcow2-refcount.c */
int qcow2_get_refcount(struct bdrv_node *bs, uint64_t cluster, uint64_t *refcount,
                       struct nv_error *err);
int qcow2_set_refcount(struct bdrv_node *bs, uint64_t cluster, uint64_t refcount,
                       struct nv_error *err);
/* Allocate n contiguous clusters (refcount 0 -> 1); returns the host offset. */
int64_t qcow2_alloc_clusters(struct bdrv_node *bs, uint64_t n, struct nv_error *err);
/* Drop one reference to each cluster of [offset, offset+length) once the
 * metadata that stopped referencing them is on disk. */
int qcow2_free_later(struct bdrv_node *bs, uint64_t offset, uint64_t length, struct nv_error *err);
/* Write all dirty metadata in crash-safe order, with the flushes between. */
int qcow2_flush_metadata(struct bdrv_node *bs, struct nv_error *err);
int qcow2_sync(struct bdrv_node *bs, struct nv_error *err);
/* Refuse a metadata or data write that would land on a metadata structure
 * other than the one being written (own: its kind; QCOW2_META_NONE for data). */
int qcow2_check_overlap(struct bdrv_node *bs, uint64_t offset, uint64_t length, enum qcow2_meta own,
                        struct nv_error *err);
/* The fixed header fields; with_l1 publishes the in-memory L1 table and size,
 * otherwise the ones already on disk are kept. */
int qcow2_write_header_fields(struct bdrv_node *bs, bool with_l1, struct nv_error *err);

/* qcow2-cluster.c */
/* -EUCLEAN unless the whole cluster at host lies inside the file: the tables
 * map it, so what is missing was cut off (a read past the end would give
 * zeros, and a truncated TPM would pass for a new one). guest: the guest
 * offset it maps, for the message; UINT64_MAX for metadata. */
int qcow2_check_in_file(struct bdrv_node *bs, uint64_t host, const char *what, uint64_t guest,
                        struct nv_error *err);
int qcow2_check_mapped(struct bdrv_node *bs, uint64_t offset, uint64_t len, struct nv_error *err);
int qcow2_read(struct bdrv_node *bs, uint64_t offset, uint8_t *buf, size_t len,
               struct nv_error *err);
int qcow2_write(struct bdrv_node *bs, uint64_t offset, const uint8_t *buf, size_t len,
                struct nv_error *err);
int qcow2_write_zeroes(struct bdrv_node *bs, uint64_t offset, uint64_t len, struct nv_error *err);
/* The host range a compressed L2 entry occupies, for refcounts. */
void qcow2_compressed_range(const struct qcow2_state *s, uint64_t entry, uint64_t *offset,
                            uint64_t *length);

/* qcow2-compress.c: _load first (the library, on first use; -ENOTSUP and a
 * message if it cannot be had), then decompress (-EIO: damaged data). */
int qcow2_decompress_load(const struct qcow2_state *s, struct nv_error *err);
int qcow2_decompress(const struct qcow2_state *s, const uint8_t *in, size_t in_len, uint8_t *out,
                     size_t out_len);

/* qcow2-check.c */
int qcow2_check(struct bdrv_node *bs, struct bdrv_check_result *res, bool repair_leaks,
                struct nv_error *err);

/* qcow2-create.c */
int qcow2_create(const char *path, const struct bdrv_create_opts *opts, struct nv_error *err);

/* qcow2.c */
/* Before the first change of the image: clear the autoclear bits not in keep
 * (the spec lets a program write only once the bits of extensions it does not
 * keep consistent are clear), on disk and synced before the change. Open
 * writes nothing, so a refused open leaves the image untouched. */
int qcow2_clear_autoclear(struct bdrv_node *bs, uint64_t keep, struct nv_error *err);
int qcow2_resize(struct bdrv_node *bs, uint64_t new_size, struct nv_error *err);

#endif
