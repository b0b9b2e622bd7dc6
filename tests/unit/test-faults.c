/* test-faults.c - cmocka tests of the fault-injection driver: rule syntax,
 * failing and short requests by count and after named points, EINTR, and the
 * write log with its replay. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "block.h"
#include "fdleak.h"
#include "testutil.h"

#define RW_OWNER (BDRV_O_RDWR | BDRV_O_OWNER)

static struct bdrv_node *open_faults(const char *rules, const char *path)
{
    char spec[1400];
    struct nv_error err = {0};
    snprintf(spec, sizeof(spec), "faults:%s:%s", rules, path);
    struct bdrv_node *bs = bdrv_open_format("raw", spec, RW_OWNER, NULL, &err);
    if (!bs)
        fail_msg("open %s: %s", spec, err.msg);
    assert_string_equal(bdrv_filename(bs), path);
    return bs;
}

static void bad_rules_refused(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    const char *bad[] = {"bogus=1", "write=0",   "write=x", "write",        "write=1;EIO",
                         "read=-1", "flush=1+2", "log=",    "short-write=0"};
    char spec[1400];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(spec, sizeof(spec), "faults:%s:%s", bad[i], path);
        nv_error_clear(&err);
        assert_null(bdrv_open_format("raw", spec, RW_OWNER, NULL, &err));
        assert_int_equal(err.code, -EINVAL);
        assert_non_null(strstr(err.msg, "faults"));
    }
    assert_null(bdrv_open_format("raw", "faults:write=1", RW_OWNER, NULL, &err));
    assert_null(bdrv_open_format("raw", "faults:write=1:EIO", RW_OWNER, NULL, &err));
    assert_non_null(strstr(err.msg, "expected ':' and the image"));
    /* An unknown errno name is not a rule's errno, so it is the start of the path. */
    snprintf(spec, sizeof(spec), "faults:write=1:EWHATEVER%s", path);
    assert_null(bdrv_open_format("raw", spec, RW_OWNER, NULL, &err));
    assert_int_equal(err.code, -ENOENT);
}

/* A rule naming an unknown point, or a bad count after one, is refused with
 * a message that quotes the rule (and lists the points). */
static void bad_event_rules_refused(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    const char *bad[] = {"write=nosuch-event",
                         "write=qcow2-l2-update/0",
                         "write=qcow2-l2-update/",
                         "write=qcow2-l2-update/x",
                         "write=/2",
                         "flush=qcow2-l2-update++",
                         "write=2x",
                         "short-write=qcow2-l2-update/-1"};
    char spec[1400];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(spec, sizeof(spec), "faults:log=%s/l,%s,flush=1:%s", test_dir(), bad[i], path);
        nv_error_clear(&err);
        assert_null(bdrv_open_format("raw", spec, RW_OWNER, NULL, &err));
        assert_int_equal(err.code, -EINVAL);
        char quoted[64];
        snprintf(quoted, sizeof(quoted), "faults: rule '%s'", bad[i]);
        if (!strstr(err.msg, quoted))
            fail_msg("%s: %s", bad[i], err.msg);
    }
    snprintf(spec, sizeof(spec), "faults:read=nosuch:%s", path);
    assert_null(bdrv_open_format("raw", spec, RW_OWNER, NULL, &err));
    assert_non_null(strstr(err.msg, "events: qcow2-header-update, "));
    assert_non_null(strstr(err.msg, "nvram-commit-slot"));
}

