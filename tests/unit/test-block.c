/* test-block.c - cmocka tests of block/: the node API, the refcounted access
 * lock (nesting, upgrades, deadlines) and the ownership lock's QEMU bytes. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "block.h"
#include "fdleak.h"
#include "qcow2.h" /* struct bdrv_node and the qcow2 node's caches, to see what is resident */
#include "testutil.h"

#define RW_OWNER (BDRV_O_RDWR | BDRV_O_OWNER)
#define ACCESS   BDRV_ACCESS_LOCK_BYTE

static struct bdrv_node *open_ok(const char *path, unsigned flags)
{
    struct nv_error err = {0};
    struct bdrv_node *bs = bdrv_open_format("raw", path, flags, NULL, &err);
    if (!bs)
        fail_msg("open %s: %s", path, err.msg);
    return bs;
}

/* ---- node API --------------------------------------------------------------- */

/* Resident pages of a cache's memory (mincore: what the kernel has mapped). */
static size_t resident_pages(const struct qcow2_cache *c)
{
    size_t n = test_resident_pages(c->memory, c->size);
    assert_int_not_equal(n, SIZE_MAX);
    return n;
}

static void check_pattern(struct bdrv_node *bs, uint64_t off, int byte)
{
    struct nv_error err = {0};
    uint8_t got[4096], want[4096];
    memset(want, byte, sizeof(want));
    assert_int_equal(bdrv_pread(bs, off, got, sizeof(got), &err), 0);
    assert_memory_equal(got, want, sizeof(got));
}

/* bdrv_release_memory gives back the pages of clean L2 tables and refcount
 * blocks (a TPM process keeps them for its life), keeps a dirty one until its
 * flush, and the data reads and writes the same after it; with clusters
 * smaller than a page (tables share pages) only a cache with nothing dirty. */
static void release_memory_at(unsigned cluster_size)
{
    struct nv_error err = {0};
    char path[700];
    snprintf(path, sizeof(path), "%s/release-%u.qcow2", test_dir(), cluster_size);
    unlink(path);
    struct bdrv_create_opts opts = {.size = 8 << 20, .cluster_size = cluster_size};
    assert_int_equal(bdrv_create("qcow2", path, &opts, &err), 0);
    struct bdrv_node *bs = bdrv_open(path, RW_OWNER, NULL, &err);
    assert_non_null(bs);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 1000, &err), 0);
    struct qcow2_state *s = bs->opaque;
    uint8_t data[4096];
    for (int i = 0; i < 3; i++) {
        memset(data, 0x10 + i, sizeof(data));
        assert_int_equal(bdrv_pwrite(bs, (uint64_t)i * (3 << 20), data, sizeof(data), &err), 0);
    }
    assert_int_equal(bdrv_flush(bs, &err), 0);
    assert_true(resident_pages(&s->l2_cache) > 0);
    assert_true(resident_pages(&s->refblock_cache) > 0);
    bdrv_release_memory(bs);
    assert_int_equal(resident_pages(&s->l2_cache), 0);
    assert_int_equal(resident_pages(&s->refblock_cache), 0);
    for (int i = 0; i < 3; i++)
        check_pattern(bs, (uint64_t)i * (3 << 20), 0x10 + i);
    /* A table changed and not flushed yet stays, and is written by the flush. */
    memset(data, 0x77, sizeof(data));
    assert_int_equal(bdrv_pwrite(bs, 5 << 20, data, sizeof(data), &err), 0);
    bdrv_release_memory(bs);
    assert_true(resident_pages(&s->l2_cache) > 0);
    assert_int_equal(bdrv_flush(bs, &err), 0);
    bdrv_release_memory(bs);
    assert_int_equal(resident_pages(&s->l2_cache), 0);
    check_pattern(bs, 5 << 20, 0x77);
    check_pattern(bs, 3 << 20, 0x11);
    bdrv_unlock(bs, NULL);
    bdrv_close(bs);
    /* and another opener reads what was written */
    bs = bdrv_open(path, 0, NULL, &err);
    assert_non_null(bs);
    check_pattern(bs, 5 << 20, 0x77);
    check_pattern(bs, 6 << 20, 0x12);
    bdrv_close(bs);
}

static void release_memory_gives_back_clean_tables(void **state)
{
    (void)state;
    release_memory_at(65536);
    release_memory_at(4096);
    release_memory_at(512);
}

