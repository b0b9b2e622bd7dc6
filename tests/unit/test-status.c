/* test-status.c - an error's status apart from its errno: what nv_error_set,
 * _prefix, _append and _mark do with it; the layers set it where they know
 * the meaning (a damaged header, a bad cluster size, a malformed key, a blank
 * image, a missing, wrong or unneeded key, the other TPM version, a busy
 * image); and the CLI's exit code follows it, a bare EINVAL or ENOSPC no
 * longer read as usage or damage. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cli.h"
#include "nvram.h"
#include "testutil.h"
#include "util.h"

static void test_error_object(void **state)
{
    (void)state;
    struct nv_error err = {0};
    assert_int_equal(nv_error_set_status(&err, NV_STATUS_CORRUPT, EUCLEAN, "bad %d", 1), -EUCLEAN);
    assert_int_equal(err.status, NV_STATUS_CORRUPT);
    assert_string_equal(err.msg, "bad 1");
    /* wrapping keeps the meaning, whatever errno the caller passes on */
    assert_int_equal(nv_error_prefix(&err, -EIO, "img"), -EIO);
    assert_int_equal(nv_error_append(&err, -EIO, "(more)"), -EIO);
    assert_int_equal(nv_error_status(&err), NV_STATUS_CORRUPT);
    assert_string_equal(err.msg, "img: bad 1 (more)");
    /* a new message is a new error */
    nv_error_set(&err, -ENOSPC, "full");
    assert_int_equal(err.status, NV_STATUS_UNSET);
    assert_int_equal(nv_error_mark(&err, NV_STATUS_IO, ENOSPC), -ENOSPC);
    assert_int_equal(err.status, NV_STATUS_IO);
    assert_string_equal(err.msg, "full");
    nv_error_clear(&err);
    assert_int_equal(err.status, NV_STATUS_UNSET);
    /* err NULL: the code still comes back, negative */
    assert_int_equal(nv_error_mark(NULL, NV_STATUS_BUSY, EBUSY), -EBUSY);
    assert_int_equal(nv_error_set_status(NULL, NV_STATUS_BUSY, -EBUSY, "x"), -EBUSY);
    assert_int_equal(nv_error_status(NULL), NV_STATUS_UNSET);
}

static int exit_for(enum nv_status status, int code)
{
    struct nv_error err = {.code = code, .status = status};
    return cli_exit_code(&err, code);
}

static void test_exit_codes(void **state)
{
    (void)state;
    /* the status decides */
    assert_int_equal(exit_for(NV_STATUS_USAGE, -EIO), CLI_EXIT_USAGE);
    assert_int_equal(exit_for(NV_STATUS_CORRUPT, -EIO), CLI_EXIT_CORRUPT);
    assert_int_equal(exit_for(NV_STATUS_KEY_MISSING, -EIO), CLI_EXIT_KEY_MISSING);
    assert_int_equal(exit_for(NV_STATUS_KEY_WRONG, -EIO), CLI_EXIT_KEY_WRONG);
    assert_int_equal(exit_for(NV_STATUS_KEY_UNNEEDED, -EIO), CLI_EXIT_KEY_UNNEEDED);
    assert_int_equal(exit_for(NV_STATUS_BUSY, -EIO), CLI_EXIT_BUSY);
    assert_int_equal(exit_for(NV_STATUS_NOT_LOADABLE, -EIO), CLI_EXIT_NOT_LOADABLE);
    assert_int_equal(exit_for(NV_STATUS_IO, -EUCLEAN), CLI_EXIT_ERROR);
    assert_int_equal(exit_for(NV_STATUS_USAGE, -EINVAL), CLI_EXIT_USAGE);
    /* no status: a deep EINVAL or ENOSPC is an other error (was 1: usage) */
    assert_int_equal(exit_for(NV_STATUS_UNSET, -EINVAL), CLI_EXIT_ERROR);
    assert_int_equal(exit_for(NV_STATUS_UNSET, -ENOSPC), CLI_EXIT_ERROR);
    assert_int_equal(cli_exit_code(NULL, -EINVAL), CLI_EXIT_ERROR);
    /* ... and the errnos nvram.h reserves keep their meaning */
    assert_int_equal(exit_for(NV_STATUS_UNSET, -EUCLEAN), CLI_EXIT_CORRUPT);
    assert_int_equal(exit_for(NV_STATUS_UNSET, -EMSGSIZE), CLI_EXIT_CORRUPT);
    assert_int_equal(exit_for(NV_STATUS_UNSET, -ENOKEY), CLI_EXIT_KEY_MISSING);
    assert_int_equal(exit_for(NV_STATUS_UNSET, -EKEYREJECTED), CLI_EXIT_KEY_WRONG);
    assert_int_equal(exit_for(NV_STATUS_UNSET, -EKEYREVOKED), CLI_EXIT_KEY_UNNEEDED);
    assert_int_equal(exit_for(NV_STATUS_UNSET, -EMEDIUMTYPE), CLI_EXIT_NOT_LOADABLE);
    assert_int_equal(cli_exit_code(NULL, -ETIMEDOUT), CLI_EXIT_BUSY);
}

