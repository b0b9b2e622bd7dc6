/* lock.c - OFD byte-range locks: waiting with a deadline, QEMU's lock bytes
 * (the ownership lock) and the refcounted access lock.
 *
 * Waiting uses F_OFD_SETLKW, which sleeps in the kernel. The deadline comes
 * from a per-thread POSIX timer that sends BDRV_LOCK_SIGNAL (an empty handler
 * installed without SA_RESTART), so the wait returns EINTR; the timer repeats
 * every 10 ms in case the first signal arrives just before the call starts. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define BDRV_LOCK_SIGNAL (SIGRTMIN + 5)
/* Returned by the waiting code when the deadline timer cannot be armed, so
 * that it is not mistaken for contention. */
#define TIMER_FAILED    (-ETIME)
#define QEMU_PERM_BYTE  100
#define QEMU_SHARE_BYTE 200

static const char *const qemu_perm_names[QEMU_PERM_COUNT] = {
    "consistent read", "write", "write unchanged", "resize", "change children"};

/* ---- one OFD lock, with a deadline ---------------------------------------- */

static int ofd_fcntl(int fd, int cmd, short type, uint64_t start, uint64_t len)
{
    struct flock fl = {.l_type = type,
                       .l_whence = SEEK_SET,
                       .l_start = (off_t)start,
                       .l_len = (off_t)len,
                       .l_pid = 0};
    return fcntl(fd, cmd, &fl);
}

static void lock_signal_handler(int sig)
{
    (void)sig; /* only there to interrupt F_OFD_SETLKW */
}

static pthread_once_t lock_signal_once = PTHREAD_ONCE_INIT;

static void install_lock_signal(void)
{
    struct sigaction sa = {.sa_handler = lock_signal_handler};
    sigemptyset(&sa.sa_mask);
    sigaction(BDRV_LOCK_SIGNAL, &sa, NULL);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int arm_timer(timer_t *timer, int timeout_ms)
{
    struct sigevent sev = {.sigev_notify = SIGEV_THREAD_ID, .sigev_signo = BDRV_LOCK_SIGNAL};
    sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    if (timer_create(CLOCK_MONOTONIC, &sev, timer) < 0)
        return -errno;
    struct itimerspec its = {
        .it_value = {.tv_sec = timeout_ms / 1000, .tv_nsec = (long)(timeout_ms % 1000) * 1000000},
        .it_interval = {.tv_sec = 0, .tv_nsec = 10 * 1000000},
    };
    if (timer_settime(*timer, 0, &its, NULL) < 0) {
        int e = -errno;
        timer_delete(*timer);
        return e;
    }
    return 0;
}

/* Delete the timer and swallow any of its signals still pending, so that
 * none interrupts an unrelated system call of the caller later. */
static void disarm_timer(timer_t timer, const sigset_t *old_mask)
{
    sigset_t only;
    sigemptyset(&only);
    sigaddset(&only, BDRV_LOCK_SIGNAL);
    pthread_sigmask(SIG_BLOCK, &only, NULL);
    timer_delete(timer);
    struct timespec zero = {0, 0};
    while (sigtimedwait(&only, NULL, &zero) > 0)
        ;
    pthread_sigmask(SIG_SETMASK, old_mask, NULL);
}

static int wait_with_deadline(int fd, short type, uint64_t start, uint64_t len, int timeout_ms)
{
    pthread_once(&lock_signal_once, install_lock_signal);
    sigset_t unblock, old_mask;
    sigemptyset(&unblock);
    sigaddset(&unblock, BDRV_LOCK_SIGNAL);
    pthread_sigmask(SIG_UNBLOCK, &unblock, &old_mask);
    timer_t timer;
    int ret = arm_timer(&timer, timeout_ms);
    if (ret < 0) {
        pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
        return TIMER_FAILED;
    }
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        if (ofd_fcntl(fd, F_OFD_SETLKW, type, start, len) == 0) {
            ret = 0;
            break;
        }
        if (errno != EINTR) {
            ret = -errno;
            break;
        }
        if (now_ms() >= deadline) {
            ret = -ETIMEDOUT;
            break;
        }
    }
    disarm_timer(timer, &old_mask);
    return ret;
}