static void raw_read_write(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 65536, 0);
    struct bdrv_node *bs = open_ok(path, RW_OWNER);
    assert_string_equal(bdrv_format_name(bs), "raw");
    assert_string_equal(bdrv_filename(bs), path);
    assert_non_null(bdrv_file_child(bs));
    uint8_t buf[8192], back[8192];
    memset(buf, 0x5a, sizeof(buf));
    assert_int_equal(bdrv_pwrite(bs, 4096 + 3, buf, sizeof(buf), &err), 0);
    assert_int_equal(bdrv_pread(bs, 4096 + 3, back, sizeof(back), &err), 0);
    assert_memory_equal(buf, back, sizeof(buf));
    assert_int_equal(bdrv_pread(bs, 4096 + 2, back, 1, &err), 0);
    assert_int_equal(back[0], 0);
    assert_int_equal(bdrv_flush(bs, &err), 0);
    assert_int_equal(bdrv_getlength(bs, &err), 65536);

    assert_int_equal(bdrv_pread(bs, 65536 - 10, back, 11, &err), -ERANGE);
    assert_non_null(strstr(err.msg, "past the end"));
    assert_non_null(strstr(err.msg, path));
    assert_int_equal(bdrv_pwrite(bs, 65536, buf, 1, &err), -ERANGE);
    assert_int_equal(bdrv_pread(bs, UINT64_MAX - 2, back, 8, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "overflows"));

    assert_int_equal(bdrv_truncate(bs, 131072, &err), 0);
    assert_int_equal(bdrv_getlength(bs, &err), 131072);
    assert_int_equal(bdrv_pwrite(bs, 131072 - 4096, buf, 4096, &err), 0);
    bdrv_close(bs);

    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 131072);
}

static void open_errors(void **state)
{
    (void)state;
    struct nv_error err = {0};
    char missing[600];
    snprintf(missing, sizeof(missing), "%s/does-not-exist", test_dir());
    assert_null(bdrv_open(missing, RW_OWNER, NULL, &err));
    assert_int_equal(err.code, -ENOENT);
    assert_non_null(strstr(err.msg, missing));
    assert_null(bdrv_open(test_dir(), 0, NULL, &err));
    assert_int_equal(err.code, -ENODEV); /* a directory opens O_RDONLY, then is refused */
    assert_non_null(strstr(err.msg, "not a regular file"));
    assert_null(bdrv_open("", 0, NULL, &err));
    assert_int_equal(err.code, -EINVAL);

    const char *path = test_file(0, 4096, 0);
    assert_null(bdrv_open(path, BDRV_O_OWNER, NULL, &err));
    assert_int_equal(err.code, -EINVAL);
    assert_null(bdrv_open_format("vmdk", path, 0, NULL, &err));
    assert_int_equal(err.code, -ENOTSUP);

    uint8_t byte = 1;
    struct bdrv_node *ro = open_ok(path, 0);
    assert_int_equal(bdrv_pwrite(ro, 0, &byte, 1, &err), -EBADF);
    assert_non_null(strstr(err.msg, "read-only"));
    assert_int_equal(bdrv_truncate(ro, 0, &err), -EBADF);
    bdrv_close(ro);
    struct bdrv_node *guest = open_ok(path, BDRV_O_RDWR);
    assert_false(bdrv_is_owner(guest));
    assert_int_equal(bdrv_pwrite(guest, 0, &byte, 1, &err), -EPERM);
    assert_non_null(strstr(err.msg, "ownership"));
    bdrv_close(guest);

    unsigned cache = 99;
    assert_int_equal(bdrv_parse_cache_mode("unsafe", &cache, &err), -EINVAL);
    assert_int_equal(bdrv_parse_cache_mode("none", &cache, &err), 0);
    assert_int_equal(cache, BDRV_O_CACHE_NONE);
    assert_string_equal(bdrv_cache_mode_name(BDRV_O_CACHE_DIRECTSYNC), "directsync");
}

static void probe_finds_qcow2_magic(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(1, 4096, 0);
    int fd = open(path, O_WRONLY);
    assert_int_equal(write(fd, "QFI\xfb", 4), 4);
    close(fd);
    /* Probing reads the magic and picks qcow2, whose parser refuses the rest
     * with the reason; explicit raw opens the bytes. */
    struct bdrv_node *bs = bdrv_open(path, 0, NULL, &err);
    assert_null(bs);
    assert_non_null(strstr(err.msg, "qcow2 version 0 is not supported"));
    bs = open_ok(path, 0);
    assert_string_equal(bdrv_format_name(bs), "raw");
    bdrv_close(bs);
    bs = bdrv_open(test_file(2, 4096, 0), 0, NULL, &err);
    assert_non_null(bs);
    assert_string_equal(bdrv_format_name(bs), "raw");
    bdrv_close(bs);
}

