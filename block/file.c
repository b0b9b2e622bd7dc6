/* file.c - the protocol drivers over a host file or block device: "file"
 * (a path or fd:NAME) and "faults" (the same, with fault injection and a write
 * log, for tests). They own the descriptor that carries the node's locks.
 *
 * cache=none and directsync open with O_DIRECT. A request whose buffer, offset
 * or length is not aligned to FILE_DIRECT_ALIGN goes through the page cache
 * (O_DIRECT cleared for it with F_SETFL), so callers need not align. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FILE_DIRECT_ALIGN 4096

struct file_state {
    int fd;
    int new_fd;          /* opened by reopen_prepare, not yet committed */
    char *path;          /* NULL when opened from a stashed descriptor */
    char stash_name[64]; /* where reopen keeps the old descriptor */
    char *borrowed;      /* fd:NAME still owned by the stash until the open completes */
    int borrowed_flags;  /* its F_GETFL flags, restored if the open fails */
    dev_t dev;
    ino_t ino;
    struct bdrv_faults *faults;
};

static struct file_state *state(struct bdrv_node *bs)
{
    return bs->opaque;
}

/* O_NONBLOCK so that a FIFO in the image's place cannot hang the open; it is
 * cleared once the descriptor is known to be a file. */
static int open_mode(unsigned flags)
{
    int mode = ((flags & BDRV_O_RDWR) ? O_RDWR : O_RDONLY) | O_NONBLOCK;
    if (flags & BDRV_O_CACHE_MASK)
        mode |= O_DIRECT;
    return mode | O_CLOEXEC | O_NOCTTY;
}

static int open_error(const char *name, unsigned flags, int e, struct nv_error *err)
{
    if (e == EINVAL && (flags & BDRV_O_CACHE_MASK))
        return nv_error_set_status(
            err, NV_STATUS_USAGE, -EINVAL,
            "%s: cache mode '%s' needs O_DIRECT, which its file system does not "
            "support",
            name, bdrv_cache_mode_name(flags));
    return nv_error_set(err, -e, "%s: cannot open %s: %s", name,
                        (flags & BDRV_O_RDWR) ? "read-write" : "read-only", strerror(e));
}

/* Check the descriptor is a file we can use with the access the flags ask. */
static int check_descriptor(struct bdrv_node *bs, int fd, struct nv_error *err)
{
    struct file_state *s = state(bs);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return nv_error_set(err, -errno, "%s: %s", bs->filename, strerror(errno));
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        return nv_error_set(err, -ENODEV, "%s: not a regular file or block device", bs->filename);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || ((fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0))
        return nv_error_set(err, -errno, "%s: %s", bs->filename, strerror(errno));
    int acc = fl & O_ACCMODE;
    if ((bs->flags & BDRV_O_RDWR) && acc != O_RDWR)
        return nv_error_set(err, -EBADF, "%s: descriptor is not open for reading and writing",
                            bs->filename);
    if (acc == O_WRONLY)
        return nv_error_set(err, -EBADF, "%s: descriptor is open write-only", bs->filename);
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    return 0;
}

static int set_direct(int fd, bool direct)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -errno;
    int want = direct ? (fl | O_DIRECT) : (fl & ~O_DIRECT);
    if (want != fl && fcntl(fd, F_SETFL, want) < 0)
        return -errno;
    return 0;
}

/* fd:NAME uses the named descriptor; once the whole graph has opened, the
 * node takes it out of the stash and owns it, so that closing the node drops
 * its locks. If the open fails, the descriptor stays in the stash as it was. */
static int open_stashed(struct bdrv_node *bs, const char *name, struct nv_error *err)
{
    if (!bs->stash)
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL,
                                   "%s: no descriptor stash to look the name up in", bs->filename);
    int fd = fdstash_peek(bs->stash, name);
    if (fd < 0)
        return nv_error_set(err, -ENOENT, "%s: no descriptor named '%s' in the stash", bs->filename,
                            name);
    struct file_state *s = state(bs);
    s->borrowed_flags = fcntl(fd, F_GETFL);
    int r = check_descriptor(bs, fd, err);
    if (r == 0 && (r = set_direct(fd, bs->flags & BDRV_O_CACHE_MASK)) < 0)
        r = open_error(bs->filename, bs->flags, -r, err);
    if (r == 0 && !(s->borrowed = strdup(name)))
        r = nv_error_set(err, -ENOMEM, "out of memory");
    if (r < 0) {
        fcntl(fd, F_SETFL, s->borrowed_flags);
        return r;
    }
    s->fd = fd;
    return 0;
}