int bdrv_ofd_lock(int fd, short type, uint64_t start, uint64_t len, int timeout_ms)
{
    if (type == F_UNLCK || timeout_ms == 0) {
        int r;
        do {
            r = ofd_fcntl(fd, F_OFD_SETLK, type, start, len);
        } while (r < 0 && errno == EINTR);
        if (r == 0)
            return 0;
        return (errno == EACCES || errno == EAGAIN) ? -EAGAIN : -errno;
    }
    if (timeout_ms < 0) {
        int r;
        do {
            r = ofd_fcntl(fd, F_OFD_SETLKW, type, start, len);
        } while (r < 0 && errno == EINTR);
        return r == 0 ? 0 : -errno;
    }
    /* A free lock first, in one call: the deadline's timer and signal mask
     * (seven more system calls) only when someone holds it. Every commit
     * takes this lock, and is otherwise one write and one flush. */
    if (ofd_fcntl(fd, F_OFD_SETLK, type, start, len) == 0)
        return 0;
    if (errno != EACCES && errno != EAGAIN && errno != EINTR)
        return -errno;
    return wait_with_deadline(fd, type, start, len, timeout_ms);
}

/* Whether another open file description holds a lock on this byte. */
static int byte_held_elsewhere(int fd, uint64_t byte, bool *held)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = (off_t)byte, .l_len = 1};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -errno;
    *held = fl.l_type != F_UNLCK;
    return 0;
}

/* ---- QEMU's lock bytes: the ownership lock -------------------------------- */

void bdrv_qemu_lock_set(bool owner, unsigned *perm, unsigned *unshare)
{
    const unsigned read = 1u << QEMU_PERM_CONSISTENT_READ;
    const unsigned write = 1u << QEMU_PERM_WRITE, resize = 1u << QEMU_PERM_RESIZE;
    *perm = owner ? read | write | resize : read;
    *unshare = owner ? write | resize : 0;
}

/* Lock (F_RDLCK) or unlock each byte in mask, from base. */
static int set_bytes(int fd, unsigned base, unsigned mask, short type)
{
    for (unsigned i = 0; i < QEMU_PERM_COUNT; i++) {
        if (!(mask & (1u << i)))
            continue;
        int r = bdrv_ofd_lock(fd, type, base + i, 1, 0);
        if (r < 0)
            return r;
    }
    return 0;
}

/* After taking new bytes, look at the opposite ones: QEMU takes first and then
 * checks, so of two racing openers at least one sees the other. */
static int check_conflicts(int fd, const char *filename, unsigned new_perm, unsigned new_unshare,
                           unsigned ours_perm, unsigned ours_unshare, struct nv_error *err)
{
    for (unsigned i = 0; i < QEMU_PERM_COUNT; i++) {
        bool held = false;
        int r;
        if ((new_perm & (1u << i)) && !(ours_unshare & (1u << i))) {
            if ((r = byte_held_elsewhere(fd, QEMU_SHARE_BYTE + i, &held)) < 0)
                return nv_error_set(err, r, "%s: cannot test lock byte %u: %s", filename,
                                    QEMU_SHARE_BYTE + i, strerror(-r));
            if (held)
                return nv_error_set_status(
                    err, NV_STATUS_BUSY, -EBUSY,
                    "%s: failed to get \"%s\" lock: another process does not "
                    "share the \"%s\" permission (lock byte %u); is another "
                    "process using the image?",
                    filename, qemu_perm_names[i], qemu_perm_names[i], QEMU_SHARE_BYTE + i);
        }
        if ((new_unshare & (1u << i)) && !(ours_perm & (1u << i))) {
            if ((r = byte_held_elsewhere(fd, QEMU_PERM_BYTE + i, &held)) < 0)
                return nv_error_set(err, r, "%s: cannot test lock byte %u: %s", filename,
                                    QEMU_PERM_BYTE + i, strerror(-r));
            if (held)
                return nv_error_set_status(
                    err, NV_STATUS_BUSY, -EBUSY,
                    "%s: failed to get shared \"%s\" lock: another process holds "
                    "the \"%s\" permission (lock byte %u); is another process "
                    "using the image?",
                    filename, qemu_perm_names[i], qemu_perm_names[i], QEMU_PERM_BYTE + i);
        }
    }
    return 0;
}

