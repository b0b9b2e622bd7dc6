/* test-reopen.c - cmocka tests of bdrv_reopen: access and cache changes,
 * locks held without a gap, and the seed's failures (file renamed away,
 * chmod 000, directory closed) falling back to the stashed descriptors. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "block.h"
#include "fdleak.h"
#include "testutil.h"

#define RW_OWNER (BDRV_O_RDWR | BDRV_O_OWNER)
#define ACCESS   BDRV_ACCESS_LOCK_BYTE

static struct bdrv_node *open_ok(const char *spec, unsigned flags, struct fdstash *stash)
{
    struct nv_error err = {0};
    struct bdrv_node *bs = bdrv_open_format("raw", spec, flags, stash, &err);
    if (!bs)
        fail_msg("open %s: %s", spec, err.msg);
    return bs;
}

static bool can_write(struct bdrv_node *bs, uint64_t off, uint8_t byte)
{
    struct nv_error err = {0};
    uint8_t back = 0;
    return bdrv_pwrite(bs, off, &byte, 1, &err) == 0 && bdrv_pread(bs, off, &back, 1, &err) == 0 &&
           back == byte;
}

static void read_write_and_back(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 8192, 0);
    struct bdrv_node *bs = open_ok(path, RW_OWNER, NULL);
    assert_true(can_write(bs, 10, 0x42));
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_SHARED, 0, &err), 0);

    assert_int_equal(bdrv_reopen(bs, 0, &err), 0);
    assert_int_equal(bdrv_get_flags(bs), 0);
    assert_false(bdrv_is_owner(bs));
    assert_false(can_write(bs, 10, 0x43));
    assert_false(test_lock_conflicts(path, F_WRLCK, 101)); /* ownership released */
    assert_true(test_lock_conflicts(path, F_WRLCK, 100));
    assert_true(test_lock_conflicts(path, F_WRLCK, ACCESS)); /* access lock carried over */
    uint8_t b = 0;
    assert_int_equal(bdrv_pread(bs, 10, &b, 1, &err), 0);
    assert_int_equal(b, 0x42);

    assert_int_equal(bdrv_reopen(bs, RW_OWNER, &err), 0);
    assert_true(bdrv_is_owner(bs));
    assert_true(can_write(bs, 11, 0x44));
    assert_true(test_lock_conflicts(path, F_WRLCK, 201));
    assert_true(test_lock_conflicts(path, F_WRLCK, ACCESS));
    assert_int_equal(bdrv_lock_depth(bs), 1);
    assert_int_equal(bdrv_unlock(bs, &err), 0);
    assert_false(test_lock_conflicts(path, F_WRLCK, ACCESS));
    assert_int_equal(bdrv_reopen(bs, RW_OWNER, &err), 0); /* no change */
    bdrv_close(bs);
    assert_false(test_lock_conflicts(path, F_WRLCK, 100));
}

static void cache_modes_change_in_place(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 65536, 0);
    char moved[700];
    snprintf(moved, sizeof(moved), "%s.moved", path);
    struct bdrv_node *bs = open_ok(path, RW_OWNER, NULL);
    /* With the name gone, only a change that opens nothing can succeed. */
    assert_int_equal(rename(path, moved), 0);
    const unsigned modes[] = {BDRV_O_CACHE_NONE, BDRV_O_CACHE_DIRECTSYNC, 0, BDRV_O_CACHE_NONE};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(bdrv_reopen(bs, RW_OWNER | modes[i], &err), 0);
        assert_int_equal(bdrv_get_flags(bs) & BDRV_O_CACHE_MASK, modes[i]);
        /* aligned and unaligned I/O both work with O_DIRECT */
        static uint8_t aligned[4096] __attribute__((aligned(4096)));
        memset(aligned, (int)i + 1, sizeof(aligned));
        assert_int_equal(bdrv_pwrite(bs, 8192, aligned, sizeof(aligned), &err), 0);
        assert_true(can_write(bs, 3 + i, (uint8_t)(0x60 + i)));
        uint8_t back[4096];
        assert_int_equal(bdrv_pread(bs, 8192, back, sizeof(back), &err), 0);
        assert_memory_equal(back, aligned, sizeof(back));
    }
    /* Ownership alone changes in place too. */
    assert_int_equal(bdrv_reopen(bs, BDRV_O_RDWR, &err), 0);
    assert_false(test_lock_conflicts(moved, F_WRLCK, 101));
    assert_int_equal(bdrv_reopen(bs, RW_OWNER, &err), 0);
    assert_true(test_lock_conflicts(moved, F_WRLCK, 101));
    bdrv_close(bs);
    assert_int_equal(rename(moved, path), 0);
}

