/* reopen.c - changing an open graph's flags without ever losing the file.
 *
 * Where only flags that F_SETFL can change differ (cache mode) or only the
 * ownership changes, the descriptors stay and nothing is opened (taking
 * ownership then re-reads the format's metadata: another process may have
 * owned and changed the file meanwhile). When the
 * access mode changes, the protocol to the seed's letter: every descriptor of
 * the graph goes into the fd stash as a dup (the open file description, and so
 * its OFD locks, stay alive), the files are opened anew and the locks copied
 * onto the new descriptions; any failure falls back to the stashed ones. */
#include "internal.h"

#include <errno.h>

static void set_graph_flags(struct bdrv_node *bs, unsigned flags)
{
    for (struct bdrv_node *n = bs; n; n = n->file)
        n->flags = flags;
}

static const char *access_name(unsigned flags)
{
    return (flags & BDRV_O_RDWR) ? "read-write" : "read-only";
}

static int reopen_in_place(struct bdrv_node *bs, unsigned new_flags, struct nv_error *err)
{
    struct bdrv_node *leaf = bdrv_leaf(bs);
    unsigned old_flags = bs->flags;
    bool own = new_flags & BDRV_O_OWNER;
    bool cache_changes = (new_flags ^ old_flags) & BDRV_O_CACHE_MASK;
    int r;
    /* The cache mode first: undoing it cannot conflict with anyone, while
     * ownership once released may not come back. */
    if (cache_changes && (r = leaf->drv->set_cache(leaf, new_flags, err)) < 0)
        return r;
    if (own != (bool)(old_flags & BDRV_O_OWNER) && (r = bdrv_set_ownership(bs, own, err)) < 0) {
        if (cache_changes)
            leaf->drv->set_cache(leaf, old_flags, NULL);
        return r;
    }
    set_graph_flags(bs, new_flags);
    return 0;
}

static int reopen_descriptors(struct bdrv_node *bs, struct fdstash *stash, unsigned new_flags,
                              struct nv_error *err)
{
    struct bdrv_node *leaf = bdrv_leaf(bs);
    int r = leaf->drv->extract_fds(leaf, stash, err);
    if (r < 0)
        return r;
    r = leaf->drv->reopen_prepare(leaf, stash, new_flags, err);
    if (r < 0) {
        leaf->drv->reopen_abort(leaf, stash);
        return r;
    }
    leaf->drv->reopen_commit(leaf, stash);
    bdrv_qemu_lock_set(new_flags & BDRV_O_OWNER, &leaf->locks.qemu_perm, &leaf->locks.qemu_unshare);
    set_graph_flags(bs, new_flags);
    return 0;
}

static int reopen_flags(struct bdrv_node *bs, unsigned new_flags, struct nv_error *err);

/* Ownership taken: every format node reads the file's metadata anew. */
static int invalidate_graph(struct bdrv_node *bs, struct nv_error *err)
{
    for (struct bdrv_node *n = bs; n; n = n->file) {
        int r = n->drv->invalidate ? n->drv->invalidate(n, err) : 0;
        if (r < 0)
            return nv_error_prefix(err, r, "%s: re-reading it after taking ownership",
                                   bs->filename);
    }
    return 0;
}

int bdrv_reopen(struct bdrv_node *bs, unsigned new_flags, struct nv_error *err)
{
    unsigned old_flags = bs->flags;
    if ((new_flags & BDRV_O_OWNER) && !(new_flags & BDRV_O_RDWR))
        return nv_error_set(err, -EINVAL, "%s: ownership needs a read-write open", bs->filename);
    if (new_flags == old_flags)
        return 0;
    for (struct bdrv_node *n = bs; n; n = n->file) {
        int r = n->drv->reopen_check ? n->drv->reopen_check(n, new_flags, err) : 0;
        if (r < 0)
            return r;
    }
    int r = reopen_flags(bs, new_flags, err);
    if (r == 0 && (new_flags & ~old_flags & BDRV_O_OWNER) && (r = invalidate_graph(bs, err)) < 0)
        reopen_flags(bs, old_flags, NULL); /* the ownership goes back; the old state stays */
    return r;
}

static int reopen_flags(struct bdrv_node *bs, unsigned new_flags, struct nv_error *err)
{
    struct bdrv_node *leaf = bdrv_leaf(bs);
    unsigned old_flags = bs->flags;
    if (!((new_flags ^ old_flags) & BDRV_O_RDWR))
        return reopen_in_place(bs, new_flags, err);
    if (!(new_flags & BDRV_O_RDWR) && leaf->locks.depth && leaf->locks.mode == BDRV_LOCK_EXCLUSIVE)
        return nv_error_set(err, -EBUSY,
                            "%s: cannot reopen read-only while holding the exclusive access lock",
                            bs->filename);

    struct fdstash local;
    struct fdstash *stash = leaf->stash;
    if (!stash) {
        fdstash_init(&local);
        stash = &local;
    }
    int r = reopen_descriptors(bs, stash, new_flags, err);
    if (stash == &local)
        fdstash_cleanup(&local);
    if (r < 0)
        return nv_error_append(err, r, "(reopen %s failed; still open %s)", access_name(new_flags),
                               access_name(old_flags));
    return 0;
}

int bdrv_check_writable(struct bdrv_node *bs, struct nv_error *err)
{
    for (struct bdrv_node *n = bs; n; n = n->file) {
        int r = n->drv->check_writable ? n->drv->check_writable(n, err)
                : n->drv->reopen_check ? n->drv->reopen_check(n, n->flags | BDRV_O_RDWR, err)
                                       : 0;
        if (r < 0)
            return r;
    }
    return 0;
}
