/* format.c - the on-disk structures of docs/nvram-format.md: superblocks and
 * blob slots, encoded, decoded and verified. Pure functions over byte
 * buffers, so that the fuzz target reaches every check. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char *const blob_names[NVRAM_BLOBS] = {"permall", "volatilestate", "savestate"};

/* Version 1 slot sizes, header included (docs/nvram-format.md). */
static const uint32_t default_slot_size[NVRAM_BLOBS] = {576u << 10, 256u << 10, 256u << 10};
#define FIRST_SLOT_OFFSET (64u << 10)
#define MAX_SLOT_SIZE     (64u << 20)

const char *nvram_blob_name(enum nvram_blob blob)
{
    return blob < NVRAM_BLOBS ? blob_names[blob] : "?";
}

int nvram_blob_by_name(const char *name)
{
    for (int i = 0; i < NVRAM_BLOBS; i++)
        if (strcmp(name, blob_names[i]) == 0)
            return i;
    return -ENOENT;
}

const char *nvram_cipher_name(enum nvram_cipher cipher)
{
    switch (cipher) {
    case NVRAM_CIPHER_NONE:
        return "none";
    case NVRAM_CIPHER_AES128_GCM:
        return "aes-128-gcm";
    case NVRAM_CIPHER_AES256_GCM:
        return "aes-256-gcm";
    }
    return "?";
}

size_t nvram_data_key_size(enum nvram_cipher cipher)
{
    return cipher == NVRAM_CIPHER_AES128_GCM ? 16 : cipher == NVRAM_CIPHER_AES256_GCM ? 32 : 0;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

void nvram_layout_default(struct nvram_super *sb)
{
    uint64_t off = FIRST_SLOT_OFFSET;
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        memset(sb->blobs[b].name, 0, sizeof(sb->blobs[b].name));
        memcpy(sb->blobs[b].name, blob_names[b], strlen(blob_names[b]));
        sb->blobs[b].slot_size = default_slot_size[b];
        for (int s = 0; s < 2; s++) {
            sb->blobs[b].offset[s] = off;
            off += default_slot_size[b];
        }
    }
}

/* ---- superblock -------------------------------------------------------------------- */

#define SB_BLOBS    48
#define SB_KEYS     168
#define SB_KEY_SIZE 160
#define SB_SUM      4064

static void encode_key(const struct nvram_keyslot *k, uint8_t *p)
{
    memset(p, 0, SB_KEY_SIZE);
    if (!k->used)
        return;
    p[0] = 1;
    p[1] = k->kind;
    p[2] = k->kek_size;
    put32(p + 4, k->iterations);
    memcpy(p + 8, k->salt, 32);
    memcpy(p + 40, k->nonce, 12);
    memcpy(p + 52, k->wrapped, 32);
    memcpy(p + 84, k->tag, 16);
    put64(p + 100, k->created);
}

void nvram_super_encode(const struct nvram_super *sb, uint8_t *raw)
{
    memset(raw, 0, NVRAM_SB_SIZE);
    memcpy(raw, "NVTPMSB1", 8);
    put32(raw + 8, NVRAM_FORMAT_VERSION);
    put32(raw + 12, NVRAM_SB_SIZE);
    put64(raw + 16, sb->generation);
    memcpy(raw + 24, sb->uuid, 16);
    raw[40] = sb->tpm_version;
    raw[41] = sb->cipher;
    raw[42] = sb->flags;
    raw[43] = NVRAM_KEY_SLOTS;
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        uint8_t *p = raw + SB_BLOBS + 40 * b;
        memcpy(p, sb->blobs[b].name, 16);
        put64(p + 16, sb->blobs[b].offset[0]);
        put64(p + 24, sb->blobs[b].offset[1]);
        put32(p + 32, sb->blobs[b].slot_size);
    }
    for (int k = 0; k < NVRAM_KEY_SLOTS; k++)
        encode_key(&sb->keys[k], raw + SB_KEYS + SB_KEY_SIZE * k);
    nvram_sha256(raw, SB_SUM, NULL, 0, raw + SB_SUM);
}