static void open_stashed_descriptor(void **state)
{
    (void)state;
    struct nv_error err = {0};
    struct fdstash stash;
    fdstash_init(&stash);
    const char *path = test_file(0, 8192, 0x11);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    assert_int_equal(fdstash_give(&stash, "img", fd, &err), 0);
    struct bdrv_node *bs = bdrv_open_format("raw", "fd:img", RW_OWNER, &stash, &err);
    assert_non_null(bs);
    assert_int_equal(fdstash_count(&stash), 0); /* the node took it */
    uint8_t b = 0;
    assert_int_equal(bdrv_pread(bs, 100, &b, 1, &err), 0);
    assert_int_equal(b, 0x11);
    assert_true(test_lock_conflicts(path, F_WRLCK, 101));
    bdrv_close(bs);
    assert_false(fd_is_open(fd));
    assert_false(test_lock_conflicts(path, F_WRLCK, 101));

    assert_null(bdrv_open_format("raw", "fd:nothing", 0, &stash, &err));
    assert_int_equal(err.code, -ENOENT);
    assert_non_null(strstr(err.msg, "'nothing'"));
    assert_null(bdrv_open_format("raw", "fd:img", 0, NULL, &err));
    assert_int_equal(err.code, -EINVAL);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_int_equal(fdstash_give(&stash, "ro", fd, &err), 0);
    assert_null(bdrv_open_format("raw", "fd:ro", RW_OWNER, &stash, &err));
    assert_int_equal(err.code, -EBADF);
    assert_int_equal(fdstash_peek(&stash, "ro"), fd); /* refused: still the stash's */

    /* Refused by a lock conflict: the descriptor stays in the stash, as it was,
     * holding none of the locks the failed open took on it. */
    struct bdrv_node *owner = bdrv_open_format("raw", path, RW_OWNER, NULL, &err);
    assert_non_null(owner);
    fd = open(path, O_RDWR | O_CLOEXEC);
    assert_int_equal(fdstash_give(&stash, "busy", fd, &err), 0);
    assert_null(bdrv_open_format("raw", "fd:busy", RW_OWNER | BDRV_O_CACHE_NONE, &stash, &err));
    assert_int_equal(err.code, -EBUSY);
    assert_int_equal(fdstash_peek(&stash, "busy"), fd);
    assert_false(fcntl(fd, F_GETFL) & O_DIRECT);
    bdrv_close(owner);
    assert_false(test_lock_conflicts(path, F_WRLCK, 100));
    bs = bdrv_open_format("raw", "fd:busy", RW_OWNER, &stash, &err); /* the retry works */
    assert_non_null(bs);
    assert_int_equal(fdstash_peek(&stash, "busy"), -ENOENT);
    bdrv_close(bs);
    fdstash_cleanup(&stash);
}

static void fifo_is_refused_without_hanging(void **state)
{
    (void)state;
    struct nv_error err = {0};
    char fifo[700];
    snprintf(fifo, sizeof(fifo), "%s/fifo", test_dir());
    assert_int_equal(mkfifo(fifo, 0600), 0);
    int64_t t0 = test_now_ms();
    assert_null(bdrv_open(fifo, 0, NULL, &err));
    assert_int_equal(err.code, -ENODEV);
    assert_null(bdrv_open(fifo, RW_OWNER, NULL, &err));
    assert_non_null(strstr(err.msg, "not a regular file"));
    /* A FIFO put where the image was: reopen fails at once, the node goes on. */
    const char *path = test_file(3, 4096, 0);
    struct bdrv_node *bs = bdrv_open_format("raw", path, RW_OWNER, NULL, &err);
    assert_non_null(bs);
    assert_int_equal(rename(path, fifo), 0); /* the file moves, a FIFO takes its name */
    char moved[700];
    snprintf(moved, sizeof(moved), "%s.moved", path);
    assert_int_equal(rename(fifo, moved), 0);
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(bdrv_reopen(bs, 0, &err), -ESTALE);
    assert_true(test_now_ms() - t0 < 2000);
    uint8_t b = 7;
    assert_int_equal(bdrv_pwrite(bs, 0, &b, 1, &err), 0);
    bdrv_close(bs);
    unlink(path);
    unlink(moved);
}

