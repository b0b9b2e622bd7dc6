/* test-handoff.c - two handles on one image, as a migration's source and
 * destination on shared storage: every sequence of up to four operations
 * (commit, release, claim, by either side) from both sides' usual start (the
 * source owns the image, the destination opened it without ownership). After
 * each operation a fresh reader must load the last acknowledged commit: a
 * commit succeeds exactly when its side owns the image, a claim exactly when
 * the other side does not own it, and no commit may build on what its side
 * read before the other side committed. qcow2's own metadata is read anew at
 * a hand-off too. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "fdleak.h"
#include "nvram.h"
#include "testutil.h"

#define DEPTH 4
#define SIDES 2
#define OPS   (3 * SIDES) /* commit, release, claim; per side */

enum op { COMMIT, RELEASE, CLAIM };

static char template_path[512], work_path[512];

static void copy_file(const char *from, const char *to)
{
    int in = open(from, O_RDONLY | O_CLOEXEC), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(in >= 0 && out >= 0);
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof(buf))) > 0)
        assert_int_equal(write(out, buf, (size_t)n), n);
    assert_int_equal(n, 0);
    close(in);
    close(out);
}

static struct nvram_storage *open_side(bool owner_expected)
{
    struct nv_error err = {0};
    struct nvram_storage_options so = {.spec = work_path, .open_unowned_if_busy = true};
    struct nvram_storage *st = nvram_storage_open(&so, &err);
    if (!st)
        fail_msg("open %s: %s", work_path, err.msg);
    assert_int_equal(nvram_storage_owned(st), owner_expected);
    struct nvram_options no = {.tpm_version = 2, .no_sync = true};
    if (nvram_storage_open_nvram(st, &no, &err) < 0)
        fail_msg("NVRAM of %s: %s", work_path, err.msg);
    return st;
}

/* What a fresh reader loads: the permall's first byte, 0 when absent. */
static int fresh_load(void)
{
    struct nv_error err = {0};
    struct bdrv_node *bs = bdrv_open(work_path, 0, NULL, &err);
    assert_non_null(bs);
    struct nvram *nv = nvram_open(bs, NULL, &err);
    if (!nv)
        fail_msg("fresh open: %s", err.msg);
    uint8_t *data = NULL;
    size_t len = 0;
    int r = nvram_load(nv, NVRAM_PERMALL, &data, &len, &err);
    int got = r == -ENOENT ? 0 : r < 0 ? -1 : data[0];
    if (r < 0 && r != -ENOENT)
        fail_msg("fresh load: %s", err.msg);
    free(data);
    nvram_close(nv);
    bdrv_close(bs);
    return got;
}

static void describe(const int *seq, int n, char *out, size_t size)
{
    static const char *const names[] = {"commit", "release", "claim"};
    out[0] = '\0';
    for (int i = 0; i < n; i++)
        snprintf(out + strlen(out), size - strlen(out), "%s%s %s", i ? ", " : "",
                 seq[i] % SIDES ? "dst" : "src", names[seq[i] / SIDES]);
}

/* Run one sequence on a fresh copy of the template; every step checked. */
static void run_sequence(const int *seq, int n, int *payload)
{
    struct nv_error err = {0};
    char what[256];
    describe(seq, n, what, sizeof(what));
    copy_file(template_path, work_path);
    struct nvram_storage *side[SIDES] = {open_side(true), open_side(false)};
    int owner = 0, last = fresh_load();
    for (int i = 0; i < n; i++) {
        int s = seq[i] % SIDES;
        enum op op = (enum op)(seq[i] / SIDES);
        int r = 0;
        uint8_t data[64];
        switch (op) {
        case COMMIT:
            memset(data, ++*payload % 250 + 1, sizeof(data));
            r = nvram_store(nvram_storage_nvram(side[s]), NVRAM_PERMALL, data, sizeof(data), &err);
            if ((r == 0) != (owner == s))
                fail_msg("[%s] step %d: commit %s (owner: %d): %s", what, i, r ? "failed" : "done",
                         owner, err.msg);
            if (r == 0)
                last = data[0];
            break;
        case RELEASE:
            r = nvram_storage_release(side[s], &err);
            if (r < 0)
                fail_msg("[%s] step %d: release: %s", what, i, err.msg);
            if (owner == s)
                owner = -1;
            break;
        case CLAIM:
            r = nvram_storage_claim(side[s], 0, &err);
            if ((r == 0) != (owner == s || owner < 0))
                fail_msg("[%s] step %d: claim %s (owner: %d): %s", what, i, r ? "failed" : "done",
                         owner, err.msg);
            if (r == 0)
                owner = s;
            break;
        }
        for (int k = 0; k < SIDES; k++)
            assert_int_equal(nvram_storage_owned(side[k]), owner == k);
        int got = fresh_load();
        if (got != last)
            fail_msg("[%s] after step %d a fresh open loads %d, the last acknowledged commit is %d",
                     what, i, got, last);
    }
    for (int k = 0; k < SIDES; k++)
        nvram_storage_close(side[k]);
}

