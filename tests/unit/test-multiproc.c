/* test-multiproc.c - locks between processes: a second process never gets a
 * conflicting lock, and while one process reopens 1000 times (read-only <->
 * read-write, cache modes) holding the access lock, another one polling for
 * the lock never gets it. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "block.h"
#include "testutil.h"

#define RW_OWNER (BDRV_O_RDWR | BDRV_O_OWNER)
#define REOPENS  1000

struct peer {
    pid_t pid;
    int to_child, from_child;
};

/* Start a child running body(path, commands-in, reports-out). */
static struct peer start_peer(void (*body)(const char *, int, int), const char *path)
{
    int down[2], up[2];
    assert_int_equal(pipe(down), 0);
    assert_int_equal(pipe(up), 0);
    fflush(NULL);
    struct peer p = {.pid = fork()};
    assert_true(p.pid >= 0);
    if (p.pid == 0) {
        close(down[1]);
        close(up[0]);
        body(path, down[0], up[1]);
        _exit(0);
    }
    close(down[0]);
    close(up[1]);
    p.to_child = down[1];
    p.from_child = up[0];
    return p;
}

static char peer_read(int fd)
{
    char c = 0;
    return read(fd, &c, 1) == 1 ? c : 0;
}

static void peer_say(int fd, char c)
{
    if (write(fd, &c, 1) != 1)
        _exit(20);
}