/* ---- the access lock ---------------------------------------------------------- */

static void nested_shared_locks_count(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    struct bdrv_node *bs = open_ok(path, RW_OWNER);
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(bdrv_lock(bs, BDRV_LOCK_SHARED, 0, &err), 0);
        assert_int_equal(bdrv_lock_depth(bs), i);
    }
    assert_true(test_lock_conflicts(path, F_WRLCK, ACCESS));
    assert_false(test_lock_conflicts(path, F_RDLCK, ACCESS));
    for (int i = 2; i >= 0; i--) {
        assert_int_equal(bdrv_unlock(bs, &err), 0);
        assert_int_equal(bdrv_lock_depth(bs), i);
        assert_int_equal(test_lock_conflicts(path, F_WRLCK, ACCESS), i > 0);
    }
    assert_int_equal(bdrv_unlock(bs, &err), -ENOLCK);
    assert_non_null(strstr(err.msg, "not held"));
    bdrv_close(bs);
}

static void exclusive_lock_and_nesting(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    struct bdrv_node *bs = open_ok(path, RW_OWNER);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 0, &err), 0);
    assert_true(test_lock_conflicts(path, F_RDLCK, ACCESS));
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_SHARED, 0, &err), 0); /* covered by exclusive */
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 0, &err), 0);
    assert_int_equal(bdrv_lock_depth(bs), 3);
    assert_int_equal(bdrv_lock_mode(bs), BDRV_LOCK_EXCLUSIVE);
    assert_int_equal(bdrv_unlock(bs, &err), 0);
    assert_int_equal(bdrv_unlock(bs, &err), 0);
    assert_true(test_lock_conflicts(path, F_RDLCK, ACCESS));
    assert_int_equal(bdrv_unlock(bs, &err), 0);
    assert_false(test_lock_conflicts(path, F_RDLCK, ACCESS));
    bdrv_close(bs);
}

static void upgrade_and_back(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    struct bdrv_node *bs = open_ok(path, RW_OWNER);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_SHARED, 0, &err), 0);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 0, &err), 0);
    assert_int_equal(bdrv_lock_mode(bs), BDRV_LOCK_EXCLUSIVE);
    assert_int_equal(bdrv_lock_depth(bs), 2);
    assert_true(test_lock_conflicts(path, F_RDLCK, ACCESS));
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_SHARED, 0, &err), 0); /* inside the upgrade */
    assert_int_equal(bdrv_unlock(bs, &err), 0);
    assert_int_equal(bdrv_lock_mode(bs), BDRV_LOCK_EXCLUSIVE);
    assert_int_equal(bdrv_unlock(bs, &err), 0); /* the upgrade ends */
    assert_int_equal(bdrv_lock_mode(bs), BDRV_LOCK_SHARED);
    assert_int_equal(bdrv_lock_depth(bs), 1);
    assert_false(test_lock_conflicts(path, F_RDLCK, ACCESS));
    assert_true(test_lock_conflicts(path, F_WRLCK, ACCESS));
    assert_int_equal(bdrv_unlock(bs, &err), 0);
    assert_false(test_lock_conflicts(path, F_WRLCK, ACCESS));
    bdrv_close(bs);
}

static void upgrade_refused_when_shared_twice(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    struct bdrv_node *bs = open_ok(path, RW_OWNER);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_SHARED, 0, &err), 0);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_SHARED, 0, &err), 0);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 0, &err), -EDEADLK);
    assert_non_null(strstr(err.msg, "cannot upgrade"));
    assert_int_equal(bdrv_lock_depth(bs), 2);
    assert_int_equal(bdrv_lock_mode(bs), BDRV_LOCK_SHARED);
    assert_false(test_lock_conflicts(path, F_RDLCK, ACCESS));
    bdrv_close(bs);
    /* Another process (here: another open file) holding shared blocks an
     * upgrade until the deadline. */
    bs = open_ok(path, RW_OWNER);
    int other = open(path, O_RDONLY | O_CLOEXEC);
    struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = ACCESS, .l_len = 1};
    assert_int_equal(fcntl(other, F_OFD_SETLK, &fl), 0);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_SHARED, 0, &err), 0);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, -1, &err), -EINVAL); /* could deadlock */
    assert_non_null(strstr(err.msg, "needs a timeout"));
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 50, &err), -ETIMEDOUT);
    assert_int_equal(bdrv_lock_mode(bs), BDRV_LOCK_SHARED);
    assert_int_equal(bdrv_lock_depth(bs), 1);
    close(other);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 0, &err), 0);
    bdrv_close(bs);
}