#define WHY(...) (snprintf(why, why_size, __VA_ARGS__), -EUCLEAN)

static int decode_key(const uint8_t *p, unsigned index, struct nvram_keyslot *k, char *why,
                      size_t why_size)
{
    memset(k, 0, sizeof(*k));
    if (p[0] == 0)
        return nv_all_zero(p, SB_KEY_SIZE) ? 0 : WHY("key slot %u: empty but not zero", index);
    k->used = p[0];
    k->kind = p[1];
    k->kek_size = p[2];
    k->iterations = get32(p + 4);
    memcpy(k->salt, p + 8, 32);
    memcpy(k->nonce, p + 40, 12);
    memcpy(k->wrapped, p + 52, 32);
    memcpy(k->tag, p + 84, 16);
    k->created = get64(p + 100);
    if (k->used != 1 || (k->kind != NVRAM_KEY_RAW && k->kind != NVRAM_KEY_PASSPHRASE) ||
        (k->kek_size != 16 && k->kek_size != 32) || p[3] || !nv_all_zero(p + 108, 52))
        return WHY("key slot %u: malformed", index);
    if (k->kind == NVRAM_KEY_PASSPHRASE && k->iterations < NVRAM_MIN_ITERATIONS)
        return WHY("key slot %u: %u PBKDF2 iterations is below %u", index, k->iterations,
                   NVRAM_MIN_ITERATIONS);
    return 0;
}

int nvram_super_decode(const uint8_t *raw, struct nvram_super *sb, char *why, size_t why_size)
{
    uint8_t sum[32];
    memset(sb, 0, sizeof(*sb));
    if (memcmp(raw, "NVTPMSB1", 8) != 0)
        return WHY("no superblock magic");
    if (get32(raw + 8) != NVRAM_FORMAT_VERSION || get32(raw + 12) != NVRAM_SB_SIZE)
        return WHY("format version %u (size %u) is not supported", get32(raw + 8), get32(raw + 12));
    nvram_sha256(raw, SB_SUM, NULL, 0, sum);
    if (memcmp(sum, raw + SB_SUM, 32) != 0)
        return WHY("checksum mismatch");
    sb->generation = get64(raw + 16);
    memcpy(sb->uuid, raw + 24, 16);
    sb->tpm_version = raw[40];
    sb->cipher = raw[41];
    sb->flags = raw[42];
    if (sb->tpm_version != 1 && sb->tpm_version != 2)
        return WHY("TPM version %u", sb->tpm_version);
    if (sb->cipher > NVRAM_CIPHER_AES256_GCM ||
        (sb->flags & ~(NVRAM_SB_ENCRYPTING | NVRAM_SB_MANUFACTURED)) ||
        raw[43] != NVRAM_KEY_SLOTS || get32(raw + 44))
        return WHY("unknown cipher %u, flags 0x%x or key slot count %u", sb->cipher, sb->flags,
                   raw[43]);
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        const uint8_t *p = raw + SB_BLOBS + 40 * b;
        memcpy(sb->blobs[b].name, p, 16);
        sb->blobs[b].offset[0] = get64(p + 16);
        sb->blobs[b].offset[1] = get64(p + 24);
        sb->blobs[b].slot_size = get32(p + 32);
        if (strncmp(sb->blobs[b].name, blob_names[b], 16) != 0 || get32(p + 36))
            return WHY("blob table entry %d is not '%s'", b, blob_names[b]);
    }
    bool any_key = false;
    for (unsigned k = 0; k < NVRAM_KEY_SLOTS; k++) {
        int r = decode_key(raw + SB_KEYS + SB_KEY_SIZE * k, k, &sb->keys[k], why, why_size);
        if (r < 0)
            return r;
        any_key |= sb->keys[k].used;
    }
    if (!nv_all_zero(raw + SB_KEYS + SB_KEY_SIZE * NVRAM_KEY_SLOTS,
                     SB_SUM - SB_KEYS - SB_KEY_SIZE * NVRAM_KEY_SLOTS))
        return WHY("reserved bytes are not zero");
    if ((sb->cipher != NVRAM_CIPHER_NONE) != any_key)
        return WHY("cipher %s with%s key slots", nvram_cipher_name(sb->cipher),
                   any_key ? "" : "out");
    return 0;
}

