/* block.h - nvtpm's block layer: a graph of open nodes over the image file.
 *
 * A node (struct bdrv_node, QEMU's "BlockDriverState") is an open instance of
 * a driver (struct bdrv_driver, "BlockDriver"). Format drivers (raw; qcow2)
 * read through their `file` child, a protocol node (file; faults) that owns
 * the descriptor. I/O is synchronous. A node is used by one thread at a time.
 *
 * Locks are OFD byte-range locks (F_OFD_SETLK), held on the protocol node's
 * open file description:
 *   - the ownership lock, in QEMU's lock-byte scheme (bytes 100+i "I hold
 *     permission i", 200+i "I do not share permission i"), so QEMU's tools and
 *     nvtpm see each other: an owner holds consistent-read, write and resize
 *     and shares neither write nor resize;
 *   - the access lock, byte BDRV_ACCESS_LOCK_BYTE, refcounted per node: shared
 *     to read a consistent state, exclusive to change it.
 * See docs/block.md. Every call that can fail returns a negative errno (or
 * NULL) and fills err with a message naming the image. */
#ifndef NVTPM_BLOCK_H
#define NVTPM_BLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "fdstash.h"
#include "util.h"

struct bdrv_node;

/* Open flags. Without BDRV_O_RDWR the node is read-only. */
enum {
    BDRV_O_RDWR = 1u << 0,
    BDRV_O_OWNER = 1u << 1,            /* hold the ownership lock (needs BDRV_O_RDWR) */
    BDRV_O_CACHE_NONE = 1u << 2,       /* O_DIRECT: bypass the host page cache */
    BDRV_O_CACHE_DIRECTSYNC = 1u << 3, /* O_DIRECT, and each write flushed before it returns */
};
#define BDRV_O_CACHE_MASK (BDRV_O_CACHE_NONE | BDRV_O_CACHE_DIRECTSYNC)

/* The byte that carries the access lock; clear of libvirt's byte 0 and of
 * QEMU's bytes 100-104 and 200-204. */
#define BDRV_ACCESS_LOCK_BYTE 300

/* "writeback", "none" or "directsync" into BDRV_O_CACHE_* bits. */
int bdrv_parse_cache_mode(const char *mode, unsigned *cache_flags, struct nv_error *err);
const char *bdrv_cache_mode_name(unsigned flags);

/* Open spec, a path or "fd:NAME" (a descriptor in stash; the process may not be
 * allowed to open files), or "faults:RULES:SPEC" (fault injection, for tests).
 * bdrv_open probes the format (qcow2 by its magic, else raw); bdrv_open_format
 * takes "raw", "qcow2" or NULL (probe). stash may be NULL unless spec names a
 * descriptor; reopen keeps descriptors there while it works. */
struct bdrv_node *bdrv_open(const char *spec, unsigned flags, struct fdstash *stash,
                            struct nv_error *err);
struct bdrv_node *bdrv_open_format(const char *format, const char *spec, unsigned flags,
                                   struct fdstash *stash, struct nv_error *err);

/* Close the whole graph; every lock of its descriptors goes with it. */
void bdrv_close(struct bdrv_node *bs);

const char *bdrv_filename(const struct bdrv_node *bs);
const char *bdrv_format_name(const struct bdrv_node *bs);
unsigned bdrv_get_flags(const struct bdrv_node *bs);
struct bdrv_node *bdrv_file_child(const struct bdrv_node *bs);

/* Synchronous I/O. Short transfers and EINTR are handled inside; 0 or -errno.
 * Writes need a read-write node that holds the ownership lock. */
int bdrv_pread(struct bdrv_node *bs, uint64_t offset, void *buf, size_t len, struct nv_error *err);
int bdrv_pwrite(struct bdrv_node *bs, uint64_t offset, const void *buf, size_t len,
                struct nv_error *err);
/* Flush to stable storage (fdatasync). */
int bdrv_flush(struct bdrv_node *bs, struct nv_error *err);
/* Give back the memory of what the nodes cache and can read again (clean
 * metadata tables); unwritten changes stay. For a server between requests:
 * the next access reads what it needs from the file. */
void bdrv_release_memory(struct bdrv_node *bs);
int64_t bdrv_getlength(struct bdrv_node *bs, struct nv_error *err);
int bdrv_truncate(struct bdrv_node *bs, uint64_t length, struct nv_error *err);
/* Reserve disk space for len more bytes past the end of the file under bs,
 * its size unchanged, so that writes that grow it by up to len cannot fail
 * halfway on a full disk (-ENOSPC now instead, nothing changed); len 0
 * gives back what is left. A file system that cannot reserve is fine (0). */