static void read_only_takes_only_shared(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    struct bdrv_node *bs = open_ok(path, 0);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 0, &err), -EPERM);
    assert_int_equal(bdrv_lock_depth(bs), 0);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_SHARED, 0, &err), 0);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 0, &err), -EPERM);
    assert_int_equal(bdrv_lock_depth(bs), 1);
    bdrv_close(bs);
    assert_false(test_lock_conflicts(path, F_WRLCK, ACCESS)); /* close released it */
}

static int hold_lock_fd(const char *path, short type)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = ACCESS, .l_len = 1};
    assert_int_equal(fcntl(fd, F_OFD_SETLK, &fl), 0);
    return fd;
}

static void interrupt_handler(int sig);

static void deadline_times_out_without_spinning(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    int holder = hold_lock_fd(path, F_WRLCK);
    struct bdrv_node *bs = open_ok(path, RW_OWNER);

    int64_t t0 = test_now_ms();
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_SHARED, 0, &err), -EAGAIN);
    assert_true(test_now_ms() - t0 < 100);
    assert_non_null(strstr(err.msg, path));

    int64_t cpu0 = test_cpu_ms();
    t0 = test_now_ms();
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 400, &err), -ETIMEDOUT);
    int64_t waited = test_now_ms() - t0, cpu = test_cpu_ms() - cpu0;
    print_message("waited %lld ms, used %lld ms of CPU\n", (long long)waited, (long long)cpu);
    assert_true(waited >= 390 && waited < 3000);
    assert_true(cpu < 100); /* slept in the kernel, did not poll */
    assert_non_null(strstr(err.msg, "timed out"));
    assert_int_equal(bdrv_lock_depth(bs), 0);

    /* No timer signal is left over to interrupt the caller later: a blocking
     * read is interrupted only by our own alarm, 300 ms on. */
    struct sigaction sa = {.sa_handler = interrupt_handler}, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, &old);
    int p[2];
    assert_int_equal(pipe(p), 0);
    struct itimerval once = {{0, 0}, {0, 300000}};
    setitimer(ITIMER_REAL, &once, NULL);
    t0 = test_now_ms();
    char c;
    assert_int_equal(read(p[0], &c, 1), -1);
    assert_int_equal(errno, EINTR);
    assert_true(test_now_ms() - t0 >= 250);
    sigaction(SIGALRM, &old, NULL);
    close(p[0]);
    close(p[1]);
    close(holder);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 400, &err), 0);
    bdrv_close(bs);
}

/* A child holds the lock for hold_ms, then exits; the parent's wait ends then. */
static pid_t child_holding(const char *path, short type, int hold_ms)
{
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(path, O_RDWR);
        struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = ACCESS, .l_len = 1};
        if (fd < 0 || fcntl(fd, F_OFD_SETLK, &fl) < 0)
            _exit(1);
        if (write(ready[1], "r", 1) != 1)
            _exit(1);
        usleep((useconds_t)hold_ms * 1000);
        _exit(0);
    }
    close(ready[1]);
    char c;
    assert_int_equal(read(ready[0], &c, 1), 1);
    close(ready[0]);
    return pid;
}

static void interrupt_handler(int sig)
{
    (void)sig;
}

static void wait_ends_when_holder_leaves_despite_signals(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    struct bdrv_node *bs = open_ok(path, RW_OWNER);

    /* SIGALRM every 20 ms, without SA_RESTART: the wait sees EINTR and goes on. */
    struct sigaction sa = {.sa_handler = interrupt_handler}, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, &old);
    struct itimerval every = {{0, 20000}, {0, 20000}}, off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &every, NULL);

    pid_t pid = child_holding(path, F_WRLCK, 250);
    int64_t t0 = test_now_ms();
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 5000, &err), 0);
    int64_t waited = test_now_ms() - t0;
    assert_true(waited >= 150 && waited < 3000);
    assert_int_equal(bdrv_unlock(bs, &err), 0);
    waitpid(pid, NULL, 0);

    pid = child_holding(path, F_RDLCK, 150);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, -1, &err), 0); /* for ever */
    waitpid(pid, NULL, 0);

    setitimer(ITIMER_REAL, &off, NULL);
    sigaction(SIGALRM, &old, NULL);
    bdrv_close(bs);
}