static int finish_peer(struct peer *p)
{
    close(p->to_child);
    close(p->from_child);
    int status;
    assert_int_equal(waitpid(p->pid, &status, 0), p->pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The child owns the image and holds the access lock in the mode it is told
 * ('s' shared, 'x' exclusive), answering 'k' once it holds it. */
static void holder(const char *path, int in, int out)
{
    struct nv_error err = {0};
    struct bdrv_node *bs = bdrv_open_format("raw", path, RW_OWNER, NULL, &err);
    CHILD_CHECK(bs != NULL);
    for (char c; (c = peer_read(in)) != 0;) {
        while (bdrv_lock_depth(bs))
            bdrv_unlock(bs, &err);
        if (c == 'x' || c == 's')
            CHILD_CHECK(bdrv_lock(bs, c == 'x' ? BDRV_LOCK_EXCLUSIVE : BDRV_LOCK_SHARED, 0, &err) ==
                        0);
        peer_say(out, 'k');
    }
    bdrv_close(bs);
}

static void conflicting_locks_refused_across_processes(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    struct peer p = start_peer(holder, path);

    peer_say(p.to_child, 's');
    assert_int_equal(peer_read(p.from_child), 'k');
    struct bdrv_node *reader = bdrv_open_format("raw", path, 0, NULL, &err);
    assert_non_null(reader);
    assert_int_equal(bdrv_lock(reader, BDRV_LOCK_SHARED, 0, &err), 0); /* shared + shared */
    assert_int_equal(bdrv_unlock(reader, &err), 0);
    struct bdrv_node *writer = bdrv_open_format("raw", path, BDRV_O_RDWR, NULL, &err);
    assert_non_null(writer);
    assert_int_equal(bdrv_lock(writer, BDRV_LOCK_EXCLUSIVE, 0, &err), -EAGAIN);
    assert_int_equal(bdrv_lock(writer, BDRV_LOCK_EXCLUSIVE, 100, &err), -ETIMEDOUT);
    assert_null(bdrv_open_format("raw", path, RW_OWNER, NULL, &err));
    assert_int_equal(err.code, -EBUSY);
    assert_int_equal(bdrv_reopen(writer, BDRV_O_RDWR | BDRV_O_OWNER, &err), -EBUSY);

    peer_say(p.to_child, 'x');
    assert_int_equal(peer_read(p.from_child), 'k');
    assert_int_equal(bdrv_lock(reader, BDRV_LOCK_SHARED, 0, &err), -EAGAIN);
    assert_int_equal(bdrv_lock(writer, BDRV_LOCK_EXCLUSIVE, 0, &err), -EAGAIN);

    peer_say(p.to_child, '-');
    assert_int_equal(peer_read(p.from_child), 'k');
    assert_int_equal(bdrv_lock(writer, BDRV_LOCK_EXCLUSIVE, 0, &err), 0);
    assert_int_equal(finish_peer(&p), 0);
    /* The owner's exit released ownership too. */
    assert_int_equal(bdrv_reopen(writer, BDRV_O_RDWR | BDRV_O_OWNER, &err), 0);
    bdrv_close(writer);
    bdrv_close(reader);
}

/* Reopen REOPENS times through every access and cache combination while
 * holding the shared access lock; report 'r' when holding, 'd' when done. */
static void reopener(const char *path, int in, int out)
{
    (void)in;
    struct nv_error err = {0};
    static const unsigned cycle[] = {
        0,
        RW_OWNER,
        RW_OWNER | BDRV_O_CACHE_NONE,
        BDRV_O_CACHE_NONE,
        RW_OWNER | BDRV_O_CACHE_DIRECTSYNC,
        BDRV_O_CACHE_DIRECTSYNC,
        RW_OWNER,
        BDRV_O_RDWR,
    };
    struct bdrv_node *bs = bdrv_open_format("raw", path, RW_OWNER, NULL, &err);
    CHILD_CHECK(bs != NULL);
    CHILD_CHECK(bdrv_lock(bs, BDRV_LOCK_SHARED, 0, &err) == 0);
    peer_say(out, 'r');
    for (int i = 0; i < REOPENS; i++) {
        unsigned flags = cycle[i % (sizeof(cycle) / sizeof(cycle[0]))];
        if (bdrv_reopen(bs, flags, &err) < 0) {
            fprintf(stderr, "reopen %d to 0x%x: %s\n", i, flags, err.msg);
            _exit(11);
        }
        CHILD_CHECK(bdrv_get_flags(bs) == flags);
    }
    CHILD_CHECK(bdrv_lock_depth(bs) == 1);
    peer_say(out, 'd'); /* still holding: the poller stops before we let go */
    peer_read(in);
    CHILD_CHECK(bdrv_unlock(bs, &err) == 0);
    peer_say(out, 'u');
    peer_read(in); /* keep the image open until told */
    bdrv_close(bs);
}

static bool peer_done(int fd)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    return poll(&pfd, 1, 0) == 1;
}

static void reopen_storm_keeps_lock(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 65536, 0);
    /* The poller holds no node (a node would hold byte 100 itself). */
    int probe = open(path, O_RDWR | O_CLOEXEC);
    struct peer p = start_peer(reopener, path);
    assert_int_equal(peer_read(p.from_child), 'r');

    unsigned attempts = 0, got = 0;
    const off_t probed[] = {BDRV_ACCESS_LOCK_BYTE, 100}; /* access; QEMU's consistent read */
    while (!peer_done(p.from_child)) {
        attempts++;
        for (int i = 0; i < 2; i++) {
            struct flock fl = {
                .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = probed[i], .l_len = 1};
            if (fcntl(probe, F_OFD_SETLK, &fl) == 0) {
                got++;
                fl.l_type = F_UNLCK;
                fcntl(probe, F_OFD_SETLK, &fl);
            }
        }
    }
    assert_int_equal(peer_read(p.from_child), 'd');
    print_message("%u lock attempts during %d reopens, %u succeeded\n", attempts, REOPENS, got);
    assert_int_equal(got, 0);
    assert_true(attempts >= 100);
    peer_say(p.to_child, 'u');
    assert_int_equal(peer_read(p.from_child), 'u');
    /* Once the reopener let go, the access lock is there for the taking. */
    struct bdrv_node *poller = bdrv_open_format("raw", path, BDRV_O_RDWR, NULL, &err);
    assert_non_null(poller);
    assert_int_equal(bdrv_lock(poller, BDRV_LOCK_EXCLUSIVE, 0, &err), 0);
    assert_int_equal(bdrv_unlock(poller, &err), 0);
    assert_int_equal(finish_peer(&p), 0);
    close(probe);
    bdrv_close(poller);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(conflicting_locks_refused_across_processes),
        cmocka_unit_test(reopen_storm_keeps_lock),
    };
    return cmocka_run_group_tests_name("multiproc", tests, NULL, test_dir_teardown);
}