int bdrv_reserve(struct bdrv_node *bs, uint64_t len, struct nv_error *err);

/* Write zeros; formats that can (qcow2 v3) mark whole clusters as zero. */
int bdrv_pwrite_zeroes(struct bdrv_node *bs, uint64_t offset, uint64_t len, struct nv_error *err);

/* -EUCLEAN when a cluster the format maps into [offset, offset+len) lies
 * past the end of the image file: it was cut off, and reading it would give
 * zeros that were never written. The message names the image and both
 * offsets. Formats without a mapping (raw) have nothing to check. */
int bdrv_check_mapped(struct bdrv_node *bs, uint64_t offset, uint64_t len, struct nv_error *err);

/* ---- creating and checking images ----------------------------------------- */

struct bdrv_create_opts {
    uint64_t size;         /* virtual size in bytes */
    uint32_t cluster_size; /* qcow2: a power of two, 512 B to 2 MiB; 0 = 64 KiB */
    int version;           /* qcow2: 2 or 3; 0 = 3 */
    unsigned mode;         /* permissions of the new file; 0 = 0600 */
    uint64_t prealloc;     /* qcow2: the disk's first bytes mapped to allocated
                              clusters (preallocation=metadata); 0 = none */
};

/* Create a new image file of the format ("qcow2" or "raw"). An existing
 * file is never overwritten (-EEXIST). */
int bdrv_create(const char *format, const char *path, const struct bdrv_create_opts *opts,
                struct nv_error *err);

struct bdrv_check_result {
    uint64_t corruptions; /* refcounts too low, bad offsets, wrong COPIED flags, ... */
    uint64_t leaks;       /* clusters whose refcount exceeds their uses */
    uint64_t leaks_fixed;
    uint64_t image_end;      /* end of the last host cluster in use */
    char first_problem[256]; /* what the first problem found was */
};

/* Check the image's metadata like `qemu-img check`; with repair_leaks, lower
 * the refcounts of leaked clusters (needs ownership). Formats without
 * metadata report nothing. */
int bdrv_check(struct bdrv_node *bs, struct bdrv_check_result *res, bool repair_leaks,
               struct nv_error *err);

/* ---- the access lock ------------------------------------------------------ */

enum bdrv_lock_mode {
    BDRV_LOCK_SHARED,
    BDRV_LOCK_EXCLUSIVE,
};

/* Take the access lock. The first call locks; nested calls only count. A
 * read-only node takes only shared. Exclusive while this node holds shared
 * once upgrades (waiting for other processes' shared holders to leave);
 * while held shared more than once it is an error (-EDEADLK). timeout_ms:
 * 0 tries once (-EAGAIN when busy), < 0 waits for ever, otherwise waits at most
 * that long (-ETIMEDOUT). Waiting sleeps in the kernel; EINTR is retried. */
int bdrv_lock(struct bdrv_node *bs, enum bdrv_lock_mode mode, int timeout_ms, struct nv_error *err);
/* Undo one bdrv_lock: the last unlock releases the lock, the one that ends an
 * upgrade goes back to shared. Unlocking an unlocked node is -ENOLCK. */
int bdrv_unlock(struct bdrv_node *bs, struct nv_error *err);
unsigned bdrv_lock_depth(const struct bdrv_node *bs);
enum bdrv_lock_mode bdrv_lock_mode(const struct bdrv_node *bs);

/* ---- the ownership lock --------------------------------------------------- */

/* Ownership is taken and given up with bdrv_reopen (BDRV_O_OWNER): giving it
 * up flushes, taking it re-reads what the graph caches of the file, which a
 * process that owned it meanwhile may have changed. */
bool bdrv_is_owner(const struct bdrv_node *bs);

/* Who holds locks on the image (this process included), found through
 * /proc/PID/fdinfo: best effort, for messages and `nvtpm info`. */
struct bdrv_lock_holder {
    pid_t pid;
    char name[32];         /* /proc/PID/comm */
    bool self;             /* this process */
    unsigned qemu_perm;    /* bit i: QEMU byte 100+i (holds permission i) */
    unsigned qemu_unshare; /* bit i: QEMU byte 200+i (does not share permission i) */
    int access;            /* the access lock: 0 none, 1 shared, 2 exclusive */
};
int bdrv_lock_holders(struct bdrv_node *bs, struct bdrv_lock_holder *out, size_t max, size_t *count,
                      struct nv_error *err);

