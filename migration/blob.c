/* blob.c - swtpm's state-blob format: the header and the layers of TLVs
 * inside it, checked defensively (every length against what is left), since
 * blobs arrive from the network side of a migration. The TLVs themselves are
 * in tlv.c, encryption (AES-CBC, HMAC-SHA256) in cbc.c. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define BLOB_VERSION 2u

uint8_t *mig_put_header(uint8_t *b, uint16_t flags, size_t total)
{
    b[0] = BLOB_VERSION;
    b[1] = 1; /* readers of version 1 can read it */
    nv_put_be16(b + 2, MIG_HEADER_SIZE);
    nv_put_be16(b + 4, flags);
    nv_put_be32(b + 6, (uint32_t)total);
    return b + MIG_HEADER_SIZE;
}

/* The inner layer: the state as a data TLV, or under the state key. */
static int wrap_inner(const uint8_t *state, size_t len, const struct mig_key *state_key,
                      uint8_t **inner, size_t *inner_len, uint16_t *flags, struct nv_error *err)
{
    if (state_key) {
        *flags |= MIG_FLAG_ENCRYPTED | (state_key->len == 32 ? MIG_FLAG_STATE_KEY_256 : 0);
        return mig_cbc_seal(state_key, state, len, MIG_TAG_ENCRYPTED_DATA, MIG_TAG_IVEC, inner,
                            inner_len, err);
    }
    *inner_len = 6 + len;
    if (!(*inner = malloc(*inner_len)))
        return nv_error_set(err, -ENOMEM, "out of memory");
    mig_put_tlv(*inner, MIG_TAG_DATA, state, len);
    return 0;
}

int mig_blob_wrap(const uint8_t *state, size_t len, const struct mig_key *migration_key,
                  const struct mig_key *state_key, uint8_t **blob, size_t *blob_len,
                  struct nv_error *err)
{
    *blob = NULL;
    if (len > MIG_BLOB_MAX)
        return nv_error_set(err, -EFBIG, "state blob of %zu bytes is too large", len);
    uint8_t *inner = NULL, *sealed = NULL;
    size_t inner_len = 0, sealed_len = 0;
    uint16_t flags = MIG_FLAG_MIGRATION_DATA;
    int r = wrap_inner(state, len, state_key, &inner, &inner_len, &flags, err);
    if (r == 0 && migration_key) {
        r = mig_cbc_seal(migration_key, inner, inner_len, MIG_TAG_ENCRYPTED_MIGRATION_DATA,
                         MIG_TAG_MIGRATION_IVEC, &sealed, &sealed_len, err);
        flags |= MIG_FLAG_MIGRATION_ENCRYPTED |
                 (migration_key->len == 32 ? MIG_FLAG_MIGRATION_KEY_256 : 0);
    } else if (r == 0) {
        sealed_len = 6 + inner_len; /* the inner layer inside a migration-data TLV */
        sealed = malloc(sealed_len);
        if (sealed)
            mig_put_tlv(sealed, MIG_TAG_MIGRATION_DATA, inner, inner_len);
        else
            r = nv_error_set(err, -ENOMEM, "out of memory");
    }
    if (inner)
        nv_wipe(inner, inner_len);
    free(inner);
    uint8_t *b = r == 0 ? malloc(MIG_HEADER_SIZE + sealed_len) : NULL;
    if (r == 0 && !b)
        r = nv_error_set(err, -ENOMEM, "out of memory");
    if (r == 0) {
        memcpy(mig_put_header(b, flags, MIG_HEADER_SIZE + sealed_len), sealed, sealed_len);
        *blob = b;
        *blob_len = MIG_HEADER_SIZE + sealed_len;
    }
    free(sealed);
    return r;
}

int mig_file_wrap(const uint8_t *state, size_t len, const struct mig_key *state_key, uint8_t **blob,
                  size_t *blob_len, struct nv_error *err)
{
    *blob = NULL;
    if (len > MIG_BLOB_MAX)
        return nv_error_set(err, -EFBIG, "state blob of %zu bytes is too large", len);
    uint8_t *body = NULL;
    size_t body_len = 6 + len;
    uint16_t flags = 0;
    if (state_key) {
        int r = mig_cbc_seal(state_key, state, len, MIG_TAG_ENCRYPTED_DATA, MIG_TAG_IVEC, &body,
                             &body_len, err);
        if (r < 0)
            return r;
        flags = MIG_FLAG_ENCRYPTED | (state_key->len == 32 ? MIG_FLAG_STATE_KEY_256 : 0);
    } else if ((body = malloc(body_len)) != NULL) {
        mig_put_tlv(body, MIG_TAG_DATA, state, len);
    }
    uint8_t *b = body ? malloc(MIG_HEADER_SIZE + body_len) : NULL;
    if (b) {
        memcpy(mig_put_header(b, flags, MIG_HEADER_SIZE + body_len), body, body_len);
        *blob = b;
        *blob_len = MIG_HEADER_SIZE + body_len;
    }
    free(body);
    return b ? 0 : nv_error_set(err, -ENOMEM, "out of memory");
}

bool mig_has_header(const uint8_t *blob, size_t len)
{
    /* swtpm tells them by the total length alone; a header cut short or
     * grown (version 2, readable by 1, 10 bytes long) is a damaged file, not
     * an old one: the state of an old file never starts so. */
    return len >= MIG_HEADER_SIZE &&
           (nv_be32(blob + 6) == len || (blob[0] == 2 && blob[1] == 1 && nv_be16(blob + 2) == 10));
}

