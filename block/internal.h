/* internal.h - the driver interface and node structure, private to block/. */
#ifndef NVTPM_BLOCK_INTERNAL_H
#define NVTPM_BLOCK_INTERNAL_H

#include "block.h"

struct bdrv_node;

/* Take or release ownership (QEMU's write lock) of a read-write node, the
 * descriptors and caches as they are: for reopen, which invalidates the
 * caches. Taking it fails, changing nothing, when another process holds or
 * refuses to share a permission it needs; the message names the image and
 * the permission. */
int bdrv_set_ownership(struct bdrv_node *bs, bool own, struct nv_error *err);

/* A driver: a table of operations. Format drivers read through bs->file;
 * protocol drivers own a descriptor and provide the lock and reopen hooks. */
struct bdrv_driver {
    const char *name;
    bool is_protocol;
    size_t state_size;

    /* Protocol drivers get the spec (path, fd:NAME, ...); format drivers get
     * NULL and find bs->file already open. */
    int (*open)(struct bdrv_node *bs, const char *spec, struct nv_error *err);
    void (*close)(struct bdrv_node *bs);
    int (*pread)(struct bdrv_node *bs, uint64_t offset, void *buf, size_t len,
                 struct nv_error *err);
    int (*pwrite)(struct bdrv_node *bs, uint64_t offset, const void *buf, size_t len,
                  struct nv_error *err);
    int (*flush)(struct bdrv_node *bs, struct nv_error *err);
    /* Optional: give back the memory of clean cached data (bdrv_release_memory). */
    void (*release_memory)(struct bdrv_node *bs);
    int64_t (*getlength)(struct bdrv_node *bs, struct nv_error *err);
    int (*truncate)(struct bdrv_node *bs, uint64_t length, struct nv_error *err);
    /* Protocol: reserve disk space past the end (bdrv_reserve). */
    int (*reserve)(struct bdrv_node *bs, uint64_t len, struct nv_error *err);
    int (*pwrite_zeroes)(struct bdrv_node *bs, uint64_t offset, uint64_t len, struct nv_error *err);
    int (*check)(struct bdrv_node *bs, struct bdrv_check_result *res, bool repair_leaks,
                 struct nv_error *err);
    int (*check_mapped)(struct bdrv_node *bs, uint64_t offset, uint64_t len, struct nv_error *err);
    int (*create)(const char *path, const struct bdrv_create_opts *opts, struct nv_error *err);
    /* Format reopen hook: reopen_check runs before the descriptors change
     * (flush before going read-only, the open-time refusals before going
     * read-write). */
    int (*reopen_check)(struct bdrv_node *bs, unsigned new_flags, struct nv_error *err);
    /* Protocol hook for bdrv_check_writable: would a read-write open work? */
    int (*check_writable)(struct bdrv_node *bs, struct nv_error *err);
    /* Format hook, when a reopen takes ownership: whatever the node caches
     * of the file (header, tables) may be stale, another process having
     * owned it meanwhile; read it all anew (QEMU's invalidate_cache). On
     * failure the node keeps its old state and the ownership is given back. */
    int (*invalidate)(struct bdrv_node *bs, struct nv_error *err);

    /* Protocol hook: a named point was announced (bdrv_event); optional. */
    void (*event)(struct bdrv_node *bs, enum bdrv_event ev);

    /* Lock hook (protocol): the descriptor whose open file description
     * carries this node's OFD locks. */
    int (*lock_fd)(struct bdrv_node *bs);
    /* Called on the protocol node once the whole graph opened (protocol). */
    void (*open_done)(struct bdrv_node *bs);

    /* Reopen hooks (protocol). set_cache changes what F_SETFL can change. */
    int (*set_cache)(struct bdrv_node *bs, unsigned new_flags, struct nv_error *err);
    /* extract_fds moves the node's descriptors into the stash (as dups, so
     * their locks stay held); prepare opens anew with new_flags and copies the
     * locks; commit drops the stashed descriptors; abort falls back to them. */
    int (*extract_fds)(struct bdrv_node *bs, struct fdstash *stash, struct nv_error *err);
    int (*reopen_prepare)(struct bdrv_node *bs, struct fdstash *stash, unsigned new_flags,
                          struct nv_error *err);
    void (*reopen_commit)(struct bdrv_node *bs, struct fdstash *stash);
    void (*reopen_abort)(struct bdrv_node *bs, struct fdstash *stash);
};

