/* tlv.c - the TLVs of swtpm's state blobs (a 16-bit tag and a 32-bit length,
 * big-endian, then the value), written and found for blob.c and cbc.c. A
 * file of their own so that neither of those needs the other for them. */
#include "internal.h"

#include <errno.h>
#include <string.h>

uint8_t *mig_put_tlv(uint8_t *p, uint16_t tag, const uint8_t *value, size_t len)
{
    nv_put_be16(p, tag);
    nv_put_be32(p + 2, (uint32_t)len);
    if (len)
        memcpy(p + 6, value, len);
    return p + 6 + len;
}

int mig_find_tlv(const uint8_t *p, size_t len, uint16_t tag, const uint8_t **value,
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