static int check_header(const uint8_t *blob, size_t len, struct nv_error *err)
{
    if (len < MIG_HEADER_SIZE)
        return nv_error_set(err, -EBADMSG, "state blob: %zu bytes is shorter than a header", len);
    uint16_t hsize = nv_be16(blob + 2);
    uint32_t total = nv_be32(blob + 6);
    if (blob[1] > BLOB_VERSION || blob[0] < blob[1])
        return nv_error_set(err, -ENOTSUP, "state blob: version %u needs a reader of version %u",
                            blob[0], blob[1]);
    if (hsize < MIG_HEADER_SIZE || hsize > len || total != len)
        return nv_error_set(err, -EBADMSG,
                            "state blob: header size %u or total length %u does "
                            "not fit its %zu bytes",
                            hsize, total, len);
    return 0;
}

/* Plaintext of the decrypted layers, wiped when done. */
struct layer {
    uint8_t *plain;
    size_t len;
};

static void layer_free(struct layer *l)
{
    if (l->plain)
        nv_wipe(l->plain, l->len);
    free(l->plain);
    l->plain = NULL;
}

/* A version 1 blob's layer (swtpm's older writers): no TLVs, AES-CBC with a
 * zero IV over SHA-256 || data (mig_cbc_open_v1). */
static int open_layer_v1(const struct mig_key *key, const char *which, const uint8_t **p,
                         size_t *plen, struct layer *owned, struct nv_error *err)
{
    uint8_t *plain = NULL;
    size_t plain_len = 0;
    if (!key)
        return nv_error_set(err, -ENOKEY, "state blob: encrypted with the %s key, none given",
                            which);
    int r = mig_cbc_open_v1(key, *p, *plen, &plain, &plain_len, err);
    if (r < 0)
        return nv_error_prefix(err, r, "%s key", which);
    layer_free(owned);
    *owned = (struct layer){plain, plain_len};
    *p = plain;
    *plen = plain_len;
    return 0;
}

/* Open one encryption layer: p and plen then point into owned. */
static int open_layer(const struct mig_key *key, const char *which, uint16_t key256_flag,
                      uint16_t flags, uint16_t ct_tag, uint16_t iv_tag, const uint8_t **p,
                      size_t *plen, struct layer *owned, struct nv_error *err)
{
    if (!key)
        return nv_error_set(err, -ENOKEY, "state blob: encrypted with the %s key, none given",
                            which);
    size_t bits = (flags & key256_flag) ? 256 : 128;
    if (key->len * 8 != bits)
        return nv_error_set(err, -EKEYREJECTED,
                            "state blob: encrypted with a %zu-bit %s key, the given one has "
                            "%zu bits",
                            bits, which, key->len * 8);
    uint8_t *plain = NULL;
    size_t plain_len = 0;
    int r = mig_cbc_open(key, *p, *plen, ct_tag, iv_tag, &plain, &plain_len, err);
    if (r < 0)
        return nv_error_prefix(err, r, "%s key", which);
    layer_free(owned);
    *owned = (struct layer){plain, plain_len};
    *p = plain;
    *plen = plain_len;
    return 0;
}

int mig_blob_unwrap(const uint8_t *blob, size_t len, const struct mig_key *migration_key,
                    const struct mig_key *state_key, uint8_t **state, size_t *state_len,
                    struct nv_error *err)
{
    *state = NULL;
    *state_len = 0;
    if (len == 0)
        return 0;
    int r = check_header(blob, len, err);
    if (r < 0)
        return r;
    uint16_t hsize = nv_be16(blob + 2), flags = nv_be16(blob + 4);
    const uint8_t *p = blob + hsize;
    size_t plen = len - hsize;
    struct layer owned = {0};
    bool v1 = blob[0] < 2; /* version 1: no TLVs, layers as mig_cbc_open_v1 */
    if ((flags & MIG_FLAG_MIGRATION_ENCRYPTED) && v1)
        r = open_layer_v1(migration_key, "migration", &p, &plen, &owned, err);
    else if (flags & MIG_FLAG_MIGRATION_ENCRYPTED)
        r = open_layer(migration_key, "migration", MIG_FLAG_MIGRATION_KEY_256, flags,
                       MIG_TAG_ENCRYPTED_MIGRATION_DATA, MIG_TAG_MIGRATION_IVEC, &p, &plen, &owned,
                       err);
    else if ((flags & MIG_FLAG_MIGRATION_DATA) && !v1)
        r = mig_find_tlv(p, plen, MIG_TAG_MIGRATION_DATA, &p, &plen, err);
    if (r == 0 && (flags & MIG_FLAG_ENCRYPTED) && v1)
        r = open_layer_v1(state_key, "state", &p, &plen, &owned, err);
    else if (r == 0 && (flags & MIG_FLAG_ENCRYPTED))
        r = open_layer(state_key, "state", MIG_FLAG_STATE_KEY_256, flags, MIG_TAG_ENCRYPTED_DATA,
                       MIG_TAG_IVEC, &p, &plen, &owned, err);
    else if (r == 0 && !v1)
        r = mig_find_tlv(p, plen, MIG_TAG_DATA, &p, &plen, err);
    if (r == 0) {
        *state = malloc(plen ? plen : 1);
        if (!*state)
            r = nv_error_set(err, -ENOMEM, "out of memory");
        else if (plen)
            memcpy(*state, p, plen);
        *state_len = *state ? plen : 0;
    }
    layer_free(&owned);
    return r;
}
