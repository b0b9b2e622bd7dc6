/* blob.c - swtpm's state-blob format: header and TLVs, checked defensively
 * (every length against what is left), since blobs arrive from the network
 * side of a migration. */
#include "migration.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define BLOB_VERSION 2u

int mig_blob_wrap(const uint8_t *state, size_t len, uint8_t **blob, size_t *blob_len,
                  struct nv_error *err)
{
    size_t total = MIG_HEADER_SIZE + 6 + 6 + len;
    if (len > MIG_BLOB_MAX)
        return nv_error_set(err, -EFBIG, "state blob of %zu bytes is too large", len);
    uint8_t *b = malloc(total);
    if (!b)
        return nv_error_set(err, -ENOMEM, "out of memory");
    b[0] = BLOB_VERSION;
    b[1] = 1; /* readers of version 1 can read it */
    nv_put_be16(b + 2, MIG_HEADER_SIZE);
    nv_put_be16(b + 4, MIG_FLAG_MIGRATION_DATA);
    nv_put_be32(b + 6, (uint32_t)total);
    nv_put_be16(b + 10, MIG_TAG_MIGRATION_DATA);
    nv_put_be32(b + 12, (uint32_t)(6 + len));
    nv_put_be16(b + 16, MIG_TAG_DATA);
    nv_put_be32(b + 18, (uint32_t)len);
    if (len)
        memcpy(b + 22, state, len);
    *blob = b;
    *blob_len = total;
    return 0;
}

/* Find the first TLV with tag in [p, p+len); every length checked. */
static int find_tlv(const uint8_t *p, size_t len, uint16_t tag, const uint8_t **value,
                    size_t *value_len, struct nv_error *err)
{
    size_t off = 0;
    while (len - off >= 6) {
        uint16_t t = nv_be16(p + off);
        uint32_t l = nv_be32(p + off + 2);
        if (l > len - off - 6)
            return nv_error_set(err, -EBADMSG,
                                "state blob: TLV %u at offset %zu claims %u bytes, "
                                "%zu are left",
                                t, off, l, len - off - 6);
        if (t == tag) {
            *value = p + off + 6;
            *value_len = l;
            return 0;
        }
        off += 6 + l;
    }
    return nv_error_set(err, -EBADMSG, "state blob: no TLV with tag %u", tag);
}

int mig_blob_unwrap(const uint8_t *blob, size_t len, uint8_t **state, size_t *state_len,
                    struct nv_error *err)
{
    *state = NULL;
    *state_len = 0;
    if (len == 0)
        return 0;
    if (len < MIG_HEADER_SIZE)
        return nv_error_set(err, -EBADMSG, "state blob: %zu bytes is shorter than a header", len);
    uint16_t hsize = nv_be16(blob + 2), flags = nv_be16(blob + 4);
    uint32_t total = nv_be32(blob + 6);
    if (blob[1] > BLOB_VERSION || blob[0] < blob[1])
        return nv_error_set(err, -ENOTSUP, "state blob: version %u needs a reader of version %u",
                            blob[0], blob[1]);
    if (hsize < MIG_HEADER_SIZE || hsize > len || total != len)
        return nv_error_set(err, -EBADMSG,
                            "state blob: header size %u or total length %u does "
                            "not fit its %zu bytes",
                            hsize, total, len);
    if (flags & (MIG_FLAG_ENCRYPTED | MIG_FLAG_MIGRATION_ENCRYPTED))
        return nv_error_set(err, -ENOKEY,
                            "state blob: encrypted (flags 0x%x) and no key to "
                            "decrypt it",
                            flags);
    const uint8_t *p = blob + hsize, *value;
    size_t plen = len - hsize, vlen;
    int r = 0;
    if (flags & MIG_FLAG_MIGRATION_DATA)
        r = find_tlv(p, plen, MIG_TAG_MIGRATION_DATA, &p, &plen, err);
    if (r == 0)
        r = find_tlv(p, plen, MIG_TAG_DATA, &value, &vlen, err);
    if (r < 0)
        return r;
    *state = malloc(vlen ? vlen : 1);
    if (!*state)
        return nv_error_set(err, -ENOMEM, "out of memory");
    memcpy(*state, value, vlen);
    *state_len = vlen;
    return 0;
}
