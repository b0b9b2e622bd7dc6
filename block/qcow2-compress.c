/* qcow2-compress.c - reading compressed clusters: raw deflate (zlib, window
 * 2^12, as QEMU writes them) or zstd, into exactly one cluster. zlib and
 * zstd are loaded when the first compressed cluster is read (util/lazy.c):
 * nvtpm never writes one, so a TPM's process normally maps neither. */
#include "qcow2.h"

#include <errno.h>
#include <zlib.h>
#include <zstd.h>

static struct {
    void *handle;
    __typeof__(inflateInit2_) *inflateInit2_;
    __typeof__(inflate) *inflate;
    __typeof__(inflateEnd) *inflateEnd;
} z;

static struct {
    void *handle;
    __typeof__(ZSTD_createDCtx) *createDCtx;
    __typeof__(ZSTD_decompressStream) *decompressStream;
    __typeof__(ZSTD_isError) *isError;
    __typeof__(ZSTD_freeDCtx) *freeDCtx;
} zs;

static int load_zlib(struct nv_error *err)
{
    struct nv_lazy_symbol syms[] = {{"inflateInit2_", &z.inflateInit2_},
                                    {"inflate", &z.inflate},
                                    {"inflateEnd", &z.inflateEnd}};
    return nv_lazy_load(NVTPM_SONAME_ZLIB, "reading deflate-compressed qcow2 clusters", syms,
                        sizeof(syms) / sizeof(syms[0]), &z.handle, err);
}

static int load_zstd(struct nv_error *err)
{
    struct nv_lazy_symbol syms[] = {{"ZSTD_createDCtx", &zs.createDCtx},
                                    {"ZSTD_decompressStream", &zs.decompressStream},
                                    {"ZSTD_isError", &zs.isError},
                                    {"ZSTD_freeDCtx", &zs.freeDCtx}};
    return nv_lazy_load(NVTPM_SONAME_ZSTD, "reading zstd-compressed qcow2 clusters", syms,
                        sizeof(syms) / sizeof(syms[0]), &zs.handle, err);
}

static int inflate_raw(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len)
{
    z_stream st = {0};
    if (z.inflateInit2_(&st, -12, ZLIB_VERSION, (int)sizeof(st)) != Z_OK)
        return -ENOMEM;
    st.next_in = (Bytef *)in;
    st.avail_in = (uInt)in_len;
    st.next_out = out;
    st.avail_out = (uInt)out_len;
    int ret = z.inflate(&st, Z_FINISH);
    z.inflateEnd(&st);
    /* The stream may end exactly at the cluster's end or run on into padding. */
    return ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && st.avail_out == 0) ? 0 : -EIO;
}

static int unzstd(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len)
{
    ZSTD_DCtx *ctx = zs.createDCtx();
    if (!ctx)
        return -ENOMEM;
    ZSTD_inBuffer src = {in, in_len, 0};
    ZSTD_outBuffer dst = {out, out_len, 0};
    int r = 0;
    while (dst.pos < dst.size) {
        size_t before_in = src.pos, before_out = dst.pos;
        size_t ret = zs.decompressStream(ctx, &dst, &src);
        if (zs.isError(ret) || (src.pos == before_in && dst.pos == before_out)) {
            r = -EIO;
            break;
        }
    }
    zs.freeDCtx(ctx);
    return r;
}

int qcow2_decompress_load(const struct qcow2_state *s, struct nv_error *err)
{
    return s->compression_type == 1 ? load_zstd(err) : load_zlib(err);
}

int qcow2_decompress(const struct qcow2_state *s, const uint8_t *in, size_t in_len, uint8_t *out,
                     size_t out_len)
{
    return s->compression_type == 1 ? unzstd(in, in_len, out, out_len)
                                    : inflate_raw(in, in_len, out, out_len);
}