static void file_open_done(struct bdrv_node *bs)
{
    struct file_state *s = state(bs);
    if (s->borrowed) {
        fdstash_take(bs->stash, s->borrowed); /* it is s->fd: ours now */
        free(s->borrowed);
        s->borrowed = NULL;
    }
}

/* A failed open gives a borrowed descriptor back as it found it. */
static void give_back(struct bdrv_node *bs)
{
    struct file_state *s = state(bs);
    bdrv_ofd_lock(s->fd, F_UNLCK, 100, 5, 0);
    bdrv_ofd_lock(s->fd, F_UNLCK, 200, 5, 0);
    bdrv_ofd_lock(s->fd, F_UNLCK, BDRV_ACCESS_LOCK_BYTE, 1, 0);
    fcntl(s->fd, F_SETFL, s->borrowed_flags);
    free(s->borrowed);
    s->borrowed = NULL;
    s->fd = -1;
}

static int open_path(struct bdrv_node *bs, const char *path, struct nv_error *err)
{
    struct file_state *s = state(bs);
    s->path = strdup(path);
    if (!s->path)
        return nv_error_set(err, -ENOMEM, "%s: out of memory", path);
    int fd = open(path, open_mode(bs->flags));
    if (fd < 0)
        return open_error(path, bs->flags, errno, err);
    int r = check_descriptor(bs, fd, err);
    if (r < 0) {
        close(fd);
        return r;
    }
    s->fd = fd;
    return 0;
}

static void file_init_state(struct bdrv_node *bs)
{
    struct file_state *s = state(bs);
    s->fd = s->new_fd = -1;
    snprintf(s->stash_name, sizeof(s->stash_name), "bdrv-reopen-%u", bs->id);
}

static int file_open_spec(struct bdrv_node *bs, const char *spec, struct nv_error *err)
{
    if (strncmp(spec, "fd:", 3) == 0)
        return open_stashed(bs, spec + 3, err);
    if (!*spec)
        return nv_error_set_status(err, NV_STATUS_USAGE, -EINVAL, "empty image file name");
    return open_path(bs, spec, err);
}

static int file_open(struct bdrv_node *bs, const char *spec, struct nv_error *err)
{
    file_init_state(bs);
    return file_open_spec(bs, spec, err);
}

static int faults_open(struct bdrv_node *bs, const char *spec, struct nv_error *err)
{
    const char *rest;
    file_init_state(bs);
    struct bdrv_faults *f = bdrv_faults_parse(spec + strlen("faults:"), &rest, err);
    if (!f) /* the rules' parser fails with EINVAL on a malformed spec only */
        return err && err->code != -EINVAL ? err->code
                                           : nv_error_mark(err, NV_STATUS_USAGE, -EINVAL);
    state(bs)->faults = f;
    free(bs->filename);
    bs->filename = strdup(rest);
    if (!bs->filename)
        return nv_error_set(err, -ENOMEM, "out of memory");
    return file_open_spec(bs, rest, err);
}

static void file_close(struct bdrv_node *bs)
{
    struct file_state *s = state(bs);
    if (s->borrowed)
        give_back(bs);
    if (s->fd >= 0)
        close(s->fd);
    if (s->new_fd >= 0)
        close(s->new_fd);
    bdrv_faults_free(s->faults);
    free(s->path);
}

static bool is_aligned(const void *buf, uint64_t offset, size_t len)
{
    return ((uintptr_t)buf | offset | len) % FILE_DIRECT_ALIGN == 0;
}

/* An unaligned request on an O_DIRECT node goes through the page cache. */
static bool begin_buffered(struct bdrv_node *bs, const void *buf, uint64_t offset, size_t len)
{
    if (!(bs->flags & BDRV_O_CACHE_MASK) || is_aligned(buf, offset, len))
        return false;
    return set_direct(state(bs)->fd, false) == 0;
}

