/* internal.h - what migration/'s files share and the layer does not offer. */
#ifndef NVTPM_MIGRATION_INTERNAL_H
#define NVTPM_MIGRATION_INTERNAL_H

#include "migration.h"

/* tlv.c: write a TLV; returns the end. */
uint8_t *mig_put_tlv(uint8_t *p, uint16_t tag, const uint8_t *value, size_t len);
/* The first TLV with tag in [p, p+len); every length checked. */
int mig_find_tlv(const uint8_t *p, size_t len, uint16_t tag, const uint8_t **value,
                 size_t *value_len, struct nv_error *err);

/* blob.c: write a blob header (version 2, readable by version 1); returns the end. */
uint8_t *mig_put_header(uint8_t *b, uint16_t flags, size_t total);

/* A state file as swtpm writes one: the data TLV, or with state_key the
 * TLVs of cbc.c (flag 0x01, and 0x08 for a 256-bit key). */
int mig_file_wrap(const uint8_t *state, size_t len, const struct mig_key *state_key, uint8_t **blob,
                  size_t *blob_len, struct nv_error *err);

/* cbc.c: one encryption layer as swtpm writes it: TLVs ct_tag (AES-CBC
 * ciphertext of in, padded to a multiple of the key length), MIG_TAG_HMAC (HMAC-SHA256 over the
 * ciphertext and the IV) and iv_tag (a random IV as long as the key; CBC uses
 * its first 16 bytes). */
int mig_cbc_seal(const struct mig_key *key, const uint8_t *in, size_t len, uint16_t ct_tag,
                 uint16_t iv_tag, uint8_t **out, size_t *out_len, struct nv_error *err);
/* The reverse, from the TLVs in [in, in+len): -EKEYREJECTED when the HMAC does
 * not match, -EBADMSG when a TLV is missing or malformed. */
int mig_cbc_open(const struct mig_key *key, const uint8_t *in, size_t len, uint16_t ct_tag,
                 uint16_t iv_tag, uint8_t **out, size_t *out_len, struct nv_error *err);

/* swtpm's state files from before the blob header (its version 1): AES-CBC
 * with a zero IV, padded, over SHA-256(state) || state. -EKEYREJECTED when the
 * padding or the digest is wrong (that format has no other check of the key). */
int mig_cbc_open_v1(const struct mig_key *key, const uint8_t *in, size_t len, uint8_t **out,
                    size_t *out_len, struct nv_error *err);

/* Whether blob starts with swtpm's blob header: its total length field
 * matches. Without one a state file is in swtpm's older format. */
bool mig_has_header(const uint8_t *blob, size_t len);

#endif
