/* tis-example.c - embed nvtpm's TIS device in a program, as a VMM would: a
 * TPM 2.0 whose state lives in the NVRAM image IMG (created if absent), driven
 * through its registers the way a guest driver does. Sends TPM2_Startup(CLEAR)
 * and TPM2_GetRandom(8) and prints the 8 random bytes as 16 hex digits.
 * Built as a VMM is: <nvtpm/tis.h> and libnvtpm.so, nothing else of nvtpm.
 *
 * Usage: tis-example IMG   (exit 0 on success, 1 on any failure) */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <nvtpm/tis.h>

enum { ACCESS = 0x00, STS = 0x18, FIFO = 0x24 };
enum { REQUEST_USE = 0x02, ACTIVE = 0x20, REG_VALID = 0x80 };
enum { EXPECT = 0x08, DATA_AVAIL = 0x10, GO = 0x20, READY = 0x40, VALID = 0x80 };

/* Poll a register until (value & mask) == want; the device answers from a
 * worker thread, as a real TPM answers in its own time. */
static int wait_for(struct tis *tis, uint32_t reg, uint32_t mask, uint32_t want)
{
    for (int i = 0; i < 100000; i++) {
        if ((tis_mmio_read(tis, reg, 4) & mask) == want)
            return 0;
        nanosleep(&(struct timespec){0, 100000}, NULL);
    }
    return -1;
}

static uint32_t burst_count(struct tis *tis)
{
    return (tis_mmio_read(tis, STS, 4) >> 8) & 0xffff;
}

/* One command at locality 0, as Linux's tpm_tis sends it. */
static int transmit(struct tis *tis, const uint8_t *cmd, uint32_t len, uint8_t *rsp, uint32_t cap,
                    uint32_t *rsp_len)
{
    tis_mmio_write(tis, ACCESS, REQUEST_USE, 1);
    if (wait_for(tis, ACCESS, REG_VALID | ACTIVE, REG_VALID | ACTIVE) < 0)
        return -1;
    tis_mmio_write(tis, STS, READY, 1);
    if (wait_for(tis, STS, READY, READY) < 0)
        return -1;
    for (uint32_t sent = 0; sent < len;) {
        for (uint32_t n = burst_count(tis); n > 0 && sent < len; n--)
            tis_mmio_write(tis, FIFO, cmd[sent++], 1);
        if (wait_for(tis, STS, VALID, VALID) < 0)
            return -1;
        uint32_t expect = tis_mmio_read(tis, STS, 1) & EXPECT;
        if ((sent < len) != (expect != 0)) /* Expect: the TPM wants more */
            return -1;
    }
    tis_mmio_write(tis, STS, GO, 1);
    if (wait_for(tis, STS, VALID | DATA_AVAIL, VALID | DATA_AVAIL) < 0)
        return -1;
    uint32_t got = 0, size = 10;
    while (got < size && got < cap && (tis_mmio_read(tis, STS, 1) & DATA_AVAIL)) {
        for (uint32_t n = burst_count(tis); n > 0 && got < size && got < cap; n--)
            rsp[got++] = (uint8_t)tis_mmio_read(tis, FIFO, 1);
        if (got >= 6)
            size = (uint32_t)rsp[2] << 24 | (uint32_t)rsp[3] << 16 | rsp[4] << 8 | rsp[5];
    }
    tis_mmio_write(tis, STS, READY, 1);     /* done with the response */
    tis_mmio_write(tis, ACCESS, ACTIVE, 1); /* give the locality up */
    *rsp_len = got;
    return got == size ? 0 : -1;
}

static uint32_t response_code(const uint8_t *rsp)
{
    return (uint32_t)rsp[6] << 24 | (uint32_t)rsp[7] << 16 | rsp[8] << 8 | rsp[9];
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "Usage: tis-example IMG\n");
        return 1;
    }
    struct nv_error *err = tis_error_new();
    struct tis_config cfg = {.tpm_version = 2};
    struct tis *tis = err ? tis_new_libtpms(&cfg, argv[1], NULL, NULL, NULL, err) : NULL;
    if (!tis) {
        fprintf(stderr, "tis-example: %s\n", err ? tis_error_message(err) : "out of memory");
        tis_error_free(err);
        return 1;
    }
    tis_error_free(err);
    static const uint8_t startup[] = {0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0x00, 0x00};
    static const uint8_t getrandom[] = {0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0x00, 0x08};
    uint8_t rsp[64];
    uint32_t len = 0;
    int status = 1;
    /* TPM_RC_INITIALIZE (0x100): a TPM that was started before is fine too. */
    if (transmit(tis, startup, sizeof(startup), rsp, sizeof(rsp), &len) == 0 &&
        (response_code(rsp) == 0 || response_code(rsp) == 0x100) &&
        transmit(tis, getrandom, sizeof(getrandom), rsp, sizeof(rsp), &len) == 0 &&
        response_code(rsp) == 0 && len == 20 && rsp[10] == 0 && rsp[11] == 8) {
        for (int i = 0; i < 8; i++)
            printf("%02x", rsp[12 + i]);
        printf("\n");
        status = 0;
    } else {
        fprintf(stderr, "tis-example: the TPM did not answer as expected\n");
    }
    tis_free(tis);
    return status;
}
