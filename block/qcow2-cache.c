/* qcow2-cache.c - a small LRU cache of cluster-sized metadata tables (L2
 * tables, refcount blocks) in their on-disk form, each read a 4 KiB page at a
 * time as its entries are asked for. Dirty tables are written (their loaded
 * pages) only by qcow2_flush_metadata, which orders them; evicting a dirty
 * table runs that flush first. */
#include "qcow2.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int qcow2_cache_init(struct qcow2_cache *c, enum qcow2_meta kind, unsigned count,
                     uint64_t cluster_size)
{
    memset(c, 0, sizeof(*c));
    c->kind = kind;
    c->tables = calloc(count, sizeof(*c->tables));
    if (!c->tables)
        return -ENOMEM;
    c->count = count;
    c->size = (size_t)count * cluster_size;
    /* One block of pages of its own rather than a malloc per table, whose
     * chunk headers alone would make every table resident: a table page
     * read is one resident page, and a release gives it back. */
    c->memory = nv_pages_alloc(c->size);
    if (!c->memory)
        return -ENOMEM;
    for (unsigned i = 0; i < count; i++)
        c->tables[i].data = c->memory + (size_t)i * cluster_size;
    return 0;
}

void qcow2_cache_destroy(struct qcow2_cache *c)
{
    nv_pages_free(c->memory, c->size);
    free(c->tables);
    memset(c, 0, sizeof(*c));
}

void qcow2_cache_release(struct qcow2_cache *c, uint64_t cluster_size)
{
    bool all_clean = true, aligned = cluster_size % (uint64_t)sysconf(_SC_PAGESIZE) == 0;
    for (unsigned i = 0; i < c->count; i++)
        all_clean = all_clean && !c->tables[i].dirty;
    if (!aligned && !all_clean)
        return; /* tables share pages with dirty ones: nothing to give back alone */
    for (unsigned i = 0; i < c->count; i++) {
        struct qcow2_table *t = &c->tables[i];
        if (t->dirty || nv_all_zero(t->loaded, sizeof(t->loaded)))
            continue;
        memset(t->loaded, 0, sizeof(t->loaded));
        if (aligned)
            nv_pages_release(t->data, cluster_size);
    }
    if (!aligned)
        nv_pages_release(c->memory, c->size);
}

static struct qcow2_table *lookup(struct qcow2_cache *c, uint64_t offset)
{
    if (c->tables[c->last].offset == offset)
        return &c->tables[c->last];
    for (unsigned i = 0; i < c->count; i++) {
        if (c->tables[i].offset == offset) {
            c->last = i;
            return &c->tables[i];
        }
    }
    return NULL;
}

static uint64_t page_size(const struct qcow2_state *s)
{
    return s->cluster_size < QCOW2_CACHE_PAGE ? s->cluster_size : QCOW2_CACHE_PAGE;
}

static bool loaded(const struct qcow2_table *t, uint64_t page)
{
    return t->loaded[page / 64] >> (page % 64) & 1;
}

static void mark_loaded(struct qcow2_table *t, uint64_t first, uint64_t last)
{
    for (uint64_t p = first; p <= last; p++)
        t->loaded[p / 64] |= 1ull << (p % 64);
}

/* Pages [first, last] of t: each run of pages not loaded yet, read at once. */
static int load_pages(struct bdrv_node *bs, struct qcow2_table *t, uint64_t first, uint64_t last,
                      struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t ps = page_size(s);
    for (uint64_t p = first; p <= last; p++) {
        if (loaded(t, p))
            continue;
        uint64_t end = p;
        while (end < last && !loaded(t, end + 1))
            end++;
        int r = bdrv_pread(s->file, t->offset + p * ps, t->data + p * ps, (end - p + 1) * ps, err);
        if (r < 0)
            return nv_error_prefix(err, r, "%s: reading table at offset %llu", bs->filename,
                                   (unsigned long long)t->offset);
        mark_loaded(t, p, end);
        p = end;
    }
    return 0;
}

/* The loaded pages of t, each run in one write: the others are on disk as
 * they were read from it (never changed here). */
static int write_loaded(struct bdrv_node *bs, struct qcow2_table *t, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    uint64_t ps = page_size(s), pages = s->cluster_size / ps;
    for (uint64_t p = 0; p < pages; p++) {
        if (!loaded(t, p))
            continue;
        uint64_t end = p;
        while (end + 1 < pages && loaded(t, end + 1))
            end++;
        int r = bdrv_pwrite(s->file, t->offset + p * ps, t->data + p * ps, (end - p + 1) * ps, err);
        if (r < 0)
            return r;
        p = end;
    }
    return 0;
}