/* Lock state of a protocol node: what its open file description holds. */
struct bdrv_locks {
    unsigned qemu_perm;    /* bit i: holds QEMU byte 100+i */
    unsigned qemu_unshare; /* bit i: holds QEMU byte 200+i */
    unsigned depth;        /* nesting count of the access lock */
    enum bdrv_lock_mode mode;
    unsigned upgrade_depth; /* depth at which shared became exclusive; 0 = none */
};

struct bdrv_node {
    const struct bdrv_driver *drv;
    struct bdrv_node *file; /* the child a format node reads through */
    char *filename;         /* for messages */
    unsigned flags;
    unsigned id; /* unique in the process, for names in the stash */
    struct fdstash *stash;
    struct bdrv_locks locks;
    void *opaque;           /* the driver's state, state_size bytes */
    bool last_write_failed; /* its last write or flush failed (and said so) */
};

extern const struct bdrv_driver bdrv_file;
extern const struct bdrv_driver bdrv_faults;
extern const struct bdrv_driver bdrv_raw;
extern const struct bdrv_driver bdrv_qcow2;

int bdrv_raw_create(const char *path, const struct bdrv_create_opts *opts, struct nv_error *err);

/* The protocol node under bs (bs itself for a protocol node). */
struct bdrv_node *bdrv_leaf(const struct bdrv_node *bs);

/* ---- lock.c --------------------------------------------------------------- */

/* QEMU permission numbers (lock bytes 100+i and 200+i). */
enum {
    QEMU_PERM_CONSISTENT_READ = 0,
    QEMU_PERM_WRITE = 1,
    QEMU_PERM_WRITE_UNCHANGED = 2,
    QEMU_PERM_RESIZE = 3,
    QEMU_PERM_GRAPH_MOD = 4,
    QEMU_PERM_COUNT = 5,
};

/* The QEMU lock bytes a node with these flags holds. */
void bdrv_qemu_lock_set(bool owner, unsigned *perm, unsigned *unshare);

/* Make fd's open file description hold exactly (perm, unshare), checking that
 * no other holder conflicts with what it newly takes. Bytes in ours_perm /
 * ours_unshare are held by another description of this same node (during a
 * reopen) and do not count as conflicts. On failure fd holds what it held. */
int bdrv_qemu_lock_apply(int fd, const char *filename, unsigned held_perm, unsigned held_unshare,
                         unsigned perm, unsigned unshare, unsigned ours_perm, unsigned ours_unshare,
                         struct nv_error *err);

/* Take an OFD lock (F_RDLCK, F_WRLCK or F_UNLCK) on one byte range of fd,
 * waiting at most timeout_ms (0: once, < 0: for ever). */
int bdrv_ofd_lock(int fd, short type, uint64_t start, uint64_t len, int timeout_ms);

/* Copy the leaf's locks onto new_fd for a reopen to new_flags. */
int bdrv_locks_copy(struct bdrv_node *leaf, int new_fd, unsigned new_flags, struct nv_error *err);

/* Take the locks a freshly opened leaf needs for its flags. */
int bdrv_locks_init(struct bdrv_node *leaf, struct nv_error *err);

/* ---- faults.c ------------------------------------------------------------- */

struct bdrv_faults;

enum bdrv_fault_op { FAULT_READ, FAULT_WRITE, FAULT_FLUSH, FAULT_OP_COUNT };

/* What to do with the next request of an operation. */
struct bdrv_fault_action {
    int error;       /* errno to fail with (0: none); EINTR fails one attempt only */
    bool short_once; /* the first transfer moves only half the bytes */
};

/* Parse "RULE[,RULE...]:" at the start of text; *rest points to what follows. */
struct bdrv_faults *bdrv_faults_parse(const char *text, const char **rest, struct nv_error *err);
void bdrv_faults_free(struct bdrv_faults *f);
struct bdrv_fault_action bdrv_faults_next(struct bdrv_faults *f, enum bdrv_fault_op op);
/* Arm the rules that wait for ev. */
void bdrv_faults_event(struct bdrv_faults *f, enum bdrv_event ev);
void bdrv_faults_log_write(struct bdrv_faults *f, uint64_t offset, const void *buf, size_t len);
void bdrv_faults_log_flush(struct bdrv_faults *f);

#endif