static void read_only_refused_while_exclusive(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    struct bdrv_node *bs = open_ok(path, RW_OWNER, NULL);
    assert_int_equal(bdrv_lock(bs, BDRV_LOCK_EXCLUSIVE, 0, &err), 0);
    assert_int_equal(bdrv_reopen(bs, 0, &err), -EBUSY);
    assert_non_null(strstr(err.msg, "exclusive"));
    assert_true(bdrv_is_owner(bs));
    assert_true(can_write(bs, 0, 1));
    assert_true(test_lock_conflicts(path, F_RDLCK, ACCESS));
    assert_int_equal(bdrv_reopen(bs, BDRV_O_OWNER, &err), -EINVAL); /* owner needs RW */
    bdrv_close(bs);
}

static void conflict_keeps_old_state(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0x33);
    struct bdrv_node *reader = open_ok(path, 0, NULL);
    struct bdrv_node *owner = open_ok(path, RW_OWNER, NULL);
    assert_int_equal(bdrv_reopen(reader, RW_OWNER, &err), -EBUSY);
    assert_non_null(strstr(err.msg, "still open read-only"));
    assert_non_null(strstr(err.msg, "\"write\""));
    assert_int_equal(bdrv_get_flags(reader), 0);
    uint8_t b = 0;
    assert_int_equal(bdrv_pread(reader, 5, &b, 1, &err), 0);
    assert_int_equal(b, 0x33);
    assert_true(can_write(owner, 5, 0x34));
    bdrv_close(owner);
    assert_int_equal(bdrv_reopen(reader, RW_OWNER, &err), 0);
    assert_true(can_write(reader, 5, 0x35));
    bdrv_close(reader);
}

static void stashed_descriptor_reopens_through_proc(void **state)
{
    (void)state;
    struct nv_error err = {0};
    struct fdstash stash;
    fdstash_init(&stash);
    const char *path = test_file(0, 4096, 0);
    char moved[700];
    snprintf(moved, sizeof(moved), "%s.moved", path);
    assert_int_equal(fdstash_give(&stash, "img", open(path, O_RDONLY | O_CLOEXEC), &err), 0);
    struct bdrv_node *bs = open_ok("fd:img", 0, &stash);
    assert_int_equal(rename(path, moved), 0); /* the name does not matter for fd: */
    assert_int_equal(bdrv_reopen(bs, RW_OWNER, &err), 0);
    assert_true(can_write(bs, 1, 0x77));
    assert_int_equal(fdstash_count(&stash), 0); /* the reopen left nothing behind */
    bdrv_close(bs);
    assert_false(test_lock_conflicts(moved, F_WRLCK, 100));
    assert_int_equal(rename(moved, path), 0);
    fdstash_cleanup(&stash);
}

/* ---- the seed's failures, for real, as an unprivileged user ------------------------ */

enum sabotage { RENAME_AWAY, REPLACE_FILE, CHMOD_000, CLOSE_DIRECTORY };

/* Root opens anything; the child becomes nobody so that permissions bite. */
static void drop_privileges(void)
{
    if (geteuid() != 0)
        return;
    struct passwd *pw = getpwnam("nobody");
    uid_t uid = pw ? pw->pw_uid : 65534;
    gid_t gid = pw ? pw->pw_gid : 65534;
    CHILD_CHECK(setgroups(0, NULL) == 0);
    CHILD_CHECK(setgid(gid) == 0);
    CHILD_CHECK(setuid(uid) == 0);
}