/* Every point has a distinct name of [a-z0-9-] that a rule takes. */
static void event_names_parse(void **state)
{
    (void)state;
    const char *path = test_file(0, 4096, 0);
    for (int i = 0; i < BDRV_EV_COUNT; i++) {
        const char *name = bdrv_event_name((enum bdrv_event)i);
        assert_non_null(name);
        assert_int_equal(strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789-"), strlen(name));
        for (int j = 0; j < i; j++)
            assert_string_not_equal(name, bdrv_event_name((enum bdrv_event)j));
        char rules[200];
        snprintf(rules, sizeof(rules), "write=%s/3+:ENOSPC,short-read=%s", name, name);
        bdrv_close(open_faults(rules, path));
    }
    assert_null(bdrv_event_name(BDRV_EV_COUNT));
}

static void write_ok(struct bdrv_node *bs, uint64_t offset)
{
    struct nv_error err = {0};
    uint8_t b = 1;
    if (bdrv_pwrite(bs, offset, &b, 1, &err) < 0)
        fail_msg("write at %llu: %s", (unsigned long long)offset, err.msg);
}

static void write_fails(struct bdrv_node *bs, uint64_t offset, int code)
{
    struct nv_error err = {0};
    uint8_t b = 1;
    assert_int_equal(bdrv_pwrite(bs, offset, &b, 1, &err), code);
}

/* EVENT: the first request after each announcement; EVENT/N the Nth; other
 * points and other kinds of request do not count. */
static void write_after_event_fails(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    struct bdrv_node *bs =
        open_faults("write=nvram-commit-slot:ENOSPC,write=qcow2-l2-update/2,write=3", path);
    write_ok(bs, 0);
    bdrv_event(bs, BDRV_EV_NVRAM_SUPER_UPDATE); /* not named by any rule */
    write_ok(bs, 1);
    bdrv_event(bs, BDRV_EV_NVRAM_COMMIT_SLOT);
    assert_int_equal(bdrv_flush(bs, &err), 0); /* a flush is not a write */
    write_fails(bs, 2, -EIO);                  /* the third write: the counted rule */
    write_ok(bs, 3); /* the announcement's write was the third one; it is spent */
    bdrv_event(bs, BDRV_EV_NVRAM_COMMIT_SLOT);
    write_fails(bs, 4, -ENOSPC);
    write_ok(bs, 5);
    bdrv_event(bs, BDRV_EV_QCOW2_L2_UPDATE);
    bdrv_event(bs, BDRV_EV_NVRAM_COMMIT_SLOT);
    write_fails(bs, 6, -ENOSPC);
    write_fails(bs, 7, -EIO); /* the second after qcow2-l2-update */
    write_ok(bs, 8);
    bdrv_close(bs);
}

/* EVENT/N+: from the Nth request after the first announcement on, for
 * good; announcing it again changes nothing. */
static void event_and_after_sticks(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    struct bdrv_node *bs = open_faults("flush=nvram-format-zeros/2+:ENOSPC", path);
    assert_int_equal(bdrv_flush(bs, &err), 0);
    bdrv_event(bs, BDRV_EV_NVRAM_FORMAT_ZEROS);
    write_ok(bs, 0);
    assert_int_equal(bdrv_flush(bs, &err), 0);
    bdrv_event(bs, BDRV_EV_NVRAM_FORMAT_ZEROS); /* does not restart the count */
    assert_int_equal(bdrv_flush(bs, &err), -ENOSPC);
    bdrv_event(bs, BDRV_EV_NVRAM_FORMAT_ZEROS);
    for (int i = 0; i < 3; i++)
        assert_int_equal(bdrv_flush(bs, &err), -ENOSPC);
    bdrv_close(bs);
}

/* Points announced on a format node reach the faults node under it, qcow2's
 * own among them; on a plain file they do nothing. */
static void events_pass_down_the_graph(void **state)
{
    (void)state;
    struct nv_error err = {0};
    char path[700], spec[800];
    snprintf(path, sizeof(path), "%s/events.qcow2", test_dir());
    unlink(path);
    struct bdrv_create_opts opts = {.size = 1 << 20};
    assert_int_equal(bdrv_create("qcow2", path, &opts, &err), 0);
    snprintf(spec, sizeof(spec), "faults:write=nvram-commit-slot,write=qcow2-l2-update:EROFS:%s",
             path);
    struct bdrv_node *bs = bdrv_open(spec, RW_OWNER, NULL, &err);
    assert_non_null(bs);
    assert_string_equal(bdrv_format_name(bs), "qcow2");
    uint8_t data[512];
    memset(data, 0x5a, sizeof(data));
    bdrv_event(bs, BDRV_EV_NVRAM_COMMIT_SLOT);
    assert_int_equal(bdrv_pwrite(bs, 0, data, sizeof(data), &err), -EIO);
    /* An allocating write: the L2 table is written by the flush. */
    assert_int_equal(bdrv_pwrite(bs, 0, data, sizeof(data), &err), 0);
    assert_int_equal(bdrv_flush(bs, &err), -EROFS);
    bdrv_close(bs);

    bs = bdrv_open(path, RW_OWNER, NULL, &err);
    assert_non_null(bs);
    bdrv_event(bs, BDRV_EV_NVRAM_COMMIT_SLOT);
    assert_int_equal(bdrv_pwrite(bs, 0, data, sizeof(data), &err), 0);
    bdrv_close(bs);
}

static void nth_write_fails(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0);
    struct bdrv_node *bs = open_faults("write=2:ENOSPC,write=4+", path);
    uint8_t b = 1;
    assert_int_equal(bdrv_pwrite(bs, 0, &b, 1, &err), 0);
    assert_int_equal(bdrv_pwrite(bs, 1, &b, 1, &err), -ENOSPC);
    assert_non_null(strstr(err.msg, "at offset 1"));
    assert_int_equal(bdrv_pwrite(bs, 2, &b, 1, &err), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(bdrv_pwrite(bs, 3, &b, 1, &err), -EIO);
    uint8_t back[4];
    assert_int_equal(bdrv_pread(bs, 0, back, 4, &err), 0);
    assert_memory_equal(back, "\1\0\1\0", 4); /* failed writes wrote nothing */
    bdrv_close(bs);
}

static void nth_flush_and_read_fail(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 4096, 0x21);
    struct bdrv_node *bs = open_faults("flush=1:EIO,read=2:EACCES", path);
    uint8_t b;
    assert_int_equal(bdrv_flush(bs, &err), -EIO);
    assert_non_null(strstr(err.msg, "flush failed"));
    assert_int_equal(bdrv_flush(bs, &err), 0);
    assert_int_equal(bdrv_pread(bs, 0, &b, 1, &err), 0);
    assert_int_equal(bdrv_pread(bs, 0, &b, 1, &err), -EACCES);
    assert_int_equal(bdrv_pread(bs, 0, &b, 1, &err), 0);
    assert_int_equal(b, 0x21);
    bdrv_close(bs);
}