/* The least recently used slot; if it is dirty, flush all metadata first. */
static int victim(struct bdrv_node *bs, struct qcow2_cache *c, struct qcow2_table **out,
                  struct nv_error *err)
{
    struct qcow2_table *best = &c->tables[0];
    for (unsigned i = 0; i < c->count; i++) {
        struct qcow2_table *t = &c->tables[i];
        if (!t->offset) {
            best = t;
            break;
        }
        if (t->used < best->used)
            best = t;
    }
    if (best->dirty) {
        struct qcow2_state *s = bs->opaque;
        int r;
        if (s->in_flush) {
            /* Inside the flush, whatever ordering this table needed is met. */
            r = qcow2_check_overlap(bs, best->offset, s->cluster_size, c->kind, err);
            if (r == 0) {
                qcow2_announce_write(s->file, c->kind);
                r = write_loaded(bs, best, err);
            }
            s->need_sync = true;
            if (r == 0)
                best->dirty = false;
        } else {
            r = qcow2_flush_metadata(bs, err);
        }
        if (r < 0)
            return r;
    }
    *out = best;
    return 0;
}

/* The slot of the table at offset, found or taken (nothing of it loaded);
 * in_file: a table to be read must lie inside the file (a fresh one, just
 * allocated, may lie past its end). */
static int slot_for(struct bdrv_node *bs, struct qcow2_cache *c, uint64_t offset, bool in_file,
                    struct qcow2_table **out, struct nv_error *err)
{
    struct qcow2_table *t = lookup(c, offset);
    if (!t) {
        int r = victim(bs, c, &t, err);
        if (r == 0 && in_file)
            r = qcow2_check_in_file(bs, offset,
                                    c->kind == QCOW2_META_L2 ? "L2 table" : "refcount block",
                                    UINT64_MAX, err);
        if (r < 0) /* (the victim's slot is left as it was) */
            return r;
        t->offset = offset;
        t->dirty = false;
        memset(t->loaded, 0, sizeof(t->loaded));
        c->last = (unsigned)(t - c->tables);
    }
    t->used = ++c->tick;
    *out = t;
    return 0;
}

int qcow2_cache_get_part(struct bdrv_node *bs, struct qcow2_cache *c, uint64_t offset,
                         uint64_t byte, uint64_t len, uint8_t **data, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    struct qcow2_table *t;
    int r = slot_for(bs, c, offset, true, &t, err);
    uint64_t ps = page_size(s);
    /* (a failed read leaves its pages unloaded: a later get reads them again) */
    if (r == 0 && len)
        r = load_pages(bs, t, byte / ps, (byte + len - 1) / ps, err);
    if (r < 0)
        return r;
    *data = t->data;
    return 0;
}

int qcow2_cache_get(struct bdrv_node *bs, struct qcow2_cache *c, uint64_t offset, bool fresh,
                    uint8_t **data, struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    if (!fresh)
        return qcow2_cache_get_part(bs, c, offset, 0, s->cluster_size, data, err);
    struct qcow2_table *t;
    int r = slot_for(bs, c, offset, false, &t, err);
    if (r < 0)
        return r;
    memset(t->data, 0, s->cluster_size);
    mark_loaded(t, 0, s->cluster_size / page_size(s) - 1);
    *data = t->data;
    return 0;
}

void qcow2_cache_mark_dirty(struct qcow2_cache *c, uint64_t offset)
{
    struct qcow2_table *t = lookup(c, offset);
    if (t)
        t->dirty = true;
}

bool qcow2_cache_has_dirty(const struct qcow2_cache *c)
{
    for (unsigned i = 0; i < c->count; i++)
        if (c->tables[i].dirty)
            return true;
    return false;
}

void qcow2_announce_write(struct bdrv_node *bs, enum qcow2_meta kind)
{
    static const enum bdrv_event events[] = {
        [QCOW2_META_L1] = BDRV_EV_QCOW2_L1_UPDATE,
        [QCOW2_META_REFTABLE] = BDRV_EV_QCOW2_REFTABLE_UPDATE,
        [QCOW2_META_L2] = BDRV_EV_QCOW2_L2_UPDATE,
        [QCOW2_META_REFBLOCK] = BDRV_EV_QCOW2_REFBLOCK_UPDATE,
    };
    if (kind != QCOW2_META_NONE && (size_t)kind < sizeof(events) / sizeof(events[0]))
        bdrv_event(bs, events[kind]);
}

int qcow2_cache_write_dirty(struct bdrv_node *bs, struct qcow2_cache *c, enum qcow2_meta kind,
                            struct nv_error *err)
{
    struct qcow2_state *s = bs->opaque;
    for (unsigned i = 0; i < c->count; i++) {
        struct qcow2_table *t = &c->tables[i];
        if (!t->dirty)
            continue;
        int r = qcow2_check_overlap(bs, t->offset, s->cluster_size, kind, err);
        if (r == 0) {
            qcow2_announce_write(s->file, kind);
            r = write_loaded(bs, t, err);
        }
        if (r < 0)
            return r;
        t->dirty = false;
        s->need_sync = true;
    }
    return 0;
}

void qcow2_cache_forget(struct qcow2_cache *c, uint64_t offset)
{
    struct qcow2_table *t = lookup(c, offset);
    if (t) {
        t->offset = 0;
        t->dirty = false;
    }
}
