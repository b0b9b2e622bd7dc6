/* tis-save.c - the TIS device state as a blob for live migration: magic,
 * version, length, the fields in a fixed big-endian layout, and a CRC-32 of
 * everything before it. tis_load checks every field before changing
 * anything, so a damaged or hostile blob is refused and the device stays as
 * it was. */
#include "tis-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define SAVE_MAGIC   "NVTPMTIS"
#define SAVE_VERSION 1u
#define LOC_BYTES    (1 + 1 + 4 + 4 + 4)
#define FIXED_BYTES  (8 + 4 + 4 + 1 + 4 + 1 + 1 + 4 + 4 + TIS_LOCALITIES * LOC_BYTES)

static uint8_t *put32(uint8_t *p, uint32_t v)
{
    nv_put_be32(p, v);
    return p + 4;
}

int tis_save(struct tis *t, uint8_t **blob, size_t *len, struct nv_error *err)
{
    pthread_mutex_lock(&t->lock);
    if (t->executing || t->abort_pending || t->drop_response) {
        pthread_mutex_unlock(&t->lock);
        return nv_error_set(err, -EBUSY, "tis: a command is executing; save after it completes");
    }
    size_t total = FIXED_BYTES + t->buffer_size + 4;
    uint8_t *b = malloc(total), *p = b;
    if (!b) {
        pthread_mutex_unlock(&t->lock);
        return nv_error_set(err, -ENOMEM, "out of memory");
    }
    memcpy(p, SAVE_MAGIC, 8);
    p = put32(p + 8, SAVE_VERSION);
    p = put32(p, (uint32_t)total);
    *p++ = (uint8_t)t->cfg.tpm_version;
    p = put32(p, t->buffer_size);
    *p++ = t->active;
    *p++ = t->hashing;
    p = put32(p, t->rw_offset);
    p = put32(p, t->rsp_len);
    for (int l = 0; l < TIS_LOCALITIES; l++) {
        *p++ = t->loc[l].access;
        *p++ = t->loc[l].state;
        p = put32(p, t->loc[l].sts);
        p = put32(p, t->loc[l].inte);
        p = put32(p, t->loc[l].ints);
    }
    memcpy(p, t->buffer, t->buffer_size);
    p += t->buffer_size;
    put32(p, (uint32_t)crc32(0, b, (uInt)(total - 4)));
    pthread_mutex_unlock(&t->lock);
    *blob = b;
    *len = total;
    return 0;
}

#define BAD(...) nv_error_set(err, -EINVAL, "tis: saved state: " __VA_ARGS__)

static int check_locality(const uint8_t *p, int l, struct nv_error *err)
{
    uint8_t access = p[0], state = p[1];
    uint32_t sts = nv_be32(p + 2), inte = nv_be32(p + 6), ints = nv_be32(p + 10);
    const uint32_t sts_bits = TIS_STS_SELFTEST_DONE | TIS_STS_EXPECT | TIS_STS_DATA_AVAIL |
                              TIS_STS_COMMAND_READY | TIS_STS_VALID | TIS_STS_COMMAND_CANCEL;
    if (state > TIS_COMPLETION || state == TIS_EXECUTION)
        return BAD("locality %d: state %u", l, state);
    if (!(access & TIS_ACC_REG_VALID) ||
        (access & (TIS_ACC_ESTABLISHMENT | TIS_ACC_PENDING_REQUEST | 0x40)))
        return BAD("locality %d: ACCESS 0x%02x", l, access);
    if ((sts & ~sts_bits) || (inte & ~TIS_INT_ENABLE_BITS) || (ints & ~TIS_INT_SOURCES))
        return BAD("locality %d: STS 0x%08x, INT_ENABLE 0x%08x or INT_STATUS 0x%08x", l, sts, inte,
                   ints);
    return 0;
}

static int check_blob(const struct tis *t, const uint8_t *b, size_t len, struct nv_error *err)
{
    if (len < FIXED_BYTES + 4 || memcmp(b, SAVE_MAGIC, 8) != 0)
        return BAD("not a TIS state (%zu bytes)", len);
    if (nv_be32(b + 8) != SAVE_VERSION)
        return BAD("version %u, this reader knows %u", nv_be32(b + 8), SAVE_VERSION);
    if (nv_be32(b + 12) != len || len != FIXED_BYTES + t->buffer_size + 4)
        return BAD("%zu bytes; a %u-byte buffer makes %zu", len, t->buffer_size,
                   (size_t)(FIXED_BYTES + t->buffer_size + 4));
    if ((uint32_t)crc32(0, b, (uInt)(len - 4)) != nv_be32(b + len - 4))
        return BAD("checksum mismatch");
    const uint8_t *p = b + 16;
    if (p[0] != t->cfg.tpm_version || nv_be32(p + 1) != t->buffer_size)
        return BAD("TPM %u with a %u-byte buffer; this device is TPM %d with %u", p[0],
                   nv_be32(p + 1), t->cfg.tpm_version, t->buffer_size);
    uint8_t active = p[5], hashing = p[6];
    uint32_t rw = nv_be32(p + 7), rsp = nv_be32(p + 11);
    if ((active >= TIS_LOCALITIES && active != TIS_NO_LOCALITY) || hashing > 1 ||
        rw > t->buffer_size || rsp > t->buffer_size)
        return BAD("active locality %u, hashing %u, offset %u or response length %u", active,
                   hashing, rw, rsp);
    for (int l = 0; l < TIS_LOCALITIES; l++) {
        const uint8_t *lp = p + 15 + l * LOC_BYTES;
        int r = check_locality(lp, l, err);
        if (r < 0)
            return r;
        bool is_active = (lp[0] & TIS_ACC_ACTIVE) != 0;
        /* A locality without the locality holds no data: idle or ready. */
        if (is_active != (l == active) || (lp[1] > TIS_READY && l != active))
            return BAD("locality %d: activeLocality or state disagrees with the active one", l);
    }
    return 0;
}

int tis_load(struct tis *t, const uint8_t *b, size_t len, struct nv_error *err)
{
    pthread_mutex_lock(&t->lock);
    int r = t->executing ? nv_error_set(err, -EBUSY, "tis: a command is executing")
                         : check_blob(t, b, len, err);
    if (r == 0) {
        const uint8_t *p = b + 16;
        t->active = p[5];
        t->hashing = p[6];
        t->rw_offset = nv_be32(p + 7);
        t->rsp_len = nv_be32(p + 11);
        t->aborting = t->next = TIS_NO_LOCALITY;
        t->abort_pending = t->go_pending = false;
        for (int l = 0; l < TIS_LOCALITIES; l++) {
            const uint8_t *lp = p + 15 + l * LOC_BYTES;
            t->loc[l] = (struct tis_locality){.access = lp[0],
                                              .state = lp[1],
                                              .sts = nv_be32(lp + 2),
                                              .inte = nv_be32(lp + 6),
                                              .ints = nv_be32(lp + 10)};
        }
        memcpy(t->buffer, p + 15 + TIS_LOCALITIES * LOC_BYTES, t->buffer_size);
        t->irq_level = !t->irq_level; /* make update_irq tell the VMM the level */
        tis_update_irq(t);
    }
    pthread_mutex_unlock(&t->lock);
    return r;
}