/* Slots aligned, large enough, inside the disk, apart from each other and
 * from the superblocks. */
int nvram_super_extent(const struct nvram_super *sb, uint64_t disk_size, uint64_t *end, char *why,
                       size_t why_size)
{
    uint64_t lo[2 * NVRAM_BLOBS], hi[2 * NVRAM_BLOBS];
    *end = 2 * NVRAM_SB_SIZE;
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        uint32_t size = sb->blobs[b].slot_size;
        if (size <= NVRAM_SLOT_HEADER_SIZE || size > MAX_SLOT_SIZE || size % 4096)
            return WHY("%s slot size %u", blob_names[b], size);
        for (int s = 0; s < 2; s++) {
            uint64_t off = sb->blobs[b].offset[s];
            if (off % 4096 || off < 2 * NVRAM_SB_SIZE || off > disk_size || disk_size - off < size)
                return WHY("%s slot %c at offset %llu (%u bytes) is outside the disk (%llu bytes)",
                           blob_names[b], 'A' + s, (unsigned long long)off, size,
                           (unsigned long long)disk_size);
            lo[2 * b + s] = off;
            hi[2 * b + s] = off + size;
            if (hi[2 * b + s] > *end)
                *end = hi[2 * b + s];
        }
    }
    for (int i = 0; i < 2 * NVRAM_BLOBS; i++)
        for (int j = i + 1; j < 2 * NVRAM_BLOBS; j++)
            if (lo[i] < hi[j] && lo[j] < hi[i])
                return WHY("blob slots %d and %d overlap", i, j);
    return 0;
}

/* ---- slots ---------------------------------------------------------------------------- */

static void encode_slot_header(const struct nvram_slot_header *h, uint8_t *raw)
{
    memset(raw, 0, NVRAM_SLOT_HEADER_SIZE);
    memcpy(raw, "NVTSLOT1", 8);
    memcpy(raw + 8, h->name, 16);
    put64(raw + 24, h->sequence);
    put32(raw + 32, h->length);
    raw[36] = h->cipher;
    raw[37] = h->flags;
    memcpy(raw + 40, h->uuid, 16);
    memcpy(raw + 56, h->nonce, 12);
    memcpy(raw + 72, h->integrity, 32);
}

/* A blob's name as slot headers hold it: NUL-padded to 16 bytes. */
static void padded_name(enum nvram_blob blob, char name[16])
{
    memset(name, 0, 16);
    memcpy(name, blob_names[blob], strlen(blob_names[blob]));
}

uint64_t nvram_slot_header_sequence(const uint8_t *raw, enum nvram_blob blob)
{
    char name[16];
    padded_name(blob, name);
    if (memcmp(raw, "NVTSLOT1", 8) != 0 || memcmp(raw + 8, name, 16) != 0)
        return 0;
    return get64(raw + 24);
}

uint32_t nvram_slot_header_length(const uint8_t *raw)
{
    return get32(raw + 32);
}

static void slot_problem(struct nvram_slot_info *info, const char *what)
{
    info->state = NVRAM_SLOT_DAMAGED;
    snprintf(info->problem, sizeof(info->problem), "%s", what);
}

