/* bench-qcow2.c - nvtpm's qcow2 driver under the access patterns of
 * `qemu-img bench`, so that the two run side by side on identical images:
 * COUNT requests of SIZE bytes, the offset advancing by STEP modulo the
 * image size, one at a time, an optional flush every FLUSH requests.
 *
 *   bench-qcow2 read|write IMAGE COUNT SIZE STEP FLUSH
 *
 * Prints the seconds the requests took (opening and closing excluded, as
 * qemu-img bench does). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "block.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: bench-qcow2 read|write IMAGE COUNT SIZE STEP FLUSH\n");
        return 2;
    }
    bool write = strcmp(argv[1], "write") == 0;
    long count = atol(argv[3]), flush = atol(argv[6]);
    size_t size = (size_t)atol(argv[4]);
    uint64_t step = strtoull(argv[5], NULL, 10), off = 0;
    struct nv_error err = {0};
    struct bdrv_node *bs =
        bdrv_open_format("qcow2", argv[2], write ? BDRV_O_RDWR | BDRV_O_OWNER : 0, NULL, &err);
    if (!bs) {
        fprintf(stderr, "bench-qcow2: %s\n", err.msg);
        return 1;
    }
    uint64_t image = (uint64_t)bdrv_getlength(bs, &err);
    uint8_t *buf;
    if (posix_memalign((void **)&buf, 4096, size) != 0)
        return 1;
    memset(buf, 0xa5, size);
    int r = 0;
    double t0 = now();
    for (long i = 0; i < count && r == 0; i++) {
        r = write ? bdrv_pwrite(bs, off, buf, size, &err) : bdrv_pread(bs, off, buf, size, &err);
        if (r == 0 && flush && (i + 1) % flush == 0)
            r = bdrv_flush(bs, &err);
        off = (off + step) % image;
    }
    double t = now() - t0;
    free(buf);
    bdrv_close(bs);
    if (r < 0) {
        fprintf(stderr, "bench-qcow2: %s\n", err.msg);
        return 1;
    }
    printf("%.6f\n", t);
    return 0;
}