int bdrv_qemu_lock_apply(int fd, const char *filename, unsigned held_perm, unsigned held_unshare,
                         unsigned perm, unsigned unshare, unsigned ours_perm, unsigned ours_unshare,
                         struct nv_error *err)
{
    unsigned add_perm = perm & ~held_perm, add_unshare = unshare & ~held_unshare;
    int r = set_bytes(fd, QEMU_PERM_BYTE, add_perm, F_RDLCK);
    if (r == 0)
        r = set_bytes(fd, QEMU_SHARE_BYTE, add_unshare, F_RDLCK);
    if (r < 0) {
        nv_error_set(err, r, "%s: cannot take lock bytes: %s", filename, strerror(-r));
    } else {
        r = check_conflicts(fd, filename, add_perm, add_unshare, ours_perm | held_perm,
                            ours_unshare | held_unshare, err);
    }
    if (r < 0) { /* back to what was held */
        set_bytes(fd, QEMU_PERM_BYTE, add_perm, F_UNLCK);
        set_bytes(fd, QEMU_SHARE_BYTE, add_unshare, F_UNLCK);
        return r;
    }
    set_bytes(fd, QEMU_PERM_BYTE, held_perm & ~perm, F_UNLCK);
    set_bytes(fd, QEMU_SHARE_BYTE, held_unshare & ~unshare, F_UNLCK);
    return 0;
}

int bdrv_locks_init(struct bdrv_node *leaf, struct nv_error *err)
{
    unsigned perm, unshare;
    bdrv_qemu_lock_set(leaf->flags & BDRV_O_OWNER, &perm, &unshare);
    int r = bdrv_qemu_lock_apply(leaf->drv->lock_fd(leaf), leaf->filename, 0, 0, perm, unshare, 0,
                                 0, err);
    if (r == 0) {
        leaf->locks.qemu_perm = perm;
        leaf->locks.qemu_unshare = unshare;
    }
    return r;
}

int bdrv_set_ownership(struct bdrv_node *bs, bool own, struct nv_error *err)
{
    struct bdrv_node *leaf = bdrv_leaf(bs);
    if (own && !(leaf->flags & BDRV_O_RDWR))
        return nv_error_set(err, -EPERM, "%s: opened read-only, cannot take ownership",
                            leaf->filename);
    unsigned perm, unshare;
    /* What is cached for writing must be written while we may still write. */
    if (!own && (bs->flags & BDRV_O_OWNER) && bs != leaf) {
        int f = bdrv_flush(bs, err);
        if (f < 0)
            return f;
    }
    bdrv_qemu_lock_set(own, &perm, &unshare);
    int r = bdrv_qemu_lock_apply(leaf->drv->lock_fd(leaf), leaf->filename, leaf->locks.qemu_perm,
                                 leaf->locks.qemu_unshare, perm, unshare, 0, 0, err);
    if (r < 0)
        return r;
    leaf->locks.qemu_perm = perm;
    leaf->locks.qemu_unshare = unshare;
    for (struct bdrv_node *n = bs; n; n = n->file)
        n->flags = own ? (n->flags | BDRV_O_OWNER) : (n->flags & ~BDRV_O_OWNER);
    return 0;
}

bool bdrv_is_owner(const struct bdrv_node *bs)
{
    return bdrv_leaf(bs)->flags & BDRV_O_OWNER;
}

/* ---- the access lock ------------------------------------------------------ */

static int access_lock(struct bdrv_node *leaf, short type, int timeout_ms, struct nv_error *err)
{
    int r = bdrv_ofd_lock(leaf->drv->lock_fd(leaf), type, BDRV_ACCESS_LOCK_BYTE, 1, timeout_ms);
    if (r == TIMER_FAILED)
        return nv_error_set(err, r, "%s: cannot arm the timer for the access lock's deadline",
                            leaf->filename);
    if (r == -EAGAIN || r == -ETIMEDOUT)
        return nv_error_set_status(err, NV_STATUS_BUSY, r,
                                   "%s: the %s access lock is held by another process%s",
                                   leaf->filename, type == F_WRLCK ? "exclusive" : "shared",
                                   timeout_ms == 0 ? "" : " (timed out)");
    if (r < 0)
        return nv_error_set(err, r, "%s: access lock: %s", leaf->filename, strerror(-r));
    return 0;
}