static void test_block_layer(void **state)
{
    (void)state;
    struct nv_error err = {0};
    char path[512];
    snprintf(path, sizeof(path), "%s/bad-cluster.qcow2", test_dir());
    struct bdrv_create_opts opts = {.size = 4 << 20, .cluster_size = 1000};
    assert_int_equal(bdrv_create("qcow2", path, &opts, &err), -EINVAL);
    assert_int_equal(err.status, NV_STATUS_USAGE);

    /* a qcow2 magic and nothing after it: a header cut short */
    snprintf(path, sizeof(path), "%s/short.qcow2", test_dir());
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "QFI\xfb\0\0\0\3", 8), 8);
    close(fd);
    assert_null(bdrv_open(path, 0, NULL, &err));
    assert_int_equal(err.code, -EUCLEAN);
    assert_int_equal(err.status, NV_STATUS_CORRUPT);

    snprintf(path, sizeof(path), "%s/busy.qcow2", test_dir());
    opts.cluster_size = 0;
    assert_int_equal(bdrv_create("qcow2", path, &opts, &err), 0);
    struct bdrv_node *owner = bdrv_open(path, BDRV_O_RDWR | BDRV_O_OWNER, NULL, &err);
    assert_non_null(owner);
    assert_null(bdrv_open(path, BDRV_O_RDWR | BDRV_O_OWNER, NULL, &err));
    assert_int_equal(err.status, NV_STATUS_BUSY);
    assert_int_equal(cli_exit_code(&err, err.code), CLI_EXIT_BUSY);
    bdrv_close(owner);
}

static void test_keys(void **state)
{
    (void)state;
    struct nv_error err = {0};
    struct nvram_key key;
    assert_int_equal(nvram_key_parse("file=/dev/null,bogus=1", &key, &err), -EINVAL);
    assert_int_equal(err.status, NV_STATUS_USAGE);
    assert_int_equal(cli_exit_code(&err, err.code), CLI_EXIT_USAGE);
    /* an EINVAL from read(2) (pagemap wants 8-byte reads) is none */
    if (nvram_key_parse("file=/proc/self/pagemap", &key, &err) == -EINVAL) {
        assert_int_equal(err.status, NV_STATUS_UNSET);
        assert_int_equal(cli_exit_code(&err, err.code), CLI_EXIT_ERROR);
    }
}

static struct bdrv_node *new_image(const char *name, struct nv_error *err)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", test_dir(), name);
    struct bdrv_create_opts opts = {.size = 4 << 20};
    assert_int_equal(bdrv_create("qcow2", path, &opts, err), 0);
    struct bdrv_node *bs = bdrv_open(path, BDRV_O_RDWR | BDRV_O_OWNER, NULL, err);
    assert_non_null(bs);
    return bs;
}

static void test_nvram(void **state)
{
    (void)state;
    struct nv_error err = {0};
    struct nvram_key key = {.kind = NVRAM_KEY_RAW, .length = 32};
    memset(key.material, 7, 32);
    struct nvram_key other = key;
    other.material[0] = 8;

    struct bdrv_node *bs = new_image("blank.qcow2", &err);
    struct nvram_options opts = {.tpm_version = 2};
    assert_null(nvram_open(bs, &opts, &err));
    assert_int_equal(err.code, -ENODATA);
    assert_int_equal(err.status, NV_STATUS_CORRUPT);

    opts.format_blank = true;
    struct nvram *nv = nvram_open(bs, &opts, &err);
    assert_non_null(nv);
    nvram_close(nv);
    opts.format_blank = false;
    opts.tpm_version = 1;
    assert_null(nvram_open(bs, &opts, &err));
    assert_int_equal(err.status, NV_STATUS_NOT_LOADABLE);
    opts.tpm_version = 2;
    opts.key = &key;
    assert_null(nvram_open(bs, &opts, &err));
    assert_int_equal(err.status, NV_STATUS_KEY_UNNEEDED);
    bdrv_close(bs);

    bs = new_image("encrypted.qcow2", &err);
    opts.format_blank = true;
    nv = nvram_open(bs, &opts, &err);
    assert_non_null(nv);
    nvram_close(nv);
    opts.format_blank = false;
    opts.key = NULL;
    assert_null(nvram_open(bs, &opts, &err));
    assert_int_equal(err.status, NV_STATUS_KEY_MISSING);
    opts.key = &other;
    assert_null(nvram_open(bs, &opts, &err));
    assert_int_equal(err.status, NV_STATUS_KEY_WRONG);
    assert_int_equal(cli_exit_code(&err, err.code), CLI_EXIT_KEY_WRONG);
    bdrv_close(bs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_object), cmocka_unit_test(test_exit_codes),
        cmocka_unit_test(test_block_layer),  cmocka_unit_test(test_keys),
        cmocka_unit_test(test_nvram),
    };
    return cmocka_run_group_tests(tests, NULL, test_dir_teardown);
}
