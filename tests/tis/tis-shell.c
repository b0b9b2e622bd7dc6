/* tis-shell.c - nvtpm's TIS device (tis_new_libtpms) behind the register
 * commands of QEMU's qtest protocol, so tests/tis/test-tis-diff.py can drive
 * it and QEMU's own tpm-tis with the same lines and compare the answers.
 * Reads lines "readb|readw|readl ADDR" and "writeb|writew|writel ADDR VAL"
 * (ADDR physical, the window at 0xfed40000) on stdin; answers "OK 0x<value>"
 * or "OK" on stdout, "ERR ..." for anything else.
 *
 * Usage: tis-shell IMG */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "tis.h"
#include "util.h"

#define BASE 0xfed40000u

static unsigned size_of(char c)
{
    return c == 'b' ? 1 : c == 'w' ? 2 : c == 'l' ? 4 : 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "Usage: tis-shell IMG\n");
        return 1;
    }
    struct nv_error err = {0};
    struct tis_config cfg = {.tpm_version = 2, .irq_vector = 5};
    struct tis *tis = tis_new_libtpms(&cfg, argv[1], NULL, NULL, NULL, &err);
    if (!tis) {
        fprintf(stderr, "tis-shell: %s\n", err.msg);
        return 1;
    }
    char line[256], op[16];
    uint64_t addr, val;
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof(line), stdin)) {
        int n = sscanf(line, "%15s %" SCNx64 " %" SCNx64, op, &addr, &val);
        unsigned size = n >= 2 && strlen(op) == 5 ? size_of(op[4]) : 0;
        if (size && n == 2 && strncmp(op, "read", 4) == 0 && addr >= BASE)
            printf("OK 0x%016" PRIx32 "\n", tis_mmio_read(tis, addr - BASE, size));
        else if (size == 0 && n == 3 && strlen(op) == 6 && strncmp(op, "write", 5) == 0 &&
                 (size = size_of(op[5])) && addr >= BASE) {
            tis_mmio_write(tis, addr - BASE, (uint32_t)val, size);
            printf("OK\n");
        } else {
            printf("ERR %s", line);
        }
    }
    tis_free(tis);
    return 0;
}
