/* fuzz-tis.c - libFuzzer target for the TIS register model: the input is a
 * sequence of register reads and writes of every size at any offset of the
 * five localities, command completions (whenever the input says), resets and
 * save/load round trips. Invariants checked after every step: the buffer
 * offset and burstCount never exceed the buffer; a FIFO read only ever sees
 * a response of the reading locality (responses are filled with a byte
 * naming the locality that sent the command); a saved state loads back to
 * the same bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tis-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct tis *tis;
static bool pending;
static uint8_t pending_locality;

static void op_execute(void *o, uint8_t loc, const uint8_t *cmd, uint32_t len)
{
    (void)o, (void)cmd, (void)len;
    pending = true;
    pending_locality = loc;
}

static void op_irq(void *o, int level)
{
    (void)o, (void)level;
}

static const struct tis_ops ops = {.execute = op_execute, .set_irq = op_irq};

static void check_invariants(void)
{
    if (tis->rw_offset > tis->buffer_size || tis->rsp_len > tis->buffer_size)
        abort();
    if (tis->active < TIS_LOCALITIES) {
        uint32_t sts = tis_mmio_read(tis, (uint32_t)tis->active << 12 | TIS_REG_STS, 4);
        uint32_t burst = (sts >> 8) & 0xffff;
        uint32_t room = (sts & TIS_STS_DATA_AVAIL) ? tis->rsp_len - tis->rw_offset
                                                   : tis->buffer_size - tis->rw_offset;
        if (burst > room)
            abort();
    }
}

static void check_fifo_bytes(uint8_t loc, uint32_t val, unsigned size)
{
    for (unsigned i = 0; i < size; i++) {
        uint8_t b = (uint8_t)(val >> (8 * i));
        if (b != 0xff && b != 0xa0 + loc)
            abort(); /* another locality's response, or a stale buffer */
    }
}

static void complete(unsigned len)
{
    uint8_t rsp[256];
    memset(rsp, 0xa0 + pending_locality, sizeof(rsp));
    pending = false;
    /* At least a header: shorter answers become a TPM failure response
     * (tested in tests/tis/test-tis.c), which carries no locality tag. */
    tis_command_done(tis, rsp, len < 10 ? 10u + len : len);
}

static void save_load(void)
{
    uint8_t *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    if (tis_save(tis, &a, &alen, NULL) == 0) {
        if (tis_load(tis, a, alen, NULL) != 0 || tis_save(tis, &b, &blen, NULL) != 0 ||
            alen != blen || memcmp(a, b, alen) != 0)
            abort();
    }
    free(a);
    free(b);
}

static const uint16_t registers[] = {0x00, 0x08, 0x0c, 0x10, 0x14, 0x18, 0x19,  0x1b, 0x20,
                                     0x24, 0x28, 0x30, 0x80, 0x84, 0xbc, 0xf00, 0xf04};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tis_config cfg = {.tpm_version = size && (data[0] & 1) ? 1 : 2,
                             .buffer_size = size > 1 && (data[1] & 1) ? 64 : 0};
    tis = tis_new(&cfg, &ops, NULL);
    pending = false;
    for (size_t i = 2; i + 6 <= size; i += 6) {
        const uint8_t *p = data + i;
        uint8_t loc = p[0] % 5;
        unsigned sz = (unsigned[]){1, 2, 4, 3}[(p[0] >> 3) & 3];
        uint32_t reg = (p[0] & 0x80) ? registers[p[1] % (sizeof(registers) / 2)]
                                     : (uint32_t)(p[1] | (p[0] & 0x40) << 2);
        uint32_t off = (uint32_t)loc << 12 | reg, val;
        memcpy(&val, p + 2, 4);
        switch ((p[0] >> 5) & 3) {
        case 0:
            val = tis_mmio_read(tis, off, sz);
            if ((reg & ~3u) == TIS_REG_DATA_FIFO || (reg >= 0x80 && reg < 0xc0))
                check_fifo_bytes(loc, val, sz == 3 ? 0 : sz);
            break;
        case 1:
            tis_mmio_write(tis, off, val, sz);
            break;
        case 2:
            if (pending)
                complete(p[2]);
            break;
        default:
            if (p[2] & 1)
                tis_reset(tis);
            else
                save_load();
            break;
        }
        check_invariants();
    }
    if (pending)
        complete(10);
    tis_free(tis);
    return 0;
}
