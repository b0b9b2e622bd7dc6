/* test-memory.c - cmocka tests of what an idle TPM process gives back: the
 * NVRAM's slot buffers and the qcow2 table caches after a load or commit
 * (nvram_release_memory), checked with mincore, and the state the same after
 * it for this process and a fresh reader. */
#include <errno.h>
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
#include "qcow2.h" /* struct bdrv_node and the qcow2 node's caches */
#include "store.h" /* struct nvram: its slot buffers */
#include "testutil.h"

static char image[600];

static size_t resident(const void *p, size_t len)
{
    size_t n = test_resident_pages(p, len);
    assert_int_not_equal(n, SIZE_MAX);
    return n;
}

/* Resident pages of the slot buffers and of the image's metadata caches. */
static size_t held(const struct nvram *nv)
{
    const struct qcow2_state *s = nv->bs->opaque;
    return resident(nv->buf, nv->buf_size) + resident(nv->plain, nv->buf_size) +
           resident(s->l2_cache.memory, s->l2_cache.size) +
           resident(s->refblock_cache.memory, s->refblock_cache.size);
}

static void fill(uint8_t *data, size_t len, int seed)
{
    for (size_t i = 0; i < len; i++)
        data[i] = (uint8_t)(i * 7 + seed);
}

static void check_load(struct nvram *nv, const uint8_t *want, size_t want_len)
{
    struct nv_error err = {0};
    uint8_t *data = NULL;
    size_t len = 0;
    if (nvram_load(nv, NVRAM_PERMALL, &data, &len, &err) < 0)
        fail_msg("load: %s", err.msg);
    assert_int_equal(len, want_len);
    assert_memory_equal(data, want, len);
    free(data);
}

static void release_after_commit_and_load(void **state)
{
    (void)state;
    struct nv_error err = {0};
    static uint8_t one[20000], two[30000];
    fill(one, sizeof(one), 1);
    fill(two, sizeof(two), 2);
    struct nvram_storage_options so = {.spec = image, .create = true};
    struct nvram_storage *st = nvram_storage_open(&so, &err);
    struct nvram_options no = {.tpm_version = 2, .format_blank = true};
    if (!st || nvram_storage_open_nvram(st, &no, &err) < 0)
        fail_msg("%s: %s", image, err.msg);
    struct nvram *nv = nvram_storage_nvram(st);

    assert_int_equal(nvram_store(nv, NVRAM_PERMALL, one, sizeof(one), &err), 0);
    assert_true(nvram_holds_memory(nv));
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    assert_true(held(nv) >= (sizeof(one) + page - 1) / page); /* the sealed slot at least */
    nvram_release_memory(nv);
    assert_false(nvram_holds_memory(nv));
    assert_int_equal(held(nv), 0);

    check_load(nv, one, sizeof(one)); /* the tables and the slot read again */
    assert_true(nvram_holds_memory(nv));
    assert_true(held(nv) > 0);
    nvram_release_memory(nv);
    assert_int_equal(held(nv), 0);

    /* a commit after a release finds its slot through the tables read again */
    assert_int_equal(nvram_store(nv, NVRAM_PERMALL, two, sizeof(two), &err), 0);
    nvram_release_memory(nv);
    check_load(nv, two, sizeof(two));
    nvram_storage_close(st);

    struct bdrv_node *bs = bdrv_open(image, 0, NULL, &err); /* a fresh reader */
    assert_non_null(bs);
    nv = nvram_open(bs, NULL, &err);
    assert_non_null(nv);
    check_load(nv, two, sizeof(two));
    nvram_close(nv);
    bdrv_close(bs);
}

static int setup(void **state)
{
    snprintf(image, sizeof(image), "%s/memory.qcow2", test_dir());
    unlink(image);
    return fdleak_suite_setup(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(release_after_commit_and_load),
        cmocka_unit_test(fdleak_suite_check),
    };
    return cmocka_run_group_tests(tests, setup, test_dir_teardown);
}
