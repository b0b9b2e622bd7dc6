/* fuzz-qcow2.c - libFuzzer target: open a mutated qcow2 image (read-write,
 * then read-only), read, write, write zeros, check and flush it. Nothing may
 * crash, leak or trip a sanitizer, whatever the bytes. The image lives in a
 * memfd handed over as fd:img, so no file is ever touched. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "block.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void exercise(struct bdrv_node *bs, const uint8_t *data, size_t size, bool writable)
{
    struct nv_error err = {0};
    int64_t len = bdrv_getlength(bs, &err);
    if (len <= 0)
        return;
    uint64_t pick =
        size >= 8 ? ((uint64_t)data[size - 1] << 16 | data[size - 2] << 8 | data[size - 3]) : 0;
    uint64_t offsets[3] = {0, pick % (uint64_t)len, (uint64_t)len - 1};
    static uint8_t buf[65536];
    for (int i = 0; i < 3; i++) {
        size_t n = (size_t)(((uint64_t)len - offsets[i]) < sizeof(buf) ? (uint64_t)len - offsets[i]
                                                                       : sizeof(buf));
        bdrv_pread(bs, offsets[i], buf, n, &err);
        if (writable) {
            memset(buf, 0x5a, n);
            bdrv_pwrite(bs, offsets[i], buf, n < 3000 ? n : 3000, &err);
            bdrv_pwrite_zeroes(bs, offsets[i], n, &err);
        }
    }
    struct bdrv_check_result res;
    bdrv_check(bs, &res, writable, &err);
    if (writable)
        bdrv_flush(bs, &err);
}

static void try_open(const uint8_t *data, size_t size, unsigned flags)
{
    int fd = memfd_create("fuzz-qcow2", MFD_CLOEXEC);
    if (fd < 0 || write(fd, data, size) != (ssize_t)size) {
        if (fd >= 0)
            close(fd);
        return;
    }
    struct fdstash stash;
    struct nv_error err = {0};
    fdstash_init(&stash);
    if (fdstash_give(&stash, "img", fd, &err) == 0) {
        struct bdrv_node *bs = bdrv_open_format("qcow2", "fd:img", flags, &stash, &err);
        if (bs) {
            exercise(bs, data, size, flags & BDRV_O_RDWR);
            bdrv_close(bs);
        }
    }
    fdstash_cleanup(&stash);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (4u << 20))
        return 0;
    try_open(data, size, BDRV_O_RDWR | BDRV_O_OWNER);
    try_open(data, size, 0);
    return 0;
}