void nvram_slot_open(const uint8_t *slot, size_t slot_size, enum nvram_blob blob,
                     const struct nvram_super *sb, const uint8_t *data_key, uint8_t *plain,
                     struct nvram_slot_info *info)
{
    memset(info, 0, sizeof(*info));
    if (nv_all_zero(slot, NVRAM_SLOT_HEADER_SIZE)) {
        info->state = NVRAM_SLOT_BLANK;
        return;
    }
    info->sequence = get64(slot + 24);
    info->length = nvram_slot_header_length(slot);
    info->cipher = slot[36];
    info->deleted = slot[37] & NVRAM_SLOT_DELETED;
    char name[16];
    padded_name(blob, name);
    size_t capacity = slot_size - NVRAM_SLOT_HEADER_SIZE;
    if (memcmp(slot, "NVTSLOT1", 8) != 0) {
        slot_problem(info, "no slot magic");
        return;
    }
    if (memcmp(slot + 8, name, 16) != 0) {
        slot_problem(info, "the slot belongs to another blob");
        return;
    }
    if (memcmp(slot + 40, sb->uuid, 16) != 0) {
        slot_problem(info, "the slot belongs to another image");
        return;
    }
    if (info->length > capacity || (info->deleted && info->length) || (slot[37] & ~1u) ||
        slot[38] || slot[39] || get32(slot + 68) ||
        !nv_all_zero(slot + 104, NVRAM_SLOT_HEADER_SIZE - 104) || info->sequence == 0) {
        slot_problem(info, "malformed header");
        return;
    }
    const uint8_t *payload = slot + NVRAM_SLOT_HEADER_SIZE;
    if (info->cipher == NVRAM_CIPHER_NONE) {
        if (sb->cipher != NVRAM_CIPHER_NONE && !(sb->flags & NVRAM_SB_ENCRYPTING)) {
            slot_problem(info, "a plain slot in an encrypted image");
            return;
        }
        uint8_t sum[32];
        nvram_sha256(slot, NVRAM_SLOT_AAD_SIZE, payload, info->length, sum);
        if (memcmp(sum, slot + 72, 32) != 0) {
            slot_problem(info, "checksum mismatch (torn or damaged)");
            return;
        }
        memcpy(plain, payload, info->length);
        info->state = NVRAM_SLOT_VALID;
        return;
    }
    if (info->cipher != sb->cipher || !nv_all_zero(slot + 88, 16)) {
        slot_problem(info, "cipher does not match the image's");
        return;
    }
    if (!data_key) {
        info->state = NVRAM_SLOT_UNCHECKED;
        return;
    }
    if (nvram_gcm_open(data_key, nvram_data_key_size(sb->cipher), slot + 56, slot,
                       NVRAM_SLOT_AAD_SIZE, payload, info->length, plain, slot + 72) < 0) {
        slot_problem(info, "authentication failed (torn, damaged or forged)");
        return;
    }
    info->state = NVRAM_SLOT_VALID;
}

int nvram_slot_seal(const struct nvram_super *sb, enum nvram_blob blob, uint64_t sequence,
                    const uint8_t *data, size_t length, bool deleted, enum nvram_cipher cipher,
                    const uint8_t *data_key, uint8_t *out, size_t out_size, size_t *written)
{
    if (length > out_size - NVRAM_SLOT_HEADER_SIZE ||
        length > sb->blobs[blob].slot_size - NVRAM_SLOT_HEADER_SIZE)
        return -EFBIG;
    struct nvram_slot_header h = {.sequence = sequence,
                                  .length = (uint32_t)length,
                                  .cipher = (uint8_t)cipher,
                                  .flags = deleted ? NVRAM_SLOT_DELETED : 0};
    padded_name(blob, h.name);
    memcpy(h.uuid, sb->uuid, 16);
    if (cipher != NVRAM_CIPHER_NONE && nvram_random(h.nonce, sizeof(h.nonce)) < 0)
        return -EIO;
    encode_slot_header(&h, out);
    uint8_t *payload = out + NVRAM_SLOT_HEADER_SIZE;
    if (cipher == NVRAM_CIPHER_NONE) {
        if (length)
            memcpy(payload, data, length);
        nvram_sha256(out, NVRAM_SLOT_AAD_SIZE, payload, length, out + 72);
    } else if (nvram_gcm_seal(data_key, nvram_data_key_size(cipher), h.nonce, out,
                              NVRAM_SLOT_AAD_SIZE, data, length, payload, out + 72) < 0) {
        return -EIO;
    }
    *written = NVRAM_SLOT_HEADER_SIZE + length;
    return 0;
}