static void end_buffered(struct bdrv_node *bs, bool buffered)
{
    if (buffered)
        set_direct(state(bs)->fd, true);
}

static struct bdrv_fault_action fault_next(struct bdrv_node *bs, enum bdrv_fault_op op)
{
    struct file_state *s = state(bs);
    struct bdrv_fault_action none = {0, false};
    return s->faults ? bdrv_faults_next(s->faults, op) : none;
}

static void faults_event(struct bdrv_node *bs, enum bdrv_event ev)
{
    if (state(bs)->faults)
        bdrv_faults_event(state(bs)->faults, ev);
}

static int io_error(struct bdrv_node *bs, const char *what, uint64_t offset, size_t len, int e,
                    struct nv_error *err)
{
    return nv_error_set(err, -e, "%s: %s of %zu bytes at offset %llu failed: %s", bs->filename,
                        what, len, (unsigned long long)offset, strerror(e));
}

/* One read or write, whole: short transfers continue, EINTR retries, and
 * reads past the end of the file give zeros. */
static int file_transfer(struct bdrv_node *bs, bool write, uint64_t offset, uint8_t *buf,
                         size_t len, struct nv_error *err)
{
    struct file_state *s = state(bs);
    const char *what = write ? "write" : "read";
    struct bdrv_fault_action act = fault_next(bs, write ? FAULT_WRITE : FAULT_READ);
    if (act.error && act.error != EINTR)
        return io_error(bs, what, offset, len, act.error, err);
    bool buffered = begin_buffered(bs, buf, offset, len);
    size_t done = 0;
    int ret = 0;
    while (done < len) {
        size_t want = len - done;
        if (act.short_once && want > 1)
            want /= 2;
        ssize_t n;
        if (act.error == EINTR) {
            n = -1;
            errno = EINTR;
        } else if (write) {
            n = pwrite(s->fd, buf + done, want, (off_t)(offset + done));
        } else {
            n = pread(s->fd, buf + done, want, (off_t)(offset + done));
        }
        act = (struct bdrv_fault_action){0, false};
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || (n == 0 && write)) {
            ret = io_error(bs, what, offset, len, n < 0 ? errno : EIO, err);
            break;
        }
        if (n == 0) { /* past the end of the file reads as zeros */
            memset(buf + done, 0, len - done);
            break;
        }
        if (write && s->faults)
            bdrv_faults_log_write(s->faults, offset + done, buf + done, (size_t)n);
        done += (size_t)n;
    }
    end_buffered(bs, buffered);
    return ret;
}

static int file_pread(struct bdrv_node *bs, uint64_t offset, void *buf, size_t len,
                      struct nv_error *err)
{
    return file_transfer(bs, false, offset, buf, len, err);
}

static int file_flush(struct bdrv_node *bs, struct nv_error *err);

static int file_pwrite(struct bdrv_node *bs, uint64_t offset, const void *buf, size_t len,
                       struct nv_error *err)
{
    /* file_transfer only reads from buf when writing. */
    int ret = file_transfer(bs, true, offset, (uint8_t *)buf, len, err);
    if (ret == 0 && (bs->flags & BDRV_O_CACHE_DIRECTSYNC))
        ret = file_flush(bs, err);
    return ret;
}