int bdrv_lock(struct bdrv_node *bs, enum bdrv_lock_mode mode, int timeout_ms, struct nv_error *err)
{
    struct bdrv_node *leaf = bdrv_leaf(bs);
    struct bdrv_locks *l = &leaf->locks;
    if (mode == BDRV_LOCK_EXCLUSIVE && !(leaf->flags & BDRV_O_RDWR))
        return nv_error_set(err, -EPERM, "%s: opened read-only, only the shared access lock",
                            leaf->filename);
    if (l->depth == UINT32_MAX)
        return nv_error_set(err, -EOVERFLOW, "%s: access lock nested too deeply", leaf->filename);
    if (l->depth == 0) {
        int r = access_lock(leaf, mode == BDRV_LOCK_EXCLUSIVE ? F_WRLCK : F_RDLCK, timeout_ms, err);
        if (r < 0)
            return r;
        l->mode = mode;
        l->depth = 1;
        return 0;
    }
    if (mode == BDRV_LOCK_SHARED || l->mode == BDRV_LOCK_EXCLUSIVE) {
        l->depth++;
        return 0;
    }
    if (timeout_ms < 0)
        return nv_error_set(err, -EINVAL,
                            "%s: an upgrade to the exclusive access lock needs a timeout: two "
                            "processes upgrading at once would wait for each other for ever",
                            leaf->filename);
    if (l->depth > 1)
        return nv_error_set(err, -EDEADLK,
                            "%s: cannot upgrade the access lock to exclusive: it is held shared "
                            "%u times in this process",
                            leaf->filename, l->depth);
    int r = access_lock(leaf, F_WRLCK, timeout_ms, err);
    if (r < 0)
        return r;
    l->mode = BDRV_LOCK_EXCLUSIVE;
    l->depth = 2;
    l->upgrade_depth = 2;
    return 0;
}

int bdrv_unlock(struct bdrv_node *bs, struct nv_error *err)
{
    struct bdrv_node *leaf = bdrv_leaf(bs);
    struct bdrv_locks *l = &leaf->locks;
    if (l->depth == 0)
        return nv_error_set(err, -ENOLCK, "%s: unlock of an access lock that is not held",
                            leaf->filename);
    short type = F_UNLCK;
    if (l->depth > 1) {
        if (!l->upgrade_depth || l->depth > l->upgrade_depth) {
            l->depth--;
            return 0;
        }
        type = F_RDLCK; /* the upgrade ends: back to shared, which never waits */
    }
    int r = access_lock(leaf, type, 0, err);
    if (r < 0)
        return r;
    l->depth--;
    if (type == F_RDLCK) {
        l->mode = BDRV_LOCK_SHARED;
        l->upgrade_depth = 0;
    }
    return 0;
}

unsigned bdrv_lock_depth(const struct bdrv_node *bs)
{
    return bdrv_leaf(bs)->locks.depth;
}

enum bdrv_lock_mode bdrv_lock_mode(const struct bdrv_node *bs)
{
    return bdrv_leaf(bs)->locks.mode;
}

/* ---- reopen: the same locks on a new open file description ---------------- */

int bdrv_locks_copy(struct bdrv_node *leaf, int new_fd, unsigned new_flags, struct nv_error *err)
{
    unsigned perm, unshare;
    bdrv_qemu_lock_set(new_flags & BDRV_O_OWNER, &perm, &unshare);
    int r = bdrv_qemu_lock_apply(new_fd, leaf->filename, 0, 0, perm, unshare, leaf->locks.qemu_perm,
                                 leaf->locks.qemu_unshare, err);
    if (r < 0 || leaf->locks.depth == 0)
        return r;
    /* Only shared can be carried over: two descriptions of one file conflict
     * on exclusive. bdrv_reopen refuses the cases that would need it. */
    if (leaf->locks.mode == BDRV_LOCK_EXCLUSIVE)
        return nv_error_set_status(err, NV_STATUS_BUSY, -EBUSY,
                                   "%s: the exclusive access lock is held", leaf->filename);
    r = bdrv_ofd_lock(new_fd, F_RDLCK, BDRV_ACCESS_LOCK_BYTE, 1, 0);
    if (r < 0)
        return nv_error_set(err, r, "%s: cannot carry the access lock over: %s", leaf->filename,
                            strerror(-r));
    return 0;
}
