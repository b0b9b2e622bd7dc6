/* qcow2-compress.c - reading compressed clusters: raw deflate (zlib, window
 * 2^12, as QEMU writes them) or zstd, into exactly one cluster. */
#include "qcow2.h"

#include <errno.h>
#include <zlib.h>
#include <zstd.h>

static int inflate_raw(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len)
{
    z_stream z = {0};
    if (inflateInit2(&z, -12) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_len;
    int ret = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    /* The stream may end exactly at the cluster's end or run on into padding. */
    return ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z.avail_out == 0) ? 0 : -EIO;
}

static int unzstd(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len)
{
    ZSTD_DCtx *ctx = ZSTD_createDCtx();
    if (!ctx)
        return -ENOMEM;
    ZSTD_inBuffer src = {in, in_len, 0};
    ZSTD_outBuffer dst = {out, out_len, 0};
    int r = 0;
    while (dst.pos < dst.size) {
        size_t before_in = src.pos, before_out = dst.pos;
        size_t ret = ZSTD_decompressStream(ctx, &dst, &src);
        if (ZSTD_isError(ret) || (src.pos == before_in && dst.pos == before_out)) {
            r = -EIO;
            break;
        }
    }
    ZSTD_freeDCtx(ctx);
    return r;
}

int qcow2_decompress(const struct qcow2_state *s, const uint8_t *in, size_t in_len, uint8_t *out,
                     size_t out_len)
{
    return s->compression_type == 1 ? unzstd(in, in_len, out, out_len)
                                    : inflate_raw(in, in_len, out, out_len);
}