/* ---- reopen --------------------------------------------------------------- */

/* Change the flags of an open graph: read-only <-> read-write (ownership taken
 * or released with BDRV_O_OWNER) and cache mode. Taking ownership fails,
 * changing nothing, when another process holds or refuses to share a
 * permission it needs (-EBUSY, the message names the image and the
 * permission); once taken, the format's cached metadata is read anew. When
 * only flags that F_SETFL can change differ, nothing is opened. Otherwise every descriptor of the
 * graph is dup'd into the fd stash (so its locks stay held), the files are
 * opened anew, and any failure falls back to the stashed descriptors: the node
 * works as before and err says why. Locks are held without a gap throughout. */
int bdrv_reopen(struct bdrv_node *bs, unsigned new_flags, struct nv_error *err);

/* What a read-write open or reopen of bs would refuse (the file not writable,
 * a qcow2 image marked dirty or corrupt, a backing file), found without
 * writing or changing anything: a dry run's answer to "could a server write
 * this image?". 0 when nothing would be refused. */
int bdrv_check_writable(struct bdrv_node *bs, struct nv_error *err);

/* ---- named fault points --------------------------------------------------- */

/* Points in the layers above the protocol driver, announced just before the
 * request they name: a "faults:" rule can fail the request that follows one
 * (write=qcow2-l2-update:EIO) whatever else the code path writes, where a
 * request count would shift with it. Layers above block/ (nvram) name theirs
 * here too, since calls only go downward. Adding one: docs/development.md. */
enum bdrv_event {
    BDRV_EV_QCOW2_HEADER_UPDATE,   /* qcow2: the header's fixed fields */
    BDRV_EV_QCOW2_L1_UPDATE,       /* qcow2: the L1 table */
    BDRV_EV_QCOW2_L2_UPDATE,       /* qcow2: one L2 table */
    BDRV_EV_QCOW2_REFTABLE_UPDATE, /* qcow2: the refcount table */
    BDRV_EV_QCOW2_REFBLOCK_UPDATE, /* qcow2: one refcount block */
    BDRV_EV_NVRAM_SUPER_UPDATE,    /* nvram: a superblock copy */
    BDRV_EV_NVRAM_FORMAT_ZEROS,    /* nvram: a format's zeros over the whole area */
    BDRV_EV_NVRAM_FORMAT_MARKERS,  /* nvram: a format's initial DELETED slots */
    BDRV_EV_NVRAM_COMMIT_SLOT,     /* nvram: a commit's slot, header and payload */
    BDRV_EV_NVRAM_COMMIT_UNDO,     /* nvram: blanking that header when the flush failed */
    BDRV_EV_COUNT
};

/* The event's name in rules ("qcow2-l2-update"); NULL if out of range. */
const char *bdrv_event_name(enum bdrv_event ev);
/* Announce ev on bs; it reaches the protocol node under it (only the faults
 * driver acts on it). */
void bdrv_event(struct bdrv_node *bs, enum bdrv_event ev);

/* ---- the write log of the fault-injection driver -------------------------- */

enum bdrv_wlog_kind {
    BDRV_WLOG_WRITE = 1,
    BDRV_WLOG_FLUSH = 2,
    BDRV_WLOG_FAULT = 3, /* a fault was injected; offset: 0 read, 1 write, 2 flush */
};

struct bdrv_wlog_record {
    enum bdrv_wlog_kind kind;
    uint64_t offset;
    uint32_t length;
    const uint8_t *data; /* length bytes, inside the loaded log */
};

struct bdrv_wlog {
    size_t count;
    struct bdrv_wlog_record *records;
    uint8_t *buffer;
};

/* Load a write log ("faults:log=FILE:..."). A record cut short at the end of
 * the file (the writer was killed) is dropped. */
int bdrv_wlog_load(const char *path, struct bdrv_wlog *log, struct nv_error *err);
void bdrv_wlog_free(struct bdrv_wlog *log);
/* Apply one write record to a file descriptor (a copy of the image). */
int bdrv_wlog_apply(const struct bdrv_wlog_record *rec, int fd, struct nv_error *err);

#endif