static void every_order_up_to_depth_4(void **state)
{
    (void)state;
    int seq[DEPTH], payload = 0, runs = 0;
    for (int n = 1; n <= DEPTH; n++) {
        int total = 1;
        for (int i = 0; i < n; i++)
            total *= OPS;
        for (int code = 0; code < total; code++) {
            for (int i = 0, c = code; i < n; i++, c /= OPS)
                seq[i] = c % OPS;
            run_sequence(seq, n, &payload);
            runs++;
        }
    }
    assert_int_equal(runs, OPS + OPS * OPS + OPS * OPS * OPS + OPS * OPS * OPS * OPS);
}

/* The claim's refresh on its own: a destination that read the image, then
 * the source commits twice (its newest in the slot the destination believes
 * older), hand-off, one commit by the destination: it must be what loads. */
static void stale_destination_commit_wins(void **state)
{
    (void)state;
    struct nv_error err = {0};
    uint8_t data[16];
    copy_file(template_path, work_path);
    struct nvram_storage *src = open_side(true), *dst = open_side(false);
    for (int v = 1; v <= 2; v++) {
        memset(data, v, sizeof(data));
        assert_int_equal(nvram_store(nvram_storage_nvram(src), NVRAM_PERMALL, data, 16, &err), 0);
    }
    assert_int_equal(nvram_storage_release(src, &err), 0);
    assert_int_equal(nvram_storage_claim(dst, 0, &err), 0);
    memset(data, 9, sizeof(data));
    assert_int_equal(nvram_store(nvram_storage_nvram(dst), NVRAM_PERMALL, data, 16, &err), 0);
    assert_int_equal(fresh_load(), 9);
    nvram_storage_close(src);
    nvram_storage_close(dst);
}

/* A claim while the other side owns: -EBUSY, and still unowned. */
static void claim_of_an_owned_image_fails(void **state)
{
    (void)state;
    struct nv_error err = {0};
    copy_file(template_path, work_path);
    struct nvram_storage *src = open_side(true), *dst = open_side(false);
    assert_int_equal(nvram_storage_claim(dst, 2, &err), -EBUSY);
    assert_false(nvram_storage_owned(dst));
    uint8_t data[8] = {1};
    assert_int_equal(nvram_store(nvram_storage_nvram(dst), NVRAM_PERMALL, data, 8, &err), -EPERM);
    nvram_storage_close(src);
    nvram_storage_close(dst);
}

/* qcow2's metadata after a hand-off: the destination read the image (its L2
 * table cached), then the source allocated a cluster; once the destination
 * owns the image it must read the source's data there, and its own new
 * cluster must not land on the source's (stale refcounts would reuse it). */
static void qcow2_metadata_is_read_anew(void **state)
{
    (void)state;
    struct nv_error err = {0};
    uint8_t a[4096], b[4096], back[4096];
    const uint64_t at_a = 3u << 20, at_b = (3u << 20) + (512u << 10);
    memset(a, 0xa5, sizeof(a));
    memset(b, 0x5b, sizeof(b));
    copy_file(template_path, work_path);
    struct bdrv_node *src = bdrv_open(work_path, BDRV_O_RDWR | BDRV_O_OWNER, NULL, &err);
    struct bdrv_node *dst = bdrv_open(work_path, BDRV_O_RDWR, NULL, &err);
    assert_true(src && dst);
    assert_int_equal(bdrv_pread(dst, at_a, back, sizeof(back), &err), 0); /* caches its L2 */
    assert_int_equal(bdrv_pwrite(src, at_a, a, sizeof(a), &err), 0);
    assert_int_equal(bdrv_reopen(src, BDRV_O_RDWR, &err), 0);
    assert_int_equal(bdrv_reopen(dst, BDRV_O_RDWR | BDRV_O_OWNER, &err), 0);
    assert_int_equal(bdrv_pread(dst, at_a, back, sizeof(back), &err), 0);
    assert_memory_equal(back, a, sizeof(a));
    assert_int_equal(bdrv_pwrite(dst, at_b, b, sizeof(b), &err), 0);
    assert_int_equal(bdrv_pread(dst, at_a, back, sizeof(back), &err), 0);
    assert_memory_equal(back, a, sizeof(a));
    struct bdrv_check_result res = {0};
    assert_int_equal(bdrv_check(dst, &res, false, &err), 0);
    assert_int_equal(res.corruptions, 0);
    assert_int_equal(res.leaks, 0);
    bdrv_close(src);
    bdrv_close(dst);
}

static int setup(void **state)
{
    struct nv_error err = {0};
    snprintf(template_path, sizeof(template_path), "%s/template.qcow2", test_dir());
    snprintf(work_path, sizeof(work_path), "%s/work.qcow2", test_dir());
    struct nvram_storage_options so = {.spec = template_path, .create = true};
    struct nvram_storage *st = nvram_storage_open(&so, &err);
    struct nvram_options no = {.tpm_version = 2, .format_blank = true, .no_sync = true};
    if (!st || nvram_storage_open_nvram(st, &no, &err) < 0)
        fail_msg("template: %s", err.msg);
    nvram_storage_close(st);
    return fdleak_suite_setup(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(claim_of_an_owned_image_fails),
        cmocka_unit_test(stale_destination_commit_wins),
        cmocka_unit_test(qcow2_metadata_is_read_anew),
        cmocka_unit_test(every_order_up_to_depth_4),
        cmocka_unit_test(fdleak_suite_check),
    };
    return cmocka_run_group_tests(tests, setup, test_dir_teardown);
}