static void sabotaged_reopen_child(void *arg)
{
    enum sabotage how = *(enum sabotage *)arg;
    struct nv_error err = {0};
    drop_privileges();
    char dir[] = "/tmp/nvtpm-reopen-XXXXXX";
    CHILD_CHECK(mkdtemp(dir) != NULL);
    char path[128], moved[128];
    snprintf(path, sizeof(path), "%s/image", dir);
    snprintf(moved, sizeof(moved), "%s/moved", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    CHILD_CHECK(fd >= 0 && ftruncate(fd, 65536) == 0);
    close(fd);

    struct fdstash stash;
    fdstash_init(&stash);
    struct bdrv_node *bs = bdrv_open_format("raw", path, RW_OWNER, &stash, &err);
    CHILD_CHECK(bs != NULL);
    CHILD_CHECK(bdrv_lock(bs, BDRV_LOCK_SHARED, 0, &err) == 0);
    int probe = open(path, O_RDONLY | O_CLOEXEC); /* sees locks after the name is gone */
    CHILD_CHECK(probe >= 0);

    switch (how) {
    case RENAME_AWAY:
        CHILD_CHECK(rename(path, moved) == 0);
        break;
    case REPLACE_FILE:
        CHILD_CHECK(rename(path, moved) == 0);
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        CHILD_CHECK(fd >= 0);
        close(fd);
        break;
    case CHMOD_000:
        CHILD_CHECK(chmod(path, 0) == 0);
        break;
    case CLOSE_DIRECTORY:
        CHILD_CHECK(chmod(dir, 0) == 0);
        break;
    }
    int r = bdrv_reopen(bs, 0, &err);
    fprintf(stderr, "reopen after sabotage %d: %d %s\n", (int)how, r, err.msg);
    CHILD_CHECK(r < 0);
    CHILD_CHECK(strstr(err.msg, "still open read-write") != NULL);
    if (how == REPLACE_FILE)
        CHILD_CHECK(r == -ESTALE);
    /* The node works as before, and every lock is still held. */
    CHILD_CHECK(bdrv_get_flags(bs) == RW_OWNER);
    CHILD_CHECK(can_write(bs, 4096, 0x99));
    CHILD_CHECK(bdrv_flush(bs, &err) == 0);
    CHILD_CHECK(test_lock_conflicts_fd(probe, F_WRLCK, ACCESS));
    CHILD_CHECK(test_lock_conflicts_fd(probe, F_WRLCK, 101));
    CHILD_CHECK(test_lock_conflicts_fd(probe, F_WRLCK, 201));
    CHILD_CHECK(fdstash_count(&stash) == 0);
    /* A second attempt fails the same way and changes nothing either. */
    CHILD_CHECK(bdrv_reopen(bs, 0, &err) < 0);
    CHILD_CHECK(can_write(bs, 4097, 0x98));
    bdrv_close(bs);
    CHILD_CHECK(!test_lock_conflicts_fd(probe, F_WRLCK, 101));
    close(probe);
    fdstash_cleanup(&stash);
    chmod(dir, 0700);
    chmod(path, 0600);
    unlink(path);
    unlink(moved);
    rmdir(dir);
}

static void seed_failure(enum sabotage how)
{
    assert_int_equal(test_run_child(sabotaged_reopen_child, &how), 0);
}

static void reopen_after_rename_falls_back(void **state)
{
    (void)state;
    seed_failure(RENAME_AWAY);
}

static void reopen_after_replace_falls_back(void **state)
{
    (void)state;
    seed_failure(REPLACE_FILE);
}

static void reopen_after_chmod_falls_back(void **state)
{
    (void)state;
    seed_failure(CHMOD_000);
}

static void reopen_after_closing_directory_falls_back(void **state)
{
    (void)state;
    seed_failure(CLOSE_DIRECTORY);
}

/* The other direction: a read-only node whose file became unreadable for
 * this user fails to become the owner, and goes on reading. */
static void readonly_sabotaged_child(void *arg)
{
    (void)arg;
    struct nv_error err = {0};
    drop_privileges();
    char dir[] = "/tmp/nvtpm-reopen-XXXXXX";
    CHILD_CHECK(mkdtemp(dir) != NULL);
    char path[128];
    snprintf(path, sizeof(path), "%s/image", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    CHILD_CHECK(fd >= 0 && write(fd, "abcd", 4) == 4);
    close(fd);
    struct bdrv_node *bs = bdrv_open_format("raw", path, 0, NULL, &err);
    CHILD_CHECK(bs != NULL);
    int probe = open(path, O_RDONLY | O_CLOEXEC);
    CHILD_CHECK(chmod(path, 0400) == 0); /* readable, no longer writable */
    CHILD_CHECK(bdrv_reopen(bs, RW_OWNER, &err) == -EACCES);
    CHILD_CHECK(strstr(err.msg, "still open read-only") != NULL);
    char buf[4];
    CHILD_CHECK(bdrv_pread(bs, 0, buf, 4, &err) == 0 && memcmp(buf, "abcd", 4) == 0);
    CHILD_CHECK(test_lock_conflicts_fd(probe, F_WRLCK, 100));
    CHILD_CHECK(!test_lock_conflicts_fd(probe, F_WRLCK, 101));
    bdrv_close(bs);
    close(probe);
    unlink(path);
    rmdir(dir);
}

static void readonly_to_owner_after_chmod_falls_back(void **state)
{
    (void)state;
    assert_int_equal(test_run_child(readonly_sabotaged_child, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(read_write_and_back),
        cmocka_unit_test(cache_modes_change_in_place),
        cmocka_unit_test(read_only_refused_while_exclusive),
        cmocka_unit_test(conflict_keeps_old_state),
        cmocka_unit_test(stashed_descriptor_reopens_through_proc),
        cmocka_unit_test(reopen_after_rename_falls_back),
        cmocka_unit_test(reopen_after_replace_falls_back),
        cmocka_unit_test(reopen_after_chmod_falls_back),
        cmocka_unit_test(reopen_after_closing_directory_falls_back),
        cmocka_unit_test(readonly_to_owner_after_chmod_falls_back),
        cmocka_unit_test(fdleak_suite_check),
    };
    return cmocka_run_group_tests_name("reopen", tests, fdleak_suite_setup, test_dir_teardown);
}
