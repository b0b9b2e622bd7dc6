/* qcow2-workload.c - a seeded random workload through the block layer,
 * mirrored into a raw reference file, for `qemu-img compare` afterwards.
 *
 *   qcow2-workload SPEC REF SEED COUNT [FLUSH_EVERY [keep-going]]
 *
 * SPEC is opened read-write (owner) with its format probed; REF is a raw file
 * of the same virtual size. Writes (random bytes, aligned or not, one byte to
 * three clusters, biased to a hot region so that many overwrite), zero writes,
 * flushes and verified reads. Exit 0 when every read matched the reference.
 * keep-going: failed requests (injected faults) do not stop the run and reads
 * are not verified; the point is what the image looks like afterwards. */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block.h"

static uint64_t rng_state;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static uint64_t below(uint64_t n)
{
    return n ? rnd() % n : 0;
}

static void pick_range(uint64_t size, uint64_t *off, uint64_t *len)
{
    uint64_t hot = size / 8;
    *len = 1 + below(below(4) == 0 ? 196608 : 8192);
    if (below(3) == 0) { /* cluster-ish aligned */
        *len = (*len + 4095) & ~4095ull;
        *off = below(size / 4096) * 4096;
    } else {
        *off = below(3) ? below(hot) : below(size);
    }
    if (*len > size)
        *len = size;
    if (*off + *len > size)
        *off = size - *len;
}

static int ref_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
    return pwrite(fd, buf, len, (off_t)off) == (ssize_t)len ? 0 : -errno;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: qcow2-workload SPEC REF SEED COUNT [FLUSH_EVERY]\n");
        return 2;
    }
    struct nv_error err = {0};
    rng_state = strtoull(argv[3], NULL, 0) * 2654435761u + 1;
    long count = atol(argv[4]), flush_every = argc > 5 ? atol(argv[5]) : 0, failures = 0;
    bool keep_going = argc > 6 && strcmp(argv[6], "keep-going") == 0;
    struct bdrv_node *bs = bdrv_open(argv[1], BDRV_O_RDWR | BDRV_O_OWNER, NULL, &err);
    int ref = open(argv[2], O_RDWR | O_CLOEXEC);
    if (!bs || ref < 0) {
        fprintf(stderr, "qcow2-workload: %s\n", bs ? strerror(errno) : err.msg);
        return 1;
    }
    uint64_t size = (uint64_t)bdrv_getlength(bs, &err);
    uint8_t *buf = malloc(196608), *back = malloc(196608);
    long writes = 0, zeroes = 0, flushes = 0, reads = 0;
    int r = 0;
    for (long i = 0; i < count && r == 0; i++) {
        uint64_t off, len, kind = below(100);
        pick_range(size, &off, &len);
        if ((flush_every && i % flush_every == flush_every - 1) || (!flush_every && kind < 10)) {
            r = bdrv_flush(bs, &err);
            flushes++;
        } else if (kind < 25) {
            memset(buf, 0, len);
            if ((r = bdrv_pwrite_zeroes(bs, off, len, &err)) == 0)
                r = ref_pwrite(ref, buf, len, off);
            zeroes++;
        } else if (kind < 40) {
            r = bdrv_pread(bs, off, back, len, &err);
            if (r == 0 && pread(ref, buf, len, (off_t)off) != (ssize_t)len)
                r = -EIO;
            if (r == 0 && !keep_going && memcmp(buf, back, len) != 0) {
                for (uint64_t j = 0; j < len; j++)
                    if (buf[j] != back[j]) {
                        fprintf(stderr, "op %ld: byte %llu is 0x%02x, the reference has 0x%02x\n",
                                i, (unsigned long long)(off + j), back[j], buf[j]);
                        break;
                    }
                r = -EILSEQ;
            }
            reads++;
        } else {
            for (uint64_t j = 0; j < len; j++)
                buf[j] = (uint8_t)rnd();
            if ((r = bdrv_pwrite(bs, off, buf, len, &err)) == 0)
                r = ref_pwrite(ref, buf, len, off);
            writes++;
        }
        if (r < 0 && !err.msg[0])
            snprintf(err.msg, sizeof(err.msg), "op %ld failed: %s", i, strerror(-r));
        if (r < 0 && keep_going) {
            failures++;
            r = 0;
            err.msg[0] = '\0';
        }
    }
    if (r == 0 && bdrv_flush(bs, &err) < 0 && !keep_going)
        r = err.code;
    bdrv_close(bs);
    close(ref);
    free(buf);
    free(back);
    printf("%ld writes, %ld zero writes, %ld flushes, %ld verified reads, %ld failed\n", writes,
           zeroes, flushes, reads, failures);
    if (r < 0) {
        fprintf(stderr, "qcow2-workload: %s\n", err.msg);
        return 1;
    }
    return 0;
}
