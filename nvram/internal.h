/* internal.h - what the files of nvram/ share: the on-disk structures of
 * docs/nvram-format.md in decoded form, their codecs, and the crypto. */
#ifndef NVTPM_NVRAM_INTERNAL_H
#define NVTPM_NVRAM_INTERNAL_H

#include "nvram.h"

#define NVRAM_SB_SIZE          4096u
#define NVRAM_SB_OFFSET(i)     ((uint64_t)(i)*NVRAM_SB_SIZE)
#define NVRAM_SLOT_HEADER_SIZE 4096u
#define NVRAM_SLOT_AAD_SIZE    72u
#define NVRAM_FORMAT_VERSION   1u
#define NVRAM_SB_ENCRYPTING    0x01u
#define NVRAM_SB_MANUFACTURED  0x02u /* permall was written: it never reads as absent */
#define NVRAM_SLOT_DELETED     0x01u
#define NVRAM_MAX_DATA_KEY     32u

struct nvram_keyslot {
    uint8_t used, kind, kek_size;
    uint32_t iterations;
    uint8_t salt[32], nonce[12], wrapped[32], tag[16];
    uint64_t created;
};

struct nvram_blobdesc {
    char name[16];
    uint64_t offset[2];
    uint32_t slot_size;
};

struct nvram_super {
    uint64_t generation;
    uint8_t uuid[16];
    uint8_t tpm_version, cipher, flags;
    struct nvram_blobdesc blobs[NVRAM_BLOBS];
    struct nvram_keyslot keys[NVRAM_KEY_SLOTS];
};

struct nvram_slot_header {
    char name[16];
    uint64_t sequence;
    uint32_t length;
    uint8_t cipher, flags;
    uint8_t uuid[16];
    uint8_t nonce[12];
    uint8_t integrity[32];
};

/* format.c */
/* The version 1 layout for a new image. */
void nvram_layout_default(struct nvram_super *sb);
/* Decode and verify one superblock copy; why says what is wrong. */
int nvram_super_decode(const uint8_t *raw, struct nvram_super *sb, char *why, size_t why_size);
void nvram_super_encode(const struct nvram_super *sb, uint8_t *raw);
/* The end of the NVRAM area a superblock describes (bounds-checked). */
int nvram_super_extent(const struct nvram_super *sb, uint64_t disk_size, uint64_t *end, char *why,
                       size_t why_size);
size_t nvram_data_key_size(enum nvram_cipher cipher);

/* Validate a whole slot (header, then payload_bytes of payload) of blob and
 * put the plaintext in plain (capacity bytes). data_key may be NULL: then
 * an encrypted slot is UNCHECKED. */
void nvram_slot_open(const uint8_t *slot, size_t slot_size, enum nvram_blob blob,
                     const struct nvram_super *sb, const uint8_t *data_key, uint8_t *plain,
                     struct nvram_slot_info *info);
/* The sequence number in the first NVRAM_SLOT_SEQUENCE_END bytes of a slot
 * header of blob, unverified (a torn slot's too); 0 when they are no such
 * header. */
#define NVRAM_SLOT_SEQUENCE_END 32u
uint64_t nvram_slot_header_sequence(const uint8_t *raw, enum nvram_blob blob);
/* The payload length a slot header (NVRAM_SLOT_HEADER_SIZE bytes) claims,
 * unverified: how much more to read before nvram_slot_open checks it. */
uint32_t nvram_slot_header_length(const uint8_t *raw);
/* Build a slot (header and payload) ready for one write; returns its length. */
int nvram_slot_seal(const struct nvram_super *sb, enum nvram_blob blob, uint64_t sequence,
                    const uint8_t *data, size_t length, bool deleted, enum nvram_cipher cipher,
                    const uint8_t *data_key, uint8_t *out, size_t out_size, size_t *written);

/* crypto.c */
int nvram_random(void *buf, size_t len);
void nvram_sha256(const void *a, size_t a_len, const void *b, size_t b_len, uint8_t out[32]);
int nvram_sha512(const void *in, size_t len, uint8_t out[64]);
int nvram_gcm_seal(const uint8_t *key, size_t key_len, const uint8_t nonce[12], const uint8_t *aad,
                   size_t aad_len, const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[16]);
int nvram_gcm_open(const uint8_t *key, size_t key_len, const uint8_t nonce[12], const uint8_t *aad,
                   size_t aad_len, const uint8_t *in, size_t len, uint8_t *out,
                   const uint8_t tag[16]);
int nvram_pbkdf2(const uint8_t *pass, size_t pass_len, const uint8_t *salt, size_t salt_len,
                 uint32_t iterations, uint8_t *out, size_t out_len);

/* keys.c */
/* Wrap data_key into slot for key (a new slot: salt, nonce, created). */
int nvram_keyslot_fill(struct nvram_keyslot *slot, const struct nvram_key *key,
                       const uint8_t uuid[16], unsigned index, const uint8_t *data_key,
                       size_t data_key_len, struct nv_error *err);
/* Unwrap: 0 when key opens slot (data_key filled), -EKEYREJECTED if not. */
int nvram_keyslot_open(const struct nvram_keyslot *slot, const struct nvram_key *key,
                       const uint8_t uuid[16], unsigned index, uint8_t *data_key,
                       size_t data_key_len);
/* The first slot key opens, or -EKEYREJECTED. */
int nvram_keys_unlock(const struct nvram_super *sb, const struct nvram_key *key, uint8_t *data_key);

#endif