static int file_flush(struct bdrv_node *bs, struct nv_error *err)
{
    struct file_state *s = state(bs);
    struct bdrv_fault_action act = fault_next(bs, FAULT_FLUSH);
    if (act.error && act.error != EINTR)
        return nv_error_set(err, -act.error, "%s: flush failed: %s", bs->filename,
                            strerror(act.error));
    int r;
    do {
        if (act.error == EINTR) { /* the injected interruption: one attempt lost */
            act.error = 0;
            r = -1;
            errno = EINTR;
            continue;
        }
        r = fdatasync(s->fd);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return nv_error_set(err, -errno, "%s: flush failed: %s", bs->filename, strerror(errno));
    if (s->faults)
        bdrv_faults_log_flush(s->faults);
    return 0;
}

/* Zeros without writing them: the file system allocates the range as
 * zeroed extents (so later writes into it cannot run out of space) and
 * extends the file if needed. Real zeros are written where it cannot, and
 * under fault injection, whose write log must see every byte. */
static int file_pwrite_zeroes(struct bdrv_node *bs, uint64_t offset, uint64_t len,
                              struct nv_error *err)
{
    struct file_state *s = state(bs);
    int r = -1;
    if (!s->faults && offset <= INT64_MAX && len <= (uint64_t)INT64_MAX - offset) {
        do {
            r = fallocate(s->fd, FALLOC_FL_ZERO_RANGE, (off_t)offset, (off_t)len);
        } while (r < 0 && errno == EINTR);
        if (r < 0 && errno != EOPNOTSUPP && errno != EINVAL && errno != ENOSYS)
            return io_error(bs, "zeroing", offset, (size_t)len, errno, err);
    }
    if (r < 0) {
        uint8_t *zeros = calloc(1, len < (1u << 20) ? (size_t)len : (1u << 20));
        if (!zeros)
            return nv_error_set(err, -ENOMEM, "%s: out of memory", bs->filename);
        for (r = 0; len && r == 0;) {
            size_t n = len < (1u << 20) ? (size_t)len : (1u << 20);
            r = file_transfer(bs, true, offset, zeros, n, err);
            offset += n;
            len -= n;
        }
        free(zeros);
    }
    return r == 0 && (bs->flags & BDRV_O_CACHE_DIRECTSYNC) ? file_flush(bs, err) : r;
}

static int64_t file_getlength(struct bdrv_node *bs, struct nv_error *err)
{
    off_t end = lseek(state(bs)->fd, 0, SEEK_END);
    if (end < 0)
        return nv_error_set(err, -errno, "%s: cannot get the length: %s", bs->filename,
                            strerror(errno));
    return end;
}

static int file_truncate(struct bdrv_node *bs, uint64_t length, struct nv_error *err)
{
    if (length > INT64_MAX)
        return nv_error_set(err, -EFBIG, "%s: length %llu too large", bs->filename,
                            (unsigned long long)length);
    int r;
    do {
        r = ftruncate(state(bs)->fd, (off_t)length);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return nv_error_set(err, -errno, "%s: cannot resize to %llu bytes: %s", bs->filename,
                            (unsigned long long)length, strerror(errno));
    return 0;
}

/* Disk space for len more bytes past the end of the file, reserved without
 * changing its size, so that writes growing the file into it cannot meet a
 * full disk halfway (len 0: what is left of it is given back). A file system
 * that cannot reserve just does not: the writes find out as before. */
static int file_reserve(struct bdrv_node *bs, uint64_t len, struct nv_error *err)
{
    int fd = state(bs)->fd;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return nv_error_set(err, -errno, "%s: %s", bs->filename, strerror(errno));
    if (!S_ISREG(st.st_mode) || len > INT64_MAX)
        return 0; /* a block device's space is its size */
    int r;
    if (!len) {
        /* Given back by truncating to the size it has: ext4 ignores a hole
         * punched past the end, and a span up to INT64_MAX is EFBIG. */
        do {
            r = ftruncate(fd, st.st_size);
        } while (r < 0 && errno == EINTR);
        return 0;
    }
    do {
        r = fallocate(fd, FALLOC_FL_KEEP_SIZE, st.st_size, (off_t)len);
    } while (r < 0 && errno == EINTR);
    if (r < 0 && errno != EOPNOTSUPP && errno != ENOSYS)
        return nv_error_set(err, -errno, "%s: cannot reserve %llu bytes of disk space: %s",
                            bs->filename, (unsigned long long)len, strerror(errno));
    return 0;
}

static int file_lock_fd(struct bdrv_node *bs)
{
    return state(bs)->fd;
}

static int file_set_cache(struct bdrv_node *bs, unsigned new_flags, struct nv_error *err)
{
    int r = set_direct(state(bs)->fd, new_flags & BDRV_O_CACHE_MASK);
    if (r < 0)
        return open_error(bs->filename, new_flags, -r, err);
    return 0;
}

/* ---- reopen ----------------------------------------------------------------- */

static int file_extract_fds(struct bdrv_node *bs, struct fdstash *stash, struct nv_error *err)
{
    struct file_state *s = state(bs);
    int copy = fdstash_dup(s->fd, err);
    if (copy < 0)
        return nv_error_prefix(err, copy, "%s", bs->filename);
    int r = fdstash_give(stash, s->stash_name, copy, err);
    if (r < 0)
        return r;
    close(s->fd); /* the dup keeps the open file description, and its locks */
    s->fd = -1;
    return 0;
}

/* Open the same file anew: by path, or through /proc for a descriptor that
 * came without one. The path must still name the same file. */
static int reopen_open(struct bdrv_node *bs, struct fdstash *stash, unsigned new_flags,
                       struct nv_error *err)
{
    struct file_state *s = state(bs);
    char proc_path[64];
    const char *path = s->path;
    if (!path) {
        snprintf(proc_path, sizeof(proc_path), "/proc/self/fd/%d",
                 fdstash_peek(stash, s->stash_name));
        path = proc_path;
    }
    int fd = open(path, open_mode(new_flags));
    if (fd < 0)
        return open_error(bs->filename, new_flags, errno, err);
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_dev != s->dev || st.st_ino != s->ino) {
        close(fd);
        return nv_error_set(err, -ESTALE, "%s: the name now refers to another file", bs->filename);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        return nv_error_set(err, -e, "%s: %s", bs->filename, strerror(e));
    }
    return fd;
}

static int file_reopen_prepare(struct bdrv_node *bs, struct fdstash *stash, unsigned new_flags,
                               struct nv_error *err)
{
    struct file_state *s = state(bs);
    int fd = reopen_open(bs, stash, new_flags, err);
    if (fd < 0)
        return fd;
    s->new_fd = fd;
    return bdrv_locks_copy(bs, fd, new_flags, err);
}

static void file_reopen_commit(struct bdrv_node *bs, struct fdstash *stash)
{
    struct file_state *s = state(bs);
    s->fd = s->new_fd;
    s->new_fd = -1;
    int old = fdstash_take(stash, s->stash_name);
    if (old >= 0)
        close(old);
}

static void file_reopen_abort(struct bdrv_node *bs, struct fdstash *stash)
{
    struct file_state *s = state(bs);
    if (s->new_fd >= 0)
        close(s->new_fd);
    s->new_fd = -1;
    int old = fdstash_take(stash, s->stash_name);
    if (old >= 0 && s->fd < 0)
        s->fd = old; /* fall back to the stashed descriptor */
    else if (old >= 0)
        close(old);
}

/* bdrv_check_writable: could the file open read-write (permissions, a
 * read-only file system)? A trial open, closed again: OFD locks live on
 * their own open file descriptions, so closing this one drops none of them. */
static int file_check_writable(struct bdrv_node *bs, struct nv_error *err)
{
    struct file_state *s = state(bs);
    if ((bs->flags & BDRV_O_RDWR) || !s->path)
        return 0;
    int fd = open(s->path, open_mode(BDRV_O_RDWR));
    if (fd < 0)
        return open_error(s->path, BDRV_O_RDWR, errno, err);
    close(fd);
    return 0;
}

#define FILE_DRIVER_OPS                                                                            \
    .is_protocol = true, .state_size = sizeof(struct file_state), .close = file_close,             \
    .pread = file_pread, .pwrite = file_pwrite, .flush = file_flush, .getlength = file_getlength,  \
    .truncate = file_truncate, .reserve = file_reserve, .pwrite_zeroes = file_pwrite_zeroes,       \
    .lock_fd = file_lock_fd, .set_cache = file_set_cache, .open_done = file_open_done,             \
    .extract_fds = file_extract_fds, .reopen_prepare = file_reopen_prepare,                        \
    .reopen_commit = file_reopen_commit, .reopen_abort = file_reopen_abort,                        \
    .check_writable = file_check_writable

const struct bdrv_driver bdrv_file = {.name = "file", .open = file_open, FILE_DRIVER_OPS};
const struct bdrv_driver bdrv_faults = {
    .name = "faults", .open = faults_open, .event = faults_event, FILE_DRIVER_OPS};