static void eintr_and_short_transfers_complete(void **state)
{
    (void)state;
    struct nv_error err = {0};
    const char *path = test_file(0, 65536, 0);
    char rules[800], log_path[700];
    snprintf(log_path, sizeof(log_path), "%s/eintr-log", test_dir());
    snprintf(rules, sizeof(rules),
             "log=%s,write=1:EINTR,short-write=2+,short-read=1+,read=2:EINTR,flush=1:EINTR",
             log_path);
    struct bdrv_node *bs = open_faults(rules, path);
    uint8_t data[10000], back[10000];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7);
    assert_int_equal(bdrv_pwrite(bs, 100, data, sizeof(data), &err), 0);
    assert_int_equal(bdrv_pwrite(bs, 20000, data, sizeof(data), &err), 0);
    assert_int_equal(bdrv_flush(bs, &err), 0);
    assert_int_equal(bdrv_pread(bs, 100, back, sizeof(back), &err), 0);
    assert_memory_equal(back, data, sizeof(data));
    assert_int_equal(bdrv_pread(bs, 20000, back, sizeof(back), &err), 0);
    assert_memory_equal(back, data, sizeof(data));
    bdrv_close(bs);
    /* The faults really were injected: write 1 (EINTR), write 2 (short),
     * flush 1 (EINTR), read 1 (short), read 2 (short and EINTR); and the short
     * write reached the file in two pieces. */
    struct bdrv_wlog log;
    assert_int_equal(bdrv_wlog_load(log_path, &log, &err), 0);
    unsigned faults[3] = {0}, writes = 0;
    for (size_t i = 0; i < log.count; i++) {
        if (log.records[i].kind == BDRV_WLOG_FAULT)
            faults[log.records[i].offset]++;
        writes += log.records[i].kind == BDRV_WLOG_WRITE;
    }
    assert_int_equal(faults[0], 2);
    assert_int_equal(faults[1], 2);
    assert_int_equal(faults[2], 1);
    assert_int_equal(writes, 3);
    bdrv_wlog_free(&log);
}