/* ---- the ownership lock --------------------------------------------------------- */

static void assert_qemu_bytes(const char *path, const int *held, size_t n)
{
    for (int b = 100; b <= 204; b += (b == 104 ? 96 : 1)) {
        bool want = false;
        for (size_t i = 0; i < n; i++)
            want |= held[i] == b;
        if (test_lock_conflicts(path, F_WRLCK, (uint64_t)b) != want)
            fail_msg("lock byte %d: %s", b, want ? "not held" : "held");
        assert_false(test_lock_conflicts(path, F_RDLCK, (uint64_t)b)); /* all shared */
    }
}

static void owner_holds_qemu_bytes(void **state)
{
    (void)state;
    const char *path = test_file(0, 4096, 0);
    const int owner[] = {100, 101, 103, 201, 203}, reader[] = {100};
    struct bdrv_node *bs = open_ok(path, RW_OWNER);
    assert_true(bdrv_is_owner(bs));
    assert_qemu_bytes(path, owner, 5);
    bdrv_close(bs);
    assert_qemu_bytes(path, NULL, 0);
    bs = open_ok(path, 0);
    assert_false(bdrv_is_owner(bs));
    assert_qemu_bytes(path, reader, 1);
    bdrv_close(bs);
    bs = open_ok(path, BDRV_O_RDWR);
    assert_qemu_bytes(path, reader, 1);
    bdrv_close(bs);
}

static void second_owner_refused(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    const int owner[] = {100, 101, 103, 201, 203};
    struct bdrv_node *a = open_ok(path, RW_OWNER);
    assert_null(bdrv_open_format("raw", path, RW_OWNER, NULL, &err));
    assert_int_equal(err.code, -EBUSY);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "\"write\""));
    struct bdrv_node *reader = open_ok(path, 0); /* readers are welcome */
    bdrv_close(reader);
    assert_qemu_bytes(path, owner, 5);

    /* Ownership handed over without closing. */
    assert_int_equal(bdrv_reopen(a, BDRV_O_RDWR, &err), 0);
    struct bdrv_node *b = open_ok(path, RW_OWNER);
    assert_int_equal(bdrv_reopen(a, BDRV_O_RDWR | BDRV_O_OWNER, &err), -EBUSY);
    assert_false(bdrv_is_owner(a));
    uint8_t byte = 0;
    assert_int_equal(bdrv_pwrite(a, 0, &byte, 1, &err), -EPERM);
    assert_int_equal(bdrv_pwrite(b, 0, &byte, 1, &err), 0);
    bdrv_close(b);
    assert_int_equal(bdrv_reopen(a, BDRV_O_RDWR | BDRV_O_OWNER, &err), 0);
    assert_int_equal(bdrv_pwrite(a, 0, &byte, 1, &err), 0);
    bdrv_close(a);

    struct bdrv_node *ro = open_ok(path, 0);
    assert_int_equal(bdrv_reopen(ro, BDRV_O_OWNER, &err), -EINVAL); /* ownership needs read-write */
    bdrv_close(ro);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(raw_read_write),
        cmocka_unit_test(release_memory_gives_back_clean_tables),
        cmocka_unit_test(open_errors),
        cmocka_unit_test(probe_finds_qcow2_magic),
        cmocka_unit_test(open_stashed_descriptor),
        cmocka_unit_test(fifo_is_refused_without_hanging),
        cmocka_unit_test(nested_shared_locks_count),
        cmocka_unit_test(exclusive_lock_and_nesting),
        cmocka_unit_test(upgrade_and_back),
        cmocka_unit_test(upgrade_refused_when_shared_twice),
        cmocka_unit_test(read_only_takes_only_shared),
        cmocka_unit_test(deadline_times_out_without_spinning),
        cmocka_unit_test(wait_ends_when_holder_leaves_despite_signals),
        cmocka_unit_test(owner_holds_qemu_bytes),
        cmocka_unit_test(second_owner_refused),
        cmocka_unit_test(fdleak_suite_check),
    };
    return cmocka_run_group_tests_name("block", tests, fdleak_suite_setup, test_dir_teardown);
}