static void write_log_records_and_replays(void **state)
{
    (void)state;
    struct nv_error err = {0};
    char log_path[700], rules[800];
    const char *base = test_file(1, 32768, 0); /* the image before the workload */
    const char *path = test_file(0, 32768, 0); /* the image the workload writes */
    const char *copy = test_file(2, 32768, 0); /* the replay target */
    snprintf(log_path, sizeof(log_path), "%s/wlog", test_dir());
    snprintf(rules, sizeof(rules), "log=%s,short-write=3", log_path);
    (void)base;
    struct bdrv_node *bs = open_faults(rules, path);
    uint8_t a[100], b[3000];
    memset(a, 0xaa, sizeof(a));
    memset(b, 0xbb, sizeof(b));
    assert_int_equal(bdrv_pwrite(bs, 10, a, sizeof(a), &err), 0);
    assert_int_equal(bdrv_flush(bs, &err), 0);
    assert_int_equal(bdrv_pwrite(bs, 5000, b, sizeof(b), &err), 0);
    assert_int_equal(bdrv_pwrite(bs, 9000, b, sizeof(b), &err), 0); /* short: two records */
    bdrv_close(bs);

    struct bdrv_wlog log;
    assert_int_equal(bdrv_wlog_load(log_path, &log, &err), 0);
    assert_int_equal(log.count, 6);
    assert_int_equal(log.records[0].kind, BDRV_WLOG_WRITE);
    assert_int_equal(log.records[0].offset, 10);
    assert_int_equal(log.records[0].length, 100);
    assert_memory_equal(log.records[0].data, a, 100);
    assert_int_equal(log.records[1].kind, BDRV_WLOG_FLUSH);
    assert_int_equal(log.records[3].kind, BDRV_WLOG_FAULT); /* the short write, announced */
    assert_int_equal(log.records[3].offset, 1);
    assert_int_equal(log.records[4].offset, 9000);
    assert_int_equal(log.records[4].length, 1500);
    assert_int_equal(log.records[5].offset, 10500);
    assert_int_equal(log.records[5].length, 1500);

    /* Replaying every record onto a copy of the old image gives the new one. */
    int fd = open(copy, O_RDWR | O_CLOEXEC);
    for (size_t i = 0; i < log.count; i++)
        assert_int_equal(bdrv_wlog_apply(&log.records[i], fd, &err), 0);
    close(fd);
    bdrv_wlog_free(&log);
    char cmd[1500];
    snprintf(cmd, sizeof(cmd), "cmp -s '%s' '%s'", copy, path);
    assert_int_equal(system(cmd), 0);

    /* A record cut short at the end (the writer died) is dropped. */
    struct stat st;
    assert_int_equal(stat(log_path, &st), 0);
    assert_int_equal(truncate(log_path, st.st_size - 1), 0);
    assert_int_equal(bdrv_wlog_load(log_path, &log, &err), 0);
    assert_int_equal(log.count, 5);
    bdrv_wlog_free(&log);
    /* Garbage is refused. */
    fd = open(log_path, O_WRONLY | O_TRUNC | O_CLOEXEC);
    assert_int_equal(write(fd, "NOTALOG!xxxxxxxxxxxxxxxx", 24), 24);
    close(fd);
    assert_int_equal(bdrv_wlog_load(log_path, &log, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "not a write log"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_rules_refused),
        cmocka_unit_test(bad_event_rules_refused),
        cmocka_unit_test(event_names_parse),
        cmocka_unit_test(write_after_event_fails),
        cmocka_unit_test(event_and_after_sticks),
        cmocka_unit_test(events_pass_down_the_graph),
        cmocka_unit_test(nth_write_fails),
        cmocka_unit_test(nth_flush_and_read_fail),
        cmocka_unit_test(eintr_and_short_transfers_complete),
        cmocka_unit_test(write_log_records_and_replays),
        cmocka_unit_test(fdleak_suite_check),
    };
    return cmocka_run_group_tests_name("faults", tests, fdleak_suite_setup, test_dir_teardown);
}
